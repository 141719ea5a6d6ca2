"""Propagation formats: reading and writing trace context in W3C, B3 and Jaeger headers.

Selected with ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``). The agent's own
propagators replace the OpenTelemetry API's when the agent loads the API, so every
hook and the app's own ``propagate.inject``/``extract`` calls use them.

Names: ``tracecontext``, ``baggage``, ``b3`` (single header), ``b3multi`` (``X-B3-*``),
``jaeger``; any other name is loaded from its ``opentelemetry_propagator`` entry point.
They are combined by :class:`~autotrace.propagation.composite.CompositePropagator`: the
first format that yields a valid span context is the parent, a later one's different
trace is kept as a span link (:func:`extracted_links`).

Beside them: :mod:`.fields` (the limits, and the one function that reads a field's
values within them), :mod:`.base` (what the formats share), :mod:`.decision` (a B3 deny/accept/deferred decision and the B3/Jaeger
debug flag, kept in the context) and :mod:`.sampler` (the ``parentbased_*`` sampler
that honours such a decision).

Nothing here imports the OpenTelemetry API at import time: the agent loads it at the
first request.
"""

from __future__ import annotations

import threading

from .. import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Sequence

    from opentelemetry.context.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Link

    from .composite import CompositePropagator

BUILT_IN = ("tracecontext", "baggage", "b3", "b3multi", "jaeger")
ENTRY_POINT_GROUP = "opentelemetry_propagator"

_install_lock = threading.Lock()
_installed: TextMapPropagator | None = None


def _built_in(name: str) -> TextMapPropagator:
    if name == "tracecontext":
        from .tracecontext import TraceContextPropagator

        return TraceContextPropagator()
    if name == "baggage":
        from .baggage import BaggagePropagator

        return BaggagePropagator()
    if name == "jaeger":
        from .jaeger import JaegerPropagator

        return JaegerPropagator()
    from .b3 import B3MultiPropagator, B3SinglePropagator

    return B3SinglePropagator() if name == "b3" else B3MultiPropagator()


def _from_entry_point(name: str) -> TextMapPropagator:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.util._importlib_metadata import entry_points

    found = next(iter(entry_points(group=ENTRY_POINT_GROUP, name=name)), None)
    if found is None:
        raise LookupError(f"no {ENTRY_POINT_GROUP} entry point named {name!r} is installed")
    propagator = found.load()()
    if not isinstance(propagator, TextMapPropagator):
        raise TypeError(f"{type(propagator).__name__} is not a TextMapPropagator")
    return propagator


def build(names: Sequence[str]) -> CompositePropagator:
    """A composite of the named propagators, in order (``none`` or no names: of nothing).

    A name that cannot be loaded is skipped with one warning; repeated names count once.
    """
    from .composite import CompositePropagator

    propagators = []
    seen = set()
    for raw in names:
        name = str(raw).strip()
        lowered = name.lower()
        if not name:
            continue
        if lowered == "none":
            return CompositePropagator([])
        key = lowered if lowered in BUILT_IN else name
        if key in seen:
            continue
        seen.add(key)
        try:
            propagators.append(_built_in(lowered) if lowered in BUILT_IN else _from_entry_point(name))
        except Exception as exc:  # noqa: BLE001 - a broken or missing propagator: go on without it
            _log.warn_once(
                "OTEL_PROPAGATORS:" + name,
                "OTEL_PROPAGATORS: propagator %r could not be loaded (%s: %s); it is skipped",
                name,
                type(exc).__name__,
                exc,
            )
    return CompositePropagator(propagators)


def install(names: Sequence[str]) -> TextMapPropagator:
    """Make ``build(names)`` the API's global propagator, once; later calls return it."""
    global _installed
    with _install_lock:
        if _installed is None:
            from opentelemetry import propagate

            propagator = build(names)
            propagate.set_global_textmap(propagator)
            _installed = propagator
        return _installed


def extracted_links(context: Context | None = None) -> list[Link]:
    """The span links extracted into ``context`` by the agent's composite propagator:
    valid span contexts of other traces found by formats after the one that gave the
    parent. Empty when none; never raises."""
    from .composite import extracted_links as _links

    return _links(context)


__all__ = ["BUILT_IN", "build", "extracted_links", "install"]
