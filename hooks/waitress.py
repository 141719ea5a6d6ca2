"""waitress: the app it serves gets its SERVER span.

Waits for ``waitress.server``. Every waitress server (one per listening socket, for
``waitress.serve``, ``waitress-serve``, ``create_server`` or a ``TcpWSGIServer`` made
directly, as WebTest does) is a ``BaseWSGIServer``: the application given to its
``__init__`` is replaced by :func:`autotrace.wsgi.wrap` of it. ``__init__`` rather than
``create_server``: ``waitress.serve`` holds its own reference to ``create_server``;
and the traced app goes inside waitress's proxy-headers layer (``--trusted-proxy``), so
the span sees the client's address and scheme as the app does.
"""

from __future__ import annotations

from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    wrap_function(module.BaseWSGIServer, "__init__", _wrap_init)


def _wrap_init(original):
    def __init__(self, application, *args, **kwargs):
        traced = application
        try:
            from autotrace import wsgi

            traced = wsgi.wrap(application)
        except Exception:  # noqa: BLE001 - the app is served untraced, never broken
            traced = application
        return original(self, traced, *args, **kwargs)

    return __init__
