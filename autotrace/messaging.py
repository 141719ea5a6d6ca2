"""Spans of messages and tasks, shared by every task-queue and broker hook (Celery, RQ, kombu).

A producer hook calls :func:`send` around the call that sends a message; it gets a
:class:`MessagingSpan` (kind PRODUCER, named ``send {target}``, a child of the current
span), writes the span's context into the message's headers with
:meth:`MessagingSpan.inject`, and ends it with :meth:`~MessagingSpan.close` (after
:meth:`~MessagingSpan.fail` if the send raised). Under a send in progress
(:func:`current_send`) a lower layer (kombu under Celery) starts no span of its own, and
the broker's commands under it (Redis ``LPUSH``, an RQ enqueue pipeline) get no database
span: the send is marked as the database call in progress too.

A consumer hook calls :func:`process` with the message's headers around the work the
message asks for; it gets a :class:`MessagingSpan` of kind CONSUMER named
``process {target}``, current while the work runs. Its parent follows
``AUTOTRACE_MESSAGING_PARENT`` (:func:`autotrace.config.messaging_parent`):

- ``parent`` (default): the producer's span, so the trace runs on from the web request
  to the task (and from a task to the tasks it sends);
- ``link``: a new trace, with a span link to the producer's span (fan-in, long-delayed work).

Headers without a valid context (a producer without the agent, a broken or oversized
``traceparent``) give a root span, never an error; the propagators read the fields within
the limits of :mod:`autotrace.propagation.fields`. The baggage of the message is kept in
the task's context either way (it is propagated, never read).

What the work raised is recorded with :meth:`MessagingSpan.fail`; a retry the task asked
for is :meth:`MessagingSpan.retried`: no error. A worker process that is about to end
without ``atexit`` (a prefork child) exports what it recorded with :func:`export_now`,
bounded by ``AUTOTRACE_SHUTDOWN_TIMEOUT``.

Span content follows the messaging semantic conventions: ``messaging.system``,
``messaging.operation.type`` (``send``, ``process``), ``messaging.operation.name``,
``messaging.destination.name``, ``messaging.message.id``. Where the conventions have no
name the agent's own attributes are used: :data:`TASK_NAME`, :data:`RETRY_COUNT`,
:data:`QUEUE_TIME`. The send time travels in the message as the header :data:`SENT_AT`.

Nothing here raises into the app: a failure to record is one warning line.
"""

from __future__ import annotations

import sys
import time

from . import api, config, spans
from .server_span import extracted_links, fields_read
from .spans import SpanHandle, error_type

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, MutableMapping

    from opentelemetry import context, trace

TRACER = "autotrace.messaging"

# The agent's attributes where the messaging conventions have none.
TASK_NAME = "autotrace.messaging.task.name"  # the task (function) a message runs
RETRY_COUNT = "autotrace.messaging.retry_count"  # 0 for the first run, n for the n-th retry
QUEUE_TIME = "autotrace.messaging.queue_time_ms"  # from the producer's send to the start of processing

# The header holding the producer's send time (milliseconds since the epoch, as text).
SENT_AT = "autotrace-sent-at"

# Kept for a consumer only when plausible: a clock skew or a garbled value gives none.
_MAX_QUEUE_TIME_MS = 366 * 24 * 3600 * 1000.0

_IN_SEND: object = None  # the context key of the send in progress (made when the API loads)


class MessagingSpan(SpanHandle):
    """A PRODUCER span (a send) or a CONSUMER span (a message processed); methods never raise."""

    __slots__ = ("system",)
    WHAT = "a messaging span"

    def __init__(self, span: trace.Span, ctx: context.Context, system: str = "") -> None:
        super().__init__(span, ctx)
        self.system = system

    def inject(self, headers: MutableMapping[str, object]) -> None:
        """Write this span's context (``OTEL_PROPAGATORS``' fields, W3C's by default) and
        the send time (:data:`SENT_AT`) into a message's headers; values set before under
        those names are replaced."""
        try:
            api.propagate.inject(headers, context=self.context)
            headers[SENT_AT] = "%.3f" % (time.time() * 1000.0)
        except Exception as exc:  # noqa: BLE001 - the message goes as it is
            self.report(exc)

    def set_message_id(self, message_id: object) -> None:
        """``messaging.message.id``, when it is known only after the start (the task id)."""
        if message_id is not None:
            self.set_attributes({"messaging.message.id": str(message_id)})

    def fail(self, exc: BaseException) -> None:  # type: ignore[override]
        """Record an exception that ended the send or the processing (status ERROR)."""
        super().fail(exc, error_type(exc))

    def retried(self, exc: BaseException | None = None) -> None:
        """The work ended by asking to be retried (Celery's ``Retry``): not an error."""
        try:
            if exc is not None and self.span.is_recording():
                self.span.add_event("retry", {"exception.type": error_type(exc), "exception.message": _text(exc)})
        except Exception as error:  # noqa: BLE001
            self.report(error)


def send(
    system: str,
    target: str,
    destination: str | None = None,
    message_id: object = None,
    attributes: Mapping[str, object] | None = None,
    attach: bool = True,
) -> MessagingSpan | None:
    """Start the PRODUCER span ``send {target}`` (a child of the current span), or None.

    ``target``: what the span is named by (the task name, else the queue).
    ``destination``: ``messaging.destination.name`` (the queue). None when instrumentation
    is suppressed, or under a send in progress (a lower layer of it). Never raises.
    """
    try:
        if not api.loaded:
            api.load()
        parent = api.context.get_current()
        key = _key()
        if api.suppressed(parent) or parent.get(key) is not None:
            return None

        def found() -> dict[str, object]:  # called only if the span is recorded
            values = _attributes(system, "send", destination, message_id)
            if attributes:
                values.update(attributes)
            return values

        span, ctx = spans.new(TRACER, "send " + str(target), api.SpanKind.PRODUCER, parent, found)
        call = MessagingSpan(span, ctx, system)
        # Marked as the send in progress, and as a database call: the broker's own commands
        # under it (kombu's LPUSH to Redis, RQ's enqueue pipeline) are how it is sent.
        call.context = api.context.set_value(api.IN_DB_CALL, call, api.context.set_value(key, call, ctx))
        if attach:
            call.attach()
        return call
    except Exception as exc:  # noqa: BLE001 - never fail the send
        _report(exc)
        return None


# run(call, original, *args, **kwargs): ``original`` run inside a started send or process (see spans.run).
run = spans.run


def current_send() -> MessagingSpan | None:
    """The send in progress in this context, if a producer hook started one."""
    if not api.loaded or _IN_SEND is None:
        return None
    return api.context.get_value(_IN_SEND)


def process(
    system: str,
    target: str,
    headers: Mapping[str, object] | None,
    destination: str | None = None,
    message_id: object = None,
    retry_count: int | None = None,
    attributes: Mapping[str, object] | None = None,
    attach: bool = True,
) -> MessagingSpan | None:
    """Start the CONSUMER span ``process {target}`` of a message whose headers are
    ``headers`` (None or empty: a root span), or None; see the module's docstring for its
    parent. ``retry_count``: :data:`RETRY_COUNT` (0 for a first run). Never raises.
    """
    try:
        if not api.loaded:
            api.load()
        current = api.context.get_current()
        if api.suppressed(current):
            return None
        parent, links = incoming(headers, current)
        queue_time = _queue_time(headers)
        name, common, task_name = _consumer(system, target, destination)

        def found() -> dict[str, object]:  # called only if the span is recorded
            values = dict(common)
            if message_id is not None:
                values["messaging.message.id"] = str(message_id)
            values[TASK_NAME] = task_name
            if retry_count is not None:
                values[RETRY_COUNT] = int(retry_count)
            if queue_time is not None:
                values[QUEUE_TIME] = queue_time
            if attributes:
                values.update(attributes)
            return values

        span, ctx = spans.new(TRACER, name, api.SpanKind.CONSUMER, parent, found, links or None)
        call = MessagingSpan(span, ctx, system)
        if attach:
            call.attach()
        return call
    except Exception as exc:  # noqa: BLE001 - never fail the task
        _report(exc)
        return None


def incoming(headers: Mapping[str, object] | None, base: context.Context | None = None) -> tuple[context.Context, list[trace.Link]]:
    """The parent context and links of a consumer span for a message's ``headers``.

    ``base``'s values stay (the current context by default); its span does not: without a
    valid context in the headers the consumer span is a root. The API must be loaded;
    raises what the propagators raise (:func:`process` reports it).
    """
    context, trace, propagate = api.context, api.trace, api.propagate
    if base is None:
        base = context.get_current()
    key = api.SPAN_KEY
    if key is not None and key not in base:
        root = base  # no span current (a worker between tasks): a root already
    else:
        root = trace.set_span_in_context(trace.INVALID_SPAN, base)
    if not headers:
        return root, []
    propagator = propagate.get_global_textmap()
    extracted = _read_w3c(headers, root) if type(headers) is dict and _w3c_only(propagator) else None
    if extracted is not None:
        if extracted is root:
            return root, []  # nothing valid to continue or link to
        links: list[trace.Link] = []
    else:
        reads = fields_read(propagator)
        if reads is not None and not any(name in headers for name in reads):
            return root, []  # a message from a producer without the agent: nothing to read
        extracted = propagator.extract(headers, context=root, getter=_GETTER)
        links = extracted_links(extracted)
    if config.messaging_parent() == "parent":
        return extracted, links
    remote = trace.get_current_span(extracted).get_span_context()
    if remote.is_valid:
        links = [trace.Link(remote)] + [link for link in links if link.context != remote]
    return trace.set_span_in_context(trace.INVALID_SPAN, extracted), links


# The global propagator last seen, and whether it is the agent's default (W3C trace context, then baggage).
_w3c_seen: tuple[object, bool] = (None, False)
_w3c = None  # the tracecontext module, imported with the first such propagator


def _w3c_only(propagator: object) -> bool:
    """Whether ``propagator`` is the agent's composite of W3C trace context then W3C
    baggage (the default ``OTEL_PROPAGATORS``), which :func:`_read_w3c` reads directly."""
    global _w3c_seen, _w3c
    seen, direct = _w3c_seen
    if seen is not propagator:
        from .propagation import baggage, composite, tracecontext

        kinds = tuple(map(type, propagator.propagators)) if type(propagator) is composite.CompositePropagator else ()
        direct = kinds == (tracecontext.TraceContextPropagator, baggage.BaggagePropagator)
        _w3c, _w3c_seen = tracecontext, (propagator, direct)
    return direct


def _read_w3c(headers: dict, root: context.Context) -> context.Context | None:
    """What the default propagators extract from a message's ``headers`` over ``root``
    (``root`` itself when nothing valid is there), read straight from the dict: the
    usual message carries a ``traceparent`` (text) and nothing else of theirs. None for
    the other cases (baggage, a value that is not text, links already in ``root``), which
    the propagators read themselves. The same parsers and limits as theirs
    (:mod:`autotrace.propagation.tracecontext`), without the getter, the composite's loop
    and the contexts in between."""
    parent = headers.get("traceparent")
    state = headers.get("tracestate")
    if headers.get("baggage") is not None or (root and extracted_links(root)):
        return None
    if parent is None:
        return root  # a tracestate alone is not read
    if type(parent) is not str or (state is not None and type(state) is not str):
        return None
    tracecontext = _w3c
    ids = tracecontext.parse_traceparent(parent)  # a repeated or oversized value: None
    if ids is None:
        return root
    trace_state = tracecontext.parse_tracestate((state,)) if state is not None else None  # invalid or oversized: None
    trace = api.trace
    span_context = trace.SpanContext(ids[0], ids[1], True, trace.TraceFlags(ids[2]), trace_state)
    return api.with_span(trace.NonRecordingSpan(span_context), root)


def export_now(final: bool = False) -> bool:
    """Export what this process recorded, now, within ``AUTOTRACE_SHUTDOWN_TIMEOUT``.

    For a worker process about to end without ``atexit`` (``os._exit``: a prefork pool's
    child) or to be stopped. ``final`` also shuts the SDK down (nothing is recorded after).
    Nothing to do (True) when the agent set nothing up here; False when the bound ran out.
    Never raises.
    """
    try:
        provider = sys.modules.get("autotrace.provider")
        if provider is None or provider.state() not in ("set up", "declined"):
            return True
        settings = provider.settings()
        timeout_s = settings.shutdown_timeout_s if settings is not None else 5.0
        return bool(provider.flush(timeout_s, final))
    except Exception as exc:  # noqa: BLE001
        _report(exc)
        return False


def set_up_now() -> None:
    """Set the SDK up in this process now, if the agent armed it and it is still waiting.

    For a pool's main process about to fork its children (Celery's prefork pool): they
    inherit it set up, each with an empty queue and its own export thread, instead of each
    setting it up again at its first task. Never raises.
    """
    try:
        provider = sys.modules.get("autotrace.provider")
        if provider is None or provider.state() != "waiting" or provider.settings() is None:
            return
        if not api.loaded:
            api.load()
        trace = sys.modules.get("opentelemetry.trace")
        if trace is not None:
            trace.get_tracer_provider()  # the agent's wrapper sets the SDK up (see autotrace.provider)
    except Exception as exc:  # noqa: BLE001 - each child sets it up instead
        _report(exc)


# -- helpers ---------------------------------------------------------------------------


def _key() -> object:
    global _IN_SEND
    key = _IN_SEND
    if key is None:
        key = _IN_SEND = api.context.create_key("autotrace-messaging-send")
    return key


def _attributes(system: str, operation: str, destination: str | None, message_id: object) -> dict[str, object]:
    """The messaging attributes every send or process span has (semantic conventions)."""
    values: dict[str, object] = {
        "messaging.system": system,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if destination:
        values["messaging.destination.name"] = str(destination)
    if message_id is not None:
        values["messaging.message.id"] = str(message_id)
    return values


# What every CONSUMER span of a task and queue shares, made once: (system, target, destination) ->
# (span name, the attributes before the message's own, the task name). Bounded: a worker
# runs a few tasks from a few queues; more than this many pairs start the record afresh.
_consumers: dict[tuple[str, str, object], tuple[str, dict[str, object], str]] = {}
_MAX_CONSUMERS = 256


def _consumer(system: str, target: object, destination: object) -> tuple[str, dict[str, object], str]:
    if type(target) is not str:
        target = str(target)
    if destination and type(destination) is not str:
        destination = str(destination)  # as the attribute has it (and a key of the record)
    key = (system, target, destination)
    found = _consumers.get(key)
    if found is None:
        if len(_consumers) >= _MAX_CONSUMERS:
            _consumers.clear()
        found = _consumers[key] = ("process " + target, _attributes(system, "process", destination, None), target)  # type: ignore[arg-type]
    return found


def _queue_time(headers: Mapping[str, object] | None) -> float | None:
    """Milliseconds since the producer's send (:data:`SENT_AT`), or None (absent, garbled, skewed)."""
    if not headers:
        return None
    try:
        sent = headers.get(SENT_AT)
        if type(sent) is not str or len(sent) > 32:  # the usual: the producer's text, short
            if not isinstance(sent, (str, int, float)) or isinstance(sent, bool) or (isinstance(sent, str) and len(sent) > 32):
                return None
        waited = time.time() * 1000.0 - float(sent)
    except Exception:  # noqa: BLE001 - not a number
        return None
    if not 0.0 <= waited <= _MAX_QUEUE_TIME_MS:
        return None
    return round(waited, 3)


class _HeadersGetter:
    """Reads propagation fields from a message's headers (a mapping; values of any type).

    A value that is not text makes its field invalid (the propagators' bounds, see
    :func:`autotrace.propagation.fields.bounded_values`), so the span starts a new trace.
    Names are looked up as the formats write them (lower case: every OpenTelemetry
    instrumentation writes them so into a message), not scanned for in another case.
    """

    names_in_any_case = True  # no scan of the headers' keys for another case

    def get(self, carrier: Mapping[str, object], key: str):
        try:
            value = carrier.get(key)
        except Exception:  # noqa: BLE001 - not a mapping
            return None
        if value is None:
            return None
        if isinstance(value, (str, bytes, bytearray)):
            return [value]
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value]  # an int, a dict: invalid for every field

    def keys(self, carrier: Mapping[str, object]) -> list[str]:
        import itertools

        from .propagation.fields import MAX_KEYS

        try:
            return [key for key in itertools.islice(carrier.keys(), MAX_KEYS) if isinstance(key, str)]
        except Exception:  # noqa: BLE001
            return []


_GETTER = _HeadersGetter()




def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return ""


def _report(exc: BaseException) -> None:
    spans.report(exc, MessagingSpan.WHAT, "the message", "messaging-span")
