"""werkzeug's development server (``run_simple``, ``make_server``): one SERVER span per request.

Waits for ``werkzeug.serving``. Every werkzeug server is a ``BaseWSGIServer``; after
its ``__init__``, the app it serves (``self.app``, which its request handler calls for
each request) is :func:`autotrace.wsgi.wrap` of it. The span is therefore the WSGI
one, as under any other WSGI server: status from ``start_response``, the app's
exception recorded, a streamed response measured until it is closed.

werkzeug's ``WSGIRequestHandler`` is a ``BaseHTTPRequestHandler``: it is marked so
that the http.server hook leaves its requests to this one. Were this hook disabled or
unsupported, the http.server hook would trace them instead: one span either way.
"""

from __future__ import annotations

from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    from autotrace.hooks import http_server

    wrap_function(module.BaseWSGIServer, "__init__", _wrap_init)
    setattr(module.WSGIRequestHandler, http_server.SKIP, True)


def _wrap_init(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        try:
            from autotrace import wsgi

            self.app = wsgi.wrap(self.app)
        except Exception:  # noqa: BLE001 - the app is served untraced, never broken
            pass

    return __init__
