"""hypercorn: the app it serves gets its SERVER span.

Waits for ``hypercorn.utils``, whose ``wrap_app(app, wsgi_max_body_size, mode)`` is the
one place every way of serving an app goes through: the CLI (``hypercorn module:app``,
in each worker process: ``load_application``) and ``hypercorn.asyncio.serve`` /
``hypercorn.trio.serve`` from a script. It decides between ASGI and WSGI and returns
hypercorn's ``ASGIWrapper`` or ``WSGIWrapper`` holding the app as ``.app``; the hook
replaces that ``.app`` afterwards, so hypercorn's own detection sees the app as it is:

- an ASGI app is wrapped with :func:`autotrace.asgi.wrap`;
- a WSGI app with :func:`autotrace.wsgi.wrap`: it runs in a worker thread, where the
  span is started, so it is current for the app and any framework hook.

``hypercorn.middleware``'s WSGI adapters (``AsyncioWSGIMiddleware``), which a user may
put under another server, use ``WSGIWrapper`` directly and are left alone: that server's
hook traces the request.
"""

from __future__ import annotations

import sys

from autotrace.patching import ORIGINAL, wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    original = module.wrap_app
    wrap_function(module, "wrap_app", lambda wrap_app: _traced_wrap_app(wrap_app, module))
    traced = module.wrap_app
    # ``from ..utils import wrap_app`` in a module imported before the patch holds the original.
    for name in ("hypercorn.asyncio", "hypercorn.trio"):
        user = sys.modules.get(name)
        if user is not None and getattr(user, "wrap_app", None) is original and getattr(traced, ORIGINAL, None) is original:
            user.wrap_app = traced


def _traced_wrap_app(wrap_app, module: ModuleType):
    def traced_wrap_app(*args, **kwargs):
        wrapper = wrap_app(*args, **kwargs)
        _trace(wrapper, module)
        return wrapper

    return traced_wrap_app


def _trace(wrapper, module: ModuleType) -> None:
    try:
        app = getattr(wrapper, "app", None)
        if app is None:
            return
        asgi_wrapper = getattr(module, "ASGIWrapper", None)
        wsgi_wrapper = getattr(module, "WSGIWrapper", None)
        if isinstance(asgi_wrapper, type) and isinstance(wrapper, asgi_wrapper):
            from autotrace import asgi

            wrapper.app = asgi.wrap(app)
        elif isinstance(wsgi_wrapper, type) and isinstance(wrapper, wsgi_wrapper):
            from autotrace import wsgi

            wrapper.app = wsgi.wrap(app)
    except Exception as exc:  # noqa: BLE001 - the app is served untraced, never broken
        from autotrace import _log

        _log.warn_once(
            "hypercorn-wrap",
            "hypercorn's app could not be traced (%s: %s); it is served untraced",
            type(exc).__name__,
            exc,
        )
