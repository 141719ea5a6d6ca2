"""W3C Trace Context Level 2: the ``traceparent`` and ``tracestate`` headers.

What the OpenTelemetry API's ``TraceContextTextMapPropagator`` (opentelemetry-api 1.45)
gets wrong and this module gets right, by section of https://www.w3.org/TR/trace-context-2/:

* "Header Name" (ASCII case-insensitive): there ``TraceParent`` in a dict is not found.
* A repeated ``traceparent`` is one header given twice (its values combine into an
  invalid comma-joined one): there the first is continued, here a new trace starts.

Reading follows the specification exactly, whatever the getter:

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
  than 32 members, more than 64 header values or more than 16447 characters in all (32
  members of a 256-character key and value, and 31 commas: the longest valid header)
  make the whole ``tracestate`` invalid: it is dropped and the ``traceparent`` kept.
* Header names are matched in any case: as given first, then, when the getter lists
  its keys, in another case; two keys that differ only in case (``Traceparent`` and
  ``TRACEPARENT`` in a dict) are the header given twice. A getter that raises reads as
  no header: the context is returned unchanged.

Writing always produces version ``00`` with the span context's flags (two hex digits)
and its ``TraceState`` as is, in order. The agent adds no ``tracestate`` entry of its
own; an entry the app adds (``TraceState.add``/``update`` on a span context it then
makes current) is first, as those methods put it, and the others keep their order.
"""

from __future__ import annotations

import re
from typing import Sequence

from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.trace.span import TraceState

from .base import Propagator
from .fields import MAX_TRACESTATE_LENGTH, MAX_TRACESTATE_MEMBERS, TRACEPARENT, TRACESTATE, read

MAX_TRACEPARENT_LENGTH = 512

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


def parse_tracestate(values: Sequence[str]) -> TraceState | None:
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


class TraceContextPropagator(Propagator):
    """Extracts and injects W3C Trace Context (Level 2) ``traceparent``/``tracestate``."""

    reads = frozenset({TRACEPARENT, TRACESTATE})
    writes = reads

    def read(self, getter: textmap.Getter, carrier: object, context: Context) -> Context:
        values = read(getter, carrier, TRACEPARENT, max_values=1, limit=MAX_TRACEPARENT_LENGTH)
        ids = parse_traceparent(values[0]) if values else None
        if ids is None:
            return context
        trace_id, span_id, flags = ids
        states = read(getter, carrier, TRACESTATE, joined=True)  # 64 values, 16447 characters
        span_context = trace.SpanContext(
            trace_id=trace_id,
            span_id=span_id,
            is_remote=True,
            trace_flags=trace.TraceFlags(flags),
            trace_state=parse_tracestate(states) if states else None,
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)

    def write(self, context: Context | None, setter: textmap.Setter, carrier: object) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        flags = int(span_context.trace_flags) & 0xFF
        setter.set(carrier, TRACEPARENT, f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}")
        trace_state = span_context.trace_state
        if trace_state:
            setter.set(carrier, TRACESTATE, ",".join(f"{key}={value}" for key, value in trace_state.items()))
