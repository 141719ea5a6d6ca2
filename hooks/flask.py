"""Flask: the request's SERVER span is named by its URL rule; a 500 records its exception.

Waits for ``flask.app``; patches the ``Flask`` class (apps made before or after alike):

- ``Flask.full_dispatch_request``: the URL has been matched by then (the request
  context's ``push``), before ``before_request`` functions run; the rule's template
  (``/items/<int:item_id>``, blueprint prefix included) becomes ``http.route`` and the
  span's name ``"GET /items/<int:item_id>"``. No rule (a 404, a 405): the name stays
  ``"GET"``.
- ``Flask.handle_exception``: where Flask turns an unhandled exception into its 500
  response. The exception is recorded once that response is made; when Flask re-raises
  instead (``PROPAGATE_EXCEPTIONS``, debug, testing), the layer that started the span
  records it as it leaves the app, so it is never recorded twice.
- ``Flask.__call__``, the app's WSGI entry point, gets the WSGI wrapper's logic: under a
  server no hook knows, the app starts the request's span itself; under a server hook,
  a span is current already and the call goes straight to Flask.

Every wrapper is fail-open: what Flask returns or raises passes through untouched.
"""

from __future__ import annotations

from autotrace import server_span, wsgi
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    import importlib

    flask_class = module.Flask
    request = importlib.import_module("flask.globals").request  # the request context's proxy
    wrap_function(flask_class, "__call__", wsgi.traced_method)
    wrap_function(flask_class, "full_dispatch_request", lambda original: _named_by_rule(original, request))
    wrap_function(flask_class, "handle_exception", _recording_handled_exception)


def _named_by_rule(original, request):
    def full_dispatch_request(self):
        span = server_span.current()
        if span is not None:
            try:
                rule = request.url_rule
                if rule is not None:
                    server_span.set_route(rule.rule, span)
            except Exception:  # noqa: BLE001 - the request is served regardless
                pass
        return original(self)

    return full_dispatch_request


def _recording_handled_exception(original):
    def handle_exception(self, e):
        response = original(self, e)  # raises when Flask propagates: recorded further out
        server_span.record_exception(e)  # never raises
        return response

    return handle_exception
