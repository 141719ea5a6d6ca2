"""What every propagation format of the agent shares: the API's extract/inject around a
format's own ``read`` and ``write``.

A format subclasses :class:`Propagator` and gives:

* ``reads``: every field ``extract`` may read (lower case), or None when that is no fixed
  set (Jaeger's ``uberctx-*`` baggage). A server whose request holds none of them need
  not extract at all (see :attr:`.composite.CompositePropagator.reads`).
* ``writes``: the fields ``inject`` writes (the API's ``fields``).
* ``read(getter, carrier, context)``: ``context`` with what the carrier holds. Fields
  are read with :func:`.fields.read`, which never raises; should anything else raise,
  ``extract`` returns the context it was given.
* ``write(context, setter, carrier)``: the format's fields for ``context``. (The
  composite calls its formats' ``write`` directly: injecting is on every outgoing
  request's path.)
* optionally ``write_values(span_context, context, values)``: the same fields set in a
  plain dict, for the span context given (the span current in ``context``): what a
  client span sends with its request, without the getter, setter and context look-ups
  (see :attr:`.composite.CompositePropagator.dict_writer`). None: the format has none.
"""

from __future__ import annotations

from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap


class Propagator(textmap.TextMapPropagator):
    """A propagation format of the agent (see the module docstring)."""

    reads: frozenset[str] | None = None  # None: not a fixed set, a server always extracts
    writes: frozenset[str] = frozenset()
    write_values = None  # or a method (span_context, context, values: dict): see the module docstring

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        if context is None:
            context = self.default_context()
        try:
            return self.read(getter, carrier, context)
        except Exception:  # noqa: BLE001 - never raise into the app: what cannot be read is not there
            return context if context is not None else Context()

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        self.write(context, setter, carrier)

    @property
    def fields(self) -> set[str]:
        return set(self.writes)

    def default_context(self) -> Context:
        """What ``extract`` adds to when given no context: an empty one (the composite's
        is None, passed on to each of its formats)."""
        return Context()

    def read(self, getter: textmap.Getter, carrier: object, context: Context) -> Context:
        raise NotImplementedError

    def write(self, context: Context | None, setter: textmap.Setter, carrier: object) -> None:
        raise NotImplementedError
