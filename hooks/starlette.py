"""Starlette and FastAPI: the request's SERVER span is named by the matched route's path.

Three rows of the hook table, one per module (a module that imports another cannot be
patched from that other's hook: it is only half executed then):

- ``starlette.routing`` (:func:`patch`): the route is named where the router hands the
  request to it:

  - ``Route.handle`` and ``WebSocketRoute.handle``: the route's path as written
    (``/items/{item_id}``, ``/files/{name:path}``) becomes ``http.route`` and the span's
    name ``"GET /items/{item_id}"``;
  - ``Mount.handle``: a mount's path prefixes the routes inside it
    (``/api/items/{item_id}``); a request the mount takes but nothing inside it names
    (static files, another framework's app, a 404 inside) is named
    ``"/api/{path:path}"``, the template the mount matched.

  No route matched (a 404): the name stays ``"GET"``.

- ``starlette.applications`` (:func:`patch_app`):

  - ``Starlette.__call__`` gets the ASGI wrapper's logic: under a server no hook knows,
    the app starts the request's span itself; under a server hook, a span is current
    already and the call goes straight to Starlette;
  - ``ServerErrorMiddleware``, which turns an exception into the 500 response, gets a
    layer right inside it that records the exception before that response is sent:
    the middleware re-raises it afterwards, when the span has ended with the response.

- ``fastapi.applications`` (:func:`patch_fastapi`):

  - ``FastAPI.__call__``, like ``Starlette.__call__`` (FastAPI's own comes first);
  - ``APIRoute.handle``: a route of a router included with a prefix is named with it;
  - FastAPI's native telemetry (FastAPI >= 0.165 starts its own SERVER span once a
    tracer provider is set, which under the agent is always) keeps its metrics and
    logs but not its HTTP spans: the agent's span is the request's one.

Every wrapper is fail-open: what the app returns, sends or raises passes through untouched.
"""

from __future__ import annotations

import contextvars

from autotrace import asgi, server_span
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

MOUNT_SUFFIX = "/{path:path}"  # what a Mount's path matches after its own prefix

# The path templates of the mounts the request went through, joined.
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("autotrace.starlette.mount", default="")


# -- starlette.routing -----------------------------------------------------------------


def patch(module: ModuleType) -> None:
    wrap_function(module.Route, "handle", _named_by_path)
    wrap_function(module.WebSocketRoute, "handle", _named_by_path)
    wrap_function(module.Mount, "handle", _prefixed_by_mount)


def _name(path) -> None:
    if isinstance(path, str):
        server_span.set_route(_prefix.get() + path)


def _named_by_path(original):
    async def handle(self, scope, receive, send):
        if server_span.current() is not None:
            _name(getattr(self, "path", None))
        return await original(self, scope, receive, send)

    return handle


def _prefixed_by_mount(original):
    async def handle(self, scope, receive, send):
        token = None
        if server_span.current() is not None:
            try:
                path = self.path
                if isinstance(path, str):
                    prefix = _prefix.get() + path
                    server_span.set_route(prefix + MOUNT_SUFFIX)  # until a route inside names it
                    token = _prefix.set(prefix)
            except Exception:  # noqa: BLE001 - the request is served regardless
                token = None
        if token is None:
            return await original(self, scope, receive, send)
        try:
            return await original(self, scope, receive, send)
        finally:
            try:
                _prefix.reset(token)
            except Exception:  # noqa: BLE001 - reset in another context: nothing to undo there
                pass

    return handle


# -- starlette.applications ------------------------------------------------------------------


def patch_app(module: ModuleType) -> None:
    import importlib

    wrap_function(module.Starlette, "__call__", asgi.traced_method)
    # Imported by starlette.applications itself: complete by now.
    errors = importlib.import_module("starlette.middleware.errors")
    wrap_function(errors.ServerErrorMiddleware, "__init__", _recording_server_errors)


def _recording_server_errors(original):
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        try:
            app = self.app
            if app is not None and not isinstance(app, RecordServerErrors):
                self.app = RecordServerErrors(app)
        except Exception:  # noqa: BLE001 - left as it is: the 500 is still counted as an error
            pass

    return __init__


class RecordServerErrors:
    """The app inside ``ServerErrorMiddleware``: records an HTTP request's exception on
    its SERVER span as it reaches the middleware, before the 500 response is sent."""

    __slots__ = ("app",)

    def __init__(self, app) -> None:
        self.app = app  # named as the middlewares name theirs: tools walking .app go on through

    async def __call__(self, scope, receive, send):
        try:
            return await self.app(scope, receive, send)
        except Exception as exc:
            try:
                if scope["type"] == "http":
                    server_span.record_exception(exc)
            except Exception:  # noqa: BLE001
                pass
            raise


# -- fastapi.applications ----------------------------------------------------------------------


def patch_fastapi(module: ModuleType) -> None:
    import importlib

    wrap_function(module.FastAPI, "__call__", asgi.traced_method)
    routing = importlib.import_module("fastapi.routing")
    effective = getattr(routing, "_get_scope_effective_route_context", None)
    if effective is not None and "handle" in vars(routing.APIRoute):
        wrap_function(routing.APIRoute, "handle", lambda original: _named_by_included_path(original, effective))
    native = getattr(module, "NativeTelemetry", None)
    if isinstance(native, type):
        wrap_function(native, "__init__", _without_http_spans)


def _named_by_included_path(original, effective):
    """FastAPI >= 0.165 serves a route of an included router through a context that knows
    the prefix (``prefix + route.path``); other routes go on to ``Route.handle``."""

    async def handle(self, scope, receive, send):
        if server_span.current() is not None:
            try:
                context = effective(scope)
                if context is not None and context.original_route is self:
                    _name(context.path)
            except Exception:  # noqa: BLE001 - the request is served regardless
                pass
        return await original(self, scope, receive, send)

    return handle


def _without_http_spans(original):
    def __init__(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        try:
            if self.config.get("tracing"):
                self.config = {**self.config, "tracing": False}  # a copy: the app's own settings stay
        except Exception:  # noqa: BLE001 - left as it is
            pass

    return __init__
