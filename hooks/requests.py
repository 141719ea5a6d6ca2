"""requests: each request it sends is one CLIENT span, and carries the trace context.

Waits for ``requests.sessions``. ``Session.send`` is patched, so every helper
(``requests.get`` ...) and every session is covered, whatever adapter it mounts; urllib3
and http.client under it start no span of their own. The adapter ``Session.send`` gets
from ``get_adapter`` is handed a copy of the ``PreparedRequest`` with the propagation
headers in it: the caller's object is never changed (it may be shared between
threads), and ``response.request`` is the object the adapter was given, as untraced.

Each request that is sent is a span of its own, the siblings under the caller's span
numbered by ``http.request.resend_count``:

- each hop of a redirect (requests sends it with ``Session.send`` from
  ``resolve_redirects``);
- each attempt an adapter's ``max_retries`` makes (urllib3 retries inside one
  ``urlopen``; its hook tells this one when an attempt is resent), each with its own
  ``traceparent``.

A hop's or attempt's span ends when the next one is sent, the last one's when the
outer ``send`` returns (after the body for a call that reads it, after the response
head with ``stream=True``) or raises: an exception (``TooManyRedirects``, a
``ConnectionError`` after the retries) is recorded on it.

Response hooks (``hooks={"response": ...}``) run with the span current but no call in
progress: a request they send (with any library, the second round of digest
authentication too) is a call of its own, a child of this span. So is a request a
mounted adapter sends with requests from its own ``send`` (a token fetched first): the
adapter runs with its hop's span current, and a ``Session.send`` then is a new call,
not a redirect hop of the one in flight.
"""

from __future__ import annotations

from operator import itemgetter

from autotrace import api, client_span
from autotrace.hooks import urllib3 as urllib3_hook
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "requests"


# requests' own adapter and header mapping (set by patch): a request sent through that
# adapter, with headers of that type, has its propagation headers added by the urllib3
# hook under it (see TracedAdapter.send).
_http_adapter: type | None = None
_header_mapping: type | None = None


def patch(module: ModuleType) -> None:
    global _http_adapter, _header_mapping
    _http_adapter = getattr(module, "HTTPAdapter", None)
    _header_mapping = getattr(module, "CaseInsensitiveDict", None)
    wrap_function(module.Session, "send", lambda original: _wrap_send(original, module.PreparedRequest))
    wrap_function(module.Session, "get_adapter", _wrap_get_adapter)
    wrap_function(module, "dispatch_hook", _wrap_dispatch_hook)


class Exchange:
    """What one outer ``send`` has sent: the span of the request in flight (or last answered)."""

    __slots__ = ("current", "sent", "recorded", "error", "in_adapter", "finished", "head_lines")

    def __init__(self, first: client_span.ClientSpan) -> None:
        self.current = first
        self.head_lines = False  # the urllib3 hook adds the propagation headers (see TracedAdapter.send)
        self.sent = False  # the current span's request went to an adapter
        self.recorded = False  # the current span has its response
        self.error: BaseException | None = None  # the current attempt's failure, seen by urllib3's hook
        self.in_adapter = False  # an adapter is sending a request of this exchange
        self.finished = False  # the outer send returned or raised

    def takes_hops(self) -> bool:
        """Whether a ``Session.send`` seeing this exchange in the context is one of its redirect hops.

        requests sends those from ``resolve_redirects``, after the adapter returned and
        before the outer ``send`` does. One sent from inside an adapter's ``send`` is a
        call of its own; one from a thread that outlived the call (its context carried)
        is not a hop of this exchange either, which is over.
        """
        return not self.in_adapter and not self.finished

    def resend(self, method: str, url: str) -> client_span.ClientSpan:
        """End the current span (a redirect followed, an attempt retried) and start its sibling."""
        previous = self.current
        if self.error is not None:
            previous.fail(self.error)
            self.error = None
        previous.end()
        first = previous if previous.previous is None else _first(previous)
        first.resends += 1
        call = client_span.start(LIBRARY, method, url, resend_count=first.resends, attach=False, sibling_of=previous)
        if call is not None:
            call.state = self  # the exchange, for the hooks under the adapter (urllib3's)
            self.current = call
            self.recorded = False
        return self.current

    def record(self, response) -> None:
        if not self.recorded:
            self.recorded = True
            _record_response(self.current, response)

    def finish(self, exc: BaseException | None = None) -> None:
        self.finished = True
        current = self.current
        if exc is not None:
            current.fail(exc)
        current.end()
        # The exchange is over: its spans forget it. Each referred to it (``state``) and it
        # to them (``current``, and through it each ``previous``): a cycle per call, freed
        # only by the garbage collector. A context carried past the call still finds the
        # call (ended: not a redirect hop), no longer its exchange.
        call = current
        while call is not None:
            call.state = None
            call = call.previous


def _first(call: client_span.ClientSpan) -> client_span.ClientSpan:
    while call.previous is not None:
        call = call.previous
    return call


def exchange() -> Exchange | None:
    """The exchange of the requests call in progress in this context (urllib3's hook asks)."""
    if not api.loaded:
        return None
    call = api.get_current().get(api.IN_CLIENT_CALL)  # client_span.current_call(), inline
    if call is not None and call.library == LIBRARY:
        state = call.state
        return state if isinstance(state, Exchange) else None
    return None


def _wrap_send(original, prepared_request: type):
    def send(self, request, **kwargs):
        if not isinstance(request, prepared_request):
            return original(self, request, **kwargs)  # requests itself says what is wrong
        outer = api.get_current().get(api.IN_CLIENT_CALL) if api.loaded else None  # exchange(), inline
        if outer is not None and outer.library == LIBRARY and type(outer.state) is Exchange and outer.state.takes_hops():
            return original(self, request, **kwargs)  # a redirect hop: its adapter starts its span
        call = client_span.start(LIBRARY, request.method, request.url)
        if call is None:
            return original(self, request, **kwargs)
        state = call.state = Exchange(call)
        try:
            response = original(self, request, **kwargs)
        except BaseException as exc:
            state.finish(exc)
            call.close()  # ended by finish: its context left
            raise
        state.finish()
        call.close()
        return response

    return send


def _wrap_get_adapter(original):
    def get_adapter(self, *args, **kwargs):
        adapter = original(self, *args, **kwargs)
        call = api.get_current().get(api.IN_CLIENT_CALL) if api.loaded else None  # exchange(), inline
        if call is None or call.library != LIBRARY:
            return adapter
        state = call.state
        return TracedAdapter(adapter, state) if isinstance(state, Exchange) else adapter

    return get_adapter


class TracedAdapter:
    """The adapter for one request of an exchange: it sends a copy with the propagation headers."""

    __slots__ = ("adapter", "state")

    def __init__(self, adapter, state: Exchange) -> None:
        self.adapter = adapter
        self.state = state

    def __getattr__(self, name: str):
        return getattr(self.adapter, name)

    def send(self, request, *args, **kwargs):
        state = self.state
        sent = request
        call = None
        try:
            call = state.resend(request.method, request.url) if state.sent else state.current
            state.sent = True
            if _leaves_headers_to_urllib3(self.adapter, request, call):
                # requests' own adapter over urllib3: the urllib3 hook has http.client write
                # them into the head (no copy of the request, no header through putheader).
                state.head_lines = True
            else:
                state.head_lines = False
                sent = _copy(request)
                call.inject(sent.headers)
        except Exception:  # noqa: BLE001 - an odd PreparedRequest: sent as it is
            sent = request
        # The adapter runs with this hop's span current (the app's code in a custom
        # adapter, a request it sends being a child of the hop, not a hop).
        token = None
        if call is not None and call.context is not None:
            try:
                token = api.set_current(call.context)
            except Exception:  # noqa: BLE001 - the adapter runs in the caller's context
                token = None
        state.in_adapter = True
        try:
            response = self.adapter.send(sent, *args, **kwargs)
        finally:
            state.in_adapter = False
            if token is not None:
                api.detach(token)
        try:
            if sent is not request and getattr(response, "request", None) is sent:
                response.request = request  # what the app sees, as untraced
            state.record(response)
        except Exception:  # noqa: BLE001 - a response object of a custom adapter
            pass
        return response


def _leaves_headers_to_urllib3(adapter, request, call: client_span.ClientSpan) -> bool:
    """Whether the request goes as it is, its propagation headers added under urllib3
    (``Exchange.head_lines``): requests' own adapter, urllib3's hook in place, none of the
    headers in the request already (in any case), no request header captured."""
    if type(adapter) is not _http_adapter or not urllib3_hook.wrapped() or client_span.capture_request_headers_wanted():
        return False
    headers = request.headers
    if type(headers) is not _header_mapping:
        return False
    return call.headers().keys().isdisjoint(map(_first_item, headers.lower_items()))


_first_item = itemgetter(0)


def _copy(request):
    """A shallow copy of a PreparedRequest with headers of its own (cheaper than ``copy()``)."""
    sent = object.__new__(type(request))
    sent.__dict__.update(request.__dict__)
    sent.headers = request.headers.copy()
    return sent


def _wrap_dispatch_hook(original):
    def dispatch_hook(key, hooks, hook_data, **kwargs):
        if not hooks or not hooks.get(key):  # requests dispatches every response: mostly to no hook
            return original(key, hooks, hook_data, **kwargs)
        call = client_span.current_call()
        if call is None or call.library != LIBRARY:
            return original(key, hooks, hook_data, **kwargs)
        try:  # the span current, no call in progress: the hooks' requests are calls of their own
            state = call.state
            span = state.current.span if isinstance(state, Exchange) else call.span
            token = api.attach(api.trace.set_span_in_context(span, call.parent))
        except Exception:  # noqa: BLE001
            token = None
        try:
            return original(key, hooks, hook_data, **kwargs)
        finally:
            if token is not None:
                api.detach(token)

    return dispatch_hook


def _record_response(call: client_span.ClientSpan, response) -> None:
    try:
        raw = getattr(response, "raw", None)
        version = getattr(raw, "version", None)
        call.set_response(response.status_code, version, response.headers.items)  # listed only if captured
    except Exception:  # noqa: BLE001 - a response object of a custom adapter
        pass
