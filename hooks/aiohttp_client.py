"""aiohttp client: each request a ``ClientSession`` sends (each hop) is one CLIENT span, and carries the trace context.

Waits for ``aiohttp.client`` (which imports ``aiohttp.connector`` and
``aiohttp.client_reqrep`` first). A request of a session goes through
``ClientSession._request`` (every helper: ``get``, ``request``, ``aiohttp.request``,
``ws_connect``), which sends one hop per attempt: the first request, each redirect it
follows, a retry on a dropped keep-alive connection, each round of a client middleware
(digest authentication). Per hop, aiohttp calls, in this task:

- ``BaseConnector.connect(request)``: the hop's span starts here, so a refused
  connection, a DNS or TLS failure is recorded on it (a proxy's ``CONNECT``, sent
  from inside it, is part of the hop: no span, no headers);
- ``ClientRequest.send``: the propagation headers go into the request's own headers
  (aiohttp builds them per hop from the session's and the call's, so neither the
  caller's mapping nor the session's defaults are changed); a connector that does not
  go through ``BaseConnector.connect`` gets the span started here;
- ``ClientResponse.start``: the response head, recorded on the hop's span.

``ClientSession._request`` is patched to hold the hops of one call: a hop's span ends
when the next hop starts, or, for the last one, when ``_request`` returns the response
to the app (at the response head: the body is the app's to read) or raises. The
hops are siblings under the caller's span, the second and later numbered by
``http.request.resend_count``. An exception that ends the call is recorded on its last
hop as the app gets it (aiohttp turns some into its own, a timeout into
``ServerTimeoutError``); one a hop met and aiohttp got past (a retry) is recorded on
that hop. ``ws_connect`` is one span: its handshake, answered 101; ``_ws_connect`` is
patched too, so that the span ends once aiohttp has checked the answer, and a refused
handshake (``WSServerHandshakeError``) is recorded on it.

Spans are never made current: aiohttp does its work in the caller's task, and the span's
context only goes into the headers. A request sent outside ``ClientSession._request``
(a ``ClientRequest`` used by hand) is not traced.
"""

from __future__ import annotations

from contextvars import ContextVar

from autotrace import client_span
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "aiohttp"


class _Call:
    """One ``ClientSession._request`` in progress: its hops, the last one's open span."""

    __slots__ = ("hops", "pending", "request", "error", "responded", "connecting", "websocket")

    def __init__(self) -> None:
        self.hops = 0
        self.pending: client_span.ClientSpan | None = None  # the last hop's span, open
        self.request: object = None  # the ClientRequest that hop sends
        self.error: BaseException | None = None  # what the hop met, if it failed
        self.responded = False  # its response head is recorded
        self.connecting = False  # in BaseConnector.connect (a proxy's CONNECT is sent there)
        self.websocket = False  # made by ws_connect, whose handshake request is still to come

    def next_hop(self, request) -> client_span.ClientSpan | None:
        """End the previous hop's span and start this one's (not made current)."""
        previous = self._end_pending()
        hops, self.hops = self.hops, self.hops + 1
        self.request, self.error, self.responded = request, None, False
        try:
            url = str(request.url)
            method = request.method
        except Exception:  # noqa: BLE001 - not aiohttp's ClientRequest: aiohttp says so itself
            return None
        self.pending = client_span.start(LIBRARY, method, url, resend_count=hops, attach=False, sibling_of=previous)
        return self.pending

    def hop_failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def finish(self, exc: BaseException | None = None) -> None:
        if exc is not None:
            self.error = exc  # as the app gets it
        self._end_pending()

    def _end_pending(self) -> client_span.ClientSpan | None:
        pending, self.pending = self.pending, None
        if pending is not None:
            if self.error is not None:
                pending.fail(self.error)
            pending.end()
        self.request, self.error = None, None
        return pending


# The call in progress in this task. A plain context variable: set and reset per call.
_current_call: ContextVar[_Call | None] = ContextVar("autotrace-aiohttp-call", default=None)


def patch(module: ModuleType) -> None:
    import importlib

    wrap_function(module.ClientSession, "_request", _wrap_request)
    wrap_function(module.ClientSession, "_ws_connect", _wrap_ws_connect)
    # Both imported by aiohttp.client itself: complete by now.
    connector = importlib.import_module("aiohttp.connector")
    reqrep = importlib.import_module("aiohttp.client_reqrep")
    wrap_function(connector.BaseConnector, "connect", _wrap_connect)
    wrap_function(reqrep.ClientRequest, "send", _wrap_send)
    wrap_function(reqrep.ClientResponse, "start", _wrap_start)


def _wrap_request(original):
    return _in_call(original, websocket=False)


def _in_call(original, websocket: bool):
    """``original`` (a coroutine function) run as one call of the app's: its hops' spans
    end when it returns or raises. ``websocket``: ws_connect, whose handshake goes through
    ``_request`` (that inner call is the same call, not one of its own)."""

    async def call_wrapper(self, *args, **kwargs):
        if not websocket:
            outer = _current_call.get()
            if outer is not None and outer.websocket:  # ws_connect's handshake: its call holds the hops
                outer.websocket = False
                return await original(self, *args, **kwargs)
        call = _Call()
        call.websocket = websocket
        token = _current_call.set(call)
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            _leave(token)
            call.finish(exc)
            raise
        _leave(token)
        call.finish()
        return result

    return call_wrapper


def _wrap_ws_connect(original):
    """The handshake's hops end when ws_connect returns: after it has checked the answer
    (a refused handshake, ``WSServerHandshakeError``, is recorded on the last hop)."""
    return _in_call(original, websocket=True)


def _wrap_connect(original):
    async def connect(self, req, *args, **kwargs):
        call = _current_call.get()
        if call is None:
            return await original(self, req, *args, **kwargs)
        call.next_hop(req)
        call.connecting = True
        try:
            return await original(self, req, *args, **kwargs)
        except BaseException as exc:
            call.hop_failed(exc)
            raise
        finally:
            call.connecting = False

    return connect


def _wrap_send(original):
    async def send(self, *args, **kwargs):
        call = _current_call.get()
        if call is None or call.connecting:  # not a session's request, or a proxy's CONNECT
            return await original(self, *args, **kwargs)
        hop = call.pending if call.request is self else call.next_hop(self)
        if hop is not None:
            hop.inject(self.headers)
        try:
            return await original(self, *args, **kwargs)
        except BaseException as exc:
            call.hop_failed(exc)
            raise

    return send


def _wrap_start(original):
    async def start(self, *args, **kwargs):
        call = _current_call.get()
        hop = call.pending if call is not None and not call.responded and not call.connecting else None
        if hop is None:
            return await original(self, *args, **kwargs)
        try:
            result = await original(self, *args, **kwargs)
        except BaseException as exc:
            call.hop_failed(exc)
            raise
        call.responded = True
        try:
            version = self.version
            hop.set_response(
                int(self.status),
                f"{version.major}.{version.minor}" if version is not None else None,
                self.headers.items(),
            )
        except Exception:  # noqa: BLE001 - a response class of the app's: nothing to record
            pass
        return result

    return start


def _leave(token) -> None:
    try:
        _current_call.reset(token)
    except (ValueError, RuntimeError):  # reset from another context: nothing to undo
        pass
