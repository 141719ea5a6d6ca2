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


# -- the compiled encoder (autotrace/_speedups.c) against the Python one and the SDK's ----------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LONG = st.builds(
    lambda char, n: char * n,
    st.sampled_from(["a", "é", "日", "🎉"]),
    st.sampled_from([0, 1, 42, 63, 64, 127, 128, 129, 5_000, 8_192, 16_383, 16_384, 20_000]),
)
_C_VALUES = st.one_of(
    st.text(max_size=40),
    _LONG,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 127, 128, -(2**63), 2**63 - 1, 2**63, -(2**63) - 1, 2**100, -(2**100)]),  # outside int64: skipped
    st.floats(),  # nan and inf included
    st.sampled_from([0.0, -0.0, float("nan"), float("inf"), float("-inf"), 5e-324]),
)
_C_ATTRIBUTES = st.dictionaries(st.one_of(st.text(max_size=16), _LONG), _C_VALUES, max_size=40)
_PARENTS = st.sampled_from(["none", "local", "remote", "remote with trace state", "remote with w3c trace state"])


def _light(tracer, name, kind, parent_kind, attributes):
    from opentelemetry import context

    from autotrace import light_span

    if parent_kind == "none":
        parent = context.Context()
    elif parent_kind == "local":
        parent = set_span_in_context(light_span.start_span(tracer, "parent", SpanKind.SERVER, context.Context(), {}))
    else:
        from autotrace.propagation.tracecontext import W3CTraceState

        state = {
            "remote": TraceState(),
            "remote with trace state": REMOTE.trace_state,
            "remote with w3c trace state": W3CTraceState({"foo@bar": "1", "k": "v é", "0a": ""}),
        }[parent_kind]
        remote = SpanContext(REMOTE.trace_id, REMOTE.span_id, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
        parent = set_span_in_context(NonRecordingSpan(remote))
    return light_span.start_span(tracer, name, kind, parent, attributes)


def _compiled():
    from autotrace import _speedups

    return _speedups


def test_the_compiled_encoder_is_built_in_this_install():
    """Fails where the extension was not built (no compiler in CI would otherwise go unseen)."""
    speedups = _compiled()
    assert otlp_encode.COMPILED and otlp_encode.speedups is speedups
    assert otlp_encode.encode_light is speedups.encode_light


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    name=st.one_of(st.text(max_size=30), _LONG),
    kind=st.sampled_from(list(SpanKind)),
    parent_kind=_PARENTS,
    attributes=_C_ATTRIBUTES,
    status=st.sampled_from([None, (StatusCode.OK, None), (StatusCode.ERROR, None), (StatusCode.ERROR, "why ✓"), (StatusCode.ERROR, "")]),
    end_time=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
)
def test_the_compiled_encoding_is_the_pythons_and_the_sdks(name, kind, parent_kind, attributes, status, end_time):
    speedups = _compiled()
    provider, exporter = _provider()
    tracer = provider.get_tracer("autotrace.test", "1.0")
    span = _light(tracer, name, kind, parent_kind, attributes)
    if status is not None:
        span.set_status(Status(*status))
    span.end(end_time=end_time)
    compiled = speedups.encode_light_common(span)
    python = otlp_encode._encode_light_py(span)
    assert compiled is not None  # the common case: the C code's
    assert compiled == python
    assert otlp_encode.encode_light(span) == python == otlp_encode.encode_span(span)
    expected = sdk_encode_spans([span]).SerializeToString()
    assert otlp_encode.encode_request([(span.resource, span.instrumentation_scope, python)]) == expected


def _ended_light(attributes=None, name="op"):
    from opentelemetry import context

    from autotrace import light_span

    provider, exporter = _provider()
    tracer = provider.get_tracer("autotrace.test")
    span = light_span.start_span(tracer, name, SpanKind.CLIENT, context.Context(), attributes or {"a": 1})
    span.end()
    return span


@pytest.mark.parametrize(
    "change",
    ["app attribute", "event", "link", "trace state of another class", "surrogate name", "surrogate value", "surrogate key", "str subclass name", "list value"],
)
def test_what_the_compiled_encoder_does_not_handle_goes_the_python_way(change):
    """C returns None (not handled) and encode_light gives the Python bytes (or its error)."""
    from opentelemetry import context

    from autotrace import light_span

    speedups = _compiled()
    provider, exporter = _provider()
    tracer = provider.get_tracer("autotrace.test")
    attributes = {"a": 1}
    name = "op"
    links = None
    parent = context.Context()
    if change == "surrogate value":
        attributes = {"a": "x\ud800"}
    elif change == "surrogate key":
        attributes = {"\udfff": 1}
    elif change == "surrogate name":
        name = "op\ud800"
    elif change == "str subclass name":

        class Name(str):
            pass

        name = Name("op")
    elif change == "list value":
        attributes = {"a": [1, 2]}
    elif change == "link":
        links = [Link(SpanContext(7, 8, is_remote=False), {"l": 1})]
    elif change == "trace state of another class":

        class State(TraceState):
            pass

        remote = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(1), trace_state=State([("k", "v")]))
        parent = set_span_in_context(NonRecordingSpan(remote))
    span = light_span.start_span(tracer, name, SpanKind.CLIENT, parent, attributes, links)
    if change == "app attribute":
        span.set_attribute("app", "set")
    elif change == "event":
        span.add_event("e")
    span.end()
    assert speedups.encode_light_common(span) is None
    try:
        python = otlp_encode._encode_light_py(span)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            otlp_encode.encode_light(span)
        return
    assert otlp_encode.encode_light(span) == python == otlp_encode.encode_span(span)
    assert otlp_encode.encode_request([(span.resource, span.instrumentation_scope, python)]) == sdk_encode_spans([span]).SerializeToString()


@pytest.mark.parametrize(
    "slot, value",
    [
        ("_context", None),
        ("_context", (1, 2, False, TraceFlags(1), None, True)),  # a plain tuple, not a SpanContext
        ("_context", SpanContext(2**128, 1, is_remote=False)),  # a trace id too big for 16 bytes
        ("_context", SpanContext(-1, 1, is_remote=False)),
        ("_context", SpanContext(1, 2**64, is_remote=False)),
        ("_parent", "not a context"),
        ("_parent", SpanContext(1, 2, is_remote=1)),  # is_remote not a bool
        ("_start_time", -5),
        ("_start_time", 2**64),
        ("_start_time", 1.5),
        ("_end_time", "later"),
        ("_kind", 2),
        ("_name", 42),
        ("_status", "not a status"),
        ("_status", Status(StatusCode.ERROR, None)._replace if hasattr(Status, "_replace") else object()),
        ("_attributes", {1: "int key"}),
        ("_attributes", {"bytes": b"\x00"}),
        ("_events", [object()]),
        ("_links", None),
    ],
)
def test_odd_span_state_is_not_handled_in_c_and_never_crashes(slot, value):
    """Every field checked for its type and range: None (the Python way), never a crash."""
    speedups = _compiled()
    span = _ended_light()
    setattr(span, slot, value)
    assert speedups.encode_light_common(span) is None
    try:
        python = otlp_encode._encode_light_py(span)
    except Exception as exc:  # noqa: BLE001 - what the Python way raises, encode_light raises
        with pytest.raises(type(exc)):
            otlp_encode.encode_light(span)
    else:
        assert otlp_encode.encode_light(span) == python


def test_objects_that_are_not_light_spans_are_not_handled():
    speedups = _compiled()
    for obj in (None, 1, "span", object(), [], {}):
        assert speedups.encode_light_common(obj) is None
    from autotrace import light_span

    span = _ended_light()
    del span._status  # an unset slot: AttributeError inside, not handled
    assert speedups.encode_light_common(span) is None
    assert isinstance(span, light_span.LightSpan)


def test_the_python_way_when_the_extension_is_hidden(monkeypatch):
    """Without the extension (not built, or hidden as here) the loader gives None and a
    fresh interpreter encodes, queues and exports light spans the Python way, alike."""
    import subprocess
    import sys

    monkeypatch.setitem(sys.modules, "autotrace._speedups", None)
    assert otlp_encode._load_speedups() is None
    script = """
import sys
sys.modules["autotrace._speedups"] = None
from opentelemetry import context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from autotrace import light_span, otlp_encode, span_queue

assert not otlp_encode.COMPILED and otlp_encode.encode_light is otlp_encode._encode_light_py

class Keep:
    batches = []
    def export(self, batch):
        self.batches.append(batch)
    def shutdown(self):
        pass

exporter = Keep()
processor = span_queue.EncodingBatchProcessor(exporter, schedule_delay_millis=60_000)
assert "light_end" not in vars(processor)  # the Python method
provider = TracerProvider(shutdown_on_exit=False)
provider.add_span_processor(processor)
tracer = provider.get_tracer("t")
spans = []
for i in range(5):
    span = light_span.start_span(tracer, "op", SpanKind.CLIENT, context.Context(), {"i": i, "f": -0.0, "s": "é" * 200})
    span.end()
    spans.append(span)
processor.force_flush()
(batch,) = exporter.batches
assert batch.data == sdk_encode_spans(spans).SerializeToString()
print("python way ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "python way ok" in out.stdout


def test_the_doctor_says_which_encoder_is_in_use(monkeypatch):
    from autotrace.doctor.environment import encoder_check

    assert encoder_check().message == "span encoder: compiled (autotrace._speedups)"
    monkeypatch.setattr(otlp_encode, "COMPILED", False)
    assert "pure Python" in encoder_check().message


def test_a_span_of_another_class_is_read_through_its_attributes():
    """The light span class's slots are read directly; another class's spans (here a
    subclass) through getattr: the same bytes."""
    from autotrace import light_span

    speedups = _compiled()
    span = _ended_light({"a": 1, "s": "é"})
    direct = speedups.encode_light_common(span)

    class Sub(light_span.LightSpan):
        __slots__ = ()

    span.__class__ = Sub
    assert speedups.encode_light_common(span) == direct == otlp_encode._encode_light_py(span)
    for other in (Sub, int):  # slots not its own, no slots: refused, nothing registered
        assert speedups.register_light_class(other) is False
    assert speedups.encode_light_common(span) == direct
    assert speedups.register_light_class(light_span.LightSpan) is True


def test_a_batch_of_one_resource_and_scope_is_joined_in_c_with_the_sdks_bytes(monkeypatch):
    """encode_request's common batch (a list whose entries share one resource and one scope
    object) is joined by the compiled join_spans; other batches, and the install without
    the extension, group in Python: the same bytes as the SDK's encoder either way."""
    provider, exporter = _provider(Resource({"service.name": "svc", "n": 1}, schema_url="https://example.com/s"))
    tracer = provider.get_tracer("x", "0.1", attributes={"scope.attr": "x"})
    for i in range(20):
        with tracer.start_as_current_span(f"s{i}", attributes={"i": i}):
            pass
    other = provider.get_tracer("y").start_span("other")
    other.end()
    spans = list(exporter.get_finished_spans())
    one_group = [(span.resource, span.instrumentation_scope, otlp_encode.encode_span(span)) for span in spans[:20]]
    mixed = [(span.resource, span.instrumentation_scope, otlp_encode.encode_span(span)) for span in spans]
    if otlp_encode.COMPILED:
        assert otlp_encode.speedups.join_spans(one_group, spans[0].resource, spans[0].instrumentation_scope) == b"".join(
            entry[2] for entry in one_group
        )
        assert otlp_encode.speedups.join_spans(mixed, spans[0].resource, spans[0].instrumentation_scope) is None
    compiled = [otlp_encode.encode_request(one_group), otlp_encode.encode_request(mixed)]
    monkeypatch.setattr(otlp_encode, "speedups", None)
    python = [otlp_encode.encode_request(one_group), otlp_encode.encode_request(mixed)]
    assert compiled == python
    assert compiled == [sdk_encode_spans(spans[:20]).SerializeToString(), sdk_encode_spans(spans).SerializeToString()]
