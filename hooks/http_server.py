"""http.server: one SERVER span per request a ``BaseHTTPRequestHandler`` handles.

Waits for ``http.server``. Three methods of ``BaseHTTPRequestHandler`` are wrapped, so
every subclass (``SimpleHTTPRequestHandler``, an app's own handler with any ``do_*``
method, under ``HTTPServer`` or ``ThreadingHTTPServer``) is traced:

- ``handle_one_request``: one request (``handle()`` calls it once per request of a
  keep-alive connection). It marks the handler as "in a request"; afterwards it ends
  the span and makes the caller's context current again. An exception from the
  handler is recorded on the span and re-raised untouched.
- ``parse_request``: once the request line and headers are parsed (and only inside the
  wrapped ``handle_one_request``) the span starts, its context current while ``do_*``
  runs. A request the server rejects while parsing (400, 414, 431) gets no span.
- ``send_response_only`` (``send_response`` and ``send_error`` call it): the status
  code passed; ``send_header``: response headers, only when some are to be captured.

``HTTPServer.server_bind`` (``TCPServer.__init__`` calls it, before the port accepts)
sets the SDK up first, if it is not yet (:func:`autotrace.provider.set_up_now`): a request
may come the instant the port accepts, and it should not wait for the set-up. Servers
built on ``HTTPServer`` (wsgiref's, werkzeug's) do the same.

A handler that overrides ``handle()`` or ``handle_one_request`` without calling the
base class's (wsgiref's ``WSGIRequestHandler``, Django's runserver) calls
``parse_request`` outside the wrapped ``handle_one_request``: no span here; the
wsgiref hook traces their app. A handler class with :data:`SKIP` set (the werkzeug
hook sets it on werkzeug's ``WSGIRequestHandler``, whose app it traces) is left alone.
"""

from __future__ import annotations

from autotrace import provider
from autotrace.config import http_settings
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

# A handler class with this attribute true is traced by another hook.
SKIP = "_autotrace_skip_http_server"

# Per-handler state, in the handler instance's __dict__ (one request at a time per handler).
_IN_REQUEST = "_autotrace_in_request"
_SPAN = "_autotrace_span"
_HEADERS = "_autotrace_response_headers"

_server_span = None  # autotrace.server_span, imported at the first request


def patch(module: ModuleType) -> None:
    wrap_function(module.HTTPServer, "server_bind", _wrap_server_bind)
    handler = module.BaseHTTPRequestHandler
    wrap_function(handler, "handle_one_request", _wrap_handle_one_request)
    wrap_function(handler, "parse_request", _wrap_parse_request)
    wrap_function(handler, "send_response_only", _wrap_send_response_only)
    wrap_function(handler, "send_header", _wrap_send_header)


def _wrap_server_bind(original):
    def server_bind(self):
        provider.set_up_now()  # never raises
        return original(self)

    return server_bind


def _wrap_handle_one_request(original):
    def handle_one_request(self):
        if getattr(type(self), SKIP, False):
            return original(self)
        state = self.__dict__
        state[_IN_REQUEST] = True
        try:
            return original(self)
        except BaseException as exc:
            span = state.get(_SPAN)
            if span is not None:
                span.record_exception(exc)
            raise
        finally:
            _finish(state)

    return handle_one_request


def _wrap_parse_request(original):
    def parse_request(self):
        parsed = original(self)
        if parsed:
            state = self.__dict__
            if state.get(_IN_REQUEST) and state.get(_SPAN) is None:
                state[_SPAN] = _start(self)
        return parsed

    return parse_request


def _wrap_send_response_only(original):
    def send_response_only(self, code, message=None):
        span = self.__dict__.get(_SPAN)
        if span is not None:
            try:
                status = int(code)
                if not 100 <= status < 200 or status == 101:  # interim responses are not the status
                    span.set_status_code(status)
            except Exception:  # noqa: BLE001 - an odd code is the handler's business
                pass
        return original(self, code, message)

    return send_response_only


def _wrap_send_header(original):
    def send_header(self, keyword, value):
        state = self.__dict__
        if state.get(_SPAN) is not None:
            try:
                if http_settings().response_headers:
                    state.setdefault(_HEADERS, []).append((str(keyword), str(value)))
            except Exception:  # noqa: BLE001
                pass
        return original(self, keyword, value)

    return send_header


def _finish(state: dict) -> None:
    """End the request's span (if any) and clear the handler's state; never raises."""
    state.pop(_IN_REQUEST, None)
    span = state.pop(_SPAN, None)
    headers = state.pop(_HEADERS, None)
    if span is None:
        return
    try:
        if headers:
            span.capture_response_headers(headers)
    finally:
        span.detach()
        span.end()


def _start(handler):
    """The request's ServerSpan from what ``parse_request`` parsed, or None; never raises."""
    global _server_span
    try:
        server_span = _server_span
        if server_span is None:
            from autotrace import server_span

            _server_span = server_span
        headers = handler.headers
        target = handler.path
        if target.startswith("/"):
            path, _, query = target.partition("?")
        elif "://" in target:  # absolute form (a request to a proxy)
            from urllib.parse import urlsplit

            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:  # "*" (OPTIONS *) or an authority (CONNECT)
            path, query = target, ""
        path = path.partition("#")[0]

        bound = getattr(getattr(handler, "server", None), "server_address", None)
        address = port = None
        if isinstance(bound, tuple) and len(bound) >= 2:
            address, port = bound[0] or None, bound[1]
        host = headers.get("Host")
        if host:
            name, _, host_port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
            address = name or address
            if host_port.isdigit():
                port = int(host_port)
        client = handler.client_address
        client_address = client[0] if isinstance(client, tuple) and client else None
        version = handler.request_version or ""

        return server_span.start(
            method=handler.command,
            scheme="https" if hasattr(handler.connection, "getpeercert") else "http",
            path=_text(path),
            query=_text(query),
            headers=server_span.HeaderLookup(lambda name: headers.get_all(name) or (), headers.keys),
            server_address=address,
            server_port=port if isinstance(port, int) else None,
            client_address=client_address if isinstance(client_address, str) and client_address else None,
            protocol_version=version[5:] if version.upper().startswith("HTTP/") else None,
        )
    except Exception:  # noqa: BLE001 - never fail a request
        return None


def _text(value: str) -> str:
    """http.server decodes the request line as latin-1; give back UTF-8 text where it is UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value
