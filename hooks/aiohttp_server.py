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
  sub-application's prefix included), read once the handler returns or raises. No
  route (a 404, a low-level ``web.Server`` handler): the name stays ``"GET"``. A
  framework served through the resource that names the span itself (a Flask app
  behind a catch-all route, through a WSGI adapter) keeps its name: it is the finer one.
- Status: the response aiohttp sends. A raised ``web.HTTPException`` keeps its status
  (a 404 is no error; a raised 5xx is); an exception the handler raises otherwise is
  recorded, and aiohttp's 500 (504 for a timeout) makes the span an error.
- A request aiohttp could not parse (its own 400 from an error handler) gets no span.

The request handler is passed through untouched when the span could not start.
"""

from __future__ import annotations

from autotrace import server_span
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    handler = module.RequestHandler
    if "_handle_request" in vars(handler):
        wrap_function(handler, "_handle_request", lambda original: _traced(original, module))


def _traced(original, module: ModuleType):
    http_exception = getattr(module, "HTTPException", None)
    if not isinstance(http_exception, type):
        http_exception = ()

    async def _handle_request(self, request, start_time, request_handler, *args, **kwargs):
        span = None
        if request_handler is getattr(self, "_request_handler", None):  # not aiohttp's error handler
            span = _start(request)
        if span is None:
            return await original(self, request, start_time, request_handler, *args, **kwargs)

        failed = False  # the handler raised (recorded): what aiohttp raises after names it less well

        async def handler(request):
            nonlocal failed
            try:
                return await request_handler(request)
            except http_exception:
                raise  # a response: its status says whether it is an error
            except BaseException as exc:
                failed = True
                span.record_exception(exc)
                raise
            finally:
                _name(request, span)

        try:
            result = await original(self, request, start_time, handler, *args, **kwargs)
        except BaseException as exc:
            # aiohttp's ConnectionError when the handler failed after its response began.
            if not failed:
                span.record_exception(exc)
            span.end()
            span.detach()
            raise
        try:
            response = result[0]
            span.set_status_code(int(response.status))
            span.capture_response_headers(response.headers.items())
        except Exception:  # noqa: BLE001 - not aiohttp's (response, reset): nothing to record
            pass
        span.end()
        span.detach()
        return result

    return _handle_request


# Host header -> (server.address, server.port), and HTTP version -> network.protocol.version,
# for the values seen last: a service is called under few names. Bounded: cleared when full.
_hosts: dict[str, tuple[str | None, int | None]] = {}
_versions: dict[object, str] = {}
_CACHED = 64


def _host(host: str) -> tuple[str | None, int | None]:
    found = _hosts.get(host)
    if found is None:
        name, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
        found = (name or None, int(port) if port.isdigit() else None)
        if len(_hosts) >= _CACHED:
            _hosts.clear()
        _hosts[host] = found
    return found


def _version(version) -> str | None:
    if version is None:
        return None
    found = _versions.get(version)
    if found is None:
        found = f"{version.major}.{version.minor}"
        if len(_versions) >= _CACHED:
            _versions.clear()
        _versions[version] = found
    return found


def _start(request) -> server_span.ServerSpan | None:
    try:
        headers = request.headers
        path, _, query = request.raw_path.partition("?")
        host = headers.get("Host")
        address, port = _host(host) if host else (None, None)
        if address is None:
            transport = request.transport
            sockname = transport.get_extra_info("sockname") if transport is not None else None
            if isinstance(sockname, tuple) and len(sockname) >= 2:
                address, port = sockname[0], sockname[1]
        scheme = request.scheme
        if "Upgrade" in headers and headers["Upgrade"].lower() == "websocket":
            scheme = "wss" if scheme == "https" else "ws"
        return server_span.start(
            request.method,
            scheme,
            path,
            query,
            server_span.HeaderLookup(lambda name: headers.getall(name, ()), headers.keys, headers.__contains__),
            address,
            port,
            request.remote,
            _version(request.version),
        )
    except Exception:  # noqa: BLE001 - never fail a request
        return None


def _name(request, span: server_span.ServerSpan) -> None:
    """Name the span by the matched resource (web.Application requests only), unless a
    framework the resource served named it already (a WSGI app behind a catch-all route)."""
    try:
        resource = request.match_info.route.resource  # a low-level server's request has none
        if resource is not None:
            span.set_route(resource.canonical, keep=True)
    except Exception:  # noqa: BLE001 - the request is served regardless
        pass
