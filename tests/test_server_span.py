"""server_span: the SERVER span's content, parent extraction within the W3C rules, settings."""

from __future__ import annotations

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import api, config, server_span

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def lookup(headers: dict | None = None):
    """A server's header lookup over {lower-case name: value or [values]}."""
    table = {k.lower(): ([v] if isinstance(v, str) else list(v)) for k, v in (headers or {}).items()}
    return lambda name: table.get(name, [])


def start(method="GET", path="/items/42", query="", headers=None, **kwargs):
    kwargs.setdefault("scheme", "http")
    return server_span.start(method=method, path=path, query=query, headers=lookup(headers), **kwargs)


def finish(span: server_span.ServerSpan | None) -> None:
    assert span is not None
    span.detach()
    span.end()


def only(spans):
    finished = spans.get_finished_spans()
    assert len(finished) == 1, [s.name for s in finished]
    return finished[0]


def test_span_content_and_context(spans):
    before = context.get_current()
    span = start(
        "POST",
        "/items/42",
        "a=1&b=2",
        {"user-agent": "curl/8.0", "host": "shop.example"},
        server_address="shop.example",
        server_port=8080,
        client_address="10.0.0.7",
        protocol_version="1.1",
    )
    assert span is not None
    assert trace.get_current_span() is span.span
    assert server_span.current() is span.span
    span.detach()
    assert context.get_current() == before
    assert server_span.current() is None
    span.end()
    recorded = only(spans)
    assert recorded.name == "POST"
    assert recorded.kind is SpanKind.SERVER
    assert recorded.instrumentation_scope.name == "autotrace.http.server"
    assert dict(recorded.attributes) == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "url.path": "/items/42",
        "url.query": "a=1&b=2",
        "server.address": "shop.example",
        "server.port": 8080,
        "client.address": "10.0.0.7",
        "network.protocol.version": "1.1",
        "user_agent.original": "curl/8.0",
    }
    assert recorded.status.status_code is StatusCode.UNSET
    assert recorded.parent is None


def test_optional_attributes_left_out(spans):
    finish(start("GET", "/", ""))
    assert dict(only(spans).attributes) == {"http.request.method": "GET", "url.scheme": "http", "url.path": "/"}


def test_end_is_idempotent(spans):
    span = start()
    finish(span)
    span.end()
    span.detach()
    assert len(spans.get_finished_spans()) == 1


@pytest.mark.parametrize("method", ["FOO", "PROPFIND", "G E T", ""])
def test_unknown_method(spans, method):
    span = start(method)
    server_span.set_route("/dav/<path>")
    finish(span)
    recorded = only(spans)
    assert recorded.attributes["http.request.method"] == "_OTHER"
    assert recorded.attributes["http.request.method_original"] == method
    assert recorded.name == "HTTP /dav/<path>"


def test_unknown_method_without_route_is_named_http(spans):
    finish(start("BREW"))
    assert only(spans).name == "HTTP"


def test_method_in_other_case_is_known_and_original_kept(spans):
    finish(start("get"))
    recorded = only(spans)
    assert recorded.name == "GET"
    assert recorded.attributes["http.request.method"] == "GET"
    assert recorded.attributes["http.request.method_original"] == "get"


def test_known_method_has_no_method_original(spans):
    finish(start("DELETE"))
    assert "http.request.method_original" not in only(spans).attributes


def test_query_is_redacted(spans):
    finish(start(query="q=shoes&token=abc&page=2&password=hunter2"))
    assert only(spans).attributes["url.query"] == "q=shoes&token=REDACTED&page=2&password=REDACTED"


def test_raw_path_never_in_the_name(spans):
    span = start("GET", "/users/12345/orders/987")
    finish(span)
    assert only(spans).name == "GET"
    assert "12345" not in only(spans).name


# --- routes and exceptions ---------------------------------------------------------


def test_set_route_renames_and_sets_http_route(spans):
    span = start("GET", "/users/7")
    server_span.set_route("/users/{id}")
    finish(span)
    recorded = only(spans)
    assert recorded.name == "GET /users/{id}"
    assert recorded.attributes["http.route"] == "/users/{id}"


def test_set_route_empty_does_nothing(spans):
    span = start("GET", "/users/7")
    server_span.set_route("")
    finish(span)
    assert only(spans).name == "GET" and "http.route" not in only(spans).attributes


def test_set_route_and_record_exception_reach_the_server_span_under_a_child_span(spans):
    span = start("GET", "/users/7")
    with trace.get_tracer("test").start_as_current_span("db query") as child:
        assert server_span.current() is span.span
        server_span.set_route("/users/{id}")
        server_span.record_exception(ValueError("bad"))
    finish(span)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert set(by_name) == {"db query", "GET /users/{id}"}
    assert "http.route" not in by_name["db query"].attributes
    assert not by_name["db query"].events
    server = by_name["GET /users/{id}"]
    assert server.attributes["error.type"] == "ValueError"
    assert child.parent.span_id == span.span.get_span_context().span_id


def test_set_route_outside_a_request_does_nothing(spans):
    server_span.set_route("/nothing")
    with trace.get_tracer("test").start_as_current_span("job"):
        assert server_span.current() is None
        server_span.set_route("/nothing")
    recorded = only(spans)
    assert recorded.name == "job" and "http.route" not in recorded.attributes


def test_record_exception_outside_a_request_does_nothing(spans):
    server_span.record_exception(RuntimeError("no request"))
    with trace.get_tracer("test").start_as_current_span("job"):
        server_span.record_exception(RuntimeError("no request"))
    recorded = only(spans)
    assert not recorded.events
    assert recorded.status.status_code is StatusCode.UNSET


def test_record_exception(spans):
    class Boom(Exception):
        pass

    span = start()
    span.record_exception(Boom("went wrong"))
    finish(span)
    recorded = only(spans)
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.attributes["error.type"].endswith("Boom")
    (event,) = recorded.events
    assert event.name == "exception"
    assert event.attributes["exception.message"] == "went wrong"


def test_record_exception_with_a_broken_str_never_raises(spans):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    span = start()
    span.record_exception(Unprintable())
    server_span.record_exception(Unprintable())
    finish(span)
    assert only(spans).attributes["error.type"].endswith("Unprintable")


@pytest.mark.parametrize("code, error", [(200, False), (302, False), (404, False), (499, False), (500, True), (503, True)])
def test_status_code(spans, code, error):
    span = start()
    span.set_status_code(code)
    finish(span)
    recorded = only(spans)
    assert recorded.attributes["http.response.status_code"] == code
    if error:
        assert recorded.status.status_code is StatusCode.ERROR
        assert recorded.attributes["error.type"] == str(code)
    else:
        assert recorded.status.status_code is StatusCode.UNSET
        assert "error.type" not in recorded.attributes


def test_server_span_methods_never_raise(spans):
    span = start()
    span.set_status_code("not a number")  # type: ignore[arg-type]
    span.capture_response_headers(None)  # type: ignore[arg-type]
    span.record_exception(None)  # type: ignore[arg-type]
    finish(span)
    assert len(spans.get_finished_spans()) == 1


# --- when not to trace -------------------------------------------------------------


def test_nested_start_returns_none(spans):
    outer = start()
    assert start() is None
    assert server_span.current() is outer.span
    finish(outer)
    assert len(spans.get_finished_spans()) == 1


def test_suppressed_instrumentation_starts_nothing(spans):
    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        assert start() is None
    finally:
        context.detach(token)
    assert spans.get_finished_spans() == ()


def test_bad_arguments_give_none_not_an_exception(spans):
    assert server_span.start(None, "http", "/", "", lookup()) is None  # type: ignore[arg-type]

    def broken(name):
        raise KeyError(name)

    assert server_span.start("GET", "http", "/", "", broken) is None
    assert context.get_value(api.IN_SERVER_SPAN) is None


@pytest.mark.parametrize(
    "path, query, server_address, server_port, excluded",
    [
        ("/healthz", "", "svc", 80, True),
        ("/api/healthz", "", "svc", 80, True),
        ("/static/app.js", "", "svc", 80, True),
        ("/api/items", "", "svc", 80, False),
        ("/api/items", "probe=1", "svc", 80, True),  # the query is part of the URL
        ("/metrics", "", "internal.example", 9090, True),  # host and port too
        ("/metrics", "", "public.example", 9090, False),
    ],
)
def test_excluded_urls(spans, monkeypatch, path, query, server_address, server_port, excluded):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "healthz, ^http://svc:80/static/ ,probe=1,internal\\.example:9090/metrics")
    span = start("GET", path, query, server_address=server_address, server_port=server_port)
    if excluded:
        assert span is None
        assert context.get_value(api.IN_SERVER_SPAN) is None
    else:
        finish(span)
        assert len(spans.get_finished_spans()) == 1


def test_invalid_excluded_regex_warns_once_and_is_ignored(spans, monkeypatch, warnings):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "([,healthz")
    assert start(path="/healthz") is None
    finish(start(path="/orders"))
    assert start(path="/healthz") is None
    lines = warnings()
    assert len(lines) == 1
    assert "OTEL_PYTHON_EXCLUDED_URLS" in lines[0] and "([" in lines[0]


def test_settings_are_read_once(spans, monkeypatch):
    finish(start(path="/healthz"))
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "healthz")
    finish(start(path="/healthz"))  # not read again
    assert len(spans.get_finished_spans()) == 2
    config.reset_http_settings()
    assert start(path="/healthz") is None


# --- parent extraction -------------------------------------------------------------


def test_traceparent_is_the_parent(spans):
    span = start(headers={"traceparent": TRACEPARENT, "tracestate": "vendor=value,other=x"})
    finish(span)
    recorded = only(spans)
    assert f"{recorded.context.trace_id:032x}" == TRACE_ID
    assert f"{recorded.parent.span_id:016x}" == SPAN_ID
    assert recorded.parent.is_remote
    assert recorded.context.trace_state.get("vendor") == "value"


def _assert_new_trace(spans):
    recorded = only(spans)
    assert recorded.parent is None
    assert f"{recorded.context.trace_id:032x}" != TRACE_ID


@pytest.mark.parametrize(
    "traceparent",
    [
        [TRACEPARENT, f"00-{'1' * 32}-{'2' * 16}-01"],  # repeated header
        [TRACEPARENT, TRACEPARENT],  # repeated, even when equal
        f"{TRACEPARENT}, 00-{'1' * 32}-{'2' * 16}-01",  # comma-joined (WSGI, http.server)
        f"{TRACEPARENT},{TRACEPARENT}",
    ],
)
def test_duplicated_traceparent_starts_a_new_trace(spans, traceparent):
    finish(start(headers={"traceparent": traceparent}))
    _assert_new_trace(spans)


@pytest.mark.parametrize(
    "traceparent",
    [
        "junk",
        "",
        f"00-{TRACE_ID}-{SPAN_ID}",
        f"00-{'0' * 32}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
        f"00-{TRACE_ID}-{SPAN_ID}-0g",
        f"00-{TRACE_ID}-{SPAN_ID}-01\u00e9",
        "\u00ff" * 55,
        TRACEPARENT + " " * 9000,
        "0" * 9000,
        "x" * 65536,
    ],
)
def test_malformed_or_oversized_traceparent_starts_a_new_trace(spans, traceparent):
    finish(start(headers={"traceparent": traceparent}))
    _assert_new_trace(spans)


@pytest.mark.parametrize(
    "tracestate",
    ["junk", "=,=,==", ",,,", "a=b=c,,UPPER=1", "\u00e9=\u00e9", "k=" + "v" * 9000, ["x", "y=1"], "z=" * 40000],
)
def test_junk_tracestate_is_harmless(spans, tracestate):
    finish(start(headers={"traceparent": TRACEPARENT, "tracestate": tracestate}))
    recorded = only(spans)
    assert f"{recorded.parent.span_id:016x}" == SPAN_ID  # the traceparent still counts
    for key in recorded.context.trace_state.keys():
        assert key and key == key.lower()


@pytest.mark.parametrize(
    "value",
    ["junk", "=;=;,,,", "k=v;;;=", "%zz=%zz", "\u00e9=\u00e9", "k=" + "v" * 70000, ",".join(f"k{i}=v" for i in range(500))],
)
def test_junk_baggage_is_harmless(spans, value):
    span = start(headers={"traceparent": TRACEPARENT, "baggage": value})
    assert span is not None
    baggage.get_all()
    finish(span)
    assert only(spans).parent is not None


def test_baggage_is_current_during_the_request(spans):
    span = start(headers={"baggage": "tenant=acme,plan=gold"})
    assert baggage.get_baggage("tenant") == "acme"
    finish(span)
    assert baggage.get_baggage("tenant") is None


def test_oversized_headers_are_harmless(spans, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-big")
    big = "a" * 65536
    finish(start(headers={"user-agent": big, "x-big": big, "traceparent": big, "tracestate": big, "baggage": big}))
    recorded = only(spans)
    assert recorded.parent is None
    assert recorded.attributes["user_agent.original"] == big


def test_non_ascii_path_and_query(spans):
    finish(start(path="/caf\u00e9/\u65e5\u672c", query="q=\u00fc&token=\u00e9"))
    recorded = only(spans)
    assert recorded.attributes["url.path"] == "/caf\u00e9/\u65e5\u672c"
    assert recorded.attributes["url.query"] == "q=\u00fc&token=REDACTED"


# --- header capture ----------------------------------------------------------------


def test_no_headers_captured_by_default(spans):
    span = start(headers={"x-request-id": "abc", "authorization": "Bearer s3cret", "cookie": "a=b"})
    span.capture_response_headers([("Content-Type", "text/plain"), ("Set-Cookie", "a=b")])
    finish(span)
    assert not [k for k in only(spans).attributes if ".header." in k]


def test_request_and_response_headers_captured_and_sanitized(spans, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-Request-ID, Authorization ,x-api-KEY,accept,absent")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "Content-Type,SET-COOKIE,x-session-token")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "AUTHORIZATION,set-cookie,.*-KEY,x-session-.*")
    span = start(
        headers={
            "x-request-id": "req-1",
            "authorization": "Bearer s3cret",
            "x-api-key": "k3y",
            "accept": ["text/html", "application/json"],
            "x-other": "not wanted",
        }
    )
    span.capture_response_headers(
        [("content-type", "text/plain"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("X-Session-Token", "t0k"), ("X-Other", "no")]
    )
    finish(span)
    captured = {k: tuple(v) for k, v in only(spans).attributes.items() if ".header." in k}
    assert captured == {
        "http.request.header.x-request-id": ("req-1",),
        "http.request.header.authorization": ("[REDACTED]",),
        "http.request.header.x-api-key": ("[REDACTED]",),
        "http.request.header.accept": ("text/html", "application/json"),
        "http.response.header.content-type": ("text/plain",),
        "http.response.header.set-cookie": ("[REDACTED]", "[REDACTED]"),
        "http.response.header.x-session-token": ("[REDACTED]",),
    }
    assert "s3cret" not in repr(only(spans).attributes) and "t0k" not in repr(only(spans).attributes)


def test_sanitize_fields_match_whole_names(spans, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "x-token,x-token-id")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "x-token,[invalid")
    finish(start(headers={"x-token": "secret", "x-token-id": "public"}))
    attributes = only(spans).attributes
    assert tuple(attributes["http.request.header.x-token"]) == ("[REDACTED]",)
    assert tuple(attributes["http.request.header.x-token-id"]) == ("public",)


# -- a request without propagation fields is not extracted -----------------------------


class Spy:
    """A propagator reading one field (``reads``), noting each extraction."""

    def __init__(self, reads=frozenset({"x-spy"})) -> None:
        self.reads = reads
        self.extracted = 0

    def extract(self, carrier, context=None, getter=None):
        self.extracted += 1
        return context if context is not None else context_module().get_current()

    def inject(self, carrier, context=None, setter=None):
        pass

    @property
    def fields(self):
        return {"x-spy"}


def context_module():
    return context


@pytest.fixture
def global_propagator():
    from opentelemetry import propagate

    before = propagate.get_global_textmap()

    def install(propagator):
        propagate.set_global_textmap(propagator)
        return propagator

    yield install
    propagate.set_global_textmap(before)


def extract(headers=None, base=None):
    return server_span.extract_incoming(lookup(headers), server_span._GETTER, base)


def test_a_request_without_the_fields_a_composite_reads_is_not_extracted(spans, global_propagator):
    from autotrace.propagation.composite import CompositePropagator

    spy = Spy()
    global_propagator(CompositePropagator([spy]))
    base = context.set_value("app-key", "kept", context.Context())
    parent, links = extract({"user-agent": "curl", "x-other": "1"}, base)
    assert spy.extracted == 0 and parent is base and links == []
    extract({"X-Spy": "1"}, base)  # in any case, as the server's lookup finds it
    assert spy.extracted == 1


def test_what_the_composite_reads(global_propagator):
    from autotrace.propagation import build
    from autotrace.propagation.composite import CompositePropagator

    assert build(["tracecontext", "baggage"]).reads == {"traceparent", "tracestate", "baggage"}
    assert build(["b3"]).reads == build(["b3multi"]).reads == {
        "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags", "x-b3-parentspanid"
    }
    assert build(["tracecontext", "jaeger"]).reads is None  # uberctx-* baggage: any name
    assert CompositePropagator([Spy(reads=None)]).reads is None  # another package's: unknown
    assert build(["none"]).reads == frozenset()


def test_a_propagator_that_does_not_say_what_it_reads_always_extracts(spans, global_propagator):
    spy = global_propagator(Spy(reads=None))
    extract({"user-agent": "curl"})
    assert spy.extracted == 1


def test_links_of_an_earlier_extraction_are_cleared_without_fields(spans, global_propagator):
    from autotrace.propagation import build
    from autotrace.propagation.composite import extracted_links

    global_propagator(build(["tracecontext", "b3multi"]))
    other = "1" * 32
    earlier = extract({"traceparent": TRACEPARENT, "x-b3-traceid": other, "x-b3-spanid": "2" * 16, "x-b3-sampled": "1"})[0]
    assert len(extracted_links(earlier)) == 1
    parent, links = extract({"user-agent": "curl"}, earlier)
    assert links == [] and extracted_links(parent) == []


def test_no_fields_keeps_the_current_span_and_baggage_as_extraction_would(spans):
    base = baggage.set_baggage("tenant", "a", context.Context())
    parent, links = extract({"user-agent": "curl"}, base)
    assert baggage.get_baggage("tenant", parent) == "a" and links == []


# -- the servers' own lookups: whether the fields are absent, the same span either way ----

HEADER_SETS = [
    [],
    [("User-Agent", "curl/8.0"), ("Accept", "*/*")],
    [("traceparent", TRACEPARENT)],
    [("TraceParent", TRACEPARENT)],
    [("traceparent", TRACEPARENT), ("TRACESTATE", "a=1,b=2")],
    [("tracestate", "a=1")],  # no traceparent: a new trace, the tracestate not read
    [("Baggage", "tenant=a")],
    [("traceparent", "garbage")],
    [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)],  # given twice: a new trace
]


def server_lookups(pairs):
    """The same request headers through each kind of server lookup (name -> lookup)."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from autotrace import wsgi

    table: dict[str, list[str]] = {}
    for name, value in pairs:
        table.setdefault(name.lower(), []).append(value)
    environ = {"HTTP_" + name.upper().replace("-", "_"): ",".join(values) for name, values in table.items()}
    return {
        "a plain function (always extracted)": lambda name: table.get(name, []),
        "HeaderLookup with contains": server_span.HeaderLookup(lambda name: table.get(name, []), table.keys, table.__contains__),
        "HeaderLookup without contains": server_span.HeaderLookup(lambda name: table.get(name, []), table.keys),
        "DictLookup (ASGI)": server_span.DictLookup(table),
        "MultiDictLookup (aiohttp)": server_span.MultiDictLookup(CIMultiDictProxy(CIMultiDict(pairs))),
        "EnvironLookup (WSGI)": wsgi.EnvironLookup(environ),
    }


def seen_by_the_request(spans, headers, base=None):
    """What a request with ``headers`` gets: its span's parent, trace, links, and the baggage current in it."""
    token = context.attach(base) if base is not None else None
    try:
        span = server_span.start("GET", "http", "/", "", headers)
        assert span is not None
        tenant = baggage.get_baggage("tenant")
        finish(span)
    finally:
        if token is not None:
            context.detach(token)
    recorded = spans.get_finished_spans()[-1]
    parent = recorded.parent
    return (
        (parent.trace_id, parent.span_id, parent.is_remote, dict(parent.trace_state)) if parent else None,
        recorded.context.trace_id if parent else "new trace",
        [(link.context.trace_id, link.context.span_id) for link in recorded.links],
        tenant,
    )


@pytest.mark.parametrize("pairs", HEADER_SETS, ids=[repr(pairs)[:60] for pairs in HEADER_SETS])
def test_every_server_lookup_gives_the_span_a_plain_lookup_gives(spans, pairs):
    seen = {kind: seen_by_the_request(spans, headers) for kind, headers in server_lookups(pairs).items()}
    reference = seen.pop("a plain function (always extracted)")
    assert all(found == reference for found in seen.values()), (reference, seen)
    if any(name.lower() == "traceparent" for name, _ in pairs) and len(pairs) == 1 and pairs[0][1] == TRACEPARENT:
        assert reference[0][:3] == (int(TRACE_ID, 16), int(SPAN_ID, 16), True)


@pytest.mark.parametrize("pairs", HEADER_SETS, ids=[repr(pairs)[:60] for pairs in HEADER_SETS])
def test_every_server_lookup_gives_the_same_span_under_a_current_context(spans, pairs):
    base = baggage.set_baggage("tenant", "current", context.Context())
    seen = {kind: seen_by_the_request(spans, headers, base) for kind, headers in server_lookups(pairs).items()}
    reference = seen.pop("a plain function (always extracted)")
    assert all(found == reference for found in seen.values()), (reference, seen)


@pytest.mark.parametrize("kind", ["HeaderLookup with contains", "DictLookup (ASGI)", "MultiDictLookup (aiohttp)", "EnvironLookup (WSGI)"])
def test_a_server_lookup_without_the_fields_is_not_extracted_one_with_them_is(spans, global_propagator, kind):
    from autotrace.propagation.composite import CompositePropagator

    spy = Spy()
    global_propagator(CompositePropagator([spy]))
    finish(server_span.start("GET", "http", "/", "", server_lookups([("User-Agent", "curl"), ("X-Other", "1")])[kind]))
    assert spy.extracted == 0
    finish(server_span.start("GET", "http", "/", "", server_lookups([("X-SPY", "1")])[kind]))
    assert spy.extracted == 1
    assert len(spans.get_finished_spans()) == 2


def test_absent_tells_only_with_a_membership_test():
    table = {"traceparent": [TRACEPARENT]}
    assert server_span.HeaderLookup(table.get, table.keys).absent({"traceparent"}) is None
    assert server_span.HeaderLookup(table.get, table.keys, table.__contains__).absent({"traceparent"}) is False
    assert server_span.DictLookup(table).absent({"tracestate", "baggage"}) is True
    assert server_span.DictLookup(table).absent(frozenset()) is True


# -- ServerSpan.finish: a hook's whole end of the request ----------------------------------


def test_finish_sets_status_and_route_ends_and_leaves_the_context(spans):
    before = context.get_current()
    span = start("GET", "/items/42")
    span.finish(200, "/items/{id}")
    assert context.get_current() == before and span.ended
    recorded = only(spans)
    assert recorded.name == "GET /items/{id}"
    assert recorded.attributes["http.route"] == "/items/{id}"
    assert recorded.attributes["http.response.status_code"] == 200
    assert recorded.status.status_code is StatusCode.UNSET
    span.finish(500, "/other")  # ended: nothing more
    span.end()
    span.detach()
    assert len(spans.get_finished_spans()) == 1 and only(spans).attributes["http.response.status_code"] == 200


def test_finish_without_route_keeps_the_method_name(spans):
    start("POST").finish(204)
    recorded = only(spans)
    assert recorded.name == "POST" and "http.route" not in recorded.attributes


def test_finish_keeps_a_route_a_framework_set_when_asked(spans):
    span = start("GET", "/app/items/1")
    server_span.set_route("/items/<int:id>")  # a framework under the server named it
    span.finish(200, "/app/{tail:.*}", keep=True)
    recorded = only(spans)
    assert recorded.name == "GET /items/<int:id>" and recorded.attributes["http.route"] == "/items/<int:id>"


def test_finish_5xx_is_an_error_named_by_a_recorded_exception_first(spans):
    start().finish(503, "/items/{id}")
    span = start()
    span.record_exception(ValueError("boom"))
    span.finish(500)
    first, second = spans.get_finished_spans()
    assert first.status.status_code is StatusCode.ERROR and first.attributes["error.type"] == "503"
    assert second.status.status_code is StatusCode.ERROR and second.attributes["error.type"] == "ValueError"


def test_finish_captures_the_response_headers_given(spans, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "content-type")
    config.reset_http_settings()
    span = start()
    assert span.response_headers
    span.finish(200, None, False, [("Content-Type", "text/plain"), ("X-Other", "1")])
    assert tuple(only(spans).attributes["http.response.header.content-type"]) == ("text/plain",)


def test_finish_ends_and_detaches_even_when_recording_fails(spans, warnings):
    class Broken:
        attributes = {}
        ended = False

        def set_attributes(self, attributes):
            raise RuntimeError("cannot record")

        def end(self):
            self.ended = True

    before = context.get_current()
    broken = Broken()
    ctx = context.set_value("x", 1)
    span = server_span.ServerSpan(broken, ctx, context.attach(ctx), "GET")
    span.finish(200, "/r")  # never raises
    assert broken.ended and span.ended and context.get_current() == before
    assert any("cannot record" in line for line in warnings())
