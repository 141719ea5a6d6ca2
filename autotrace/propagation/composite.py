"""Several propagation formats at once: the first valid one is the parent, others links.

* ``inject``: every propagator injects, in order; one that raises is skipped (one
  warning) and the others still inject.
* ``extract``: the propagators run in order, each on the context the previous ones
  produced. The FIRST one that yields a valid span context decides the parent; a later
  one's span context never replaces it, but what the later ones add besides the span
  (baggage) is kept. A later valid span context with a different trace id is kept as a
  span link (:func:`extracted_links`); the same trace id adds nothing. The links are
  those of this extraction only (links the given context held are replaced). A
  propagator that raises is skipped (one warning).
* ``fields``: the union of the propagators' fields.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry import trace
from opentelemetry.context import create_key, get_value, set_value
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

from .. import _log
from .baggage import BaggagePropagator
from .base import Propagator
from .tracecontext import FLAGS_HEX, TraceContextPropagator, traceparent

_LINKS_KEY = create_key("autotrace-extracted-links")


def extracted_links(context: Context | None = None) -> list[trace.Link]:
    """The span links :class:`CompositePropagator` extracted into ``context`` (a copy);
    empty when none. ``context`` None reads the current context. Never raises."""
    try:
        links = get_value(_LINKS_KEY, context)
        return list(links) if links else []
    except Exception:  # noqa: BLE001
        return []


def _name(propagator: object) -> str:
    return type(propagator).__name__


class CompositePropagator(Propagator):
    """The propagators of ``OTEL_PROPAGATORS``, in order (see the module docstring)."""

    def __init__(self, propagators: Sequence[textmap.TextMapPropagator]) -> None:
        self._propagators = tuple(propagators)
        # How each injects: the agent's formats straight through their write() (a call
        # less on every outgoing request), others through the API's inject().
        self._writers = tuple((p, p.write if isinstance(p, Propagator) else None) for p in self._propagators)
        value_writers = tuple(getattr(p, "write_values", None) if isinstance(p, Propagator) else None for p in self._propagators)
        self._value_writers = value_writers if None not in value_writers else None
        # write_values when every format has a dict writer (W3C trace context and baggage:
        # the default), else None: a client span's headers are then made with inject().
        self.dict_writer = self.write_values if self._value_writers is not None else None
        if [type(p) for p in self._propagators] == [TraceContextPropagator, BaggagePropagator]:
            # The default (tracecontext,baggage): both formats' writes in one call.
            self.dict_writer = _w3c_writer(*self._propagators)

    @property
    def propagators(self) -> tuple[textmap.TextMapPropagator, ...]:
        return self._propagators

    @property
    def reads(self) -> frozenset[str] | None:
        """Every field ``extract`` may read (lower case), or None when that is not a fixed set.

        A server with none of these fields in a request need not extract at all (the
        context stays as it was). None when a propagator does not say what it reads (one
        of another package) or reads by prefix (Jaeger's ``uberctx-*`` baggage).
        """
        names: set[str] = set()
        for propagator in self._propagators:
            reads = getattr(propagator, "reads", None)
            if not isinstance(reads, frozenset):
                return None
            names |= reads
        return frozenset(names)

    def default_context(self) -> Context | None:  # type: ignore[override]
        """None: without a context, each format starts from its own default (an empty
        context; the current one for baggage)."""
        return None

    def read(self, getter: textmap.Getter, carrier: object, context: Context | None) -> Context:  # type: ignore[override]
        result = context
        chosen: trace.Span | None = None  # the span of the first valid span context
        links: list[trace.Link] = []
        seen: set[tuple[int, int]] = set()
        for propagator in self._propagators:
            before = trace.get_current_span(result)
            try:
                extracted = propagator.extract(carrier, result, getter=getter)
            except Exception as exc:  # noqa: BLE001 - one broken format must not stop the others
                _log.warn_once(
                    "propagation-extract:" + _name(propagator),
                    "propagator %s failed to extract (%s: %s); it is skipped",
                    _name(propagator),
                    type(exc).__name__,
                    exc,
                )
                continue
            if not isinstance(extracted, Context):
                continue
            span = trace.get_current_span(extracted)
            if span is not before:
                span_context = span.get_span_context()
                if chosen is None:
                    if span_context.is_valid:
                        chosen = span
                        seen.add((span_context.trace_id, span_context.span_id))
                else:
                    parent = chosen.get_span_context()
                    key = (span_context.trace_id, span_context.span_id)
                    if span_context.is_valid and span_context.trace_id != parent.trace_id and key not in seen:
                        seen.add(key)
                        links.append(trace.Link(span_context))
                    extracted = trace.set_span_in_context(chosen, extracted)
            result = extracted
        if result is None:
            result = Context()
        # Links are this extraction's only: a context carried from an earlier request
        # (a thread started inside it) must not lend its links to this one.
        if links or get_value(_LINKS_KEY, result):
            result = set_value(_LINKS_KEY, tuple(links), result)
        return result

    def write(self, context: Context | None, setter: textmap.Setter, carrier: object) -> None:
        for propagator, write in self._writers:
            try:
                if write is not None:
                    write(context, setter, carrier)
                else:
                    propagator.inject(carrier, context, setter=setter)
            except Exception as exc:  # noqa: BLE001 - one broken format must not stop the others
                _warn_inject(propagator, exc)

    def write_values(self, span_context: trace.SpanContext, context: Context | None, values: dict) -> None:
        """The headers ``inject`` would write for ``context``, whose current span has
        ``span_context``, set in the dict ``values``: each format's fields in the same order,
        without the API's getter, setter and context look-ups (see :attr:`dict_writer`). A
        format that raises is skipped, as in :meth:`write`."""
        for write in self._value_writers or ():
            try:
                write(span_context, context, values)
            except Exception as exc:  # noqa: BLE001 - one broken format must not stop the others
                owner = getattr(write, "__self__", write)
                _log.warn_once(
                    "propagation-inject:" + _name(owner),
                    "propagator %s failed to inject (%s: %s); it is skipped",
                    _name(owner),
                    type(exc).__name__,
                    exc,
                )

    @property
    def fields(self) -> set[str]:
        fields: set[str] = set()
        for propagator in self._propagators:
            try:
                fields.update(propagator.fields)
            except Exception:  # noqa: BLE001
                continue
        return fields


def _w3c_writer(trace_format: TraceContextPropagator, baggage_format: BaggagePropagator):
    """The dict writer of the default formats, W3C trace context then baggage: what
    :meth:`CompositePropagator.write_values` does through both formats' ``write_values``,
    in one call for the usual span context (the API's, valid, no trace state) and a
    context without baggage (one look-up). Anything else through the formats' own."""
    from .baggage import CONTEXT_KEY

    write_trace, write_baggage = trace_format.write_values, baggage_format.write_values
    baggage_key = CONTEXT_KEY
    span_context_class, no_state, flags_hex = trace.SpanContext, trace.DEFAULT_TRACE_STATE, FLAGS_HEX

    def write_values(span_context: trace.SpanContext, context: Context | None, values: dict) -> None:
        try:
            if type(span_context) is span_context_class and span_context[4] is no_state:
                # The tuple (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid).
                trace_id, span_id, _, flags, _, valid = span_context
                if valid:  # traceparent(), inline
                    try:
                        values["traceparent"] = "-".join(
                            ("00", trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex(), flags_hex[flags & 0xFF])
                        )
                    except OverflowError:
                        values["traceparent"] = traceparent(trace_id, span_id, flags)
            else:
                write_trace(span_context, context, values)
        except Exception as exc:  # noqa: BLE001 - skipped, as in write_values
            _warn_inject(trace_format, exc)
        if context is not None and baggage_key is not None and not context.get(baggage_key):
            return  # most requests carry no baggage
        try:
            write_baggage(span_context, context, values)
        except Exception as exc:  # noqa: BLE001
            _warn_inject(baggage_format, exc)

    return write_values


def _warn_inject(propagator: object, exc: BaseException) -> None:
    _log.warn_once(
        "propagation-inject:" + _name(propagator),
        "propagator %s failed to inject (%s: %s); it is skipped",
        _name(propagator),
        type(exc).__name__,
        exc,
    )
