"""The light span (autotrace/light_span.py): what the SDK span does, byte for byte, for less.

Parity: a light span and an SDK span given the same content (hypothesis over attribute
types and sizes, limits, events, links, status) encode to the same bytes, with the
agent's encoder and with the SDK's (which the OTLP exporters use), and print the same in
the console exporter. Behaviour: the app sees an SDK span (current span, its methods with
the SDK's validation and limits, its children, its span processors); sampling comes
first and a dropped span costs no attributes; what the module cannot reproduce is left
to the SDK.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from autotrace import api, light_span
from autotrace import spans as span_core
from autotrace.light_span import LightSpan
from autotrace.otlp_encode import encode_light, encode_request, encode_span, encode_spans
from autotrace.propagation.decision import ACCEPT, DEFER, DENY, with_decision
from autotrace.propagation.sampler import UpstreamParentBased


class FixedIds(IdGenerator):
    """The same ids every time, so two spans started one after the other are alike."""

    def generate_span_id(self) -> int:
        return 0x00F067AA0BA902B7

    def generate_trace_id(self) -> int:
        return 0x0AF7651916CD43DD8448EB211C80319C

    def is_trace_id_random(self) -> bool:
        return True


class Recorder(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[tuple[object, object]] = []
        self.ended: list[object] = []

    def on_start(self, span, parent_context=None) -> None:
        self.started.append((span, parent_context))

    def on_end(self, span) -> None:
        self.ended.append(span)


def _provider(sampler=None, limits=None, ids=None):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=sampler, resource=Resource({"service.name": "svc"}), span_limits=limits, id_generator=ids, shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


REMOTE = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(3), trace_state=TraceState([("v", "1")]))
KIND = SpanKind.CLIENT

# -- parity ---------------------------------------------------------------------------------

keys = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.text(max_size=300),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=20), max_size=4),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4),
    st.lists(st.booleans(), max_size=4),
    st.binary(max_size=8),
    st.integers(min_value=2**63, max_value=2**70),  # outside int64: the encoders skip it
)
plain_attributes = st.dictionaries(keys, scalars, max_size=12)
any_attributes = st.dictionaries(keys, values, max_size=12)
limits = st.one_of(
    st.none(),
    st.builds(
        SpanLimits,
        max_span_attributes=st.integers(min_value=0, max_value=6),
        max_span_attribute_length=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
        max_events=st.integers(min_value=0, max_value=2),
        max_links=st.integers(min_value=0, max_value=2),
    ),
)


def _started_alike(tracer, parent, name, attributes, links):
    """An SDK span and a light span, started with the same arguments (same ids)."""
    sdk_span = tracer.start_span(name, context=parent, kind=KIND, attributes=attributes, links=links)
    light = light_span.start_span(tracer, name, KIND, parent, attributes, links)
    assert type(light) is LightSpan and type(sdk_span) is not LightSpan
    return sdk_span, light


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start_attributes=st.one_of(plain_attributes, any_attributes),
    known=plain_attributes,
    app=any_attributes,
    span_limits=limits,
    remote_parent=st.booleans(),
    with_link=st.booleans(),
    event=st.one_of(st.none(), any_attributes),
    status=st.sampled_from([None, StatusCode.OK, StatusCode.ERROR]),
    rename=st.one_of(st.none(), st.text(max_size=20)),
)
def test_a_light_span_encodes_like_the_sdk_span(start_attributes, known, app, span_limits, remote_parent, with_link, event, status, rename):
    provider, exporter = _provider(limits=span_limits, ids=FixedIds())
    tracer = provider.get_tracer("autotrace.test", "1.0")
    parent = trace.set_span_in_context(NonRecordingSpan(REMOTE)) if remote_parent else context.Context()
    links = [Link(SpanContext(7, 8, is_remote=False), {"link.attr": 1})] if with_link else None
    pair = _started_alike(tracer, parent, "op", start_attributes, links)
    for span in pair:
        span_core.set_known(span, known)  # the hook's own later values
        span.set_attributes(app)  # the app's
        if event is not None:
            span.add_event("evt", event, timestamp=1_000)
        if status is not None:
            span.set_status(Status(status, "why" if status is StatusCode.ERROR else None))
        if rename is not None:
            span.update_name(rename)
        span.end(end_time=3_000)
    sdk_span, light = exporter.get_finished_spans()
    light._start_time = sdk_span.start_time  # the only difference: when each started
    assert type(light) is LightSpan
    assert encode_spans([light]) == encode_spans([sdk_span])
    # Byte for byte the SDK encoder's request, and so what the batch queue sends (it joins
    # each span's encoding made at its end).
    assert encode_spans([light]) == sdk_encode_spans([light]).SerializeToString()
    # The light span's own encoding (read from its state, its attributes cached whole),
    # twice: the second from the cache.
    assert encode_light(light) == encode_span(light) == encode_light(light)
    queued = encode_request([(s.resource, s.instrumentation_scope, encode_span(s)) for s in (light, sdk_span)])
    assert queued == sdk_encode_spans([light, sdk_span]).SerializeToString()
    assert sdk_encode_spans([light]).SerializeToString() == sdk_encode_spans([sdk_span]).SerializeToString()
    assert _json(light) == _json(sdk_span)  # the console exporter's output
    assert dict(light.attributes) == dict(sdk_span.attributes)
    assert (light.dropped_attributes, light.dropped_events, light.dropped_links) == (
        sdk_span.dropped_attributes,
        sdk_span.dropped_events,
        sdk_span.dropped_links,
    )


def _json(span) -> str:
    """What the console exporter prints (or the error it meets: bytes values are not JSON)."""
    try:
        return span.to_json()
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


@settings(max_examples=60, deadline=None)
@given(ratio=st.floats(min_value=0, max_value=1), trace_ids=st.lists(st.integers(min_value=1, max_value=2**128 - 1), min_size=1, max_size=5))
def test_the_ratio_sampler_decides_as_in_the_sdk(ratio, trace_ids):
    for sampler in (sampling.TraceIdRatioBased(ratio), UpstreamParentBased(sampling.TraceIdRatioBased(ratio))):
        provider, _ = _provider(sampler=sampler)
        tracer = provider.get_tracer("t")
        for trace_id in trace_ids:
            parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(trace_id, 1, is_remote=True, trace_flags=TraceFlags(0))))
            if isinstance(sampler, sampling.ParentBased):
                parent = context.Context()  # a root: the ratio decides
                provider.id_generator = _Constant(trace_id)
                tracer = provider.get_tracer("t2")
            expected = tracer.start_span("op", context=parent).get_span_context()
            got = light_span.start_span(tracer, "op", KIND, parent, {"a": 1}).get_span_context()
            assert (got.trace_id, got.trace_flags, got.trace_state) == (expected.trace_id, expected.trace_flags, expected.trace_state)


SAMPLERS = [
    sampling.ALWAYS_ON,
    sampling.ALWAYS_OFF,
    sampling.ParentBased(sampling.ALWAYS_ON),
    sampling.ParentBased(sampling.ALWAYS_OFF),
    sampling.ParentBasedTraceIdRatio(0.5),
    UpstreamParentBased(sampling.ALWAYS_ON),
    UpstreamParentBased(sampling.ALWAYS_OFF),
    UpstreamParentBased(sampling.TraceIdRatioBased(0.5)),
    sampling.ParentBased(sampling.ALWAYS_ON, local_parent_sampled=sampling.ALWAYS_OFF, remote_parent_not_sampled=sampling.ALWAYS_ON),
]


@settings(max_examples=200, deadline=None)
@given(
    sampler=st.sampled_from(SAMPLERS),
    parent=st.one_of(
        st.none(),
        st.builds(
            lambda trace_id, remote, flags, state: SpanContext(trace_id, 0x99, is_remote=remote, trace_flags=TraceFlags(flags), trace_state=state),
            st.integers(min_value=1, max_value=2**128 - 1),
            st.booleans(),
            st.integers(min_value=0, max_value=3),
            st.sampled_from([None, TraceState([("k", "v")])]),
        ),
    ),
    upstream=st.sampled_from([None, ACCEPT, DENY, DEFER]),
    root_trace_id=st.integers(min_value=1, max_value=2**128 - 1),
)
def test_every_sampling_setting_decides_as_in_the_sdk(sampler, parent, upstream, root_trace_id):
    provider, _ = _provider(sampler=sampler, ids=_Constant(root_trace_id))
    tracer = provider.get_tracer("t")
    ctx = context.Context() if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))
    if upstream is not None:
        ctx = with_decision(ctx, upstream, parent if upstream == DEFER else None)
    expected = tracer.start_span("op", context=ctx, kind=KIND)
    got = light_span.start_span(tracer, "op", KIND, ctx, {"a": 1})
    assert got.is_recording() == expected.is_recording()
    ours, theirs = got.get_span_context(), expected.get_span_context()
    assert (ours.trace_id, ours.trace_flags, ours.trace_state, ours.is_remote) == (theirs.trace_id, theirs.trace_flags, theirs.trace_state, theirs.is_remote)
    assert type(got) is (LightSpan if expected.is_recording() else NonRecordingSpan)


class _Constant(RandomIdGenerator):
    def __init__(self, trace_id: int) -> None:
        self.trace_id = trace_id

    def generate_trace_id(self) -> int:
        return self.trace_id


# -- sampling first -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler, parent_flags",
    [
        (sampling.ALWAYS_OFF, None),
        (sampling.ParentBased(sampling.ALWAYS_ON), 0),  # a parent not sampled
        (UpstreamParentBased(sampling.ALWAYS_ON), 0),
        (sampling.TraceIdRatioBased(0.0), None),
    ],
)
def test_a_dropped_span_is_a_non_recording_span_with_a_valid_context_and_costs_no_attributes(sampler, parent_flags):
    provider, exporter = _provider(sampler=sampler)
    tracer = provider.get_tracer("t")
    parent = context.Context()
    if parent_flags is not None:
        parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(parent_flags))))
    asked = []
    span = light_span.start_span(tracer, "op", KIND, parent, lambda: asked.append(1) or {"a": 1})
    expected = tracer.start_span("op", context=parent)
    assert type(span) is NonRecordingSpan and not span.is_recording()
    got = span.get_span_context()
    assert got.is_valid and not got.trace_flags.sampled and got.span_id != 0
    assert got.trace_flags == expected.get_span_context().trace_flags
    if parent_flags is not None:
        assert got.trace_id == 0xABC
    assert asked == []  # the attributes were never computed
    span.end()
    assert exporter.get_finished_spans() == ()


def test_the_attribute_function_is_called_once_for_a_recorded_span():
    provider, exporter = _provider()
    asked = []
    span = light_span.start_span(provider.get_tracer("t"), "op", KIND, context.Context(), lambda: asked.append(1) or {"a": 1})
    span.end()
    assert asked == [1]
    assert dict(exporter.get_finished_spans()[0].attributes) == {"a": 1}


class ReadsAttributes(sampling.Sampler):
    """A sampler the light span does not know: it may read the attributes, and add some."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        self.seen.append(dict(attributes or {}))
        return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE, {**(attributes or {}), "sampler.added": "yes"})

    def get_description(self) -> str:
        return "ReadsAttributes"


def test_a_sampler_that_reads_attributes_gets_them_and_its_attributes_are_kept():
    sampler = ReadsAttributes()
    provider, exporter = _provider(sampler=sampler)
    span = light_span.start_span(provider.get_tracer("t"), "op", KIND, context.Context(), lambda: {"a": 1})
    span.end()
    assert sampler.seen == [{"a": 1}]
    assert dict(exporter.get_finished_spans()[0].attributes) == {"a": 1, "sampler.added": "yes"}


# -- an SDK span to the app -----------------------------------------------------------------


@pytest.fixture
def hook_span(spans):
    """A span a hook started (spans.start, made current), with the session's SDK provider."""
    api.tracers.pop("autotrace.test.light", None)
    call = span_core.start("autotrace.test.light", "GET", "CLIENT", {"http.request.method": "GET", "server.port": 80})
    assert call is not None and type(call.span) is LightSpan
    yield call
    call.close()



def test_the_app_sees_the_hook_span_as_the_current_sdk_span(hook_span, spans):
    current = trace.get_current_span()
    assert current is hook_span.span
    assert isinstance(current, SdkSpan) and isinstance(current, ReadableSpan) and current.is_recording()
    assert current.get_span_context().is_valid


def test_the_apps_child_span_parents_on_the_hook_span(hook_span, spans):
    with trace.get_tracer("app").start_as_current_span("child") as child:
        assert type(child) is not LightSpan
    hook_span.close()
    child, parent = spans.get_finished_spans()
    assert child.parent.span_id == parent.context.span_id and child.context.trace_id == parent.context.trace_id
    assert type(parent) is LightSpan


def test_the_apps_calls_work_with_the_sdks_validation(hook_span, spans, caplog):
    span = trace.get_current_span()
    with caplog.at_level(logging.WARNING):
        span.set_attribute("app.list", ["a", "b"])
        span.set_attribute("app.odd", Odd())  # not an attribute value: the SDK cleans it (a str, or nothing)
        span.set_attributes({"app.n": 3, "": "empty key"})
    span.add_event("app.event", {"k": "v"})
    span.add_link(SpanContext(9, 10, is_remote=True), {"why": "batch"})
    try:
        raise ValueError("boom")
    except ValueError as exc:
        span.record_exception(exc)
    span.set_status(StatusCode.ERROR, "failed")
    span.update_name("GET /app")
    hook_span.close()
    (ended,) = spans.get_finished_spans()
    attributes = dict(ended.attributes)
    assert attributes["app.list"] == ("a", "b") and attributes["app.n"] == 3 and "" not in attributes
    assert not isinstance(attributes.get("app.odd"), Odd)
    assert attributes["http.request.method"] == "GET" and attributes["server.port"] == 80
    assert ended.dropped_attributes == 1  # the empty key
    assert [event.name for event in ended.events] == ["app.event", "exception"]
    assert ended.events[1].attributes["exception.type"] == "ValueError"
    assert [link.context.span_id for link in ended.links] == [10]
    assert (ended.status.status_code, ended.status.description, ended.name) == (StatusCode.ERROR, "failed", "GET /app")


class Odd:
    def __str__(self) -> str:
        return "odd"


def test_an_ended_span_takes_nothing_more(hook_span, spans, caplog):
    span = hook_span.span
    hook_span.close()
    with caplog.at_level(logging.WARNING):
        span.set_attribute("late", 1)
        span_core.set_known(span, {"late.known": 1})
        span.add_event("late")
        span.end()
    (ended,) = spans.get_finished_spans()
    assert "late" not in ended.attributes and "late.known" not in ended.attributes and not ended.events
    assert not span.is_recording()
    assert len([r for r in caplog.records if "ended span" in r.getMessage()]) == 4


def test_the_span_limits_apply_to_the_apps_values(monkeypatch):
    provider, exporter = _provider(limits=SpanLimits(max_span_attributes=3, max_span_attribute_length=4))
    span = light_span.start_span(provider.get_tracer("t"), "op", KIND, context.Context(), {"a": "12345678", "b": 2})
    span.set_attribute("c", "abcdefgh")
    span.set_attribute("d", 4)  # the oldest goes
    span.end()
    (ended,) = exporter.get_finished_spans()
    assert dict(ended.attributes) == {"b": 2, "c": "abcd", "d": 4}
    assert ended.dropped_attributes == 1


def test_span_processors_see_the_start_with_its_parent_context_and_a_readable_span_at_the_end():
    provider, _ = _provider()
    recorder = Recorder()
    provider.add_span_processor(recorder)
    parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    span = light_span.start_span(provider.get_tracer("t"), "op", KIND, parent, {"a": 1})
    assert recorder.started == [(span, parent)] and recorder.ended == []
    span.end()
    (ended,) = recorder.ended
    assert isinstance(ended, ReadableSpan) and ended.end_time is not None and ended.parent == REMOTE
    assert ended.resource.attributes["service.name"] == "svc" and ended.instrumentation_scope.name == "t"


def test_a_tracer_of_another_kind_starts_its_own_spans():
    class Custom(trace.Tracer):
        def __init__(self) -> None:
            self.calls = []

        def start_span(self, name, context=None, kind=SpanKind.INTERNAL, attributes=None, links=None, *args, **kwargs):
            self.calls.append((name, dict(attributes or {})))
            return trace.INVALID_SPAN

        def start_as_current_span(self, *args, **kwargs):  # pragma: no cover - not used
            raise NotImplementedError

    custom = Custom()
    assert light_span.start_span(custom, "op", KIND, context.Context(), lambda: {"a": 1}) is trace.INVALID_SPAN
    assert custom.calls == [("op", {"a": 1})]


def test_spans_the_app_starts_stay_the_sdks(spans):
    with trace.get_tracer("app").start_as_current_span("mine") as mine:
        assert type(mine).__module__ == "opentelemetry.sdk.trace"


def test_a_dropped_server_span_computes_no_attributes(spans):
    from autotrace import server_span

    asked: list[str] = []

    def headers(name: str) -> list[str]:
        asked.append(name)
        return ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"] if name == "traceparent" else []

    server = server_span.start("GET", "http", "/x", "", headers, "127.0.0.1", 8000)
    assert server is not None and not server.span.is_recording()
    assert server.span.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert "traceparent" in asked and "user-agent" not in asked  # the parent read, no attribute computed
    server.close()
    assert spans.get_finished_spans() == ()
