"""B3 propagation (Zipkin): the single ``b3`` header and the multi ``X-B3-*`` headers.

https://github.com/openzipkin/b3-propagation, as the OpenTelemetry propagators spec uses it.

Reading (both propagators read both forms, the single header first):

* ``b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`` or ``b3: {SamplingState}``.
  The trace id is 16 or 32 hex digits (64-bit ids are left-padded to 128 bits), the
  span id 16, the sampling state ``1`` (accept), ``0`` (deny) or ``d`` (debug, read as
  sampled); absent means deferred, read as not sampled. ``b3: 0`` (no ids) denies: no
  span context is extracted. A present but malformed single header is invalid (nothing
  extracted; the multi headers are not consulted).
* Otherwise ``X-B3-TraceId``, ``X-B3-SpanId``, ``X-B3-Sampled`` (``1``/``0``, also
  ``true``/``false``) and ``X-B3-Flags: 1`` (debug, read as sampled).
* Hex digits may be either case; an all-zero id, a wrong length or a non-hex digit is
  invalid. A header given several differing values (repeated, or comma-joined) is
  invalid; an oversized value is ignored. Header names are looked up in lower case,
  then, when the getter lists its keys, in any case. Nothing here raises.

Writing: ``b3: {traceid:32}-{spanid:16}-{1|0}`` (:class:`B3SinglePropagator`) or
``x-b3-traceid``, ``x-b3-spanid``, ``x-b3-sampled`` (:class:`B3MultiPropagator`). Names
are written in lower case (HTTP names are case-insensitive; gRPC metadata requires it).
"""

from __future__ import annotations

import re

from opentelemetry import trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

SINGLE = "b3"
TRACE_ID = "x-b3-traceid"
SPAN_ID = "x-b3-spanid"
SAMPLED = "x-b3-sampled"
FLAGS = "x-b3-flags"
PARENT_SPAN_ID = "x-b3-parentspanid"

MAX_VALUE_LENGTH = 8192  # longest header value read; a longer one is ignored
MAX_VALUES = 64  # more values than this for one header: invalid
MAX_KEYS = 1024  # keys scanned for a case-insensitive match
_OWS = " \t"

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{16}")
_SPAN_ID = re.compile(r"[0-9a-fA-F]{16}")


# -- reading headers (shared with the Jaeger propagator) -------------------------------


def header_values(getter: textmap.Getter, carrier: object, name: str) -> list[str] | None:
    """The values of header ``name`` (lower case) as a list of str; None when absent.

    Looks the name up as given, then in any case among ``getter.keys(carrier)``. Values
    that are not text, or longer than ``MAX_VALUE_LENGTH``, are left out; more than
    ``MAX_VALUES`` values, or a getter that raises, read as absent.
    """
    got = _get(getter, carrier, name)
    if got is None:
        try:
            keys = getter.keys(carrier)
        except Exception:  # noqa: BLE001 - a getter without keys
            keys = None
        if keys:
            for count, key in enumerate(keys):
                if count >= MAX_KEYS:
                    break
                if isinstance(key, str) and key != name and key.lower() == name:
                    got = _get(getter, carrier, key)
                    break
    return _as_list(got)


def _get(getter: textmap.Getter, carrier: object, name: str) -> object:
    try:
        return getter.get(carrier, name)
    except Exception:  # noqa: BLE001 - a carrier the getter cannot read
        return None


def _as_list(got: object) -> list[str] | None:
    if got is None:
        return None
    if isinstance(got, (str, bytes)):
        got = (got,)
    values: list[str] = []
    try:
        for value in got:  # type: ignore[union-attr]
            if len(values) >= MAX_VALUES:
                return None
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str) and len(value) <= MAX_VALUE_LENGTH:
                values.append(value)
    except Exception:  # noqa: BLE001 - not iterable
        return None
    return values or None


def single_value(values: list[str] | None) -> str | None:
    """The one value a header holds: repeated or comma-joined copies of one value are
    that value; differing values are invalid (None). Whitespace around it is trimmed."""
    if not values:
        return None
    found: str | None = None
    for value in values:
        for part in value.split(","):
            part = part.strip(_OWS)
            if found is None:
                found = part
            elif part != found:
                return None
    return found or None


# -- parsing ---------------------------------------------------------------------------


def _trace_id(text: str) -> int | None:
    if not _TRACE_ID.fullmatch(text):
        return None
    return int(text, 16) or None


def _span_id(text: str) -> int | None:
    if not _SPAN_ID.fullmatch(text):
        return None
    return int(text, 16) or None


def parse_single(value: str) -> tuple[int, int, bool] | None:
    """``(trace_id, span_id, sampled)`` from a ``b3`` value, or None (invalid, or deny)."""
    parts = value.split("-")
    if len(parts) < 2 or len(parts) > 4:
        return None  # one part: a sampling state alone (deny, or no ids to continue)
    trace_id, span_id = _trace_id(parts[0]), _span_id(parts[1])
    if trace_id is None or span_id is None:
        return None
    sampled = False
    if len(parts) >= 3:
        state = parts[2]
        if state in ("1", "d"):
            sampled = True
        elif state != "0":
            return None
    if len(parts) == 4 and _span_id(parts[3]) is None:
        return None
    return trace_id, span_id, sampled


def _extract_ids(getter: textmap.Getter, carrier: object) -> tuple[int, int, bool] | None:
    single = single_value(header_values(getter, carrier, SINGLE))
    if single is not None:
        return parse_single(single)
    trace_text = single_value(header_values(getter, carrier, TRACE_ID))
    span_text = single_value(header_values(getter, carrier, SPAN_ID))
    if trace_text is None or span_text is None:
        return None
    trace_id, span_id = _trace_id(trace_text), _span_id(span_text)
    if trace_id is None or span_id is None:
        return None
    sampled = single_value(header_values(getter, carrier, SAMPLED))
    flags = single_value(header_values(getter, carrier, FLAGS))
    is_sampled = flags == "1" or (sampled is not None and sampled.lower() in ("1", "true", "d"))
    return trace_id, span_id, is_sampled


def _context_with(ids: tuple[int, int, bool], context: Context) -> Context:
    trace_id, span_id, sampled = ids
    span_context = trace.SpanContext(
        trace_id=trace_id,
        span_id=span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED if sampled else trace.TraceFlags.DEFAULT),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)


class _B3Propagator(textmap.TextMapPropagator):
    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        try:
            ids = _extract_ids(getter, carrier)
        except Exception:  # noqa: BLE001 - never raise into the app
            return context
        if ids is None:
            return context
        return _context_with(ids, context)


class B3SinglePropagator(_B3Propagator):
    """``OTEL_PROPAGATORS=b3``: writes the single ``b3`` header; reads both forms."""

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        sampled = "1" if span_context.trace_flags.sampled else "0"
        setter.set(carrier, SINGLE, f"{span_context.trace_id:032x}-{span_context.span_id:016x}-{sampled}")

    @property
    def fields(self) -> set[str]:
        return {SINGLE}


class B3MultiPropagator(_B3Propagator):
    """``OTEL_PROPAGATORS=b3multi``: writes the ``X-B3-*`` headers; reads both forms."""

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if not span_context.is_valid:
            return
        setter.set(carrier, TRACE_ID, f"{span_context.trace_id:032x}")
        setter.set(carrier, SPAN_ID, f"{span_context.span_id:016x}")
        setter.set(carrier, SAMPLED, "1" if span_context.trace_flags.sampled else "0")

    @property
    def fields(self) -> set[str]:
        return {TRACE_ID, SPAN_ID, SAMPLED}
