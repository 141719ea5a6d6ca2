"""Jaeger propagation: the ``uber-trace-id`` header and ``uberctx-{key}`` baggage headers.

What opentelemetry-propagator-jaeger (1.45) gets wrong and this module gets right, by
section of Jaeger's "Propagation Format"
(https://www.jaegertracing.io/docs/client-libraries/#propagation-format):

* "Trace/Span Identity", flags (bit 2: debug): it writes every sampled trace with the
  debug bit (``03``), so downstream Jaeger services force and mark them all as debug,
  and it drops the debug bit it receives; here debug is written only on a trace that
  came with it (from Jaeger or B3).
* "Trace/Span Identity", key ("case-insensitive in HTTP"): ``Uber-Trace-Id`` in a dict is
  not found there; here any case is.
* "Baggage" (``uberctx-{key}``): read there only beside a ``uber-trace-id``; here
  whether or not one is present.

Reading:

* ``uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}``, possibly URL-encoded
  (``%3A`` for ``:``). The trace id is 1 to 32 hex digits (left-padded to 128 bits),
  the span and parent span ids 1 to 16, the flags 1 or 2 hex digits: bit 0 sampled,
  bit 1 debug (sampled, and the debug flag kept: see :mod:`autotrace.propagation.decision`).
  Either case of hex digits is accepted. An all-zero trace or span id, a missing or
  extra field, or a non-hex digit is invalid; so is a header given several differing
  values, or an oversized one.
* ``uberctx-{key}: {value}`` headers become OpenTelemetry baggage entries ``key``
  (the header name's rest, lower-cased) with the URL-decoded value, whether or not a
  valid ``uber-trace-id`` is present. They are found through ``getter.keys(carrier)``;
  a getter that lists no keys yields no Jaeger baggage. At most
  ``MAX_BAGGAGE_ENTRIES`` entries and ``MAX_BAGGAGE_CHARS`` characters are read.

Writing: ``uber-trace-id: {trace-id:32}:{span-id:16}:0:{flags}`` (``1`` sampled, ``0``
not, ``3`` sampled with the debug flag of that trace, from Jaeger or B3) and one
``uberctx-{key}`` (lower-cased) per baggage entry whose key is a safe header token
(``[A-Za-z0-9_.-]``), its value URL-encoded. Nothing here raises on extract.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from opentelemetry import baggage, trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

from .b3 import ACCEPT, DEBUG, DENY, context_with, state_to_write
from .base import Propagator
from .fields import MAX_KEYS, bounded_values, read, single_value

TRACE_HEADER = "uber-trace-id"
BAGGAGE_PREFIX = "uberctx-"
MAX_TRACE_HEADER_LENGTH = 256
MAX_BAGGAGE_ENTRIES = 64
MAX_BAGGAGE_CHARS = 8192

_TRACE = re.compile(r"([0-9a-fA-F]{1,32}):([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,2})")
_BAGGAGE_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,256}")
_SAMPLED = 0x01
_DEBUG = 0x02


def parse_trace_header(value: str) -> tuple[int, int, str] | None:
    """``(trace_id, span_id, state)`` from an ``uber-trace-id`` value, or None; the
    state is B3's: ``ACCEPT``, ``DENY`` or ``DEBUG``."""
    if len(value) > MAX_TRACE_HEADER_LENGTH:
        return None
    if "%" in value:
        value = unquote(value)
    match = _TRACE.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    trace_id = int(match.group(1), 16)
    span_id = int(match.group(2), 16)
    if not trace_id or not span_id:
        return None
    flags = int(match.group(4), 16)
    state = DEBUG if flags & _DEBUG else ACCEPT if flags & _SAMPLED else DENY
    return trace_id, span_id, state


class JaegerPropagator(Propagator):
    """``OTEL_PROPAGATORS=jaeger``: ``uber-trace-id`` and ``uberctx-*`` baggage.

    Its ``reads`` is None (see :attr:`.composite.CompositePropagator.reads`): its
    baggage is any header named ``uberctx-*``.
    """

    reads = None
    writes = frozenset({TRACE_HEADER})

    def read(self, getter: textmap.Getter, carrier: object, context: Context) -> Context:
        value = single_value(read(getter, carrier, TRACE_HEADER))
        ids = parse_trace_header(value) if value is not None else None
        try:
            context = _with_baggage(getter, carrier, context)
        except Exception:  # noqa: BLE001 - a getter whose keys cannot be read: no Jaeger baggage
            pass
        return context if ids is None else context_with(context, *ids, deferrable=False)

    def write(self, context: Context | None, setter: textmap.Setter, carrier: object) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            state = state_to_write(context, span_context)
            flags = _SAMPLED | _DEBUG if state == DEBUG else _SAMPLED if state == ACCEPT else 0
            setter.set(carrier, TRACE_HEADER, f"{span_context.trace_id:032x}:{span_context.span_id:016x}:0:{flags:x}")
        size = 0
        count = 0
        for name, value in baggage.get_all(context).items():
            if count >= MAX_BAGGAGE_ENTRIES:
                break
            if not isinstance(name, str) or not _BAGGAGE_KEY.fullmatch(name):
                continue
            encoded = quote(str(value), safe="")
            size += len(name) + len(encoded)
            if size > MAX_BAGGAGE_CHARS:
                break
            setter.set(carrier, BAGGAGE_PREFIX + name.lower(), encoded)
            count += 1


def _with_baggage(getter: textmap.Getter, carrier: object, context: Context) -> Context:
    """``context`` with the baggage of the carrier's ``uberctx-*`` fields (see the module docstring)."""
    keys = getter.keys(carrier)
    if not keys:
        return context
    entries: dict[str, str] = {}
    size = 0
    for count, key in enumerate(keys):
        if count >= MAX_KEYS or len(entries) >= MAX_BAGGAGE_ENTRIES:
            break
        if not isinstance(key, str) or len(key) <= len(BAGGAGE_PREFIX) or len(key) > 256:
            continue
        lowered = key.lower()
        if not lowered.startswith(BAGGAGE_PREFIX):
            continue
        name = lowered[len(BAGGAGE_PREFIX) :]
        if name in entries:
            continue
        values = bounded_values(lowered, getter.get(carrier, key))
        if not values or any(v != values[0] for v in values):
            continue
        value = unquote(values[0].strip(" \t"))
        size += len(name) + len(value)
        if size > MAX_BAGGAGE_CHARS:
            break
        entries[name] = value
    for name, value in entries.items():
        context = baggage.set_baggage(name, value, context)
    return context
