"""Carrying the trace context to where work runs: other threads, and child processes.

Work is handed its context when it is *submitted or started*, not when it runs, and
what is carried is a Context (or, to another process, the propagation fields of one),
never a live span: a parent span that has ended by the time the work runs still
parents it. Carrying creates no span.

Only the OpenTelemetry context is carried, not the submitter's other context
variables: the app sees its own ``contextvars`` in a thread exactly as without the
agent.

To another process the context goes as propagation fields: those of the configured
formats (``OTEL_PROPAGATORS``: what they keep beside the ids, such as B3's debug flag,
goes too) and, where those wrote none, W3C ``traceparent``/``tracestate`` and
``baggage``. ``OTEL_PROPAGATORS`` says how to talk to other services (``none``, or
formats without baggage); the process's own children continue its trace whatever it
says, as its threads do.

Before the OpenTelemetry API has been imported, by the agent or the app (nothing traced
yet in this process), there is nothing to carry: :func:`capture` returns None at the
cost of two lookups, and nothing is imported. When the API cannot be imported (a broken
install) one warning says so and the work goes on untraced: nothing here raises.
"""

from __future__ import annotations

import sys

from . import _log, api

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from opentelemetry.context import Context


# Set when the API failed to import: nothing is carried, and the import is not retried.
_api_failed = False


def capture() -> Context | None:
    """The current context, or None when it holds nothing to carry."""
    if not api.loaded:
        if _api_failed or "opentelemetry.context" not in sys.modules:
            return None  # the API not imported: no span anywhere
        _load_api()
        if not api.loaded:  # being imported on this thread, or broken
            return None
    try:
        ctx = api.context.get_current()
        return ctx if ctx else None  # an empty Context is falsy (a dict)
    except Exception:  # noqa: BLE001
        return None


def _load_api() -> None:
    """Import the API for :func:`capture`; a failure is logged once and remembered."""
    global _api_failed
    if _api_failed:
        return
    try:
        api.load()
    except Exception as exc:  # noqa: BLE001 - the app's Thread.start or submit goes on, untraced
        _api_failed = True
        _log.warn_once(
            "carry-api",
            "cannot import the OpenTelemetry API (%s: %s); work handed to threads and processes is not traced",
            type(exc).__name__,
            exc,
        )


def _context_variable():
    """The ContextVar behind OpenTelemetry's default runtime context, or None for another runtime.

    Setting it directly does what ``context.attach`` does for that runtime, without its
    layers of calls: the cost of carrying is paid per task.
    """
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT  # noqa: PLC2701
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

        if type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext:
            return _RUNTIME_CONTEXT._current_context  # noqa: SLF001
    except Exception:  # noqa: BLE001
        pass
    return None


_variable = False  # not looked up yet


def run_in(ctx: Context | None, function: Callable, *args, **kwargs):
    """Call ``function`` with ``ctx`` current (as is if None); the context is restored after."""
    if ctx is None:
        return function(*args, **kwargs)
    global _variable
    variable = _variable
    if variable is False:
        variable = _variable = _context_variable()
    if variable is not None:
        token = variable.set(ctx)
        try:
            return function(*args, **kwargs)
        finally:
            try:
                variable.reset(token)
            except (ValueError, RuntimeError):  # reset in another context: nothing to undo
                pass
    context = api.context
    try:
        token = context.attach(ctx)
    except Exception:  # noqa: BLE001 - run the work untraced, never fail it
        return function(*args, **kwargs)
    try:
        return function(*args, **kwargs)
    finally:
        try:
            context.detach(token)
        except Exception:  # noqa: BLE001
            pass


def bind(function: Callable) -> Callable:
    """``function`` bound to the current context (itself when there is none to carry)."""
    ctx = capture()
    if ctx is None:
        return function

    def in_context(*args, **kwargs):
        return run_in(ctx, function, *args, **kwargs)

    return in_context


def to_carrier() -> dict[str, str] | None:
    """The current context as propagation fields (``traceparent`` ...), for another process."""
    ctx = capture()
    if ctx is None:
        return None
    carrier: dict[str, str] = {}
    try:
        api.propagate.inject(carrier, context=ctx)  # the configured formats
    except Exception:  # noqa: BLE001 - the W3C fields below still carry the trace
        carrier.clear()
    try:
        w3c_trace, w3c_baggage = _w3c()  # where the configured formats wrote none
        if w3c_trace.fields.isdisjoint(carrier):
            w3c_trace.inject(carrier, context=ctx)
        if w3c_baggage.fields.isdisjoint(carrier):
            w3c_baggage.inject(carrier, context=ctx)
    except Exception:  # noqa: BLE001
        pass
    return carrier or None


def from_carrier(carrier: dict[str, str] | None) -> Context | None:
    """The context a carrier made by :func:`to_carrier` stands for (in the child process)."""
    if not carrier:
        return None
    if not api.loaded:
        _load_api()
        if not api.loaded:
            return None
    try:
        ctx = api.propagate.extract(carrier)  # the configured formats
    except Exception:  # noqa: BLE001
        ctx = None
    try:
        from opentelemetry import baggage

        if ctx is None:
            ctx = api.context.Context()
        # The W3C fields to_carrier() added where the configured formats wrote none.
        w3c_trace, w3c_baggage = _w3c()
        if not api.trace.get_current_span(ctx).get_span_context().is_valid:
            ctx = w3c_trace.extract(carrier, ctx)
        if not baggage.get_all(ctx):
            ctx = w3c_baggage.extract(carrier, ctx)
    except Exception:  # noqa: BLE001
        pass
    return ctx


# The agent's own W3C propagators (trace context, baggage), made at the first carrier.
_w3c_propagators: tuple | None = None


def _w3c() -> tuple:
    """(W3C trace context propagator, W3C baggage propagator); the API is loaded by then."""
    global _w3c_propagators
    if _w3c_propagators is None:
        from .propagation.baggage import BaggagePropagator
        from .propagation.tracecontext import TraceContextPropagator

        _w3c_propagators = (TraceContextPropagator(), BaggagePropagator())
    return _w3c_propagators
