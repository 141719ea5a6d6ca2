"""The CLIENT span of an outgoing HTTP request, shared by every client hook.

A client hook calls :func:`start` with the request's method and URL; it gets a
:class:`ClientSpan`, or None when it must not trace:

- instrumentation is suppressed (the agent's own exporter runs that way);
- the call in progress in this context is one the hook's library is a lower layer of
  (:data:`LOWER_LAYERS`: urllib3 and http.client under requests, http.client under
  urllib3 and urllib.request, aiohttp under an httpx transport), so the call has its
  span already. A call of any other library inside one (httpx from a requests
  response hook) is a call of its own: a child of the one in progress.

The hook injects the propagation headers with :meth:`ClientSpan.inject` (the span's own
id as the parent id), reports the response with :meth:`ClientSpan.set_response` or the
failure with :meth:`ClientSpan.fail`, then calls :meth:`ClientSpan.end` (or ``close``,
which also leaves the span's context). Nothing here raises into the app. The span's life
(attach, end, error marking) is :class:`autotrace.spans.SpanHandle`'s; headers are
captured as :func:`autotrace.config.http_settings` says.

Span content follows the stable HTTP semantic conventions: name ``"{METHOD}"``, kind
CLIENT, ``url.full`` without user information and with secret query values (and
``key=value`` pairs of the fragment) redacted.
"""

from __future__ import annotations

import sys

from . import _log, api, spans
from .config import http_settings
from .redact import redact_query
from .server_span import KNOWN_METHODS
from .spans import SpanHandle, capture_headers, error_type, mark_error, set_known

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable, MutableMapping

    from opentelemetry import context, trace

TRACER = "autotrace.http.client"

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# The libraries each client library sends its requests through: under a call of the key,
# a hook of one of these is a lower layer of that call and starts no span.
LOWER_LAYERS: dict[str, frozenset[str]] = {
    "requests": frozenset(("urllib3", "http.client")),
    "urllib3": frozenset(("http.client",)),
    "urllib": frozenset(("http.client",)),
    "httpx": frozenset(("aiohttp",)),  # an httpx transport over an aiohttp session (httpx-aiohttp)
}
_NO_LAYERS: frozenset[str] = frozenset()


def is_lower_layer(library: str, outer: ClientSpan | None) -> bool:
    """Whether ``library`` sends the request of ``outer``, the call in progress (so starts no span)."""
    return outer is not None and library in outer.lower


def enclosing(library: str) -> ClientSpan | None:
    """The call in progress in this context if ``library`` is a lower layer of it, else None.

    The check a hook makes first, on every request: a look-up in the current context,
    nothing read, parsed or started (:func:`start` would return None for it).
    """
    if not api.loaded:
        return None
    outer = api.get_current().get(api.IN_CLIENT_CALL)
    return outer if outer is not None and library in outer.lower else None


class ClientSpan(SpanHandle):
    """One outgoing request's CLIENT span; its methods never raise."""

    __slots__ = ("library", "lower", "parent", "previous", "resends", "injected", "state")
    WHAT = "a client span"

    def __init__(self, span: trace.Span, library: str, parent: context.Context, previous: ClientSpan | None = None) -> None:
        # SpanHandle's state, set here (a call less); the context is set by start(): the
        # span current, marked as this call.
        self.span = span
        self.context = parent
        self._token = None
        self._ended = False
        self.library = library
        self.lower = LOWER_LAYERS.get(library, _NO_LAYERS)  # the libraries that send this call's request
        self.parent = parent  # the caller's context: where a redirect's next hop starts
        self.previous = previous  # the ended hop this one follows (a redirect), if any
        self.resends = 0  # hops sent after this one from its context (redirects)
        self.injected: dict[str, str] = {}  # the propagation headers sent with the request
        self.state: object = None  # the hook's own bookkeeping of the call, if it needs any

    # Once the span has ended and its context is no longer current, the call drops it: the
    # context holds the call (api.IN_CLIENT_CALL), and without that cycle the call and its
    # span are freed at once, not by the garbage collector's passes.

    def end(self) -> None:
        if not self._ended:  # SpanHandle.end, inline
            self._ended = True
            try:
                self.span.end()
            except Exception as exc:  # noqa: BLE001
                self.report(exc)
        if self._token is None:  # not attached (or left already)
            self.context = None

    def detach(self) -> None:
        token, self._token = self._token, None  # SpanHandle.detach, inline
        if token is not None:
            api.detach(token)
        if self._ended:
            self.context = None

    def close(self) -> None:
        """End the span and leave its context (``end`` then ``detach``, in one call)."""
        SpanHandle.close(self)
        self.context = None

    # -- the request ------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """The propagation headers for this span (``traceparent``, ``tracestate``, ``baggage`` ...)."""
        injected = self.injected
        if not injected and self.context is not None:  # None: ended, nothing to send
            try:
                # The agent's formats (the default W3C ones) write the span's own context
                # straight into the dict; any other propagator through the API's inject.
                writer = getattr(api.propagate.get_global_textmap(), "dict_writer", None)
                if writer is not None:
                    span = self.span
                    # An SDK span's get_span_context() returns its _context: read it (two calls less).
                    direct = _CONTEXT_SLOT.get(type(span))
                    if direct is None:
                        direct = _context_slot(type(span))
                    writer(span._context if direct else span.get_span_context(), self.context, injected)  # noqa: SLF001
                else:
                    api.propagate.inject(injected, context=self.context)
            except Exception as exc:  # noqa: BLE001 - a broken propagator: send the request as it is
                self.report(exc)
        return injected

    def inject(self, headers: MutableMapping[str, str]) -> dict[str, str | None]:
        """Set the propagation headers on a mapping the hook may change.

        Returns what the mapping held before under those names (None: absent), for
        :func:`restore`. A value the caller set by hand is replaced, with a debug line;
        one this library's enclosing call sent (a redirect's copy of the request) is
        replaced silently.
        """
        previous: dict[str, str | None] = {}
        try:
            exact = type(headers) is dict  # a plain dict is case-sensitive; the rest are not
            for name, value in self.headers().items():
                if not exact:
                    key, existing = name, headers.get(name)
                elif name in headers or not headers:  # _find's usual answers, without the call
                    key, existing = name, headers.get(name)
                else:
                    key, existing = _find(headers, name)
                previous[key] = existing
                if existing is not None and existing != value:
                    self._replacing(name, existing)
                if exact and key != name:
                    del headers[key]
                    previous[name] = None
                headers[name] = value
            if http_settings().client_request_headers:
                capture_request_headers(self, headers.items())
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
        return previous

    def new_headers(self) -> dict[str, str]:
        """A new dict of the propagation headers alone: :meth:`inject` into an empty dict, in one step."""
        headers = dict(self.headers())
        try:
            if http_settings().client_request_headers:
                capture_request_headers(self, headers.items())
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
        return headers

    def _replacing(self, name: str, existing: str) -> None:
        previous = self.previous
        if previous is not None and previous.injected.get(name) == existing:
            return  # sent with the hop this one follows: a redirect copies the request
        if _log.debug_enabled():
            _log.logger.debug("%s: the %s header set by the application is replaced by the CLIENT span's", self.library, name)

    # -- the response -----------------------------------------------------------------

    def set_response(
        self,
        status_code: int,
        protocol_version: object = None,
        headers: Iterable[tuple[str, str]] | Callable[[], Iterable[tuple[str, str]]] | None = None,
    ) -> None:
        """Record the response head: 4xx and 5xx make the span an error.

        ``protocol_version``: ``network.protocol.version`` ("1.1"), or the version as the
        library reports it (11, "HTTP/1.1": see :func:`protocol_version`).
        ``headers``: the response's (name, value) pairs, or a function returning them
        (called only when some are captured).
        """
        try:
            span = self.span
            try:
                found = _RESPONSES.get((status_code, protocol_version))  # the usual ones: one look-up
            except TypeError:  # a version that is not hashable
                found = None
            if found is None:
                found = _response_attributes(status_code, protocol_version)
            # One call: the SDK takes its lock once (set_known, inline).
            known = getattr(span, "set_known", None)
            if known is not None:
                known(found)
            else:
                span.set_attributes(found)
            if status_code >= 400:
                mark_error(span, str(status_code))
            wanted = http_settings().client_response_headers
            if wanted and headers is not None:
                capture_headers(span, "http.response.header.", wanted, headers() if callable(headers) else headers)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)

    def fail(self, exc: BaseException) -> None:  # type: ignore[override]
        """Record an exception that ended the call (the hook re-raises it untouched)."""
        super().fail(exc, error_type(exc))


def start(
    library: str,
    method: str,
    url: str,
    protocol_version: str | None = None,
    resend_count: int = 0,
    attach: bool = True,
    sibling_of: ClientSpan | None = None,
) -> ClientSpan | None:
    """Start the CLIENT span of a request, or return None (see the module's docstring).

    ``library`` names the hook's library (``"requests"``, ``"urllib3"`` ...). With
    ``attach`` the span is made current at once; a hook whose request spans several
    calls (http.client) passes False. With ``sibling_of`` (a hop or attempt the hook
    ended) the span is a sibling of that one, under its parent. Never raises.
    """
    try:
        if not api.loaded:
            api.load()
        parent = api.get_current()
        if parent.get(api.SUPPRESS_INSTRUMENTATION) or parent.get(api.SUPPRESS_HTTP_INSTRUMENTATION):  # api.http_suppressed, inline
            return None
        outer = parent.get(api.IN_CLIENT_CALL)
        previous = sibling_of
        if previous is not None:
            parent = previous.parent
        elif outer is not None:
            if library in outer.lower:
                return None  # a lower layer of a call that has its span
            if outer._ended and outer.library == library:  # the next hop of a redirect: a sibling of the first
                previous, parent = outer, outer.parent
                outer.resends += 1
                resend_count = outer.resends
        key = (method, url, protocol_version, resend_count)
        found = _ATTRIBUTES.get(key)
        if found is None:
            found = _attributes(method, url, protocol_version, resend_count)
            if len(_ATTRIBUTES) >= _ATTRIBUTES_SIZE:
                _ATTRIBUTES.clear()  # bounded: start again rather than keep old entries in order
            _ATTRIBUTES[key] = found
        name, attributes = found
        span = spans.new_span(TRACER, name, api.SpanKind.CLIENT, parent, attributes)
        # ClientSpan.__init__, inline (a call less).
        call = _new(ClientSpan)
        call.span = span
        call._token = None
        call._ended = False
        call.library = library
        call.lower = LOWER_LAYERS.get(library, _NO_LAYERS)
        call.parent = parent
        call.previous = previous
        call.resends = 0
        call.injected = {}
        call.state = None
        # One context: the span current, the call marked as in progress (built in C once
        # autotrace._speedups is loaded).
        call.context = api.with_span(span, parent, api.IN_CLIENT_CALL, call)
        if attach:
            try:
                call._token = api.set_current(call.context)  # SpanHandle.attach, inline
            except Exception as exc:  # noqa: BLE001
                call.report(exc)
        return call
    except Exception as exc:  # noqa: BLE001 - never fail a request
        _report(exc)
        return None


_new = object.__new__

# Whether a span class's get_span_context() returns its _context (the SDK's Span's method),
# by class: ClientSpan.headers then reads the slot. Bounded (a few span classes).
_CONTEXT_SLOT: dict[type, bool] = {}


def _context_slot(kind: type) -> bool:
    """Whether ``kind`` (a span's class) returns its ``_context`` from get_span_context()."""
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    reference = getattr(getattr(sdk, "Span", None), "get_span_context", None)
    found = reference is not None and getattr(kind, "get_span_context", None) is reference
    if len(_CONTEXT_SLOT) < 16:
        _CONTEXT_SLOT[kind] = found
    return found


# (span name, attributes) by (method, url, protocol version, resend count): an app calls the
# same few URLs again and again. The attributes dict is shared, never changed: a span keeps
# a copy of it (the light span, the SDK's own).
_ATTRIBUTES: dict[tuple, tuple[str, dict[str, object]]] = {}
_ATTRIBUTES_SIZE = 256


def _attributes(method: str, url: str, protocol_version: str | None, resend_count: int) -> tuple[str, dict[str, object]]:
    """The span name and attributes of a request (see :func:`start`)."""
    upper = method.upper()
    known = upper if upper in KNOWN_METHODS else None
    found: dict[str, object] = {"http.request.method": known or "_OTHER"}
    if method != found["http.request.method"]:
        found["http.request.method_original"] = method
    full, address, port = url_attributes(url)
    found["url.full"] = full
    if address:
        found["server.address"] = address
    if port is not None:
        found["server.port"] = port
    if protocol_version:
        found["network.protocol.version"] = protocol_version
    if resend_count:
        found["http.request.resend_count"] = resend_count
    return known or "HTTP", found


def capture_request_headers_wanted() -> bool:
    """Whether request headers are captured (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST)."""
    return bool(http_settings().client_request_headers)


def capture_request_headers(call: ClientSpan, headers: Iterable[tuple[str, str]]) -> None:
    """Record the request headers named by OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST."""
    wanted = http_settings().client_request_headers
    if wanted:
        capture_headers(call.span, "http.request.header.", wanted, headers)


def restore(headers: MutableMapping[str, str], previous: dict[str, str | None]) -> None:
    """Put back what :meth:`ClientSpan.inject` replaced (the caller's object is left as it was)."""
    try:
        for name, value in previous.items():
            if value is None:
                try:
                    del headers[name]  # not pop(): a look-up less in a mapping of Python code (httpx's)
                except KeyError:
                    pass
            else:
                headers[name] = value
    except Exception as exc:  # noqa: BLE001
        _report(exc)


def current_call() -> ClientSpan | None:
    """The call in progress in this context, if a client hook started one."""
    if not api.loaded:
        return None
    return api.get_current().get(api.IN_CLIENT_CALL)


def _find(headers: dict, name: str) -> tuple[str, str | None]:
    """The key under which a plain dict holds a header (any case), and its value."""
    if name in headers:
        return name, headers[name]
    for key in headers:
        if isinstance(key, str) and key.lower() == name:
            return key, headers[key]
    return name, None


# url_attributes of recent URLs: an app calls the same few URLs again and again.
_URL_CACHE: dict[object, tuple[str, str | None, int | None]] = {}
_URL_CACHE_SIZE = 256


def url_attributes(url: str) -> tuple[str, str | None, int | None]:
    """``url.full`` (no user information, secret query and fragment values redacted), the server's address and port."""
    found = _URL_CACHE.get(url)
    if found is None:
        found = _url_attributes(url)
        if len(_URL_CACHE) >= _URL_CACHE_SIZE:
            _URL_CACHE.clear()  # bounded: start again rather than keep old entries in order
        _URL_CACHE[url] = found
    return found


def _url_attributes(url: str) -> tuple[str, str | None, int | None]:
    from urllib.parse import urlsplit

    if isinstance(url, bytes):
        url = url.decode("utf-8", "replace")
    parts = urlsplit(str(url))
    netloc = parts.netloc
    full = url
    if "@" in netloc:
        netloc = netloc.rpartition("@")[2]
        full = parts._replace(netloc=netloc).geturl()
    if parts.query or parts.fragment:
        # The fragment too: it is never sent, but url.full keeps it, and an OAuth
        # implicit-flow URL carries its token there (#access_token=...).
        query, fragment = redact_query(parts.query), redact_query(parts.fragment)
        if query != parts.query or fragment != parts.fragment:
            full = parts._replace(netloc=netloc, query=query, fragment=fragment).geturl()
    try:
        port = parts.port
        if port is None:
            port = DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number: the URL is recorded as it is
        port = None
    return full, parts.hostname, port


# The response attributes by (status code, version as the library reports it): a client
# gets the same few answers. Each dict is shared and never changed (set_known and the
# SDK's set_attributes copy its values); bounded, cleared when full.
_RESPONSES: dict[tuple[object, object], dict[str, object]] = {}
_RESPONSES_SIZE = 64


def _response_attributes(status_code: int, reported: object) -> dict[str, object]:
    """``http.response.status_code`` and ``network.protocol.version`` of a response (see ``set_response``)."""
    version = protocol_version(reported) if reported is not None else None
    found: dict[str, object] = {"http.response.status_code": status_code}
    if version:
        found["network.protocol.version"] = version
    if type(status_code) is int:  # a key of another type (bool, a library's int subclass) is not kept
        try:
            if len(_RESPONSES) >= _RESPONSES_SIZE:
                _RESPONSES.clear()  # bounded: start again rather than keep old entries in order
            _RESPONSES[(status_code, reported)] = found
        except TypeError:  # a version that is not hashable
            pass
    return found


# network.protocol.version of the versions libraries report: http.client and urllib3 as
# numbers, httpx as text (the rest through protocol_version()).
PROTOCOL_VERSIONS: dict[object, str] = {9: "0.9", 10: "1.0", 11: "1.1", 20: "2", 30: "3"}
PROTOCOL_VERSIONS.update({"HTTP/1.0": "1.0", "HTTP/1.1": "1.1", "HTTP/2": "2", "HTTP/3": "3"})
PROTOCOL_VERSIONS.update({version: version for version in ("0.9", "1.0", "1.1", "2", "3")})  # given as recorded


def protocol_version(version: object) -> str | None:
    """``network.protocol.version`` from what a library reports (11, 20, "HTTP/1.1", "HTTP/2")."""
    try:
        return PROTOCOL_VERSIONS[version]  # the usual ones: one look-up
    except (KeyError, TypeError):
        pass
    return _protocol_version(version)


def _protocol_version(version: object) -> str | None:
    if isinstance(version, int):
        return None
    if isinstance(version, str) and version:
        return version.rpartition("/")[2] or None
    return None


def _report(exc: BaseException) -> None:
    spans.report(exc, ClientSpan.WHAT, "the request", "client-span")
