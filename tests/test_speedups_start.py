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
        if name == "_span_lock":
            assert mine is None and theirs is None  # made at its first use
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
    assert type(vars(LightSpan)["set_known"]).__name__ == "method_descriptor"
    assert type(vars(LightSpan)["_lock"]).__name__ == "getset_descriptor"
    assert api.with_span is speedups.with_span
    tracer, recorder = _tracer()
    span_core._load_light()
    assert span_core._compiled is speedups.start_light
    assert span_core.start is speedups.start_handle and span_core.new_span is speedups.new_span
    assert type(vars(span_core.SpanHandle)["close"]).__name__ == "method_descriptor"
    assert type(vars(span_core.SpanHandle)["set_attributes"]).__name__ == "method_descriptor"
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
assert spans.start is spans.start_py and spans.new_span is spans.new_span_py
assert spans.SpanHandle.close is spans._close_py and light_span.LightSpan.set_known is light_span._set_known_py
provider = TracerProvider(shutdown_on_exit=False)
api.tracers["t"] = provider.get_tracer("t")
handle = spans.start("t", "op", "CLIENT", {"a": 1})
assert type(handle.span) is light_span.LightSpan and trace.get_current_span() is handle.span
assert handle.span._span_lock is None
handle.set_attributes({"b": 2, "a": 3})
lock = handle.span._lock  # made at its first use, then the same
assert lock is handle.span._lock and not lock.locked()
handle.span.set_attribute("c", "x")
handle.close()
assert handle.span._end_time is not None and trace.get_current_span() is not handle.span
assert dict(handle.span.attributes) == {"a": 3, "b": 2, "c": "x"}
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


# -- the lazy lock, set_known, SpanHandle's close and set_attributes, spans.start and new_span in C --

keys = st.sampled_from(["a", "b", "c", "d", "e"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    first=st.dictionaries(keys, plain, max_size=4),
    known=st.dictionaries(st.one_of(keys, st.integers(min_value=0, max_value=2)), st.one_of(plain, st.lists(st.integers(), max_size=2)), max_size=4),
    max_attributes=st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
    touched=st.booleans(),
    ended=st.booleans(),
)
def test_the_compiled_set_known_sets_what_the_python_one_sets(first, known, max_attributes, touched, ended):
    speedups = _compiled()
    tracer, _ = _tracer(limits=SpanLimits(max_span_attributes=max_attributes) if max_attributes is not None else None)
    light_span._plan(tracer)
    if max_attributes is not None and len(first) > max_attributes:
        first = dict(list(first.items())[:max_attributes])
    mine = speedups.start_light(tracer, "op", SpanKind.CLIENT, context.Context(), first)
    theirs = speedups.start_light(tracer, "op", SpanKind.CLIENT, context.Context(), first)
    assert type(mine) is LightSpan and type(theirs) is LightSpan
    if touched:  # the app used the span: a lock made, C leaves it to Python
        assert mine._lock is not None and theirs._lock is not None
    if ended:
        mine.end()
        theirs.end()
    outcomes = []
    for span, set_known in ((mine, LightSpan.set_known), (theirs, light_span._set_known_py)):
        try:
            set_known(span, dict(known))
            outcomes.append(None)
        except Exception as exc:  # noqa: BLE001 - the SDK's, alike for both
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
    assert type(mine._attributes) is type(theirs._attributes)
    assert list(mine._attributes.items()) == list(theirs._attributes.items())
    fits = max_attributes is None or len(first) + len(set(known) - set(first)) <= max_attributes
    plain_known = all(type(key) is str and type(value) in (str, bool, int, float) for key, value in known.items())
    if not touched and not ended and fits and plain_known:
        assert mine._span_lock is None  # set in C, no lock made
    assert first is not mine._attributes


def test_a_hooks_span_has_no_lock_until_the_app_uses_it():
    tracer, recorder = _tracer()
    light_span._plan(tracer)
    span = _compiled().start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {"a": 1})
    assert span._span_lock is None
    span.set_known({"b": 2})
    assert span._span_lock is None
    lock = span._lock
    assert lock is span._lock and span._span_lock is lock and not lock.locked()
    span.set_attribute("c", 3)  # the SDK's, under the lock
    span.end()  # the compiled end, under the lock now
    assert not lock.locked() and recorder.light == [span] and dict(span.attributes) == {"a": 1, "b": 2, "c": 3}


def test_a_span_ended_by_many_threads_at_once_ends_once():
    import threading

    tracer, recorder = _tracer()
    light_span._plan(tracer)
    for with_lock in (False, True):
        spans = [_compiled().start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {}) for _ in range(50)]
        if with_lock:
            for span in spans:
                span._lock  # noqa: B018 - made
        barrier = threading.Barrier(4)

        def end_all(barrier=barrier, spans=spans):
            barrier.wait()
            for span in spans:
                span.end()

        threads = [threading.Thread(target=end_all) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert [span for span in recorder.light if span in spans] == spans  # each once, none twice
        recorder.light.clear()


class CloseEndFailed(Exception):
    pass


class SetKnownFailed(Exception):
    pass


class Failing(NonRecordingSpan):
    def end(self, end_time=None) -> None:
        raise CloseEndFailed("end failed")


def test_the_compiled_close_ends_leaves_and_never_raises(warnings):
    assert type(vars(span_core.SpanHandle)["close"]).__name__ == "method_descriptor"
    before = api.get_current()
    span = Failing(SpanContext(1, 2, False))
    handle = span_core.SpanHandle(span, api.with_span(span, before))
    handle.attach()
    assert api.get_current() is handle.context
    warnings()
    handle.close()  # the span's end raised: one warning, the context left all the same
    assert handle.ended and api.get_current() is before and handle._token is None
    assert [line for line in warnings() if "CloseEndFailed: end failed" in line]
    handle.close()  # again: nothing
    # A token of another context: dropped, as api.detach drops it.
    other = span_core.SpanHandle(NonRecordingSpan(SpanContext(1, 3, False)), before)
    import contextvars

    other._token = contextvars.copy_context().run(api.set_current, before)
    other.close()
    assert other.ended and other._token is None and api.get_current() is before


def test_the_compiled_set_attributes_reports_instead_of_raising(warnings):
    tracer, _ = _tracer()
    light_span._plan(tracer)
    span = _compiled().start_light(tracer, "op", SpanKind.CLIENT, context.Context(), {})
    handle = span_core.SpanHandle(span, context.Context())
    handle.set_attributes({"a": 1, "b": [1, 2]})  # not plain: the SDK's way
    assert dict(span.attributes) == {"a": 1, "b": (1, 2)}

    class Broken(NonRecordingSpan):
        def set_known(self, attributes) -> None:
            raise SetKnownFailed("broken")

    warnings()
    span_core.SpanHandle(Broken(SpanContext(1, 2, False)), context.Context()).set_attributes({"a": 1})
    assert [line for line in warnings() if "SetKnownFailed: broken" in line]


def test_the_compiled_spans_start_leaves_the_rest_to_the_python_one():
    speedups = _compiled()
    tracer, recorder = _tracer()
    span_core._load_light()
    assert span_core.start is speedups.start_handle
    api.tracers["autotrace.test.start"] = tracer
    try:
        light_span._plan(tracer)
        handle = span_core.start("autotrace.test.start", "op", "CLIENT", {"a": 1})
        assert type(handle) is span_core.SpanHandle and type(handle.span) is LightSpan
        assert api.get_current() is handle.context and handle.span.parent is None
        handle.close()
        # A parent given, the kind as a member: C too.
        parent = api.with_span(tracer.start_span("p"), context.Context())
        child = span_core.start("autotrace.test.start", "op", SpanKind.CLIENT, {"a": 1}, parent)
        assert child.span.parent is parent[api.SPAN_KEY].get_span_context()
        child.close()
        # Suppressed: None; an unknown kind: None (the reference's warning); keywords,
        # another handle class: the reference's way, the same result.
        suppressed = context.set_value(api.SUPPRESS_INSTRUMENTATION, True, context.Context())
        assert span_core.start("autotrace.test.start", "op", "CLIENT", None, suppressed) is None
        assert span_core.start("autotrace.test.start", "op", "NOPE") is None

        class Mine(span_core.SpanHandle):
            __slots__ = ()

        mine = span_core.start("autotrace.test.start", "op", "CLIENT", attributes={"a": 1}, handle=Mine)
        assert type(mine) is Mine and type(mine.span) is LightSpan
        mine.close()
        unattached = span_core.start("autotrace.test.start", "op", "CLIENT", {"a": 1}, attach=False)
        assert unattached._token is None and api.get_current() is not unattached.context
        unattached.close()
        # A tracer not in api.tracers: the reference makes it.
        other = span_core.start("autotrace.test.other", "op", "CLIENT")
        assert other is not None
        other.close()
        assert len(recorder.light) == 4
        # new_span: C for the common case, the reference for links.
        span = span_core.new_span("autotrace.test.start", "op", SpanKind.CLIENT, context.Context(), {"a": 1})
        assert type(span) is LightSpan and span._span_lock is None
        span.end()
        link = trace.Link(SpanContext(5, 6, False))
        linked = span_core.new_span("autotrace.test.start", "op", SpanKind.CLIENT, context.Context(), {}, [link])
        assert [found.context for found in linked.links] == [link.context]
        linked.end()
    finally:
        del api.tracers["autotrace.test.start"]
        api.tracers.pop("autotrace.test.other", None)
