"""B3 propagation (Zipkin): the single ``b3`` header and the multi ``X-B3-*`` headers.

What opentelemetry-propagator-b3 (1.45) gets wrong and this module gets right, by
section of https://github.com/openzipkin/b3-propagation (README):

* "Sampling State": a decision without ids (``b3: 0``, ``X-B3-Sampled: 0`` alone) is
  dropped there, so the next service samples on its own; here a deny is honoured and
  sent on. Ids without a sampling state (defer) are read there as sampled from the
  single header and as not sampled from the multi ones; here the receiver decides.
* "Debug Flag" (``d``, ``X-B3-Flags: 1``): read there as sampled and written back as
  ``1``; here the debug flag travels on.
* A malformed sampling state (``b3: {ids}-x``) or differing repeated headers are
  continued there (the first value); here they are invalid.

Reading (both propagators read both forms, the single header first; as the
OpenTelemetry propagators specification uses B3):

* ``b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`` or ``b3: {SamplingState}``.
  The trace id is 16 or 32 hex digits (64-bit ids are left-padded to 128 bits), the
  span id 16, the sampling state ``1`` (accept), ``0`` (deny) or ``d`` (debug: sampled,
  and the debug flag kept); absent means deferred. A present but malformed single
  header is invalid (nothing extracted; the multi headers are not consulted).
* Otherwise ``X-B3-TraceId``, ``X-B3-SpanId``, ``X-B3-Sampled`` (``1``/``0``, also
  ``true``/``false``; another value reads as absent) and ``X-B3-Flags: 1`` (debug).
* A sampling state without ids (``b3: 0``, or ``X-B3-Sampled: 0`` with no id headers)
  extracts no span context but records the decision for the root span started in that
  context; ids without a sampling state record a deferred decision. The agent's
  parent-based sampler honours both (:mod:`autotrace.propagation.decision`): a deny
  starts an unsampled trace, a deferred one leaves the decision to the root sampler.
  Deferred ids are otherwise read as not sampled.
* Hex digits may be either case; an all-zero id, a wrong length or a non-hex digit is
  invalid. A header given several differing values (repeated, or comma-joined), more
  than ``MAX_VALUES`` values or one oversized value is invalid. Header names are looked
  up in lower case, then, when the getter lists its keys, in any case
  (:func:`~autotrace.propagation.fields.lookup`). Nothing here raises.

Writing: ``b3: {traceid:32}-{spanid:16}-{1|0|d}`` (:class:`B3SinglePropagator`) or
``x-b3-traceid``, ``x-b3-spanid`` and ``x-b3-sampled: 1|0``, or instead of it
``x-b3-flags: 1`` on a debug trace (:class:`B3MultiPropagator`); ``d``/debug while the
span context is sampled and of the trace the debug flag came with (B3's or Jaeger's).
Names are written in lower case (HTTP names are case-insensitive; gRPC metadata
requires it).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

from . import decision
from .base import Propagator
from .fields import read, single_value

SINGLE = "b3"
TRACE_ID = "x-b3-traceid"
SPAN_ID = "x-b3-spanid"
SAMPLED = "x-b3-sampled"
FLAGS = "x-b3-flags"
PARENT_SPAN_ID = "x-b3-parentspanid"

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{16}")
_SPAN_ID = re.compile(r"[0-9a-fA-F]{16}")

ACCEPT, DENY, DEBUG = "1", "0", "d"  # sampling states; None is deferred


# -- parsing ---------------------------------------------------------------------------


class Extracted(NamedTuple):
    """What B3 headers carry: ids (both None for a sampling state alone) and the state."""

    trace_id: int | None
    span_id: int | None
    state: str | None  # ACCEPT, DENY, DEBUG, or None: deferred


def _trace_id(text: str) -> int | None:
    if not _TRACE_ID.fullmatch(text):
        return None
    return int(text, 16) or None


def _span_id(text: str) -> int | None:
    if not _SPAN_ID.fullmatch(text):
        return None
    return int(text, 16) or None


def parse_single(value: str) -> Extracted | None:
    """What a ``b3`` value carries, or None if it is invalid."""
    parts = value.split("-")
    if len(parts) == 1:
        return Extracted(None, None, value) if value in (ACCEPT, DENY, DEBUG) else None
    if len(parts) > 4:
        return None
    trace_id, span_id = _trace_id(parts[0]), _span_id(parts[1])
    if trace_id is None or span_id is None:
        return None
    state = parts[2] if len(parts) >= 3 else None
    if state is not None and state not in (ACCEPT, DENY, DEBUG):
        return None
    if len(parts) == 4 and _span_id(parts[3]) is None:
        return None
    return Extracted(trace_id, span_id, state)


def _multi_state(getter: textmap.Getter, carrier: object) -> str | None:
    if single_value(read(getter, carrier, FLAGS)) == "1":
        return DEBUG
    sampled = (single_value(read(getter, carrier, SAMPLED)) or "").lower()
    if sampled in ("1", "true"):
        return ACCEPT
    if sampled in ("0", "false"):
        return DENY
    return None


def _extract(getter: textmap.Getter, carrier: object) -> Extracted | None:
    single = read(getter, carrier, SINGLE)
    if single is not None:
        value = single_value(single)
        return parse_single(value) if value is not None else None
    trace_values = read(getter, carrier, TRACE_ID)
    span_values = read(getter, carrier, SPAN_ID)
    state = _multi_state(getter, carrier)
    if trace_values is None and span_values is None:
        return Extracted(None, None, state) if state is not None else None  # a decision alone
    trace_text, span_text = single_value(trace_values), single_value(span_values)
    if trace_text is None or span_text is None:
        return None
    trace_id, span_id = _trace_id(trace_text), _span_id(span_text)
    if trace_id is None or span_id is None:
        return None
    return Extracted(trace_id, span_id, state)


def context_with(
    context: Context, trace_id: int | None, span_id: int | None, state: str | None, deferrable: bool = True
) -> Context:
    """``context`` with what was extracted: the remote span context (sampled when the
    state is accept or debug) and the decision (:mod:`autotrace.propagation.decision`).
    Shared with the Jaeger propagator (``deferrable`` False: no deferred state there)."""
    if trace_id is None or span_id is None:
        return decision.with_decision(context, decision.DENY if state == DENY else decision.ACCEPT)
    span_context = trace.SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if state in (ACCEPT, DEBUG) else trace.TraceFlags.DEFAULT),
    )
    context = trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)
    if state is None and deferrable:
        context = decision.with_decision(context, decision.DEFER, span_context)
    if state == DEBUG:
        context = decision.with_debug(context, trace_id)
    return context


def state_to_write(context: Context | None, span_context: trace.SpanContext) -> str:
    """The sampling state to write for ``span_context``: DEBUG, ACCEPT or DENY."""
    if decision.is_debug(context, span_context):
        return DEBUG
    return ACCEPT if span_context.trace_flags.sampled else DENY


class _B3Propagator(Propagator):
    # Every field extract() may read: both forms, whichever is written.
    reads = frozenset({SINGLE, TRACE_ID, SPAN_ID, SAMPLED, FLAGS, PARENT_SPAN_ID})

    def read(self, getter: textmap.Getter, carrier: object, context: Context) -> Context:
        found = _extract(getter, carrier)
        return context if found is None else context_with(context, *found)

    def write(self, context: Context | None, setter: textmap.Setter, carrier: object) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            self.write_ids(span_context, state_to_write(context, span_context), setter, carrier)

    def write_ids(self, span_context: trace.SpanContext, state: str, setter: textmap.Setter, carrier: object) -> None:
        raise NotImplementedError


class B3SinglePropagator(_B3Propagator):
    """``OTEL_PROPAGATORS=b3``: writes the single ``b3`` header; reads both forms."""

    writes = frozenset({SINGLE})

    def write_ids(self, span_context: trace.SpanContext, state: str, setter: textmap.Setter, carrier: object) -> None:
        setter.set(carrier, SINGLE, f"{span_context.trace_id:032x}-{span_context.span_id:016x}-{state}")


class B3MultiPropagator(_B3Propagator):
    """``OTEL_PROPAGATORS=b3multi``: writes the ``X-B3-*`` headers; reads both forms."""

    writes = frozenset({TRACE_ID, SPAN_ID, SAMPLED, FLAGS})

    def write_ids(self, span_context: trace.SpanContext, state: str, setter: textmap.Setter, carrier: object) -> None:
        setter.set(carrier, TRACE_ID, f"{span_context.trace_id:032x}")
        setter.set(carrier, SPAN_ID, f"{span_context.span_id:016x}")
        if state == DEBUG:
            setter.set(carrier, FLAGS, "1")  # debug implies accept: no X-B3-Sampled (B3 spec)
        else:
            setter.set(carrier, SAMPLED, state)
