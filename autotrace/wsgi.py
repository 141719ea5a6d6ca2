"""A WSGI app wrapped with its SERVER span; server hooks wrap whatever app they are given.

The span ends when the response is complete: when the response iterable is exhausted
or closed (a streaming response is measured whole), not when the app returns. A list
or tuple response is complete already and is returned as it is, so servers still see
its length (wsgiref sets Content-Length from it). The app's exceptions are recorded
and re-raised untouched; its return value is never replaced by anything that behaves
differently.
"""

from __future__ import annotations

from . import server_span

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable

_MARK = "__autotrace_wsgi__"


def wrap(app: Callable) -> Callable:
    """The app, traced (idempotent: a wrapped app is returned as it is)."""
    if app is None or getattr(app, _MARK, False):
        return app
    return TracedWSGIApp(app)


class TracedWSGIApp:
    __autotrace_wsgi__ = True

    def __init__(self, app: Callable) -> None:
        self.__wrapped__ = app

    def __getattr__(self, name: str):
        # Servers and tools may look at the app's own attributes.
        if name == "__wrapped__":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __call__(self, environ: dict, start_response: Callable):
        app = self.__wrapped__
        span = _start(environ)
        if span is None:
            return app(environ, start_response)

        def traced_start_response(status, headers, exc_info=None):
            try:
                span.set_status_code(int(str(status)[:3]))
                span.capture_response_headers(headers)
            except Exception:  # noqa: BLE001 - a malformed status is the server's business
                pass
            return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

        try:
            result = app(environ, traced_start_response)
        except BaseException as exc:
            span.record_exception(exc)
            span.detach()
            span.end()
            raise
        span.detach()
        if isinstance(result, (list, tuple)):
            span.end()
            return result
        return _ClosingIterable(result, span)


class _ClosingIterable:
    """Iterates the app's response in the request's context; ends the span at the end."""

    def __init__(self, result: Iterable, span: server_span.ServerSpan) -> None:
        self._result = result
        self._iterator = None
        self._span = span

    def __iter__(self):
        return self

    def __next__(self):
        token = server_span.attach(self._span)
        try:
            if self._iterator is None:
                self._iterator = iter(self._result)
            return next(self._iterator)
        except StopIteration:
            self._span.end()
            raise
        except BaseException as exc:
            self._span.record_exception(exc)
            self._span.end()
            raise
        finally:
            server_span.detach(token)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                token = server_span.attach(self._span)
                try:
                    close()
                finally:
                    server_span.detach(token)
        finally:
            self._span.end()

    def __getattr__(self, name: str):
        return getattr(self._result, name)


def _start(environ: dict) -> server_span.ServerSpan | None:
    try:
        query = environ.get("QUERY_STRING", "")
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "") or "/"
        port = environ.get("SERVER_PORT")
        host = environ.get("HTTP_HOST")
        address = None
        if host:
            address, _, host_port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
            if host_port.isdigit():
                port = host_port
        return server_span.start(
            method=environ.get("REQUEST_METHOD", "GET"),
            scheme=environ.get("wsgi.url_scheme", "http"),
            path=_latin1_to_text(path),
            query=_latin1_to_text(query),
            headers=lambda name: _environ_values(environ, name),
            server_address=address or environ.get("SERVER_NAME"),
            server_port=int(port) if port and str(port).isdigit() else None,
            client_address=environ.get("REMOTE_ADDR"),
            protocol_version=_protocol_version(environ.get("SERVER_PROTOCOL")),
        )
    except Exception:  # noqa: BLE001 - never fail a request
        return None


def _environ_values(environ: dict, name: str) -> list[str]:
    if name == "content-type":
        value = environ.get("CONTENT_TYPE")
    elif name == "content-length":
        value = environ.get("CONTENT_LENGTH")
    else:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
    return [value] if value else []


def _latin1_to_text(value: str) -> str:
    """WSGI strings carry the raw bytes as latin-1; give back the UTF-8 text where it is UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _protocol_version(protocol: str | None) -> str | None:
    if protocol and protocol.upper().startswith("HTTP/"):
        return protocol[5:]
    return None
