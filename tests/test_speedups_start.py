"""The light span's start, context and end in C (autotrace/_speedups.c: start_light,
with_span, LightSpan's compiled end) against the Python reference (light_span.start_span
with the compiled start off, LightSpan's Python end, api.with_span_py): field by field, and
the encoded bytes; what C leaves to Python; the pure-Python way with the extension hidden."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider, sampling
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState

from autotrace import api, light_span, span_queue
from autotrace import spans as span_core
from autotrace.light_span import LightSpan
from autotrace.otlp_encode import encode_light


def _compiled():
    from autotrace import _speedups

    return _speedups


@pytest.fixture(autouse=True, scope="module")
def _api_loaded():
    api.load()  # SPAN_KEY known: what the compiled start and with_span need


class LightRecorder(SpanProcessor):
    """A processor with a light end (as the agent's): light spans skip on_start and on_end."""

    def __init__(self) -> None:
        self.started: list[object] = []
        self.ended: list[object] = []
        self.light: list[object] = []

    def on_start(self, span, parent_context=None) -> None:
        self.started.append(span)

    def on_end(self, span) -> None:
        self.ended.append(span)

    def light_end(self, span) -> None:
        self.light.append(span)


def _tracer(sampler=None, limits=None):
    provider = TracerProvider(sampler=sampler, resource=Resource({"service.name": "svc"}), span_limits=limits, shutdown_on_exit=False)
    recorder = LightRecorder()
    provider.add_span_processor(recorder)
    return provider.get_tracer("autotrace.test", "1.0"), recorder


def _parent(kind: str, tracer, flags: int, state: TraceState | None) -> context.Context:
    if kind == "none":
        return context.Context()
    if kind == "invalid":
        return trace.set_span_in_context(trace.INVALID_SPAN, context.Context())
    if kind == "remote":
        remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(flags), trace_state=state)
        return trace.set_span_in_context(NonRecordingSpan(remote), context.Context())
    if kind == "sdk":
        return trace.set_span_in_context(tracer.start_span("parent"), context.Context())
    parent = light_span.start_span(tracer, "parent", SpanKind.SERVER, context.Context(), {})
    return trace.set_span_in_context(parent, context.Context())


_SLOTS = tuple(name for name in LightSpan.__slots__ if name not in ("_start_time",))

plain = st.one_of(st.text(max_size=40), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    attributes=st.one_of(st.none(), st.dictionaries(st.text(min_size=1, max_size=10), plain, max_size=8)),
    parent_kind=st.sampled_from(["none", "invalid", "remote", "sdk", "light"]),
    flags=st.integers(min_value=0, max_value=3),
    state=st.sampled_from([None, TraceState([("v", "1")])]),
    sampler=st.sampled_from(["on", "off", "ratio"]),
    max_attributes=st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_compiled_start_makes_the_python_starts_span(attributes, parent_kind, flags, state, sampler, max_attributes, seed, monkeypatch):
    speedups = _compiled()
    chosen = {
        "on": sampling.ParentBased(sampling.ALWAYS_ON),
        "off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "ratio": sampling.ParentBasedTraceIdRatio(0.5),
    }[sampler]
    tracer, recorder = _tracer(chosen, SpanLimits(max_span_attributes=max_attributes) if max_attributes is not None else None)
    parent = _parent(parent_kind, tracer, flags, state)
    light_span._plan(tracer)  # planned (and registered for C) at the first span
    assert tracer in light_span._fast_plans
    random.seed(seed)
    compiled = speedups.start_light(tracer, "op", SpanKind.CLIENT, parent, attributes)
    random.seed(seed)
    monkeypatch.setattr(light_span, "compiled_start", None)
    reference = light_span.start_span(tracer, "op", SpanKind.CLIENT, parent, attributes)
    monkeypatch.undo()
    if compiled is None:
        # Left to Python: a span not recorded, a root the sampler decides, attributes over the limit.
        too_many = max_attributes is not None and attributes is not None and len(attributes) > max_attributes
        root = parent_kind in ("none", "invalid")
        assert type(reference) is not LightSpan or too_many or (root and sampler == "ratio")
        return
    assert type(compiled) is LightSpan and type(reference) is LightSpan
    for name in _SLOTS:
        mine, theirs = getattr(compiled, name), getattr(reference, name)
        if name == "_lock":
            assert type(mine) is type(theirs) and mine is not theirs and not mine.locked()
        elif name == "_attributes":
            assert type(mine) is dict and list(mine.items()) == list(theirs.items())
            assert attributes is None or mine is not attributes
        elif name in ("_context", "_parent", "_name", "_kind", "_end_time", "_events", "_links", "_record_end_metrics", "_pid"):
            assert mine == theirs, name
            if name == "_context":
                assert type(mine) is SpanContext and mine.is_valid and mine.span_id != 0
        else:
            assert mine is theirs, name
    assert reference._start_time >= compiled._start_time > 0
    assert not [span for span in recorder.started if span is compiled or span is reference]  # light ends only: no on_start
    compiled.end()
    light_span._end_py(reference)
    assert recorder.light == [compiled, reference] and recorder.ended == []
    assert compiled._end_time >= compiled._start_time
    reference._start_time, reference._end_time = compiled._start_time, compiled._end_time
    assert encode_light(compiled) == encode_light(reference)


def test_the_compiled_start_is_used_where_the_extension_is_built():
    """Fails where the extension was not built or refused (CI would otherwise fall back unseen)."""
    speedups = _compiled()
    assert light_span.compiled_start is speedups.start_light
    assert type(vars(LightSpan)["end"]).__name__ == "method_descriptor"
    assert api.with_span is speedups.with_span
    tracer, recorder = _tracer()
    span_core._load_light()
    assert span_core._compiled is speedups.start_light
    api.tracers["autotrace.test.compiled"] = tracer
    try:
        light_span.start_span(tracer, "warm", SpanKind.CLIENT, context.Context(), {})  # planned
        started = speedups.start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {"a": 1})
        assert type(started) is LightSpan
        # spans.start goes straight to C: the Python start is never called.
        calls = []
        original = light_span.start_span
        span_core._light = lambda *args: calls.append(args) or original(*args)
        handle = span_core.start("autotrace.test.compiled", "SELECT", "CLIENT", {"db.system.name": "sqlite"})
        assert calls == [] and type(handle.span) is LightSpan
        assert api.get_current() is handle.context and trace.get_current_span() is handle.span
        assert handle.context[api.SPAN_KEY] is handle.span
        handle.close()
        assert handle.ended and recorder.light[-1] is handle.span and trace.get_current_span() is not handle.span
    finally:
        span_core._light = None
        del api.tracers["autotrace.test.compiled"]


def test_with_span_makes_the_python_context():
    speedups = _compiled()
    key = context.create_key("mark")
    parent = context.set_value("x", 1, context.Context())
    span = NonRecordingSpan(SpanContext(1, 2, False))
    for args in ((span, parent), (span, parent, key, "call"), (span, parent, None, None)):
        mine, theirs = speedups.with_span(*args), api.with_span_py(*args)
        assert type(mine) is context.Context and mine == theirs and list(mine) == list(theirs)
        assert mine is not parent and parent == {"x": 1}
    with pytest.raises(ValueError):
        speedups.with_span(span, parent)["k"] = 1  # still the API's immutable Context


def test_the_app_still_sees_an_sdk_span_and_its_calls_work():
    tracer, recorder = _tracer()
    light_span._plan(tracer)
    span = _compiled().start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {"a": 1})
    token = context.attach(api.with_span(span, context.get_current()))
    try:
        current = trace.get_current_span()
        assert current is span and current.is_recording() and current.get_span_context() is span._context
        current.set_attribute("app", "x")
        current.add_event("e", {"k": 1})
        current.set_status(trace.Status(trace.StatusCode.ERROR, "bad"))
        current.update_name("renamed")
        child = tracer.start_span("child")
        assert child.parent is span._context
    finally:
        context.detach(token)
    span.end()
    assert dict(span.attributes) == {"a": 1, "app": "x"} and span.name == "renamed" and len(span.events) == 1
    assert recorder.light == [span]
    span.end()  # ended: the SDK's warning, once more nothing recorded
    assert recorder.light == [span]


def test_an_app_processor_added_later_gets_its_calls():
    tracer, recorder = _tracer()
    light_span.start_span(tracer, "warm", SpanKind.CLIENT, context.Context(), {})
    before = _compiled().start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {})
    ended: list[object] = []
    started: list[object] = []

    class AppProcessor(SpanProcessor):  # the app's own: no light end
        def on_start(self, span, parent_context=None) -> None:
            started.append(span)

        def on_end(self, span) -> None:
            ended.append(span)

    tracer.span_processor.add_span_processor(AppProcessor())
    assert _compiled().start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {}) is None  # planned again
    after = light_span.start_span(tracer, "op", SpanKind.CLIENT, context.Context(), {})
    assert started == [after] and recorder.started == [after]
    before.end()
    after.end()
    assert ended == [before, after] and recorder.ended == [before, after] and recorder.light == []


def test_a_span_of_the_parent_process_is_not_ended_into_the_queue(monkeypatch):
    tracer, recorder = _tracer()
    light_span._plan(tracer)
    span = _compiled().start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {})
    monkeypatch.setattr(span_queue, "pid", span._pid + 1)  # as in a forked child
    span.end()
    assert span._end_time is not None and recorder.light == []


def test_what_c_does_not_start_is_left_to_python():
    speedups = _compiled()
    tracer, _ = _tracer()
    light_span._plan(tracer)
    empty = context.Context()
    assert speedups.start_light(tracer, "op", SpanKind.CLIENT, empty, lambda: {"a": 1}) is None  # a function
    assert speedups.start_light(tracer, "op", SpanKind.CLIENT, empty, {"a": [1]}) is None  # not a plain value
    assert speedups.start_light(object(), "op", SpanKind.CLIENT, empty, {}) is None  # not planned
    odd = trace.set_span_in_context(type("Odd", (NonRecordingSpan,), {})(SpanContext(1, 2, False)), empty)
    assert speedups.start_light(tracer, "op", SpanKind.CLIENT, odd, {}) is None  # another span class
    with pytest.raises(TypeError):
        speedups.start_light(tracer, "op")


def test_the_python_way_when_the_extension_is_hidden():
    script = """
import sys
sys.modules["autotrace._speedups"] = None
from autotrace import api, spans
api.load()
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from autotrace import light_span
assert light_span.compiled_start is None and spans._load_light() is light_span.start_span and spans._compiled is None
assert api.with_span is api.with_span_py and light_span.LightSpan.end is light_span._end_py
provider = TracerProvider(shutdown_on_exit=False)
api.tracers["t"] = provider.get_tracer("t")
handle = spans.start("t", "op", "CLIENT", {"a": 1})
assert type(handle.span) is light_span.LightSpan and trace.get_current_span() is handle.span
handle.close()
assert handle.span._end_time is not None and trace.get_current_span() is not handle.span
print("python way ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "python way ok" in out.stdout


def test_a_subclass_that_changes_end_keeps_its_close():
    calls = []

    class Mine(span_core.SpanHandle):
        def end(self) -> None:
            calls.append("end")
            super().end()

    assert Mine.close is span_core.SpanHandle._close_calls
    tracer, _ = _tracer()
    span = light_span.start_span(tracer, "op", SpanKind.CLIENT, context.Context(), {})
    Mine(span, context.Context()).close()
    assert calls == ["end"] and span._end_time is not None
