"""W3C Trace Context Level 2: the ``traceparent`` and ``tracestate`` headers.

Reading follows https://www.w3.org/TR/trace-context-2/ exactly, whatever the getter:

* ``traceparent`` given more than once (the getter returns several values, or one value
  holds a comma), longer than 512 characters, or not of the form
  ``version-traceid-parentid-flags`` in lower-case hex is invalid, and so is version
  ``ff``, an all-zero trace id or parent id. Version ``00`` is exactly 55 characters;
  a higher version is read by its first four fields (the 56th character, if any, must
  be ``-``) and the rest is ignored. All 8 flag bits are kept. Optional whitespace
  (space, tab) around the value is trimmed. An invalid ``traceparent`` starts a new
  trace: the context is returned unchanged, and ``tracestate`` is not read.
* ``tracestate`` values are combined into one list (joined with ``,``). Empty members
  and whitespace around members are tolerated; a repeated key, an invalid member, more
  than 32 members or more than 8192 characters make the whole ``tracestate`` invalid:
  it is dropped and the ``traceparent`` kept.

Writing always produces version ``00`` with the span context's flags (two hex digits)
and its ``TraceState`` as is, in order.
"""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.trace.span import TraceState

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACEPARENT_LENGTH = 512
MAX_TRACESTATE_LENGTH = 8192
MAX_TRACESTATE_MEMBERS = 32

_OWS = " \t"
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16

# tracestate list member (trace-context-2, section 3.3.1)
_KEY = (
    r"[a-z][a-z0-9_\-*/]{0,255}"
    r"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=({_VALUE})")


def _values(getter: textmap.Getter, carrier: object, key: str) -> list[str] | None:
    """The header's values as a list of str, or None when absent or not text."""
    got = getter.get(carrier, key)
    if got is None:
        return None
    if isinstance(got, (str, bytes)):
        got = [got]
    out = []
    for value in got:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif not isinstance(value, str):
            return None
        out.append(value)
    return out


def _is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, flags)`` from one ``traceparent`` value, or None if invalid."""
    if len(value) > MAX_TRACEPARENT_LENGTH or "," in value:
        return None
    value = value.strip(_OWS)
    if len(value) < 55:
        return None
    version = value[0:2]
    if not _is_hex(version) or version == "ff":
        return None
    if version == "00":
        if len(value) != 55:
            return None
    elif len(value) > 55 and value[55] != "-":
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    trace_id, span_id, flags = value[3:35], value[36:52], value[53:55]
    if not (_is_hex(trace_id) and _is_hex(span_id) and _is_hex(flags)):
        return None
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    return int(trace_id, 16), int(span_id, 16), int(flags, 16)


def parse_tracestate(values: list[str]) -> TraceState | None:
    """The ``TraceState`` of the combined header values, or None if it is invalid."""
    combined = ",".join(values)
    if len(combined) > MAX_TRACESTATE_LENGTH:
        return None
    pairs: dict[str, str] = {}
    for member in combined.split(","):
        member = member.strip(_OWS)
        if not member:
            continue
        match = _MEMBER.fullmatch(member)
        if match is None:
            return None
        key, val = match.groups()
        if key in pairs or len(pairs) >= MAX_TRACESTATE_MEMBERS:
            return None
        pairs[key] = val
    return TraceState(list(pairs.items()))


class TraceContextPropagator(textmap.TextMapPropagator):
    """Extracts and injects W3C Trace Context (Level 2) ``traceparent``/``tracestate``."""

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        values = _values(getter, carrier, TRACEPARENT)
        if not values or len(values) > 1:
            return context
        ids = parse_traceparent(values[0])
        if ids is None:
            return context
        trace_id, span_id, flags = ids

        trace_state = None
        state_values = _values(getter, carrier, TRACESTATE)
        if state_values:
            trace_state = parse_tracestate(state_values)

        span_context = trace.SpanContext(
            trace_id=trace_id,
            span_id=span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(flags),
            trace_state=trace_state,
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        flags = int(span_context.trace_flags) & 0xFF
        setter.set(
            carrier,
            TRACEPARENT,
            f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}",
        )
        trace_state = span_context.trace_state
        if trace_state:
            setter.set(carrier, TRACESTATE, ",".join(f"{k}={v}" for k, v in trace_state.items()))

    @property
    def fields(self) -> set[str]:
        return {TRACEPARENT, TRACESTATE}
