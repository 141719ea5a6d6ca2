"""uvicorn: the app it serves gets its SERVER span, in every process that serves it.

Waits for ``uvicorn.config``. ``Config.load`` builds ``config.loaded_app``, the app
uvicorn's protocols call: the user's app (made by the factory, if it is one), then
uvicorn's own layers around it::

    ProxyHeadersMiddleware(          # --proxy-headers (the default)
      MessageLoggerMiddleware(       # --log-level trace
        WSGIMiddleware(app)          # --interface wsgi
        | ASGI2Middleware(app)       # --interface asgi2
        | app))

After the original ``load``, the traced layer goes just inside uvicorn's outer layers,
so the span sees the scope as the app does (client and scheme from trusted forwarded
headers), and the message logger logs the app's messages unchanged:

- an ASGI app (or ``ASGI2Middleware``) is wrapped with :func:`autotrace.asgi.wrap`;
- a WSGI app (``--interface wsgi``) is wrapped with :func:`autotrace.wsgi.wrap` inside
  ``WSGIMiddleware``: the app runs in an executor thread, which does not inherit the
  event loop's context, so a span started around ``WSGIMiddleware`` would not be
  current where the WSGI app runs; started in that thread, it is the one span of the
  request, current for the app and any framework hook.

After it, the SDK is set up if it is not yet (:func:`autotrace.provider.set_up_now`;
``uvicorn.run`` from a script: the ``uvicorn`` command set it up at its start already):
``Config.load`` comes before uvicorn binds its port, so the first request does not wait
for the set-up. ``Config.load`` runs once per serving process: in the process itself, in each
``--workers`` child (spawned: it imports ``uvicorn.config`` again and is patched there),
and under gunicorn's ``UvicornWorker``. ``uvicorn.run(app)`` from a script goes through
it too.

``UvicornWorker.init_signals`` (``uvicorn.workers``, which imports ``uvicorn.config``
first) puts SIGTERM and SIGINT back to their default action, so that the worker dies of
the signal once uvicorn has shut down: it would die without flushing. After it, the
agent's flush-then-die handler is installed again (:func:`autotrace.signals.rearm`);
the worker still dies of the same signal.
"""

from __future__ import annotations

from autotrace import _log, importer, provider
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    wrap_function(module.Config, "load", lambda load: _traced_load(load, module))
    importer.register("uvicorn.workers", patch_workers)


def patch_workers(module: ModuleType) -> None:
    worker = getattr(module, "UvicornWorker", None)
    if isinstance(worker, type) and "init_signals" in worker.__dict__:
        wrap_function(worker, "init_signals", _rearm_after)


def _rearm_after(init_signals):
    def init_signals_then_rearm(self, *args, **kwargs):
        result = init_signals(self, *args, **kwargs)
        try:
            from autotrace import signals

            signals.rearm()
        except Exception:  # noqa: BLE001 - the worker runs as it would without the agent
            pass
        return result

    return init_signals_then_rearm


def _traced_load(load, module: ModuleType):
    def load_traced(self, *args, **kwargs):
        result = load(self, *args, **kwargs)
        try:
            _trace_loaded_app(self, module)
        except Exception as exc:  # noqa: BLE001 - the app is served untraced, never broken
            _log.warn_once(
                "uvicorn-load",
                "uvicorn's app could not be traced (%s: %s); it is served untraced",
                type(exc).__name__,
                exc,
            )
        provider.set_up_now()  # never raises; before uvicorn binds its port
        return result

    return load_traced


def _trace_loaded_app(config, module: ModuleType) -> None:
    """Put the traced layer inside uvicorn's outer middlewares, around the app."""
    outer = tuple(
        cls
        for cls in (getattr(module, "ProxyHeadersMiddleware", None), getattr(module, "MessageLoggerMiddleware", None))
        if isinstance(cls, type)
    )
    parent, layer = None, getattr(config, "loaded_app", None)
    if layer is None:
        return
    while outer and isinstance(layer, outer) and getattr(layer, "app", None) is not None:
        parent, layer = layer, layer.app

    if getattr(config, "interface", None) == "wsgi":
        middleware = getattr(module, "WSGIMiddleware", None)
        if isinstance(middleware, type) and isinstance(layer, middleware) and getattr(layer, "app", None) is not None:
            from autotrace import wsgi

            layer.app = wsgi.wrap(layer.app)
        # An adapter this hook does not know: left as it is (a framework hook may trace it).
        return

    from autotrace import asgi

    traced = asgi.wrap(layer)
    if traced is layer:
        return
    if parent is None:
        config.loaded_app = traced
    else:
        parent.app = traced
