"""gunicorn: the WSGI app of sync, gthread and async (gevent, eventlet) workers gets its SERVER span.

Waits for ``gunicorn.workers.base``. ``Worker.load_wsgi`` runs in each worker process
(after the fork, with or without ``--preload``, and again on a reload) and sets
``self.wsgi``, the app the worker calls for each request; after it, ``self.wsgi``
becomes :func:`autotrace.wsgi.wrap` of it.

Only workers that call ``self.wsgi`` as a WSGI app are wrapped: gunicorn's sync,
gthread and async workers and their subclasses. ``self.wsgi`` of an ASGI worker
(uvicorn's ``UvicornWorker``) is an ASGI app, traced by the uvicorn hook; gunicorn's
own ASGI worker defines its own ``load_wsgi``; the tornado worker may serve a tornado
application. Those are left alone.
"""

from __future__ import annotations

from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

# Workers whose self.wsgi is called as a WSGI app (gunicorn 20 and later).
WSGI_WORKERS = frozenset(
    {
        "gunicorn.workers.sync.SyncWorker",
        "gunicorn.workers.gthread.ThreadWorker",
        "gunicorn.workers.base_async.AsyncWorker",  # gevent and eventlet
    }
)


def patch(module: ModuleType) -> None:
    wrap_function(module.Worker, "load_wsgi", _wrap_load_wsgi)


def _wrap_load_wsgi(original):
    def load_wsgi(self):
        result = original(self)
        try:
            if serves_wsgi(type(self)):
                from autotrace import wsgi

                self.wsgi = wsgi.wrap(self.wsgi)
        except Exception:  # noqa: BLE001 - the app is served untraced, never broken
            pass
        return result

    return load_wsgi


def serves_wsgi(worker_class: type) -> bool:
    """Whether a worker class calls ``self.wsgi`` as a WSGI app."""
    return any(f"{c.__module__}.{c.__qualname__}" in WSGI_WORKERS for c in worker_class.__mro__)
