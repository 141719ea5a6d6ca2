"""The light span: how the agent's hooks start their own spans, for a fraction of the SDK's cost.

:func:`autotrace.spans.new` imports this module when the first span starts (never at
start-up). :func:`start_span` does what the SDK tracer's ``start_span`` does, for the
tracers of an SDK ``TracerProvider`` (the agent's, or the app's own when it is the
SDK's), with less work:

- the sampling decision comes first: a span the sampler drops is a ``NonRecordingSpan``
  with a valid context (new span id, the flags and trace state the sampler gives), as the
  SDK makes it, and the hook's attributes are never looked at (they may be given as a
  function, called only for a recorded span);
- a recorded span is a :class:`LightSpan`: the SDK's own ``Span`` class underneath (so
  ``isinstance`` checks, ``ReadableSpan`` readers, exporters and the app's span
  processors see an SDK span), with ``__slots__`` and the work of its ``__init__``
  trimmed: the hook's attributes are kept in a plain dict when each value is a plain
  ``str``, ``bool``, ``int`` or ``float`` and no limit applies (they are what the SDK's
  validation would keep, unchanged), events and links are made at their first use, and
  at its end the span itself is handed to the processors (ended, it no longer changes)
  instead of a copy.

What the *app* does with such a span (``trace.get_current_span().set_attribute(...)``,
``add_event``, ``record_exception``, ``set_status``, ``update_name``, ``add_link``) is the
SDK's code, with its validation and ``OTEL_SPAN_*`` limits: the first attribute the app
sets moves the plain dict into the SDK's ``BoundedAttributes``. Spans the app starts
itself are the SDK's, untouched.

A sampler that may read attributes (one not of the SDK's or the agent's kinds) gets
them, computed first, and its result's attributes go through the SDK's cleaning. What
this module does not reproduce (the SDK's internal span metrics, a disabled tracer, a
provider the app set after the agent's, a tracer of another kind, an SDK of another
layout) is left to the tracer's own ``start_span``.
"""

from __future__ import annotations

import random
from threading import Lock
from time import time_ns
from typing import Any, Callable, Mapping, Sequence

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import Span, SynchronousMultiSpanProcessor, Tracer, sampling
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from . import api, sdk, span_queue
from .otlp_encode import UNSET_STATUS
from .otlp_encode import speedups as _speedups
from .propagation.decision import DECISION_KEY, upstream_decision
from .propagation.sampler import UpstreamParentBased

__all__ = ["LightSpan", "start_span", "span_links"]

# Values kept as they are, without the SDK's per-value cleaning (it returns them unchanged
# when no length limit applies). Exact types: a subclass (an IntEnum, a str enum) goes
# through the SDK's cleaning, as it would without the agent.
_PLAIN = frozenset((str, bool, int, float))
_UNSET = UNSET_STATUS  # shared: the encoder knows it
_FLAGS = {flags: TraceFlags(flags) for flags in range(4)}
_SAMPLED = TraceFlags.SAMPLED
_RANDOM = TraceFlags.RANDOM_TRACE_ID
_get_current_span = trace_api.get_current_span
_new = object.__new__  # a LightSpan without the SDK span's __init__ (start_span sets its state)
_new_context = tuple.__new__  # a SpanContext whose values are known valid (what its __new__ ends with)
_random_bits = random.getrandbits  # what the SDK's RandomIdGenerator draws its ids from
# Span classes whose get_span_context() returns their _context (the SDK's, the light one, and
# the API's NonRecordingSpan: the remote parent an incoming request or message gives).
_SDK_SPANS = frozenset({Span, getattr(sdk_trace, "_Span", Span), NonRecordingSpan})
_SPAN_ID_MAX = (1 << 64) - 1
_TRACE_ID_MAX = (1 << 128) - 1


class LightSpan(Span):
    """An SDK span started by one of the agent's hooks (see the module docstring).

    Its state is the SDK span's (the same private names, so the SDK's methods work on it),
    in slots; ``_attributes`` is a plain dict until something other than the hook sets an
    attribute, ``_events`` and ``_links`` an empty tuple until the first one. Made by
    :func:`start_span`, which sets the slots itself (the SDK's ``__init__``, which a call
    of the class would run, makes an SDK span's usual state: that works too).
    """

    __slots__ = (
        "_name",
        "_context",
        "_kind",
        "_instrumentation_info",
        "_instrumentation_scope",
        "_parent",
        "_start_time",
        "_end_time",
        "_attributes",
        "_events",
        "_links",
        "_resource",
        "_status",
        "_span_processor",
        "_limits",
        "_span_lock",  # the lock (the _lock property): None until its first use
        "_record_end_metrics",
        "_pid",
        "_plan",
    )

    # The SDK span's settings a hook's span never changes (read by the SDK's methods).
    _sampler = None
    _trace_config = None
    _record_exception = True
    _set_status_on_exception = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The SDK span's own ``__init__`` (not the way :func:`start_span` makes one): the
        span's processors then get the SDK's calls, ``on_start`` included."""
        self._pid = None
        self._plan = None
        self._span_lock = None
        Span.__init__(self, *args, **kwargs)

    # -- the lock: made at its first use --------------------------------------------------

    # A hook's span that the app never touches is started, given the hook's attributes and
    # ended without one (autotrace._speedups does that under the GIL, where no other thread
    # runs between a check and a set); the SDK's methods take it, and the first to ask
    # makes it. Where autotrace._speedups is built, this property is its compiled twin.
    @property
    def _lock(self) -> Any:
        lock = self._span_lock
        if lock is None:
            with _making_locks:  # one lock per span, whichever thread asks first
                lock = self._span_lock
                if lock is None:
                    lock = self._span_lock = Lock()
        return lock

    @_lock.setter
    def _lock(self, lock: Any) -> None:
        self._span_lock = lock

    # -- attributes -------------------------------------------------------------------

    def _bounded(self) -> BoundedAttributes:
        """The SDK's attribute mapping, made from the plain dict at the first need (lock held)."""
        attributes = self._attributes
        if type(attributes) is dict:
            limits = self._limits
            attributes = self._attributes = BoundedAttributes(
                limits.max_span_attributes, attributes, immutable=False, max_value_len=limits.max_span_attribute_length
            )
        return attributes

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        with self._lock:
            if self._end_time is None:
                self._bounded()
        Span.set_attributes(self, attributes)  # the SDK's checks and cleaning

    def set_attribute(self, key: str, value: Any) -> None:
        with self._lock:
            if self._end_time is None:
                self._bounded()
        Span.set_attribute(self, key, value)

    def set_known(self, attributes: Mapping[str, Any]) -> None:
        """Attributes the hook produced (its own keys, plain values): no per-value cleaning.

        Each is set as the SDK's mapping sets it (a key set again moves to the end). A
        value of another type, a full span, a length limit or an ended span: the SDK's way.
        """
        with self._lock:
            current = self._attributes
            if (
                self._end_time is None
                and type(current) is dict
                and self._limits.max_span_attribute_length is None
                and _fits(current, attributes, self._limits.max_span_attributes)
            ):
                for key, value in attributes.items():
                    if key in current:
                        del current[key]
                    current[key] = value
                return
        self.set_attributes(attributes)

    # -- events and links: made at the first one ----------------------------------------

    def _add_event(self, event: Any) -> None:
        if type(self._events) is tuple:
            self._events = BoundedList(self._limits.max_events)
        Span._add_event(self, event)  # noqa: SLF001 - the SDK's check (ended span) and append

    def _add_link(self, link: Any) -> None:
        if type(self._links) is tuple:
            self._links = BoundedList.from_seq(self._limits.max_links, self._links)
        Span._add_link(self, link)  # noqa: SLF001

    # -- the end ------------------------------------------------------------------------

    def end(self, end_time: int | None = None) -> None:
        # The reference; where autotrace._speedups is built, LightSpan.end is its compiled
        # end (set below), which does this for the common case and calls this otherwise.
        with self._lock:
            done = self._start_time is None or self._end_time is not None
            if not done:
                self._end_time = end_time if end_time is not None else time_ns()
                attributes = self._attributes
                if type(attributes) is not dict:
                    attributes._immutable = True  # noqa: SLF001 - as the SDK span does
        if done:
            Span.end(self, end_time)  # the SDK's error (not started) or warning (ended)
            return
        self._after_end()

    def _after_end(self) -> None:
        """The processors' part of the end (the end time set)."""
        plan = self._plan
        if plan is not None and plan.light_ends is not None and self._span_processor._span_processors is plan.known:  # noqa: SLF001
            # Only processors with a light end (the agent's): theirs, in their order.
            if self._pid == span_queue.pid:  # else a span of the parent's, before a fork
                for light_end in plan.light_ends:
                    light_end(self)
            return
        if self._record_end_metrics is not None:
            self._record_end_metrics()
        processor = self._span_processor
        on_ending = getattr(processor, "_on_ending", None)
        if on_ending is not None:
            on_ending(self)
        # Ended, the span no longer changes: it is its own ReadableSpan (the SDK copies).
        processor.on_end(self)


_SDK_SPANS = _SDK_SPANS | {LightSpan}
_end_py = LightSpan.end
_set_known_py = LightSpan.set_known
_making_locks = Lock()  # held while a span's lock is made (the Python _lock)
if _speedups is not None:
    # The compiled encoder (autotrace/_speedups.c) reads a light span's slots directly.
    _speedups.register_light_class(LightSpan)

def _fits(current: dict, attributes: Mapping[str, Any], maxlen: int | None) -> bool:
    """Whether ``attributes`` (str keys, plain values) can be set into ``current`` as they
    are: within the count limit once set (the SDK's mapping drops what is over it)."""
    added = 0
    for key, value in attributes.items():
        if type(value) not in _PLAIN or type(key) is not str:
            return False
        added += key not in current
    return maxlen is None or len(current) + added <= maxlen


# -- starting a span --------------------------------------------------------------------

_BLIND = (sampling.StaticSampler, sampling.TraceIdRatioBased)
_PARENT_BASED = (sampling.ParentBased, sampling.ParentBasedTraceIdRatio, UpstreamParentBased)


def _attribute_blind(sampler: object) -> bool:
    """Whether ``sampler`` is one of the SDK's (or the agent's) that never read the attributes."""
    kind = type(sampler)
    if kind in _BLIND:
        return True
    if kind in _PARENT_BASED:
        delegates = [getattr(sampler, name, None) for name in ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled", "_local_parent_not_sampled")]
        return all(delegate is not None and type(delegate) in _BLIND for delegate in delegates)
    return False


_PARENT_DELEGATES = ("_local_parent_sampled", "_local_parent_not_sampled", "_remote_parent_sampled", "_remote_parent_not_sampled")


def _outcome(decision: sampling.Decision) -> tuple[bool, bool]:
    return decision.is_recording(), decision.is_sampled()


def _parent_decisions(sampler: object) -> tuple[tuple[tuple[bool, bool], ...], tuple[bool, bool] | None] | None:
    """A parent-based sampler whose parent delegates are fixed (``ParentBased(...)``, the
    ``parentbased_*`` settings): its outcome (recording, sampled) by (parent remote,
    parent sampled), and the root's when fixed too; None for any other sampler.

    Its decision under a valid parent then needs no call: the delegate's fixed decision,
    with the parent's trace state (what ``ParentBased`` and ``StaticSampler`` return).
    """
    if type(sampler) not in _PARENT_BASED:
        return None
    delegates = [getattr(sampler, name, None) for name in _PARENT_DELEGATES]
    if not all(type(delegate) is sampling.StaticSampler for delegate in delegates):
        return None
    by_parent = tuple(_outcome(delegate._decision) for delegate in delegates)  # noqa: SLF001 - the SDK's fixed decision
    root = getattr(sampler, "_root", None)
    return by_parent, (_outcome(root._decision) if type(root) is sampling.StaticSampler else None)  # noqa: SLF001


class _Plan:
    """What starting a span of one tracer needs, read once from the tracer."""

    __slots__ = (
        "sampler", "blind", "by_parent", "root", "upstream", "ids", "random_ids", "span_bits", "enabled", "processor", "limits", "info",
        "scope", "metrics", "known", "light_ends", "fast", "resource",
    )

    def __init__(self, tracer: Tracer) -> None:
        self.sampler = tracer.sampler
        self.blind = _attribute_blind(self.sampler)
        fixed = _parent_decisions(self.sampler)
        # (local sampled, local not sampled, remote sampled, remote not sampled), the root's
        self.by_parent, self.root = fixed if fixed is not None else (None, None)
        # The agent's sampler first honours a decision B3 carried without ids.
        self.upstream = type(self.sampler) is UpstreamParentBased
        self.ids = tracer.id_generator
        self.random_ids = self.ids.is_trace_id_random  # AttributeError: an SDK before 1.42
        self.enabled = tracer._is_enabled  # noqa: SLF001 - the tracer configurator's switch
        self.processor = tracer.span_processor
        self.limits = tracer._span_limits  # noqa: SLF001 - the SDK tracer's state
        self.info = tracer.instrumentation_info
        self.scope = tracer._instrumentation_scope  # noqa: SLF001
        self.resource = tracer.resource  # set once by the provider
        # The SDK's own span metrics (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED), when on.
        metrics = getattr(tracer, "_tracer_metrics", None)
        self.metrics = None if metrics is None or type(metrics).__name__ == "NoOpTracerMetrics" else metrics
        # The SDK's random ids: drawn here directly (what generate_span_id does).
        self.span_bits = _random_bits if type(self.ids) is RandomIdGenerator else None
        # When every span processor of the tracer has a light end (the agent's own:
        # :meth:`autotrace.span_queue.EncodingBatchProcessor.light_end`, the end counter),
        # a light span skips on_start and the multi-processor's calls: its end calls those
        # (``known`` is the processors' tuple then, which the SDK replaces when one is added).
        processors = getattr(self.processor, "_span_processors", None)
        ends = None
        if type(self.processor) is SynchronousMultiSpanProcessor and type(processors) is tuple:
            ends = tuple(getattr(processor, "light_end", None) for processor in processors)
            if not all(callable(end) for end in ends):
                ends = None
        self.known = processors if ends is not None else None
        self.light_ends = ends
        self.fast = _fast_entry(tracer, self)


# The slots the compiled start sets (autotrace/_speedups.c: the order of its L_* names).
_START_SLOTS = (
    "_name", "_context", "_kind", "_instrumentation_info", "_instrumentation_scope", "_parent", "_start_time",
    "_end_time", "_attributes", "_events", "_links", "_resource", "_status", "_span_processor", "_limits", "_span_lock",
    "_record_end_metrics", "_pid", "_plan",
)


def _fast_entry(tracer: Tracer, plan: _Plan) -> tuple | None:
    """The plan as the compiled start reads it (see ``PLAN_*`` in autotrace/_speedups.c), or
    None when its spans are not the compiled start's common case: a parent-based sampler
    with fixed decisions that reads no attributes, the SDK's random ids, light-end
    processors only, no attribute length limit, no SDK span metrics, the SDK's switch."""
    if (
        compiled_start is None
        or plan.light_ends is None
        or not plan.blind
        or plan.by_parent is None
        or plan.span_bits is not _random_bits
        or plan.metrics is not None
        or plan.limits.max_span_attribute_length is not None
        or getattr(type(tracer), "_is_enabled", None) is not Tracer._is_enabled
        or not hasattr(tracer, "_tracer_config")
    ):
        return None
    outcomes = 0
    for index, (recording, sampled) in enumerate(plan.by_parent):
        outcomes |= (int(recording) | int(sampled) << 1) << (2 * index)
    if plan.root is not None:
        recording, sampled = plan.root
        outcomes |= (int(recording) | int(sampled) << 1) << 8 | 1 << 10
    maxlen = plan.limits.max_span_attributes
    return (
        plan, plan.processor, plan.known, plan.light_ends, plan.limits, plan.info, plan.scope, outcomes,
        plan.upstream, bool(plan.random_ids()), -1 if maxlen is None else maxlen, plan.resource,
    )  # fmt: skip


# Compiled plans by tracer, read by autotrace._speedups.start_light (kept as _plans is).
_fast_plans: dict[object, tuple] = {}
compiled_start = None  # autotrace._speedups.start_light when built and registered: start_span's common case
if _speedups is not None:
    from opentelemetry.context import Context

    _compiled = _speedups.register_light_start(
        LightSpan, _START_SLOTS, _fast_plans, vars(api), api.with_span_py, DECISION_KEY, tuple(_SDK_SPANS),
        tuple(_FLAGS[flags] for flags in range(4)), _random_bits, Lock, vars(span_queue), vars(sdk), Context, _end_py,
        _Plan, _set_known_py,
    )  # fmt: skip
    if _compiled is not None:
        # LightSpan's end, lazy _lock and set_known, compiled.
        LightSpan.end, LightSpan._lock, LightSpan.set_known = _compiled  # type: ignore[method-assign]
        compiled_start = _speedups.start_light
        api.with_span = _speedups.with_span  # the same context, built in C (api.with_span_py's)


# Plans by tracer (None: the SDK starts that tracer's spans). Tracers are few and live as
# long as their provider; the entry keeps the tracer so its id is not reused.
_plans: dict[int, tuple[object, _Plan | None]] = {}


def _plan(tracer: object) -> _Plan | None:
    found = _plans.get(id(tracer))
    if found is not None and found[0] is tracer:
        plan = found[1]
        if plan is None or plan.known is None or plan.processor._span_processors is plan.known:  # noqa: SLF001
            return plan
        # A span processor was added since: plan again.
    plan = None
    if type(tracer) in (Tracer, sdk.AgentTracer):
        try:
            plan = _Plan(tracer)  # type: ignore[arg-type]
        except AttributeError:  # an SDK of another layout
            plan = None
    if len(_plans) >= 256:
        _plans.clear()
        _fast_plans.clear()
    _plans[id(tracer)] = (tracer, plan)
    if plan is not None and plan.fast is not None:
        _fast_plans[tracer] = plan.fast
    else:
        _fast_plans.pop(tracer, None)
    return plan


def start_span(
    tracer: Any,
    name: str,
    kind: trace_api.SpanKind,
    parent: Any,
    attributes: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    links: Sequence[trace_api.Link] | None = None,
) -> trace_api.Span:
    """The tracer's span under the context ``parent``, as its ``start_span`` would make it.

    ``attributes``: a mapping, or a function returning one (called only when the span is
    recorded, or when the sampler reads attributes). Raises what the SDK raises.
    """
    if compiled_start is not None and not links:
        # The common case in C (autotrace._speedups.start_light), this function's result.
        span = compiled_start(tracer, name, kind, parent, attributes)
        if span is not None:
            return span
    plan = _plan(tracer)
    if plan is None or plan.metrics is not None or sdk.app_provider() is not None or not plan.enabled():
        if attributes is not None and type(attributes) is not dict and callable(attributes):
            attributes = attributes()
        return tracer.start_span(name, context=parent, kind=kind, attributes=attributes, links=links)
    links = links or ()
    key = api.SPAN_KEY
    found = parent.get(key) if key is not None else None
    if type(found) in _SDK_SPANS:
        parent_context = found._context  # noqa: SLF001 - what get_span_context returns
    else:
        parent_context = _get_current_span(parent).get_span_context()
    if type(parent_context) is SpanContext:
        # Its fields unpacked (a tuple: trace_id, span_id, is_remote, flags, state, valid),
        # where the properties are a call each.
        trace_id, _, parent_remote, parent_flags, parent_state, valid = parent_context
        if not valid:
            parent_context = None
    elif parent_context is not None:
        if parent_context.is_valid:
            trace_id, parent_remote = parent_context.trace_id, parent_context.is_remote
            parent_flags, parent_state = parent_context.trace_flags, parent_context.trace_state
        else:
            parent_context = None
    if parent_context is None:
        trace_id = plan.ids.generate_trace_id()
        random = plan.random_ids()
    else:
        random = parent_flags & _RANDOM
    by_parent = plan.by_parent
    if (
        by_parent is not None
        and (parent_context is not None or plan.root is not None)
        and not (plan.upstream and parent.get(DECISION_KEY) and upstream_decision(parent))
    ):
        # A parent-based sampler with fixed delegates: its decision without the calls.
        if parent_context is None:
            recording, sampled = plan.root
            trace_state = None
        else:
            recording, sampled = by_parent[(2 if parent_remote else 0) + (0 if parent_flags & _SAMPLED else 1)]
            trace_state = parent_state
    else:
        if plan.blind:
            result = plan.sampler.should_sample(parent, trace_id, name, kind, None, links)
        else:
            if attributes is not None and type(attributes) is not dict and callable(attributes):
                attributes = attributes()
            result = plan.sampler.should_sample(parent, trace_id, name, kind, attributes, links)
            attributes = result.attributes
        decision = result.decision
        recording, sampled = decision.is_recording(), decision.is_sampled()
        trace_state = result.trace_state
    flags = _SAMPLED if sampled else 0
    if random:
        flags |= _RANDOM
    bits = plan.span_bits
    if bits is not None:
        span_id = bits(64)
        while not span_id:
            span_id = bits(64)
    else:
        span_id = plan.ids.generate_span_id()
    # SpanContext(trace_id, span_id, False, flags, trace_state), without its __new__'s call.
    context = _new_context(
        SpanContext,
        (
            trace_id,
            span_id,
            False,
            _FLAGS[flags],
            DEFAULT_TRACE_STATE if trace_state is None else trace_state,
            0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX,
        ),
    )
    if not recording:
        return NonRecordingSpan(context)
    if attributes is not None and type(attributes) is not dict and callable(attributes):
        attributes = attributes()
    limits = plan.limits
    maxlen = limits.max_span_attributes
    if not attributes:
        kept: Any = {}
    elif (
        plan.blind
        and limits.max_span_attribute_length is None
        and (maxlen is None or len(attributes) <= maxlen)
        and _PLAIN.issuperset(map(type, attributes.values()))
    ):
        kept = dict(attributes)
    else:  # the SDK's cleaning and limits
        kept = BoundedAttributes(maxlen, attributes, immutable=False, max_value_len=limits.max_span_attribute_length)
    span = _new(LightSpan)
    span._name = name  # noqa: SLF001 - this module's own class: its state, set once
    span._context = context  # noqa: SLF001
    span._parent = parent_context  # noqa: SLF001
    span._resource = plan.resource  # noqa: SLF001
    span._attributes = kept  # noqa: SLF001
    span._kind = kind  # noqa: SLF001
    span._span_processor = plan.processor  # noqa: SLF001
    span._limits = limits  # noqa: SLF001
    span._instrumentation_info = plan.info  # noqa: SLF001
    span._instrumentation_scope = plan.scope  # noqa: SLF001
    span._links = span_links(links, limits) if links else ()  # noqa: SLF001
    span._events = ()  # noqa: SLF001
    span._status = _UNSET  # noqa: SLF001
    span._end_time = None  # noqa: SLF001
    span._span_lock = None  # noqa: SLF001 - made at its first use (the _lock property)
    span._record_end_metrics = None  # noqa: SLF001
    span._pid = span_queue.pid  # noqa: SLF001
    span._plan = plan  # noqa: SLF001
    span._start_time = time_ns()  # noqa: SLF001
    if plan.light_ends is None:
        plan.processor.on_start(span, parent_context=parent)
    return span


def span_links(links: Sequence[trace_api.Link], limits: Any) -> BoundedList:
    """The span's links as the SDK keeps them: valid ones, attributes bounded (as ``Span._new_links``)."""
    valid = []
    for link in links:
        context = link.context if link else None
        if context and (context.is_valid or link.attributes or context.trace_state):
            link._attributes = BoundedAttributes(  # noqa: SLF001 - what the SDK span does to its links
                limits.max_link_attributes, link.attributes, max_value_len=limits.max_attribute_length, immutable=True
            )
            valid.append(link)
    return BoundedList.from_seq(limits.max_links, valid)
