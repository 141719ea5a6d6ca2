"""httpx: each request it sends (each hop) is one CLIENT span, and carries the trace context.

Waits for ``httpx._client``. ``Client._send_single_request`` and
``AsyncClient._send_single_request`` are patched: httpx sends every hop of a call
through them (the first request, each redirect, each round of an authentication flow),
whatever transport or mount it then picks, so custom transports get the headers too.
The propagation headers go into the ``Request`` for the time of the hop and are taken
out when it returns or raises: the caller's object is left as it was, and the next
hop, which httpx builds from it, does not carry the old ones. Usually (none of them in
the request already, in any case, and no request header captured) the ``Request`` is
given a copy of its ``Headers`` holding them for that time, its own object put back
after; else they are set in its own and the values they replaced put back.

``Client.send`` and ``AsyncClient.send`` are patched too, to end the spans where the
call returns to the app: a hop that succeeds stays open (its context left) until the
next hop starts, or, for the last one, until ``send`` returns: after the body for a call
that reads it, after the response head with ``stream=True`` (``client.stream(...)``).
An exception ``send`` raises after the last hop returned (the body's read timing out,
``TooManyRedirects``, a response event hook's) is recorded on that hop's span. A hop
sent without ``send`` (a subclass that bypasses it) ends when the hop returns.

Redirects and authentication rounds: the hops of one ``send`` are siblings under the
caller's span, each a span of its own with its own ``traceparent``, the second and
later numbered by ``http.request.resend_count`` (1, 2 ...).
"""

from __future__ import annotations

from contextvars import ContextVar
from operator import itemgetter

from autotrace import client_span
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


class _Send:
    """One ``send`` in progress: how many hops it sent, and the last one's open span."""

    __slots__ = ("hops", "pending")

    def __init__(self) -> None:
        self.hops = 0
        self.pending: client_span.ClientSpan | None = None

    def next_hop(self) -> int:
        """End the previous hop's span (httpx has read its body) and number the next."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.end()
        hops = self.hops
        self.hops = hops + 1
        return hops

    def finish(self, exc: BaseException | None = None) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            if exc is not None:
                pending.fail(exc)
            pending.end()


# The send in progress in this thread or task. A plain context variable rather than an
# OpenTelemetry context key: one set and reset per call, and nothing to import for it.
_current_send: ContextVar[_Send | None] = ContextVar("autotrace-httpx-send", default=None)


def patch(module: ModuleType) -> None:
    wrap_function(module.Client, "send", _wrap_send)
    wrap_function(module.Client, "_send_single_request", _wrap_send_single_request)
    wrap_function(module.AsyncClient, "send", _wrap_async_send)
    wrap_function(module.AsyncClient, "_send_single_request", _wrap_async_send_single_request)


def _wrap_send(original):
    def send(self, request, *args, **kwargs):
        state = _Send()
        token = _current_send.set(state)
        try:
            response = original(self, request, *args, **kwargs)
        except BaseException as exc:
            _leave(token)
            state.finish(exc)
            raise
        try:  # _leave, inline
            _current_send.reset(token)
        except (ValueError, RuntimeError):  # reset from another context: nothing to undo
            pass
        pending = state.pending  # state.finish(), inline
        if pending is not None:
            state.pending = None
            pending.end()
        return response

    return send


def _wrap_async_send(original):
    async def send(self, request, *args, **kwargs):
        state = _Send()
        token = _current_send.set(state)
        try:
            response = await original(self, request, *args, **kwargs)
        except BaseException as exc:
            _leave(token)
            state.finish(exc)
            raise
        _leave(token)
        state.finish()
        return response

    return send


def _wrap_send_single_request(original):
    def _send_single_request(self, request, *args, **kwargs):
        state = _current_send.get()
        call, previous = _start(state, request)
        if call is None:
            return original(self, request, *args, **kwargs)
        try:
            response = original(self, request, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            call.close()
            _restore(request, previous)
            raise
        _returned(state, call, request, previous, response)
        return response

    return _send_single_request


def _wrap_async_send_single_request(original):
    async def _send_single_request(self, request, *args, **kwargs):
        state = _current_send.get()
        call, previous = _start(state, request)
        if call is None:
            return await original(self, request, *args, **kwargs)
        try:
            response = await original(self, request, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            call.close()
            _restore(request, previous)
            raise
        _returned(state, call, request, previous, response)
        return response

    return _send_single_request


def _start(state: _Send | None, request) -> tuple[client_span.ClientSpan | None, dict | None]:
    """Start a hop's span (made current) and put its headers into the request."""
    call = None
    try:
        if state is not None:  # state.next_hop(), inline
            pending = state.pending
            if pending is not None:
                state.pending = None
                pending.end()  # the previous hop's (httpx has read its body)
            resend_count = state.hops
            state.hops = resend_count + 1
        else:
            resend_count = 0
        call = client_span.start("httpx", request.method, str(request.url), resend_count=resend_count)
        if call is None:
            return None, None
        headers = request.headers
        values = call.headers()
        if values and not client_span.capture_request_headers_wanted() and _absent(headers, values):
            # The usual case: the hop is sent with a copy of its headers holding them (the
            # Request's own put back after); httpx's Headers finds, sets and deletes a name
            # by a pass over every header, so no get or delete on the app's object.
            sent = headers.copy()
            for name, value in values.items():
                sent[name] = value
            request.headers = sent
            return call, headers
        return call, call.inject(headers)
    except Exception:  # noqa: BLE001 - not an httpx Request: httpx itself says so
        if call is not None:
            call.close()
        return None, None


def _returned(state: _Send | None, call: client_span.ClientSpan, request, previous, response) -> None:
    """The hop's response head arrived: record it; its span ends with the call (see above)."""
    try:
        version = response.http_version
        call.set_response(response.status_code, version, response.headers.multi_items)  # listed only if captured
    except Exception:  # noqa: BLE001 - a response object of a custom transport
        pass
    _restore(request, previous)
    if state is None:
        call.close()
    else:
        call.detach()
        if state.pending is not None:  # not expected: never leave a span open
            state.pending.end()
        state.pending = call


def _absent(headers, values: dict[str, str]) -> bool:
    """Whether none of the propagation headers ``values`` names is in ``headers`` (any case)."""
    try:
        names = _ENCODED.get(tuple(values))
        if names is None:
            names = frozenset(name.lower().encode("ascii") for name in values)
            if len(_ENCODED) < 16:
                _ENCODED[tuple(values)] = names
        return names.isdisjoint(map(bytes.lower, map(_first, headers.raw)))  # no Python call per header
    except Exception:  # noqa: BLE001 - headers of another kind: inject's way
        return False


_ENCODED: dict[tuple[str, ...], frozenset[bytes]] = {}  # the propagation headers' names, as bytes
_first = itemgetter(0)


def _restore(request, previous) -> None:
    """Put the request's headers back: its own object (a copy was sent), or what inject replaced."""
    if type(previous) is dict:
        client_span.restore(request.headers, previous)
    elif previous is not None:
        try:
            request.headers = previous
        except Exception:  # noqa: BLE001
            pass


def _leave(token) -> None:
    try:
        _current_send.reset(token)
    except (ValueError, RuntimeError):  # reset from another context: nothing to undo
        pass
