"""The SERVER span of an incoming HTTP request, shared by every server and framework hook.

A server hook (http.server, a WSGI or ASGI server) calls :func:`start` with what it
knows of the request; it gets a :class:`ServerSpan` whose context is current while the
app handles the request, or None when it must not trace (instrumentation suppressed,
a SERVER span already current in this request, an excluded URL). Framework hooks only
enrich the current one with :func:`set_route` and :func:`record_exception`.

Span content follows the stable HTTP semantic conventions: name ``"{METHOD} {route}"``
or ``"{METHOD}"``, never the raw path. What every span kind shares (attach, end, error
marking, header capture, the failure report) is in :mod:`autotrace.spans`; the settings
(``OTEL_PYTHON_EXCLUDED_URLS``, header capture, ``AUTOTRACE_INCOMING_CONTEXT``) come from
:func:`autotrace.config.http_settings`, read at the first request.

Incoming context (HTTP and gRPC alike, :func:`extract_incoming`) is handled per
``AUTOTRACE_INCOMING_CONTEXT``:

- ``continue`` (default): the request continues the caller's trace; its baggage is kept
  (and so propagated by the app's outgoing calls); other traces the composite propagator
  found in later formats become span links.
- ``restart``: for a public edge. A new trace starts (the SERVER span is a root), with a
  span link to the caller's span when its context was valid. The incoming baggage is
  DROPPED: outside data must not flow inward through the agent.
- ``ignore``: the propagation headers are not even parsed; a new trace, no link, no baggage.

Incoming baggage is only ever propagated: the agent reads none of it, for no sampling
decision and no span attribute (the sampler sees the parent's span context and the
links only).
"""

from __future__ import annotations

from functools import partial

from . import api, spans
from .config import http_settings
from .propagation.fields import MAX_KEYS, bounded_values
from .redact import redact_query
from .spans import SpanHandle, capture_headers, error_type, exception_description, mark_error, set_known

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable, Sequence

    from opentelemetry import context, trace

    Lookup = Callable[[str], "Sequence[str]"]  # header name (lower-case) -> its values

TRACER = "autotrace.http.server"

KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"})


class HeaderLookup:
    """A server's header lookup (lower-case name -> its values) that can also list the names.

    Formats that look headers up by prefix (Jaeger's ``uberctx-*`` baggage) need the
    names; the names are only listed when such a format asks.
    """

    __slots__ = ("_lookup", "_names", "contains")

    def __init__(self, lookup: Lookup, names: Callable[[], Iterable[str]], contains: Callable[[str], bool] | None = None) -> None:
        self._lookup = lookup
        self._names = names
        # Whether a header is in the request, in any case (the server's own test, when it
        # has one: most requests carry no propagation field, and this finds it in one call).
        self.contains = contains

    def __call__(self, name: str) -> Sequence[str]:
        return self._lookup(name)

    def names(self) -> list[str]:
        return [name.lower() for name in self.listed()]

    def listed(self) -> Iterable[str]:
        """The request's header names, as the server gives them."""
        return self._names()

    def absent(self, names: Iterable[str]) -> bool | None:
        """Whether none of these (lower-case) header names is in the request; None when the
        lookup cannot tell without reading the values (no ``contains``).

        With ``contains`` set, :func:`start` asks it directly (this loop, inline): a lookup
        that answers otherwise (``wsgi.EnvironLookup``: one set operation) sets ``contains``
        to None and overrides this."""
        contains = self.contains
        if contains is None:
            return None
        for name in names:
            if contains(name):
                return False
        return True


class DictLookup(HeaderLookup):
    """Headers gathered in one pass into a dict (lower-case name -> its values, in order), as
    a :class:`HeaderLookup`: for servers whose headers are a list to scan (ASGI's)."""

    __slots__ = ()

    def __init__(self, values: dict[str, list[str]]) -> None:
        self._lookup = values
        self.contains = values.__contains__

    def __call__(self, name: str) -> Sequence[str]:
        return self._lookup.get(name, ())

    def listed(self) -> Iterable[str]:
        return self._lookup.keys()


class MultiDictLookup(HeaderLookup):
    """The headers of a case-insensitive multidict (aiohttp's ``CIMultiDictProxy``: ``getall``,
    ``keys``, ``in``) as a :class:`HeaderLookup`, made without a closure for each request."""

    __slots__ = ()

    def __init__(self, headers) -> None:
        self._lookup = headers
        self.contains = headers.__contains__

    def __call__(self, name: str) -> Sequence[str]:
        return self._lookup.getall(name, ())

    def listed(self) -> Iterable[str]:
        return self._lookup.keys()


class _LookupGetter:
    """Reads propagation fields through a server's own header lookup, within the W3C rules.

    The raw values are counted before any size limit: ``traceparent`` given more than
    once (repeated, or comma-joined) is invalid, so a new trace starts, even when a copy
    is oversized. A value over its field's limit makes the whole field invalid (an
    oversized ``tracestate`` drops the tracestate, not one of its headers); see
    :func:`autotrace.propagation.fields.bounded_values`.
    """

    names_in_any_case = True  # servers' lookups ignore case: propagators need not scan the names

    def get(self, carrier: Lookup, key: str):
        return bounded_values(key, carrier(key))

    def keys(self, carrier: Lookup) -> list[str]:
        """The first ``MAX_KEYS`` header names (lower case) of a :class:`HeaderLookup`."""
        import itertools

        if not isinstance(carrier, HeaderLookup):
            return []
        return [name.lower() for name in itertools.islice(carrier.listed(), MAX_KEYS)]


_GETTER = _LookupGetter()


def extracted_links(ctx: context.Context) -> list[trace.Link]:
    """Span links the agent's composite propagator found in ``ctx`` (none without it):
    other traces in the formats after the first (a request's headers, a message's)."""
    global _links_of
    try:
        if _links_of is None:
            from .propagation.composite import extracted_links as _links_of
        return _links_of(ctx)
    except Exception:  # noqa: BLE001
        return []


_links_of = None  # propagation.composite.extracted_links, imported at the first request or message


# The global propagator last seen, and the fields it may read (None: unknown, always extract).
_reads: tuple[object, frozenset[str] | None] = (None, None)


def fields_read(propagator: object) -> frozenset[str] | None:
    """The header names ``propagator`` may read (its ``reads``), or None when it does not
    say: then every request or message is extracted. Remembered for the last propagator."""
    global _reads
    seen, reads = _reads
    if seen is not propagator:
        try:
            reads = getattr(propagator, "reads", None)
            reads = reads if isinstance(reads, frozenset) else None
        except Exception:  # noqa: BLE001
            reads = None
        _reads = (propagator, reads)
    return reads


def _nothing_to_extract(carrier, getter, base: context.Context) -> bool:
    """Whether extraction would leave ``base`` as it is: none of the fields the propagator
    reads is in the request (most requests at a service's edge), and ``base`` holds no links
    of an earlier extraction (which extraction would clear). Only with a getter that finds
    names in any case (the servers' own), as a propagator's lookup would."""
    reads = fields_read(api.propagate.get_global_textmap())
    if reads is None or not getattr(getter, "names_in_any_case", False):
        return False
    absent = getattr(carrier, "absent", None)
    found = absent(reads) if absent is not None else None  # the server's own test (HeaderLookup.absent)
    if found is False:
        return False  # extraction reads a field (and judges its values)
    if found is None:
        for name in reads:
            if getter.get(carrier, name) is not None:
                return False
    return not base or not extracted_links(base)  # an empty context holds no links


def extract_incoming(carrier, getter, base: context.Context | None = None, mode: str | None = None) -> tuple[context.Context, list[trace.Link]]:
    """The parent context of an incoming request's SERVER span, and its span links.

    ``carrier`` and ``getter`` are the server's propagation fields (HTTP headers, gRPC
    metadata) and how to read them; ``base`` the context to extract over (the current
    one by default). Per ``AUTOTRACE_INCOMING_CONTEXT`` (see the module docstring):

    - ``continue``: the extracted context (remote span and baggage) and the composite's links;
    - ``restart``: ``base`` without a span (a root; the incoming baggage is not taken), with
      a link to the remote span context when it was valid, plus the composite's links;
    - ``ignore``: ``base`` without a span, nothing read from the carrier.

    The API must be loaded (:func:`autotrace.api.load`). Baggage is never looked at here.
    """
    context, propagate, trace = api.context, api.propagate, api.trace
    if base is None:
        base = api.get_current()
    if mode is None:
        mode = http_settings().incoming_context
    if mode == "continue":
        if _nothing_to_extract(carrier, getter, base):
            return base, []
        parent = propagate.extract(carrier, context=base, getter=getter)
        return parent, extracted_links(parent)
    root = trace.set_span_in_context(trace.INVALID_SPAN, base)
    if mode == "ignore":
        return root, []
    # restart: read the caller's context apart, only to link to it.
    extracted = propagate.extract(carrier, context=context.Context(), getter=getter)
    remote = trace.get_current_span(extracted).get_span_context()
    links = [trace.Link(remote)] if remote.is_valid else []
    linked = {(remote.trace_id, remote.span_id)}
    for link in extracted_links(extracted):
        key = (link.context.trace_id, link.context.span_id)
        if key not in linked:
            linked.add(key)
            links.append(link)
    return root, links


class ServerSpan(SpanHandle):
    """One request's SERVER span (its context: the span current, marked as served)."""

    __slots__ = ("method", "response_headers")
    WHAT = "a server span"

    def __init__(self, span: trace.Span, ctx: context.Context, token: object = None, method: str = "HTTP", response_headers: bool = True) -> None:
        # SpanHandle.__init__'s work, inline (a call less on every request).
        self.span = span
        self.context = ctx
        self._token = token
        self._ended = False
        self.method = method  # the span name's method: the request's when known, else "HTTP"
        # Whether response headers are to be captured (the settings name some): a server
        # hook need not list a response's headers for nothing.
        self.response_headers = response_headers

    def set_route(self, route: str, keep: bool = False) -> None:
        """Name the span by its route template (:func:`set_route` for the span at hand);
        with ``keep``, not when a framework the route served named it already."""
        try:
            span = self.span
            if not route or (keep and "http.route" in (getattr(span, "attributes", None) or {})):
                return
            set_known(span, {"http.route": route})
            span.update_name(f"{self.method} {route}")
        except Exception as exc:  # noqa: BLE001
            _report(exc)

    def set_status_code(self, code: int) -> None:
        try:
            span = self.span
            set_values = getattr(span, "set_known", None)  # spans.set_known, inline
            if set_values is not None:
                set_values({"http.response.status_code": code})
            else:
                span.set_attributes({"http.response.status_code": code})
            # An exception recorded already (one a framework turned into this response)
            # names the error better than its status code: error.type keeps it.
            if code >= 500 and "error.type" not in (getattr(span, "attributes", None) or {}):
                mark_error(span, str(code))
        except Exception as exc:  # noqa: BLE001
            _report(exc)

    def set_response(self, code: int, route: str | None = None, keep: bool = False) -> None:
        """The response's status code and the route template (as :meth:`set_route`, with
        ``keep``), set on the span at once (one round of its lock for both)."""
        try:
            span = self.span
            known = getattr(span, "attributes", None) if (route and keep) or code >= 500 else None
            if route and not (keep and known and "http.route" in known):
                set_known(span, {"http.route": route, "http.response.status_code": code})
                span.update_name(f"{self.method} {route}")
            else:
                set_known(span, {"http.response.status_code": code})
            # As set_status_code: an exception recorded already names the error better.
            if code >= 500 and "error.type" not in (known or {}):
                mark_error(span, str(code))
        except Exception as exc:  # noqa: BLE001
            _report(exc)

    def finish(self, code: int, route: str | None = None, keep: bool = False, headers: Iterable[tuple[str, str]] | None = None) -> None:
        """A hook's whole end of a request in one call: the response's status code and route
        (as :meth:`set_response`), its ``headers`` captured (when given: pass them only when
        :attr:`response_headers` is set), the span ended and its context left (when attached)."""
        span = self.span
        if not self._ended:
            try:
                known = getattr(span, "attributes", None) if (route and keep) or code >= 500 else None
                if route and not (keep and known and "http.route" in known):
                    values: dict[str, object] = {"http.route": route, "http.response.status_code": code}
                else:
                    values = {"http.response.status_code": code}
                    route = None
                set_values = getattr(span, "set_known", None)  # spans.set_known, inline
                if set_values is not None:
                    set_values(values)
                else:
                    span.set_attributes(values)
                if route:
                    span.update_name(f"{self.method} {route}")
                # As set_status_code: an exception recorded already names the error better.
                if code >= 500 and "error.type" not in (known or {}):
                    mark_error(span, str(code))
                if headers is not None:
                    self.capture_response_headers(headers)
            except Exception as exc:  # noqa: BLE001
                _report(exc)
        self.close()  # the span ended once, its context left

    def capture_response_headers(self, headers: Iterable[tuple[str, str]]) -> None:
        wanted = http_settings().response_headers
        if wanted:
            capture_headers(self.span, "http.response.header.", wanted, headers)

    def record_exception(self, exc: BaseException) -> None:
        record_exception(exc, self.span)


_LOOKUP = "lookup"  # start()'s user_agent when the server does not give it: looked up in the headers

# The request's attributes that repeat from one request to the next (method, scheme, server
# address and port, protocol version, user agent), built once per distinct combination.
# Bounded: cleared when full.
_fixed: dict[tuple, dict[str, object]] = {}
_FIXED_SIZE = 256


def _fixed_attributes(key: tuple) -> dict[str, object]:
    method, known, scheme, server_address, server_port, protocol_version, user_agent = key
    found: dict[str, object] = {"http.request.method": known or "_OTHER", "url.scheme": scheme}
    if method != found["http.request.method"]:  # unknown, or known in another case
        found["http.request.method_original"] = method
    if server_address:
        found["server.address"] = server_address
    if server_port is not None:
        found["server.port"] = server_port
    if protocol_version:
        found["network.protocol.version"] = protocol_version
    if user_agent:
        found["user_agent.original"] = user_agent
    if len(_fixed) >= _FIXED_SIZE:
        _fixed.clear()
    _fixed[key] = found
    return found


def _attributes(
    method: str,
    known: str | None,
    scheme: str,
    server_address: str | None,
    server_port: int | None,
    protocol_version: str | None,
    user_agent: str | None,
    headers: Lookup,
    path: str,
    query: str,
    client_address: str | None,
) -> dict[str, object]:
    """The SERVER span's attributes (see :func:`start`): the ones that repeat from the cache."""
    if user_agent is _LOOKUP:
        agent = headers("user-agent")
        user_agent = agent[0] if agent else None
    key = (method, known, scheme, server_address, server_port, protocol_version, user_agent)
    attributes = dict(_fixed.get(key) or _fixed_attributes(key))
    attributes["url.path"] = path
    if query:
        attributes["url.query"] = redact_query(query)
    if client_address:
        attributes["client.address"] = client_address
    return attributes


def _unsampled(parent: context.Context) -> bool:
    """Whether ``parent`` holds a span whose context is not sampled (an incoming
    ``traceparent`` with flags 00, an unsampled local span)."""
    found = parent.get(api.SPAN_KEY)
    if found is None:
        return False
    try:
        return not found.get_span_context().trace_flags & 1
    except Exception:  # noqa: BLE001 - whatever it is, the Python way decides
        return True


def start(
    method: str,
    scheme: str,
    path: str,
    query: str,
    headers: Lookup,
    server_address: str | None = None,
    server_port: int | None = None,
    client_address: str | None = None,
    protocol_version: str | None = None,
    user_agent: str | None = _LOOKUP,
    attach: bool = True,
) -> ServerSpan | None:
    """Start the request's SERVER span (its context made current, unless not ``attach``), or return None.

    ``path`` and ``query`` are the request target's parts, undecoded. ``headers`` looks
    up a (lower-case) request header's values (a :class:`HeaderLookup` tells with its
    ``absent`` that the request carries no propagation field, without reading values).
    ``user_agent``: the ``User-Agent`` header's (first) value when the server has it at
    hand (None: none), else looked up in ``headers``. Never raises.
    """
    try:
        if not api.loaded:
            api.load()
        current = api.get_current()
        # An empty context (most requests' at a server) holds neither mark.
        if current and (current.get(api.IN_SERVER_SPAN) or current.get(api.SUPPRESS_INSTRUMENTATION)):
            return None
        settings = http_settings()
        if settings.excluded:
            url = f"{scheme}://{server_address or ''}{'' if server_port is None else ':' + str(server_port)}{path}{'?' + query if query else ''}"
            if any(pattern.search(url) for pattern in settings.excluded):
                return None
        if method in KNOWN_METHODS:
            known = name = method
        else:
            upper = method.upper()
            known = upper if upper in KNOWN_METHODS else None
            name = known or "HTTP"
        mode = settings.incoming_context
        parent = links = None
        if mode == "continue" and not current:
            # None of the fields the propagator reads in the request (the server's own test,
            # HeaderLookup.absent), and no links of an earlier extraction in an empty
            # context: extraction would leave it as it is.
            absent = getattr(headers, "absent", None)
            if absent is not None:
                propagator = api.propagate.get_global_textmap()
                seen, reads = _reads
                if seen is not propagator:
                    reads = fields_read(propagator)
                if reads is not None:
                    contains = headers.contains
                    if contains is None:
                        if absent(reads) is True:
                            parent = current
                    else:
                        # HeaderLookup.absent, inline (a call less on every request).
                        for field in reads:
                            if contains(field):
                                break
                        else:
                            parent = current
        if parent is None:
            parent, links = extract_incoming(headers, _GETTER, current, mode)
        args = (method, known, scheme, server_address, server_port, protocol_version, user_agent, headers, path, query, client_address)
        if parent and _unsampled(parent):
            # A parent-based sampler drops this span: its attributes are computed only if
            # it is recorded after all (a partial: no closure made per request).
            attributes = partial(_attributes, *args)
        else:
            # Built at once (a plain dict: the compiled start, autotrace._speedups.start_light,
            # takes its common case, where a function would send every request the Python way).
            attributes = _attributes(*args)
        # spans.new_span's common case, inline (a call less on every request): the compiled
        # start (light_span.compiled_start, known after the first span) for the agent's tracer.
        span = None
        if _start_light and not links:
            found = api.tracers.get(TRACER)
            if found is not None:
                span = _start_light(found, name, api.SpanKind.SERVER, parent, attributes)
        if span is None:
            span = spans.new_span(TRACER, name, api.SpanKind.SERVER, parent, attributes, links or None)
            if _start_light is None:
                _found_start_light()
        if settings.request_headers and span.is_recording():
            capture_headers(span, "http.request.header.", settings.request_headers, None, headers)
        # The key's value is the SERVER span: current() finds it under a child span too.
        ctx = api.with_span(span, parent, api.IN_SERVER_SPAN, span)
        return ServerSpan(span, ctx, api.set_current(ctx) if attach else None, name, bool(settings.response_headers))
    except Exception as exc:  # noqa: BLE001 - never fail a request
        _report(exc)
        return None


# light_span.compiled_start (autotrace._speedups.start_light) once the first span made
# light_span known; False when there is none (the extension not built): new_span then.
_start_light = None


def _found_start_light() -> None:
    global _start_light
    import sys

    light_span = sys.modules.get("autotrace.light_span")  # imported by the first span, if at all
    if light_span is not None:
        _start_light = getattr(light_span, "compiled_start", None) or False


# A Host header -> (server.address, server.port), for the values seen last: a service is
# called under few names. Bounded: cleared when full (never replaced: a hook may read it
# directly, ``hosts.get(host) or host_address(host)``, a call less on its hot path).
hosts: dict[str, tuple[str | None, int | None]] = {}
_HOSTS_SIZE = 64


def host_address(host: str) -> tuple[str | None, int | None]:
    """A ``Host`` header's address and port (``"[::1]:8080"`` -> ``("[::1]", 8080)``; no port: None)."""
    found = hosts.get(host)
    if found is None:
        name, _, port = host.rpartition(":") if host.rfind(":") > host.rfind("]") else (host, "", "")
        found = (name or None, int(port) if port.isdigit() else None)
        if len(hosts) >= _HOSTS_SIZE:
            hosts.clear()
        hosts[host] = found
    return found


def current() -> trace.Span | None:
    """The SERVER span of the request being handled, if the agent started one."""
    if not api.loaded:
        return None
    return api.get_current().get(api.IN_SERVER_SPAN)


def set_route(route: str, span: trace.Span | None = None) -> None:
    """Name the current SERVER span (``span``, when the hook has it from :func:`current`)
    by its route template (called by framework hooks)."""
    try:
        if span is None:
            span = current()
        if span is None or not route:
            return
        set_known(span, {"http.route": route})
        method = getattr(span, "attributes", {}).get("http.request.method", "HTTP")
        span.update_name(f"{'HTTP' if method == '_OTHER' else method} {route}")
    except Exception as exc:  # noqa: BLE001
        _report(exc)


def record_exception(exc: BaseException, span: trace.Span | None = None) -> None:
    """Record an exception on the SERVER span (the current one by default) as an error."""
    try:
        span = span if span is not None else current()
        # Not on an ended span (an exception re-raised after the response was complete,
        # as Starlette's ServerErrorMiddleware does: the SDK would only log warnings),
        # nor twice (recorded by a framework hook, then re-raised through the wrapper).
        if span is None or not span.is_recording() or _recorded(span, exc):
            return
        mark_error(span, type(exc).__qualname__, exception_description(exc))
        span.record_exception(exc)
    except Exception as error:  # noqa: BLE001
        _report(error)


def _recorded(span: trace.Span, exc: BaseException) -> bool:
    """Whether the span has an exception event for this exception (same type and message)."""
    events = getattr(span, "events", None)
    if not events:
        return False
    name = error_type(exc)  # as the SDK names it in the event
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001
        return False
    for event in events:
        attributes = event.attributes or {}
        if event.name == "exception" and attributes.get("exception.type") == name and attributes.get("exception.message") == message:
            return True
    return False


def _report(exc: BaseException) -> None:
    spans.report(exc, ServerSpan.WHAT, "the request", "server-span")
