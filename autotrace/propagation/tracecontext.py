"""W3C Trace Context Level 2: the ``traceparent`` and ``tracestate`` headers.

What the OpenTelemetry API's ``TraceContextTextMapPropagator`` (opentelemetry-api 1.45)
gets wrong and this module gets right, by section of https://www.w3.org/TR/trace-context-2/:

* tracestate "Key": its ``TraceState`` checks the older tenant@vendor grammar, so one
  valid key such as ``foo@``, ``foo@@bar``, ``1a`` or ``t@`` + 15 characters drops the
  whole ``tracestate``; here every key of the current grammar is kept.
* "Mutating the tracestate Field" (vendors MAY discard duplicate keys): there a repeated
  key drops the whole ``tracestate``; here the first member is kept, later ones dropped.
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
  and whitespace around members are tolerated. A key is ``( lcalpha / DIGIT ) 0*255
  ( keychar )`` with ``keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"``. A
  repeated key keeps its first member (the later ones are discarded). An invalid
  member, more than 32 members (repeated keys counted), more than 64 header values or
  more than 16447 characters in all (32 members of a 256-character key and value, and
  31 commas: the longest valid header) make the whole ``tracestate`` invalid: it is
  dropped and the ``traceparent`` kept. The state is a :class:`W3CTraceState`, which
  the API's ``TraceState`` checks (the older grammar) never see, so it reaches
  outgoing headers through the SDK's spans as it came.
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
from typing import Iterator, Sequence

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

# tracestate list member (trace-context-2, "tracestate Header Field Values")
_KEY = r"[a-z0-9][a-z0-9_\-*/@]{0,255}"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=({_VALUE})")
_KEY_PATTERN = re.compile(_KEY)
_VALUE_PATTERN = re.compile(_VALUE)


def _is_hex(text: str) -> bool:
    return _HEX.issuperset(text)  # every character a lower-case hex digit (C speed, not a generator)


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


def parse_tracestate(values: Sequence[str]) -> W3CTraceState | None:
    """The state of the combined header values, or None if it is invalid."""
    combined = ",".join(values)
    if len(combined) > MAX_TRACESTATE_LENGTH:
        return None
    members: dict[str, str] = {}
    count = 0
    for member in combined.split(","):
        member = member.strip(_OWS)
        if not member:
            continue
        count += 1
        match = _MEMBER.fullmatch(member)
        if match is None or count > MAX_TRACESTATE_MEMBERS:
            return None
        key, value = match.groups()
        members.setdefault(key, value)  # a duplicate key: discarded ("Mutating the tracestate Field")
    return W3CTraceState(members)


def _is_valid_member(key: object, value: object) -> bool:
    return (
        isinstance(key, str)
        and isinstance(value, str)
        and _KEY_PATTERN.fullmatch(key) is not None
        and _VALUE_PATTERN.fullmatch(value) is not None
    )


class W3CTraceState(TraceState):
    """A ``TraceState`` whose members follow the current W3C grammar.

    The API's ``TraceState`` drops keys of the newer grammar (``foo@``, ``1a``) when it
    is made and again when ``add``/``update``/``delete`` make a new one. This one keeps
    its own members and makes its mutations of its own class, checking a new member
    against the current grammar; otherwise it behaves as the API's (a member that is
    not valid, or an 33rd, is not added: the same state is returned). The SDK passes a
    parent's state on to its children as it is, so an extracted one reaches the
    outgoing ``tracestate`` as it came.
    """

    def __init__(self, members: dict[str, str] | None = None) -> None:
        super().__init__()  # the API's own (older) checks see no entries
        self._members: dict[str, str] = members if members is not None else {}

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __getitem__(self, key: str) -> str:
        return self._members[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return str([f"{{key={key}, value={value}}}" for key, value in self._members.items()])

    def keys(self):  # type: ignore[override]
        return self._members.keys()

    def items(self):  # type: ignore[override]
        return self._members.items()

    def values(self):  # type: ignore[override]
        return self._members.values()

    def add(self, key: str, value: str) -> TraceState:
        if not _is_valid_member(key, value) or key in self._members or len(self._members) >= MAX_TRACESTATE_MEMBERS:
            return self
        return W3CTraceState({key: value, **self._members})

    def update(self, key: str, value: str) -> TraceState:
        if not _is_valid_member(key, value):
            return self
        if key not in self._members and len(self._members) >= MAX_TRACESTATE_MEMBERS:
            return self
        rest = {k: v for k, v in self._members.items() if k != key}
        return W3CTraceState({key: value, **rest})

    def delete(self, key: str) -> TraceState:
        if key not in self._members:
            return self
        return W3CTraceState({k: v for k, v in self._members.items() if k != key})

    def to_header(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self._members.items())

    @classmethod
    def from_header(cls, header_list: list[str]) -> TraceState:
        return parse_tracestate(header_list) or cls()


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
        setter.set(carrier, TRACEPARENT, traceparent(span_context.trace_id, span_context.span_id, span_context.trace_flags))
        trace_state = span_context.trace_state
        if trace_state:
            setter.set(carrier, TRACESTATE, ",".join(f"{key}={value}" for key, value in trace_state.items()))

    def write_values(self, span_context: trace.SpanContext, context: Context | None, values: dict) -> None:
        """What :meth:`write` sets, for ``span_context``, into the dict ``values``."""
        if type(span_context) is _SPAN_CONTEXT:
            # The API's SpanContext is the tuple (trace_id, span_id, is_remote, trace_flags,
            # trace_state, is_valid): read at once, not through six properties.
            trace_id, span_id, _, flags, trace_state, valid = span_context
        else:
            trace_id, span_id, flags = span_context.trace_id, span_context.span_id, span_context.trace_flags
            trace_state, valid = span_context.trace_state, span_context.is_valid
        if not valid:
            return
        values[TRACEPARENT] = traceparent(trace_id, span_id, flags)
        if trace_state is not _NO_STATE and trace_state:  # the API's empty default: no call of __len__
            values[TRACESTATE] = ",".join(f"{key}={value}" for key, value in trace_state.items())


_SPAN_CONTEXT = trace.SpanContext
_NO_STATE = trace.DEFAULT_TRACE_STATE


def traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The ``traceparent`` value of a span context (version 00): what
    ``f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"`` makes, in about half its work
    (an int's hex through ``to_bytes().hex()``, not the format-spec machinery: a client
    call formats one per request)."""
    try:
        return "-".join(("00", trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex(), _FLAGS[int(flags) & 0xFF]))
    except OverflowError:  # an id out of range (a span context of another class): as the format makes it
        return f"00-{trace_id:032x}-{span_id:016x}-{int(flags) & 0xFF:02x}"


_FLAGS = tuple(f"{value:02x}" for value in range(256))
FLAGS_HEX = _FLAGS  # the flags byte's two hex digits, by value
