"""Propagation formats: reading and writing trace context in W3C, B3 and Jaeger headers.

Selected with ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``). The agent's own
propagators become the OpenTelemetry API's global one as soon as
``opentelemetry.propagate`` is imported (:func:`arm`; by the app or by the agent at its
first request), so every hook and the app's own ``propagate.inject``/``extract`` calls
use them.

Names: ``tracecontext``, ``baggage``, ``b3`` (single header), ``b3multi`` (``X-B3-*``),
``jaeger`` (or ``autotrace_b3``, ``autotrace_b3multi``, ``autotrace_jaeger``: their entry
point names, see :data:`ENTRY_POINTS`); any other name is loaded from its
``opentelemetry_propagator`` entry point.
They are combined by :class:`~autotrace.propagation.composite.CompositePropagator`: the
first format that yields a valid span context is the parent, a later one's different
trace is kept as a span link (:func:`extracted_links`).

Beside them: :mod:`.fields` (the limits, and the one function that reads a field's
values within them), :mod:`.base` (what the formats share), :mod:`.decision` (a B3
deny/accept/deferred decision and the B3/Jaeger debug flag, kept in the context) and
:mod:`.sampler` (the ``parentbased_*`` sampler that honours such a decision).

Nothing here imports the OpenTelemetry API at import time: the agent loads it at the
first request.
"""

from __future__ import annotations

import threading

from .. import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Sequence

    from opentelemetry.context.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Link

    from .composite import CompositePropagator

BUILT_IN = ("tracecontext", "baggage", "b3", "b3multi", "jaeger")
ENTRY_POINT_GROUP = "opentelemetry_propagator"

# The name each built-in format has in ENTRY_POINT_GROUP, the group from which the API's
# ``import opentelemetry.propagate`` loads every OTEL_PROPAGATORS name (failing the import
# on a name that is not there). tracecontext and baggage are the API's own. b3, b3multi
# and jaeger are the names of the contrib packages' propagators
# (opentelemetry-propagator-b3, -jaeger): under a name two packages give, the API takes
# whichever it finds first, so the agent's own are named apart (pyproject.toml).
ENTRY_POINTS = {
    "tracecontext": "tracecontext",
    "baggage": "baggage",
    "b3": "autotrace_b3",
    "b3multi": "autotrace_b3multi",
    "jaeger": "autotrace_jaeger",
}
_BY_ENTRY_POINT = {entry_point: name for name, entry_point in ENTRY_POINTS.items()}

_install_lock = threading.Lock()
_installed: TextMapPropagator | None = None


def built_in_name(name: str) -> str | None:
    """The built-in format ``name`` stands for (in any case; ``autotrace_b3`` is ``b3``),
    or None."""
    lowered = name.strip().lower()
    return lowered if lowered in ENTRY_POINTS else _BY_ENTRY_POINT.get(lowered)


def api_setting(names: Sequence[str]) -> str:
    """The ``OTEL_PROPAGATORS`` value under which the API's import of
    ``opentelemetry.propagate`` loads, for the agent's (valid) ``names``: a built-in
    format by its entry point name (:data:`ENTRY_POINTS`: never the contrib packages'),
    any other name as it is, ``none`` for none."""
    return ",".join(ENTRY_POINTS.get(built_in_name(name), name) for name in names) or "none"


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

    from ..distributions import entry_points

    found = next(iter(entry_points(ENTRY_POINT_GROUP, name)), None)
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
        built_in = built_in_name(name)
        key = built_in or name
        if key in seen:
            continue
        seen.add(key)
        try:
            propagators.append(_built_in(built_in) if built_in else _from_entry_point(name))
        except Exception as exc:  # noqa: BLE001 - a broken or missing propagator: go on without it
            _log.warn_once(
                "OTEL_PROPAGATORS:" + name,
                "OTEL_PROPAGATORS: propagator %r could not be loaded (%s: %s); it is skipped",
                name,
                type(exc).__name__,
                exc,
            )
    return CompositePropagator(propagators)


def install(names: Sequence[str], propagate: ModuleType | None = None) -> TextMapPropagator:
    """Make ``build(names)`` the API's global propagator, once; later calls return it.

    ``propagate`` is the module ``opentelemetry.propagate`` (imported when not given).
    """
    global _installed
    if propagate is None:
        # Before the lock: the import itself may install (see arm()).
        from opentelemetry import propagate
    with _install_lock:
        if _installed is None:
            propagator = build(names)
            propagate.set_global_textmap(propagator)
            _installed = propagator
        return _installed


def arm(names: Sequence[str]) -> None:
    """Install the agent's propagators (``names``) as soon as ``opentelemetry.propagate``
    is imported, by the app or the agent (now, if it already is).

    The API's import has by then loaded the OTEL_PROPAGATORS names from their entry
    points (see :func:`api_setting`); from the end of that import on, every caller of
    ``propagate.get_global_textmap()`` gets the agent's propagator. An app that sets its
    own with ``propagate.set_global_textmap`` afterwards keeps it.
    """
    from .. import importer

    names = tuple(names)
    importer.register("opentelemetry.propagate", lambda module: install(names, module))


def extracted_links(context: Context | None = None) -> list[Link]:
    """The span links extracted into ``context`` by the agent's composite propagator:
    valid span contexts of other traces found by formats after the one that gave the
    parent. Empty when none; never raises."""
    from .composite import extracted_links as _links

    return _links(context)


__all__ = ["BUILT_IN", "ENTRY_POINTS", "api_setting", "arm", "build", "built_in_name", "extracted_links", "install"]
