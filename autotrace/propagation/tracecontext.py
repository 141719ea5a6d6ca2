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
  than 32 members, more than 64 header values or more than 16447 characters in all (32 members of a 256-character
  key and value, and 31 commas: the longest valid header) make the whole
  ``tracestate`` invalid: it is dropped and the ``traceparent`` kept.
* Header names are matched in any case (W3C: vendors MUST expect any case): as given
  first, then, when the getter lists its keys, in another case; two keys that differ
  only in case (``Traceparent`` and ``TRACEPARENT`` in a dict) are the header given
  twice. A getter that raises reads as no header: the context is returned unchanged.

Writing always produces version ``00`` with the span context's flags (two hex digits)
and its ``TraceState`` as is, in order. The agent adds no ``tracestate`` entry of its
own; an entry the app adds (``TraceState.add``/``update`` on a span context it then
makes current) is first, as those methods put it, and the others keep their order.
"""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.trace.span import TraceState

from .fields import MAX_TRACESTATE_LENGTH, MAX_TRACESTATE_MEMBERS, MAX_VALUES, TRACEPARENT, TRACESTATE, lookup

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


def _values(getter: textmap.Getter, carrier: object, key: str, max_values: int, max_chars: int) -> list[str] | None:
    """The header's values as a list of str; None when absent, not text, or more than
    ``max_values`` values or ``max_chars`` characters joined with commas (it reads no
    further than that). The name is found in any case (:func:`.fields.lookup`)."""
    got = lookup(getter, carrier, key)
    if got is None:
        return None
    if isinstance(got, (str, bytes)):
        got = [got]
    out: list[str] = []
    chars = 0
    for value in got:
        if len(out) >= max_values or not isinstance(value, (str, bytes)):
            return None
        chars += len(value) + (1 if out else 0)  # and the comma joining it
        if chars > max_chars:
            return None
        out.append(value.decode("latin-1") if isinstance(value, bytes) else value)
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

    reads = frozenset({TRACEPARENT, TRACESTATE})  # every field extract() may read (lower case)

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        try:
            values = _values(getter, carrier, TRACEPARENT, 1, MAX_TRACEPARENT_LENGTH)
            ids = parse_traceparent(values[0]) if values else None
        except Exception:  # noqa: BLE001 - a carrier the getter cannot read: no parent
            return context
        if ids is None:
            return context
        trace_id, span_id, flags = ids

        trace_state = None
        try:
            state_values = _values(getter, carrier, TRACESTATE, MAX_VALUES, MAX_TRACESTATE_LENGTH)
            if state_values:
                trace_state = parse_tracestate(state_values)
        except Exception:  # noqa: BLE001 - an unreadable tracestate is dropped, the parent kept
            trace_state = None

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
