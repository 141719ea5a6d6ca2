"""What B3 and Jaeger carry besides ids: a sampling decision, and the debug flag.

OpenTelemetry's span context has one "sampled" bit. B3 can also say "deny" or "accept"
with no ids at all (``b3: 0``, ``X-B3-Sampled: 0`` alone), leave the decision to the
receiver (deferred: ids without a sampling state), or force sampling (debug: ``d``,
``X-B3-Flags: 1``, Jaeger's flag bit 2). The extractors record these in the context:

* :func:`with_decision` / :func:`upstream_decision`: ``DENY`` or ``ACCEPT`` for the root
  span started in that context (no valid parent), ``DEFER`` for a span whose parent is
  the deferred span context (equal in ids, flags and state: a parent from another
  format that says "sampled" is not overruled). The agent's sampler
  (:class:`~autotrace.propagation.sampler.UpstreamParentBased`) honours them.
* :func:`with_debug` / :func:`is_debug`: the debug flag of a trace, written back by the
  B3 and Jaeger injectors on that trace's sampled span contexts.

Each value holds what it applies to, so a context that later holds another span (a
child, a new trace, a parent from an earlier format) does not inherit it by mistake.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import create_key, get_value, set_value
from opentelemetry.context.context import Context

ACCEPT = "accept"
DENY = "deny"
DEFER = "defer"

_DECISION_KEY = create_key("autotrace-upstream-sampling-decision")
_DEBUG_KEY = create_key("autotrace-upstream-debug")
# The context key of a recorded decision: a context without it has none (a fast check).
DECISION_KEY = _DECISION_KEY


def with_decision(context: Context, decision: str, deferred: trace.SpanContext | None = None) -> Context:
    """``context`` recording ``decision``: for its root span (``deferred`` None), or for a
    span whose parent is (equal to) the span context ``deferred``."""
    return set_value(_DECISION_KEY, (decision, deferred), context)


def upstream_decision(context: Context | None) -> str | None:
    """The decision recorded for a span started with parent ``context``, or None."""
    recorded = get_value(_DECISION_KEY, context)
    if not recorded:
        return None
    decision, deferred = recorded
    parent = trace.get_current_span(context).get_span_context()
    if deferred is None:
        return decision if not parent.is_valid else None
    return decision if parent == deferred else None


def with_debug(context: Context, trace_id: int) -> Context:
    """``context`` recording the debug flag for trace ``trace_id``."""
    return set_value(_DEBUG_KEY, trace_id, context)


def is_debug(context: Context | None, span_context: trace.SpanContext) -> bool:
    """Whether ``span_context`` (sampled, of the trace recorded in ``context``) is debug."""
    return bool(span_context.trace_flags.sampled) and get_value(_DEBUG_KEY, context) == span_context.trace_id
