"""aiohttp server: each request an aiohttp server handles gets its SERVER span.

Waits for ``aiohttp.web_protocol``. ``RequestHandler._handle_request`` (aiohttp 3.8
and later) is where every request of every aiohttp server is handled: ``web.Application``
apps however they are run (``web.run_app``, ``AppRunner`` and a site, ``python -m
aiohttp.web``, gunicorn's ``GunicornWebWorker``) and low-level ``web.Server`` handlers.
aiohttp runs it in a task of its own per request, so the span's context, made current
there, is the request's: tasks the handler creates, ``run_in_executor`` and
``asyncio.to_thread`` run under it (asyncio copies the context; the thread-pool hook
carries it into executor threads).

The span covers the whole request: the handler (middlewares included), then aiohttp's
``finish_response``, which sends the response, so a streamed response is measured
whole and a WebSocket handler (which returns when the connection closes) is one span,
answered 101.

- Name and ``http.route``: the matched resource's canonical form (``/items/{id}``; a
  sub-application's prefix included), read once per route object, set with the status. No
  route (a 404, a low-level ``web.Server`` handler): the name stays ``"GET"``. A
  framework served through the resource that names the span itself (a Flask app
  behind a catch-all route, through a WSGI adapter) keeps its name: it is the finer one.
- Status: the response aiohttp sends. A raised ``web.HTTPException`` keeps its status
  (a 404 is no error; a raised 5xx is); an exception the handler raises otherwise is
  recorded, and aiohttp's 500 (504 for a timeout) makes the span an error. aiohttp
  turns such an exception into its error response with ``RequestHandler.handle_error``,
  in the request's task: the exception is recorded there (the 504's is the
  ``TimeoutError`` aiohttp is handling), so the request's own path adds no coroutine.
- A request aiohttp could not parse (its own 400 from an error handler) gets no span.

The request handler is passed through untouched when the span could not start.
"""

from __future__ import annotations

import sys

from autotrace import server_span
from autotrace.patching import wrap_function

hosts = server_span.hosts  # a Host header -> (address, port), read here without a call

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    handler = module.RequestHandler
    if "_handle_request" in vars(handler):
        wrap_function(handler, "_handle_request", _traced)
        wrap_function(handler, "handle_error", _recording_error)


def _traced(original):
    async def _handle_request(self, request, start_time, request_handler, *args, **kwargs):
        span = None
        if request_handler is getattr(self, "_request_handler", None):  # not aiohttp's error handler
            # The span's start, inline (a call less on every request).
            try:
                headers = request.headers
                path, _, query = request.raw_path.partition("?")
                host = headers.get("Host")
                if host:
                    address, port = hosts.get(host) or server_span.host_address(host)
                else:
                    address = port = None
                if address is None:
                    transport = request.transport
                    sockname = transport.get_extra_info("sockname") if transport is not None else None
                    if isinstance(sockname, tuple) and len(sockname) >= 2:
                        address, port = sockname[0], sockname[1]
                scheme = request.scheme
                if "Upgrade" in headers and headers["Upgrade"].lower() == "websocket":
                    scheme = "wss" if scheme == "https" else "ws"
                version = request.version
                span = server_span.start(
                    request.method,
                    scheme,
                    path,
                    query,
                    server_span.MultiDictLookup(headers),
                    address,
                    port,
                    request.remote,
                    _versions.get(version) or _version(version),
                    headers.get("User-Agent"),
                )
            except Exception:  # noqa: BLE001 - never fail a request
                span = None
        if span is None:
            return await original(self, request, start_time, request_handler, *args, **kwargs)
        try:
            if args or kwargs:
                result = await original(self, request, start_time, request_handler, *args, **kwargs)
            else:  # aiohttp's own call (3.8 and later): without packing the arguments again
                result = await original(self, request, start_time, request_handler)
        except BaseException as exc:
            # aiohttp's ConnectionError when the handler failed after its response began:
            # the handler's exception, recorded by handle_error, names the error better.
            if not _failed(span):
                span.record_exception(exc)
            route = _route(request)
            if route:
                span.set_route(route, keep=True)
            span.end()
            span.detach()
            raise
        try:
            response = result[0]
            code = int(response.status)
            headers = response.headers.items() if span.response_headers else None
        except Exception:  # noqa: BLE001 - not aiohttp's (response, reset): nothing to record
            span.end()
            span.detach()
            return result
        try:  # the route's cached name (_route's first step, inline: a call less on every request)
            match = getattr(request, "match_info", None)  # a low-level server's request has none
            route = _routes.get(match.route) if match is not None else ""
        except Exception:  # noqa: BLE001
            route = None
        # Status, route, named headers, the end and the detach: one call.
        span.finish(code, _route(request) if route is None else route, True, headers)
        return result

    return _handle_request


def _recording_error(original):
    """``handle_error``: aiohttp answers an exception from the handler (500; 504 for a
    timeout, the exception not passed: the one being handled). Recorded on the request's
    span, current in its task; a raised ``web.HTTPException`` never comes here."""

    def handle_error(self, request, status=500, exc=None, *args, **kwargs):
        try:
            span = server_span.current()
            if span is not None:
                failure = exc if exc is not None else sys.exc_info()[1]
                if failure is not None:
                    server_span.record_exception(failure, span)
        except Exception:  # noqa: BLE001 - the error response is made regardless
            pass
        return original(self, request, status, exc, *args, **kwargs)

    return handle_error


def _failed(span: server_span.ServerSpan) -> bool:
    """Whether the span records an error already (the handler's exception)."""
    try:
        return "error.type" in (getattr(span.span, "attributes", None) or {})
    except Exception:  # noqa: BLE001
        return False


_versions: dict[object, str] = {}
_VERSIONS_SIZE = 16


def _version(version) -> str | None:
    """An aiohttp ``HttpVersion`` as ``network.protocol.version``, made once per value."""
    if version is None:
        return None
    found = _versions.get(version)
    if found is None:
        found = f"{version.major}.{version.minor}"
        if len(_versions) >= _VERSIONS_SIZE:
            _versions.clear()
        _versions[version] = found
    return found


# A route object -> its resource's canonical form ("" when none: a low-level server's
# request). Routes are few and live as long as their app. Bounded: cleared when full.
_routes: dict[object, str] = {}
_ROUTES_SIZE = 1024


def _route(request) -> str:
    """The matched resource's canonical form (web.Application requests), or ""."""
    try:
        route = request.match_info.route  # a low-level server's request has no match_info
        found = _routes.get(route)
        if found is None:
            resource = route.resource
            if resource is None:
                return ""  # no route matched (a 404's route, made for that request alone)
            found = resource.canonical
            if len(_routes) >= _ROUTES_SIZE:
                _routes.clear()
            _routes[route] = found
        return found
    except Exception:  # noqa: BLE001 - the request is served regardless
        return ""
