"""An ASGI app wrapped with its SERVER span; server hooks wrap whatever app they are given.

HTTP: one span per request, ended when the response is complete (the last body
message is sent, or the last trailers message when the response announced trailers),
or when the app returns or fails. WebSocket: one span per connection, ended when the
app returns. Lifespan and other scopes pass through. The app's exceptions are
recorded and re-raised untouched; the messages it sends are passed on as they are.

The status code is the one the client gets: the app's, 101 for an accepted WebSocket,
403 for one closed before it was accepted, and 500 when the app returns or fails
without having started a response while the client is still there (what every ASGI
server then answers: uvicorn, hypercorn, daphne, granian).
"""

from __future__ import annotations

from . import server_span

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

_MARK = "__autotrace_asgi__"


def wrap(app: Callable) -> Callable:
    """The app, traced (idempotent: a wrapped app is returned as it is)."""
    if app is None or getattr(app, _MARK, False):
        return app
    return TracedASGIApp(app)


def traced_method(original: Callable) -> Callable:
    """For ``patching.wrap_function``: a framework's ``__call__`` that traces its requests.

    Under a server hook the request's span is current already and the call goes straight
    to the framework; under a server no hook knows, the framework starts the span itself.
    """

    async def __call__(self, scope, receive, send):
        if server_span.current() is not None:
            return await original(self, scope, receive, send)
        return await call(original.__get__(self, type(self)), scope, receive, send)

    return __call__


class TracedASGIApp:
    __autotrace_asgi__ = True

    def __init__(self, app: Callable) -> None:
        self.__wrapped__ = app

    def __getattr__(self, name: str):
        if name == "__wrapped__":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        return await call(self.__wrapped__, scope, receive, send)


async def call(app: Callable, scope: dict, receive: Callable, send: Callable) -> None:
    """Call ``app`` within the request's SERVER span, as a wrapped app is called.

    For a framework's own ASGI entry point (a method, bound per call), which cannot be
    wrapped once: ``await asgi.call(bound_method, scope, receive, send)``.
    """
    kind = scope.get("type") if isinstance(scope, dict) else None
    span = _start(scope) if kind in ("http", "websocket") else None
    if span is None:
        return await app(scope, receive, send)

    responded = disconnected = trailers = False  # as far as the app's messages tell

    async def traced_receive() -> dict:
        nonlocal disconnected
        message = await receive()
        try:
            if message.get("type") in ("http.disconnect", "websocket.disconnect"):
                disconnected = True
        except Exception:  # noqa: BLE001
            pass
        return message

    async def traced_send(message: dict) -> None:
        nonlocal responded, trailers
        complete = False
        try:
            event = message.get("type")
            if event == "http.response.start":
                responded = True
                trailers = bool(message.get("trailers", False))
                span.set_status_code(int(message.get("status", 0)))
                if span.response_headers:
                    span.capture_response_headers(_decoded(message.get("headers") or ()))
            elif event == "http.response.body":
                complete = not message.get("more_body", False) and not trailers
            elif event == "http.response.trailers":
                complete = not message.get("more_trailers", False)
            elif event == "websocket.accept":
                responded = True
                span.set_status_code(101)
            elif event == "websocket.close":
                if not responded:  # closed before accepted: the server answers 403
                    span.set_status_code(403)
                responded = True
            elif event == "websocket.http.response.start":  # connection refused with a response
                responded = True
                span.set_status_code(int(message.get("status", 0)))
        except Exception:  # noqa: BLE001
            pass
        await send(message)
        if complete and kind == "http":
            span.end()

    try:
        result = await app(scope, traced_receive, traced_send)
    except BaseException as exc:
        if isinstance(exc, Exception) and not responded and not disconnected:
            span.set_status_code(500)
        span.record_exception(exc)  # after: error.type names the exception
        raise
    else:
        if not responded and not disconnected:
            span.set_status_code(500)
        return result
    finally:
        span.end()
        span.detach()


def _decoded(headers) -> list[tuple[str, str]]:
    return [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in headers]


def _start(scope: dict) -> server_span.ServerSpan | None:
    try:
        values: dict[str, list[str]] = {}  # the request's headers, gathered in one pass
        for raw_name, raw_value in scope.get("headers") or ():
            name = _names.get(raw_name) if type(raw_name) is bytes else None
            if name is None:
                name = _name(raw_name)
            value = bytes(raw_value).decode("latin-1")
            found = values.get(name)
            if found is None:
                values[name] = [value]
            else:
                found.append(value)
        server = scope.get("server") or (None, None)
        client = scope.get("client") or (None, None)
        address, port = server[0], server[1] if len(server) > 1 else None
        host = values.get("host")
        if host:
            name, host_port = server_span.host_address(host[0])
            address = name or address
            if host_port is not None:
                port = host_port
        raw_path = scope.get("raw_path")
        path = scope.get("root_path", "") + scope.get("path", "/") if raw_path is None else _text(raw_path).partition("?")[0]
        default_scheme = "ws" if scope.get("type") == "websocket" else "http"
        agent = values.get("user-agent")
        return server_span.start(
            scope.get("method", "GET"),
            scope.get("scheme", default_scheme),
            path,
            _text(scope.get("query_string", b"")),
            server_span.DictLookup(values),
            address,
            port if isinstance(port, int) else None,
            client[0] if client else None,
            scope.get("http_version"),
            agent[0] if agent else None,
        )
    except Exception:  # noqa: BLE001 - never fail a request
        return None


# Header names as they come (bytes) -> as text, lower case: few distinct names. Bounded.
_names: dict[object, str] = {}


def _name(raw: object) -> str:
    name = bytes(raw).decode("latin-1").lower()
    if len(_names) < 256 and type(raw) is bytes:
        _names[raw] = name
    return name


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if type(value) is bytes and value.isascii():
        return value.decode("ascii")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(value).decode("latin-1")
