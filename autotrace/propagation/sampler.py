"""The agent's parent-based sampler: OpenTelemetry's, plus a decision B3 carried alone.

``OTEL_TRACES_SAMPLER=parentbased_*`` builds :class:`UpstreamParentBased`. It samples
as :class:`~opentelemetry.sdk.trace.sampling.ParentBased` does, except where an
extractor recorded a decision (:mod:`autotrace.propagation.decision`):

* ``DENY`` (``b3: 0``, ``X-B3-Sampled: 0`` without ids): the new root span is not
  sampled, as a not-sampled remote parent would make it, so downstream gets the deny;
* ``ACCEPT`` (``b3: 1``/``d``, ``X-B3-Sampled: 1`` or ``X-B3-Flags: 1`` without ids):
  sampled, as under a sampled remote parent;
* ``DEFER`` (B3 ids without a sampling state): the root sampler decides, on the
  caller's trace id.

Imports the SDK: used by :func:`autotrace.sdk.build_sampler` only.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.context.context import Context
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from .decision import ACCEPT, DEFER, DENY, upstream_decision


class UpstreamParentBased(sampling.ParentBased):
    """``ParentBased(root)`` that honours a propagated deny, accept or deferred decision."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> sampling.SamplingResult:
        try:
            decision = upstream_decision(parent_context)
        except Exception:  # noqa: BLE001 - an odd context: plain parent-based sampling
            decision = None
        if decision == DENY:
            sampler: sampling.Sampler = self._remote_parent_not_sampled
        elif decision == ACCEPT:
            sampler = self._remote_parent_sampled
        elif decision == DEFER:
            sampler = self._root
        else:
            return super().should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        return sampler.should_sample(
            parent_context=parent_context, trace_id=trace_id, name=name, kind=kind, attributes=attributes, links=links
        )
