"""The compiled encoder (autotrace/_speedups.c) on hostile input: odd types, sizes and
ranges in every slot of a light span, and Python code (a status's properties) that a
signal can interrupt. The bytes are the Python reference's, or C leaves the span to it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from autotrace import light_span, otlp_encode


def _compiled():
    from autotrace import _speedups

    return _speedups


def _ended_light(attributes=None, status=None):
    provider = TracerProvider(resource=Resource({"service.name": "svc"}), shutdown_on_exit=False)
    span = light_span.start_span(provider.get_tracer("autotrace.test"), "op", SpanKind.CLIENT, context.Context(), attributes or {"a": 1})
    if status is not None:
        span.set_status(status)
    span.end()
    return span


class _OddStr(str):
    pass


class _OddInt(int):
    def __index__(self):
        raise RuntimeError("never asked")


class _OddFloat(float):
    pass


_ODD = st.sampled_from(
    [
        None, b"x", [1], (1,), {"a": 1}, object(), True, False, 0, -1, 2**63, -(2**63) - 1, 2**64, 2**128, -(2**128), 10**400,
        _OddInt(3), _OddFloat(1.5), -0.0, float("nan"), float("inf"), "", "\ud800", "é" * 16_384, _OddStr("s"), Status(StatusCode.OK),
        TraceState([("k", "v")]), SpanContext(1, 2, is_remote=False), SpanKind.SERVER, StatusCode.ERROR,
    ]
)
_SLOTS = ("_context", "_parent", "_name", "_kind", "_start_time", "_end_time", "_attributes", "_status", "_events", "_links")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    changes=st.dictionaries(st.sampled_from(_SLOTS), _ODD, max_size=4),
    attributes=st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["\udc80", "é" * 200, 1, None])), _ODD, max_size=6),
    members=st.one_of(st.none(), st.dictionaries(st.one_of(st.text(max_size=8), st.just("\ud800")), st.one_of(st.text(max_size=8), _ODD), max_size=4)),
)
def test_the_compiled_encoder_on_hostile_span_state_is_the_python_way_or_none(changes, attributes, members):
    """Any type, size or range in any slot, odd attribute and trace state members: C gives
    the Python bytes or None (the Python way), never an error of its own nor a crash."""
    from autotrace.propagation.tracecontext import W3CTraceState

    speedups = _compiled()
    span = _ended_light()
    span._attributes = attributes
    if members is not None:
        span._context = SpanContext(2**100 + 3, 5, is_remote=True, trace_flags=TraceFlags(1), trace_state=W3CTraceState(members))
    for slot, value in changes.items():
        setattr(span, slot, value)
    compiled = speedups.encode_light_common(span)
    try:
        python = otlp_encode._encode_light_py(span)
    except Exception as exc:  # noqa: BLE001 - then C did not handle it, and encode_light raises the same
        assert compiled is None
        with pytest.raises(type(exc)):
            otlp_encode.encode_light(span)
        return
    assert compiled is None or compiled == python
    assert otlp_encode.encode_light(span) == python


def test_a_keyboard_interrupt_in_the_status_properties_is_not_swallowed(monkeypatch):
    """The status's properties are Python code, where a signal's handler runs: its
    KeyboardInterrupt reaches the app, as from the Python way (an Exception there is the
    Python way's to meet again: C does not handle the span)."""
    speedups = _compiled()
    span = _ended_light(status=Status(StatusCode.ERROR, "why"))

    def interrupted(self):
        raise KeyboardInterrupt

    def failing(self):
        raise ValueError("odd status")

    monkeypatch.setattr(Status, "description", property(interrupted))
    with pytest.raises(KeyboardInterrupt):
        speedups.encode_light_common(span)
    monkeypatch.setattr(Status, "description", property(failing))
    assert speedups.encode_light_common(span) is None
