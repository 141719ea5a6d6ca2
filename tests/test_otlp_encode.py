"""The direct OTLP encoder against the SDK's: the parsed messages must be equal."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace import set_span_in_context
from opentelemetry.trace.span import TraceState

from autotrace import otlp_encode
from autotrace.otlp_encode import encode_spans


def _provider(resource=None, limits=None):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource({"service.name": "svc"}), span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def assert_same(spans):
    ours = encode_spans(spans)
    expected = sdk_encode_spans(spans)
    parsed = ExportTraceServiceRequest.FromString(ours)
    assert parsed == expected, (parsed, expected)
    return ours, expected


REMOTE = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "a=1"), ("other", "x")]),
)
LOCAL_LINKED = SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(0))


ATTRIBUTES = {
    "str": "value",
    "empty": "",
    "unicode": "héllo ✓ 日本 🎉",
    "bool_t": True,
    "bool_f": False,
    "zero": 0,
    "int": 42,
    "neg": -1,
    "neg_big": -(2**63),
    "max": 2**63 - 1,
    "big": 2**40 + 7,
    "float": 3.25,
    "float_neg": -0.0,
    "float_zero": 0.0,
    "inf": float("inf"),
    "str_list": ["a", "", "ü"],
    "int_list": [1, -2, 3],
    "bool_list": [True, False],
    "float_list": [1.5, -2.5],
    "empty_list": [],
    "bytes": b"\x00\x01\xff",
}


def test_field_numbers_match_the_generated_modules():
    def number(message, field):
        return message.DESCRIPTOR.fields_by_name[field].number

    def tag(message, field, wire):
        return otlp_encode._tag(number(message, field), wire)

    e = otlp_encode
    req = ExportTraceServiceRequest
    span, event, link = trace_pb2.Span, trace_pb2.Span.Event, trace_pb2.Span.Link
    checks = [
        (e.T_REQUEST_RESOURCE_SPANS, req, "resource_spans", 2),
        (e.T_RS_RESOURCE, trace_pb2.ResourceSpans, "resource", 2),
        (e.T_RS_SCOPE_SPANS, trace_pb2.ResourceSpans, "scope_spans", 2),
        (e.T_RS_SCHEMA_URL, trace_pb2.ResourceSpans, "schema_url", 2),
        (e.T_RESOURCE_ATTRIBUTES, resource_pb2.Resource, "attributes", 2),
        (e.T_SS_SCOPE, trace_pb2.ScopeSpans, "scope", 2),
        (e.T_SS_SPANS, trace_pb2.ScopeSpans, "spans", 2),
        (e.T_SS_SCHEMA_URL, trace_pb2.ScopeSpans, "schema_url", 2),
        (e.T_SCOPE_NAME, common_pb2.InstrumentationScope, "name", 2),
        (e.T_SCOPE_VERSION, common_pb2.InstrumentationScope, "version", 2),
        (e.T_SCOPE_ATTRIBUTES, common_pb2.InstrumentationScope, "attributes", 2),
        (e.T_SPAN_TRACE_ID, span, "trace_id", 2),
        (e.T_SPAN_SPAN_ID, span, "span_id", 2),
        (e.T_SPAN_TRACE_STATE, span, "trace_state", 2),
        (e.T_SPAN_PARENT_SPAN_ID, span, "parent_span_id", 2),
        (e.T_SPAN_NAME, span, "name", 2),
        (e.T_SPAN_KIND, span, "kind", 0),
        (e.T_SPAN_START, span, "start_time_unix_nano", 1),
        (e.T_SPAN_END, span, "end_time_unix_nano", 1),
        (e.T_SPAN_ATTRIBUTES, span, "attributes", 2),
        (e.T_SPAN_DROPPED_ATTRIBUTES, span, "dropped_attributes_count", 0),
        (e.T_SPAN_EVENTS, span, "events", 2),
        (e.T_SPAN_DROPPED_EVENTS, span, "dropped_events_count", 0),
        (e.T_SPAN_LINKS, span, "links", 2),
        (e.T_SPAN_DROPPED_LINKS, span, "dropped_links_count", 0),
        (e.T_SPAN_STATUS, span, "status", 2),
        (e.T_SPAN_FLAGS, span, "flags", 5),
        (e.T_EVENT_TIME, event, "time_unix_nano", 1),
        (e.T_EVENT_NAME, event, "name", 2),
        (e.T_EVENT_ATTRIBUTES, event, "attributes", 2),
        (e.T_EVENT_DROPPED_ATTRIBUTES, event, "dropped_attributes_count", 0),
        (e.T_LINK_TRACE_ID, link, "trace_id", 2),
        (e.T_LINK_SPAN_ID, link, "span_id", 2),
        (e.T_LINK_ATTRIBUTES, link, "attributes", 2),
        (e.T_LINK_DROPPED_ATTRIBUTES, link, "dropped_attributes_count", 0),
        (e.T_LINK_FLAGS, link, "flags", 5),
        (e.T_STATUS_MESSAGE, trace_pb2.Status, "message", 2),
        (e.T_STATUS_CODE, trace_pb2.Status, "code", 0),
        (e.T_KV_KEY, common_pb2.KeyValue, "key", 2),
        (e.T_KV_VALUE, common_pb2.KeyValue, "value", 2),
        (e.T_ANY_STRING, common_pb2.AnyValue, "string_value", 2),
        (e.T_ANY_BOOL, common_pb2.AnyValue, "bool_value", 0),
        (e.T_ANY_INT, common_pb2.AnyValue, "int_value", 0),
        (e.T_ANY_DOUBLE, common_pb2.AnyValue, "double_value", 1),
        (e.T_ANY_ARRAY, common_pb2.AnyValue, "array_value", 2),
        (e.T_ANY_KVLIST, common_pb2.AnyValue, "kvlist_value", 2),
        (e.T_ANY_BYTES, common_pb2.AnyValue, "bytes_value", 2),
        (e.T_LIST_VALUES, common_pb2.ArrayValue, "values", 2),
        (e.T_LIST_VALUES, common_pb2.KeyValueList, "values", 2),
    ]
    for constant, message, field, wire in checks:
        assert constant == tag(message, field, wire), (message.DESCRIPTOR.name, field)
    # The flags masks, from the generated enum.
    assert otlp_encode._HAS_IS_REMOTE == trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
    assert otlp_encode._IS_REMOTE == trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK


def test_empty_batch():
    assert_same([])


def test_attributes_of_every_type():
    provider, exporter = _provider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("s", attributes=ATTRIBUTES):
        pass
    # Twice: the second goes through the key-value cache.
    with tracer.start_as_current_span("s", attributes=ATTRIBUTES):
        pass
    assert_same(exporter.get_finished_spans())


@pytest.mark.parametrize("kind", list(SpanKind))
def test_all_kinds(kind):
    provider, exporter = _provider()
    with provider.get_tracer("t").start_as_current_span("op", kind=kind):
        pass
    assert_same(exporter.get_finished_spans())


def test_parents_local_and_remote_and_trace_state():
    provider, exporter = _provider()
    tracer = provider.get_tracer("t", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0")
    ctx = set_span_in_context(NonRecordingSpan(REMOTE))
    with tracer.start_as_current_span("remote-child", context=ctx):
        with tracer.start_as_current_span("local-child"):
            pass
    with tracer.start_as_current_span("root"):
        pass
    spans = exporter.get_finished_spans()
    assert spans[1].parent.is_remote and spans[1].get_span_context().trace_state
    assert_same(spans)


def test_events_links_status():
    provider, exporter = _provider()
    tracer = provider.get_tracer("t")
    links = [
        Link(REMOTE, {"l": 1, "list": ["x"]}),
        Link(LOCAL_LINKED),
        Link(LOCAL_LINKED, {}),
    ]
    with tracer.start_as_current_span("s", links=links) as span:
        span.add_event("plain")
        span.add_event("with-attrs", {"a": "b", "n": -5, "f": 1.0}, timestamp=1234)
        span.add_event("", {})
        span.set_status(Status(StatusCode.ERROR, "boom ✗"))
    with tracer.start_as_current_span("ok") as span:
        span.set_status(Status(StatusCode.OK))
    with tracer.start_as_current_span("error-no-message") as span:
        span.set_status(Status(StatusCode.ERROR))
    with tracer.start_as_current_span("exception") as span:
        span.record_exception(ValueError("bad"))
    assert_same(exporter.get_finished_spans())


def test_dropped_counts():
    limits = SpanLimits(
        max_span_attributes=2,
        max_events=1,
        max_links=1,
        max_event_attributes=1,
        max_link_attributes=1,
    )
    provider, exporter = _provider(limits=limits)
    tracer = provider.get_tracer("t")
    links = [Link(REMOTE, {"a": 1, "b": 2, "c": 3}), Link(LOCAL_LINKED)]
    with tracer.start_as_current_span("s", links=links, attributes={"a": 1, "b": 2, "c": 3, "d": 4}) as span:
        for i in range(3):
            span.add_event(f"e{i}", {"x": i, "y": i})
    spans = exporter.get_finished_spans()
    assert spans[0].dropped_attributes and spans[0].dropped_events and spans[0].dropped_links
    assert_same(spans)


def test_several_resources_and_scopes_interleaved():
    p1, e1 = _provider(Resource({"service.name": "a", "n": 1}, schema_url="https://example.com/s"))
    p2, e2 = _provider(Resource({"service.name": "b", "list": [1, 2]}))
    # Equal but distinct resource objects are one group, as in the SDK.
    p3, e3 = _provider(Resource({"service.name": "a", "n": 1}, schema_url="https://example.com/s"))
    for provider in (p1, p2, p3, p1, p2):
        for scope in ("x", "y", "x"):
            tracer = provider.get_tracer(scope, "0.1", attributes={"scope.attr": scope})
            with tracer.start_as_current_span(f"{scope}-span"):
                pass
    plain = p1.get_tracer("plain")  # no version, no attributes
    with plain.start_as_current_span(""):
        pass
    spans = e1.get_finished_spans() + e2.get_finished_spans() + e3.get_finished_spans()
    spans = sorted(spans, key=lambda s: s.start_time)
    assert_same(spans)
    assert_same(spans)  # with the resource and scope caches warm


def test_unencodable_attributes_are_skipped_like_the_sdk():
    provider, exporter = _provider()
    with provider.get_tracer("t").start_as_current_span("s") as span:
        span.set_attribute("ok", "yes")
    spans = exporter.get_finished_spans()
    # Values the SDK's attribute checks would refuse, put in behind its back.
    span = spans[0]
    span._attributes = {  # noqa: SLF001
        "ok": "yes",
        "too_big": 2**64,
        "too_small": -(2**63) - 1,
        "none": None,
        "mapping": {"k": "v", 1: [1, 2]},
        "object": object(),
        "surrogate": "bad \ud800",
        "after": 1,
    }
    assert_same(spans)


def test_typical_http_server_span_repeated():
    provider, exporter = _provider()
    tracer = provider.get_tracer("autotrace.wsgi", "0.1.0")
    for i in range(50):
        with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER) as span:
            span.set_attributes(
                {
                    "http.request.method": "GET",
                    "url.path": f"/items/{i}",
                    "url.scheme": "http",
                    "http.route": "/items/{id}",
                    "http.response.status_code": 200 if i % 7 else 500,
                    "server.address": "localhost",
                    "server.port": 8000,
                    "network.protocol.version": "1.1",
                    "client.address": "127.0.0.1",
                    "user_agent.original": "wrk",
                }
            )
    ours, expected = assert_same(exporter.get_finished_spans())
    # The SDK (upb) writes fields in field-number order, as we do: the very same bytes.
    assert ours == expected.SerializeToString()


def test_the_export_threads_encoding_pauses_every_few_spans(monkeypatch):
    """With ``pause`` (the export thread), a pause every PAUSE_EVERY spans; the same bytes."""
    from autotrace import otlp_encode

    provider, exporter = _provider()
    tracer = provider.get_tracer("t")
    for i in range(otlp_encode.PAUSE_EVERY * 3 + 5):
        tracer.start_span(f"s{i}").end()
    spans = exporter.get_finished_spans()
    pauses = []
    monkeypatch.setattr(otlp_encode, "sleep", pauses.append)
    plain = otlp_encode.encode_spans(spans)
    assert pauses == []
    assert otlp_encode.encode_spans(spans, pause=True) == plain
    assert pauses == [otlp_encode.PAUSE_S] * 3


@pytest.mark.parametrize(
    "first, second",
    [({"a": True}, {"a": 1}), ({"a": 0}, {"a": False}), ({"f": 0.0}, {"f": -0.0}), ({"f": float("nan")}, {"f": float("nan")})],
    ids=["true-then-1", "0-then-false", "zero-then-minus-zero", "nan-twice"],
)
def test_the_caches_never_give_one_value_the_encoding_of_an_equal_one(first, second):
    """True == 1 and 0.0 == -0.0 as dict keys: a light span's cached attribute block and the
    per-pair cache must still encode each as itself (as the SDK does)."""
    from opentelemetry import context

    from autotrace import light_span

    provider, exporter = _provider()
    tracer = provider.get_tracer("autotrace.test")
    for attributes in (first, second, first, second):
        light_span.start_span(tracer, "op", SpanKind.CLIENT, context.Context(), attributes).end()
    spans = exporter.get_finished_spans()
    for span in spans:
        assert otlp_encode.encode_light(span) == otlp_encode.encode_span(span)
        expected = sdk_encode_spans([span]).SerializeToString()
        assert otlp_encode.encode_request([(span.resource, span.instrumentation_scope, otlp_encode.encode_light(span))]) == expected
