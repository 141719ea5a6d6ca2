"""wsgiref: the app a ``wsgiref.handlers.BaseHandler`` runs gets its SERVER span.

Waits for ``wsgiref.handlers``. ``BaseHandler.run(application)`` runs one request:
the application it is given is replaced by :func:`autotrace.wsgi.wrap` of it. That
covers ``wsgiref.simple_server`` (``make_server``), ``CGIHandler`` and every server
built on them, such as Django's ``runserver``. Their request handlers override
``handle()``, so the http.server hook starts no span of its own for them.
"""

from __future__ import annotations

from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    wrap_function(module.BaseHandler, "run", _wrap_run)


def _wrap_run(original):
    last = (None, None)  # (application, its traced wrapper): servers run the same app each time

    def run(self, application):
        nonlocal last
        traced = application
        try:
            seen, wrapped = last
            if seen is application and wrapped is not None:
                traced = wrapped
            else:
                from autotrace import wsgi

                traced = wsgi.wrap(application)
                last = (application, traced)
        except Exception:  # noqa: BLE001 - the app runs untraced, never broken
            traced = application
        return original(self, traced)

    return run
