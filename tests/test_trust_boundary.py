"""The trust boundary (AUTOTRACE_INCOMING_CONTEXT) and sampling of incoming requests.

``continue`` (default) continues the caller's trace, ``restart`` starts a new one linked
to the caller's span with the incoming baggage dropped, ``ignore`` disregards the
incoming context altogether. HTTP (server_span.start) and gRPC (rpc_span.start_server)
share one function for it. Sampling follows OTEL_TRACES_SAMPLER: an unsampled caller
under ``parentbased_always_on`` gives non-recording spans whose context still travels on.
"""

from __future__ import annotations

import contextlib

import pytest
import requests
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from autotrace import api, client_span, config, rpc_span, sdk, server_span
from autotrace.config import Configuration
from autotrace.propagation import build

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{SPAN_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{SPAN_ID}-00"
OTHER_TRACE_ID = "11111111111111111111111111111111"
OTHER_SPAN_ID = "2222222222222222"
OVERSIZED = 9000  # characters: over the 8192 a propagation header value may have


@contextlib.contextmanager
def propagators(*names: str):
    """The agent's propagators of ``names`` as the global propagator, for a block."""
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(build(list(names)))
    try:
        yield
    finally:
        propagate.set_global_textmap(before)


def lookup(headers: dict | None = None):
    table = {k.lower(): ([v] if isinstance(v, str) else list(v)) for k, v in (headers or {}).items()}
    return lambda name: table.get(name, [])


def start(headers=None):
    return server_span.start(method="GET", scheme="http", path="/x", query="", headers=lookup(headers))


def finish(span):
    assert span is not None
    span.detach()
    span.end()


def only(spans):
    finished = spans.get_finished_spans()
    assert len(finished) == 1, [s.name for s in finished]
    return finished[0]


@pytest.fixture
def mode(spans, monkeypatch):
    """``mode("restart")``: set AUTOTRACE_INCOMING_CONTEXT (None: unset) for the next request."""

    def set_mode(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("AUTOTRACE_INCOMING_CONTEXT", raising=False)
        else:
            monkeypatch.setenv("AUTOTRACE_INCOMING_CONTEXT", value)
        config.reset_http_settings()

    set_mode(None)
    return set_mode


# -- the setting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "continue"), ("", "continue"), ("continue", "continue"), ("restart", "restart"), ("ignore", "ignore"), (" Restart ", "restart")],
)
def test_mode_values(mode, warnings, value, expected):
    mode(value)
    assert config.http_settings().incoming_context == expected
    assert warnings() == []


def test_a_wrong_mode_warns_once_naming_the_variable_and_value_then_continues(mode, warnings, spans):
    mode("drop")
    assert config.http_settings().incoming_context == "continue"
    config.reset_http_settings()
    assert config.http_settings().incoming_context == "continue"
    [line] = warnings()
    assert "AUTOTRACE_INCOMING_CONTEXT" in line and "'drop'" in line and "continue" in line
    finish(start({"traceparent": SAMPLED}))
    assert only(spans).context.trace_id == int(TRACE_ID, 16)


# -- HTTP -------------------------------------------------------------------------------


def test_continue_keeps_the_parent_and_baggage(mode, spans):
    span = start({"traceparent": SAMPLED, "baggage": "tenant=acme"})
    assert baggage.get_baggage("tenant", span.context) == "acme"
    finish(span)
    recorded = only(spans)
    assert recorded.context.trace_id == int(TRACE_ID, 16)
    assert recorded.parent.span_id == int(SPAN_ID, 16) and recorded.parent.is_remote
    assert list(recorded.links) == []


def test_restart_starts_a_trace_linked_to_the_caller_and_drops_baggage(mode, spans):
    mode("restart")
    span = start({"traceparent": SAMPLED, "tracestate": "vendor=x", "baggage": "tenant=acme"})
    assert baggage.get_all(span.context) == {}
    assert baggage.get_all() == {}  # not in the request's current context either
    finish(span)
    recorded = only(spans)
    assert recorded.parent is None
    assert recorded.context.trace_id != int(TRACE_ID, 16)
    [link] = recorded.links
    assert (link.context.trace_id, link.context.span_id) == (int(TRACE_ID, 16), int(SPAN_ID, 16))
    assert link.context.is_remote


@pytest.mark.parametrize("headers", [{}, {"traceparent": "00-zz-yy-01"}, {"traceparent": [SAMPLED, SAMPLED]}])
def test_restart_without_a_valid_caller_has_no_link(mode, spans, headers):
    mode("restart")
    finish(start(headers))
    recorded = only(spans)
    assert recorded.parent is None and list(recorded.links) == []


def test_restart_decides_sampling_afresh(mode, spans):
    """A caller's 'not sampled' flag does not reach past a restarting edge."""
    mode("restart")
    span = start({"traceparent": UNSAMPLED})
    assert span.span.is_recording()
    finish(span)
    assert only(spans).context.trace_flags.sampled


def test_ignore_disregards_the_incoming_context(mode, spans):
    mode("ignore")
    span = start({"traceparent": SAMPLED, "baggage": "tenant=acme"})
    assert baggage.get_all(span.context) == {}
    finish(span)
    recorded = only(spans)
    assert recorded.parent is None and list(recorded.links) == []
    assert recorded.context.trace_id != int(TRACE_ID, 16)


@pytest.mark.parametrize("value", ["restart", "ignore"])
def test_a_new_trace_even_under_an_in_process_span(mode, spans, value):
    mode(value)
    with trace.get_tracer("test").start_as_current_span("outer"):
        finish(start({"traceparent": SAMPLED}))
    server = next(s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert server.parent is None


def test_baggage_is_never_read_into_the_span(mode, spans):
    span = start({"traceparent": SAMPLED, "baggage": "user.id=secret-42,tenant=acme"})
    finish(span)
    recorded = only(spans)
    assert not any("secret-42" in str(v) or "acme" in str(v) for v in recorded.attributes.values())
    assert not any(k.startswith(("baggage", "user.id", "tenant")) for k in recorded.attributes)


# -- gRPC: the same function ----------------------------------------------------------


def rpc(metadata):
    call = rpc_span.start_server("/pkg.Echo/Unary", metadata, attach=False)
    assert call is not None
    call.end()
    return call


def test_grpc_continue(mode, spans):
    call = rpc([("traceparent", SAMPLED), ("baggage", "tenant=acme")])
    assert baggage.get_baggage("tenant", call.context) == "acme"
    recorded = only(spans)
    assert recorded.context.trace_id == int(TRACE_ID, 16) and recorded.parent.span_id == int(SPAN_ID, 16)


def test_grpc_restart(mode, spans):
    mode("restart")
    call = rpc([("traceparent", SAMPLED), ("baggage", "tenant=acme")])
    assert baggage.get_all(call.context) == {}
    recorded = only(spans)
    assert recorded.parent is None and recorded.context.trace_id != int(TRACE_ID, 16)
    [link] = recorded.links
    assert (link.context.trace_id, link.context.span_id) == (int(TRACE_ID, 16), int(SPAN_ID, 16))


def test_grpc_ignore(mode, spans):
    mode("ignore")
    call = rpc([("traceparent", SAMPLED), ("baggage", "tenant=acme")])
    assert baggage.get_all(call.context) == {}
    recorded = only(spans)
    assert recorded.parent is None and list(recorded.links) == []


# -- repeated and oversized values: counted first, then the size limit -----------------


@pytest.mark.parametrize(
    "traceparents",
    [
        pytest.param([SAMPLED, SAMPLED + " " * OVERSIZED], id="an-oversized-copy"),
        pytest.param([SAMPLED, "x" * OVERSIZED], id="an-oversized-other"),
        pytest.param(["x" * OVERSIZED, SAMPLED], id="the-oversized-one-first"),
        pytest.param([SAMPLED] * 100, id="many-copies"),
    ],
)
def test_a_repeated_traceparent_is_invalid_even_when_a_copy_is_oversized(mode, spans, traceparents):
    finish(start({"traceparent": traceparents}))
    recorded = only(spans)
    assert recorded.parent is None and recorded.context.trace_id != int(TRACE_ID, 16)


def test_an_oversized_traceparent_alone_starts_a_new_trace(mode, spans):
    finish(start({"traceparent": SAMPLED + " " * OVERSIZED}))
    assert only(spans).parent is None


@pytest.mark.parametrize(
    "tracestates",
    [
        pytest.param(["vendor=x", "big=" + "v" * OVERSIZED], id="an-extra-oversized-header"),
        pytest.param(["vendor=x", "a=1," * 4200], id="an-extra-header-over-the-tracestate-limit"),
        pytest.param(["vendor=x" + " " * 17000], id="one-oversized-header"),
    ],
)
def test_an_oversized_tracestate_header_drops_the_whole_tracestate(mode, spans, tracestates):
    finish(start({"traceparent": SAMPLED, "tracestate": tracestates}))
    recorded = only(spans)
    assert recorded.parent.span_id == int(SPAN_ID, 16)  # the traceparent is kept
    assert len(recorded.context.trace_state) == 0


def test_a_valid_tracestate_over_8192_characters_is_kept(mode, spans):
    members = [f"k{i}=" + "v" * 255 + "x" for i in range(32)]  # 8,541 characters, all valid
    assert len(",".join(members)) > 8192
    finish(start({"traceparent": SAMPLED, "tracestate": ",".join(members)}))
    assert [f"{k}={v}" for k, v in only(spans).context.trace_state.items()] == members


def test_grpc_counts_repeated_traceparents_before_the_size_limit(mode, spans):
    rpc([("traceparent", SAMPLED), ("traceparent", SAMPLED + " " * OVERSIZED)])
    assert only(spans).parent is None
    spans.clear()
    rpc([("traceparent", SAMPLED.encode()), ("traceparent", b"x" * OVERSIZED)])  # bytes as well
    assert only(spans).parent is None
    spans.clear()
    rpc([("traceparent", SAMPLED), ("tracestate", "vendor=x"), ("tracestate", "big=" + "v" * 17000)])
    recorded = only(spans)
    assert recorded.parent.span_id == int(SPAN_ID, 16) and len(recorded.context.trace_state) == 0
    spans.clear()
    rpc([("traceparent", SAMPLED), ("tracestate", "vendor=x"), ("tracestate", "a=1")])
    assert list(only(spans).context.trace_state.items()) == [("vendor", "x"), ("a", "1")]


# -- links found by the composite propagator (autotrace.propagation) ------------------


@pytest.fixture
def composite():
    """The agent's composite of tracecontext then b3multi as the global propagator."""
    with propagators("tracecontext", "b3multi"):
        yield


TWO_TRACES = {
    "traceparent": SAMPLED,
    "x-b3-traceid": OTHER_TRACE_ID,
    "x-b3-spanid": OTHER_SPAN_ID,
    "x-b3-sampled": "1",
}


def ids(link):
    return link.context.trace_id, link.context.span_id


def test_continue_links_the_other_formats_trace(mode, spans, composite):
    finish(start(TWO_TRACES))
    recorded = only(spans)
    assert recorded.context.trace_id == int(TRACE_ID, 16)
    assert [ids(link) for link in recorded.links] == [(int(OTHER_TRACE_ID, 16), int(OTHER_SPAN_ID, 16))]


def test_restart_links_the_caller_and_the_other_formats_trace(mode, spans, composite):
    mode("restart")
    finish(start(TWO_TRACES))
    recorded = only(spans)
    assert recorded.parent is None
    assert [ids(link) for link in recorded.links] == [
        (int(TRACE_ID, 16), int(SPAN_ID, 16)),
        (int(OTHER_TRACE_ID, 16), int(OTHER_SPAN_ID, 16)),
    ]


def test_grpc_continue_links_the_other_formats_trace(mode, spans, composite):
    rpc(list(TWO_TRACES.items()))
    recorded = only(spans)
    assert [ids(link) for link in recorded.links] == [(int(OTHER_TRACE_ID, 16), int(OTHER_SPAN_ID, 16))]


# -- sampling ----------------------------------------------------------------------------


def test_an_unsampled_request_is_not_recorded_but_its_context_travels_on(mode, client_hooks, peer):
    """Default parentbased_always_on: the caller's 'not sampled' is followed, and propagated."""
    span = start({"traceparent": UNSAMPLED, "tracestate": "vendor=x", "baggage": "tenant=acme"})
    assert span is not None and not span.span.is_recording()
    assert span.span.get_span_context().trace_id == int(TRACE_ID, 16)
    try:
        response = requests.get(peer.url("/ok", "unsampled"), timeout=5)
    finally:
        finish(span)
    assert response.status_code == 200
    [received] = peer.requests("unsampled")
    [traceparent] = received.headers["traceparent"]
    version, trace_id, parent_id, flags = traceparent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "00")
    assert parent_id != "0" * 16
    assert received.header("tracestate") == "vendor=x"
    assert received.header("baggage") == "tenant=acme"
    assert client_hooks.get_finished_spans() == ()  # nothing recorded, nothing exported


def test_a_sampled_request_is_recorded_and_flags_01_travel_on(mode, client_hooks, peer):
    span = start({"traceparent": SAMPLED})
    try:
        requests.get(peer.url("/ok", "sampled"), timeout=5)
    finally:
        finish(span)
    [received] = peer.requests("sampled")
    _, trace_id, parent_id, flags = received.header("traceparent").split("-")
    assert (trace_id, flags) == (TRACE_ID, "01")
    client = next(s for s in client_hooks.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert int(parent_id, 16) == client.context.span_id


def sampled(sampler: sampling.Sampler, trace_id: int, parent: str | None = None) -> bool:
    ctx = propagate.extract({"traceparent": parent}, context=context.Context()) if parent else None
    result = sampler.should_sample(ctx, trace_id, "GET", SpanKind.SERVER)
    return result.decision.is_sampled()


LOW, HIGH = 1, (1 << 64) - 1  # trace ids whose lower 64 bits are below / above any ratio's bound


def test_traceidratio_samples_by_trace_id_and_ignores_the_parent():
    ratio = sdk.build_sampler(Configuration(sampler="traceidratio", sampler_arg=0.5))
    assert sampled(ratio, LOW) and not sampled(ratio, HIGH)
    assert not sampled(ratio, HIGH, SAMPLED)  # not parent-based
    assert sampled(ratio, LOW, UNSAMPLED)
    never = sdk.build_sampler(Configuration(sampler="traceidratio", sampler_arg=0.0))
    assert not sampled(never, LOW)


def test_parentbased_traceidratio_follows_the_parent_and_else_the_ratio():
    sampler = sdk.build_sampler(Configuration(sampler="parentbased_traceidratio", sampler_arg=0.0))
    assert sampled(sampler, HIGH, SAMPLED)
    assert not sampled(sampler, LOW, UNSAMPLED)
    assert not sampled(sampler, LOW)  # a root: the ratio (0) decides


def test_always_off_drops_even_a_sampled_caller_and_still_propagates():
    """A provider with always_off: spans do not record, their context (flags 00) travels on."""
    provider = TracerProvider(sampler=sdk.build_sampler(Configuration(sampler="always_off")))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    parent = propagate.extract({"traceparent": SAMPLED})
    span = tracer.start_span("GET", context=parent, kind=SpanKind.SERVER)
    assert not span.is_recording()
    carrier: dict = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    _, trace_id, _, flags = carrier["traceparent"].split("-")
    assert (trace_id, flags) == (TRACE_ID, "00")
    span.end()
    assert exporter.get_finished_spans() == ()
    provider.shutdown()


def test_always_on_records_even_an_unsampled_caller():
    sampler = sdk.build_sampler(Configuration(sampler="always_on"))
    assert sampled(sampler, HIGH, UNSAMPLED)
    assert not sampled(sdk.build_sampler(Configuration()), HIGH, UNSAMPLED)  # the default follows it


def test_jaeger_baggage_is_read_through_a_servers_header_names(spans):
    """``uberctx-*`` headers are found by listing the request's header names (HeaderLookup)."""
    with propagators("jaeger"):
        received = {
            "uber-trace-id": ["4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:1"],
            "uberctx-tenant": ["blue%20team"],
        }
        lookup = server_span.HeaderLookup(lambda name: received.get(name, []), lambda: list(received))
        span = server_span.start("GET", "http", "/", "", lookup)
        try:
            assert baggage.get_baggage("tenant") == "blue team"
            assert span.span.parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
        finally:
            span.detach()
            span.end()


# -- B3 sampling decisions: deny, accept and deferred (the agent's sampler) -------------


@pytest.fixture
def agent_sampler(spans, monkeypatch):
    """Server and client spans from a provider with the agent's default sampler
    (sdk.build_sampler: parentbased_always_on); yields its in-memory exporter."""
    provider = TracerProvider(sampler=sdk.build_sampler(Configuration()))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setitem(api.tracers, server_span.TRACER, provider.get_tracer("autotrace.http.server"))
    monkeypatch.setitem(api.tracers, client_span.TRACER, provider.get_tracer("autotrace.http.client"))
    yield exporter
    provider.shutdown()


def call_peer(peer, headers: dict, case: str):
    """A request with ``headers`` whose handler calls the peer: whether its SERVER span
    was recording, and what the peer received."""
    span = start(headers)
    assert span is not None
    recording = span.span.is_recording()
    try:
        assert requests.get(peer.url("/ok", case), timeout=5).status_code == 200
    finally:
        finish(span)
    [received] = peer.requests(case)
    return recording, received


@pytest.mark.parametrize(
    ("formats", "headers"),
    [
        (("b3",), {"b3": "0"}),
        (("b3",), {"X-B3-Sampled": "0"}),
        (("b3multi",), {"b3": "0"}),
        (("tracecontext", "b3"), {"b3": "0", "traceparent": "garbage"}),
    ],
)
def test_a_b3_deny_without_ids_is_honoured_and_sent_downstream(mode, client_hooks, agent_sampler, peer, formats, headers):
    with propagators(*formats):
        recording, received = call_peer(peer, headers, "deny")
    assert not recording
    if "b3multi" in formats:
        assert received.header("x-b3-sampled") == "0"
    else:
        assert received.header("b3").endswith("-0")
    if "tracecontext" in formats:
        assert int(received.header("traceparent")[-2:], 16) & 0x01 == 0  # not sampled (random bit aside)
    assert agent_sampler.get_finished_spans() == ()


def test_a_deny_does_not_reach_past_a_restarting_edge(mode, client_hooks, agent_sampler, peer):
    mode("restart")
    with propagators("b3"):
        recording, received = call_peer(peer, {"b3": "0"}, "restart-deny")
    assert recording and received.header("b3").endswith("-1")


def test_a_b3_deny_under_a_valid_parent_does_not_apply(mode, agent_sampler):
    """tracecontext gives the parent (sampled); a b3 "0" alone is for root spans only."""
    with propagators("tracecontext", "b3"):
        span = start({"traceparent": SAMPLED, "b3": "0"})
    assert span.span.is_recording()
    finish(span)


def test_a_deferred_b3_context_is_continued_and_our_sampler_decides(mode, client_hooks, agent_sampler, peer):
    with propagators("b3"):
        recording, received = call_peer(peer, {"b3": f"{TRACE_ID}-{SPAN_ID}"}, "deferred")
    assert recording  # the default root sampler (always_on) decided
    trace_id, _, state = received.header("b3").split("-")
    assert (trace_id, state) == (TRACE_ID, "1")
    server = next(s for s in agent_sampler.get_finished_spans() if s.kind is SpanKind.SERVER)
    assert server.parent.span_id == int(SPAN_ID, 16)


def b3_sampled(sampler: sampling.Sampler, headers: dict, trace_id: int = LOW) -> bool:
    ctx = build(["b3"]).extract(headers, context.Context())
    parent = trace.get_current_span(ctx).get_span_context()
    result = sampler.should_sample(ctx, parent.trace_id if parent.is_valid else trace_id, "GET", SpanKind.SERVER)
    return result.decision.is_sampled()


@pytest.mark.parametrize(
    ("name", "arg", "headers", "expected"),
    [
        ("parentbased_always_on", 1.0, {"b3": "0"}, False),
        ("parentbased_always_on", 1.0, {"b3": "1"}, True),
        ("parentbased_always_off", 1.0, {"b3": "1"}, True),  # accept: as a sampled remote parent
        ("parentbased_always_off", 1.0, {"b3": "d"}, True),
        ("parentbased_always_off", 1.0, {"x-b3-flags": "1"}, True),
        ("parentbased_always_off", 1.0, {}, False),
        ("parentbased_always_on", 1.0, {"b3": f"{TRACE_ID}-{SPAN_ID}"}, True),  # deferred: the root sampler
        ("parentbased_always_off", 1.0, {"b3": f"{TRACE_ID}-{SPAN_ID}"}, False),
        ("parentbased_traceidratio", 0.5, {"b3": f"{'0' * 16}{'0' * 15}1-{SPAN_ID}"}, True),  # a low trace id
        ("parentbased_traceidratio", 0.5, {"b3": f"{'f' * 32}-{SPAN_ID}"}, False),
        ("parentbased_always_on", 1.0, {"b3": f"{TRACE_ID}-{SPAN_ID}-0"}, False),  # not deferred: followed
        ("parentbased_always_off", 1.0, {"b3": f"{TRACE_ID}-{SPAN_ID}-1"}, True),
    ],
)
def test_the_agents_samplers_honour_b3_decisions(name, arg, headers, expected):
    assert b3_sampled(sdk.build_sampler(Configuration(sampler=name, sampler_arg=arg)), headers) is expected


def test_a_b3_decision_applies_to_its_own_span_only():
    """A local child of the server span follows the server span, whatever came in."""
    sampler = sdk.build_sampler(Configuration())
    ctx = build(["b3"]).extract({"b3": f"{TRACE_ID}-{SPAN_ID}"}, context.Context())
    local = trace.SpanContext(int(TRACE_ID, 16), int(OTHER_SPAN_ID, 16), is_remote=False, trace_flags=trace.TraceFlags(0))
    child = trace.set_span_in_context(trace.NonRecordingSpan(local), ctx)
    assert not sampler.should_sample(child, int(TRACE_ID, 16), "GET").decision.is_sampled()
    denied = build(["b3"]).extract({"b3": "0"}, context.Context())
    sampled_local = trace.SpanContext(int(TRACE_ID, 16), int(OTHER_SPAN_ID, 16), is_remote=False, trace_flags=trace.TraceFlags(1))
    under = trace.set_span_in_context(trace.NonRecordingSpan(sampled_local), denied)
    assert sampler.should_sample(under, int(TRACE_ID, 16), "GET").decision.is_sampled()
