"""Django: the request's SERVER span is named by its URL pattern; a 500 records its exception.

Three rows of the hook table, one per module (a module that imports another cannot be
patched from that other's hook: it is only half executed then):

- ``django.core.handlers.base`` (:func:`patch`):

  - ``BaseHandler.resolve_request``, which WSGI and ASGI requests alike go through once
    middleware has run (``request.urlconf`` set by a middleware is honoured): the
    match's ``route`` (``"items/<int:item_id>/"``, included prefixes joined, as Django
    gives it) becomes ``http.route`` and the name ``"GET items/<int:item_id>/"``. No
    match (``Resolver404``): the name stays ``"GET"``.
  - ``django.core.handlers.exception.handle_uncaught_exception``, where Django makes
    its 500 response for an exception no middleware handled (404, 403, 400 exceptions
    do not get there). The exception is recorded once that response is made; with
    ``DEBUG_PROPAGATE_EXCEPTIONS`` it is re-raised and recorded by the layer that
    started the span, as it leaves the app.

- ``django.core.handlers.wsgi`` (:func:`patch_wsgi`): ``WSGIHandler.__call__``
- ``django.core.handlers.asgi`` (:func:`patch_asgi`): ``ASGIHandler.__call__``

  get the WSGI or ASGI wrapper's logic: under a server no hook knows, Django starts the
  request's span itself; under a server hook, a span is current already and the call
  goes straight to Django.
"""

from __future__ import annotations

from autotrace import asgi, server_span, wsgi
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    import importlib

    wrap_function(module.BaseHandler, "resolve_request", _named_by_route)
    # Imported by django.core.handlers.base itself: complete by now.
    exception = importlib.import_module("django.core.handlers.exception")
    wrap_function(exception, "handle_uncaught_exception", _recording_handled_exception)


def patch_wsgi(module: ModuleType) -> None:
    wrap_function(module.WSGIHandler, "__call__", wsgi.traced_method)


def patch_asgi(module: ModuleType) -> None:
    wrap_function(module.ASGIHandler, "__call__", asgi.traced_method)


def _named_by_route(original):
    def resolve_request(self, request):
        match = original(self, request)
        if server_span.current() is not None:
            try:
                route = match.route
                if route:
                    server_span.set_route(str(route))
            except Exception:  # noqa: BLE001 - the request is served regardless
                pass
        return match

    return resolve_request


def _recording_handled_exception(original):
    def handle_uncaught_exception(request, resolver, exc_info):
        response = original(request, resolver, exc_info)  # raises when Django propagates
        try:
            exc = exc_info[1]
        except Exception:  # noqa: BLE001
            exc = None
        if isinstance(exc, BaseException):
            server_span.record_exception(exc)  # never raises
        return response

    return handle_uncaught_exception


