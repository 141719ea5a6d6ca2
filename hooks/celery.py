"""Celery: every task message sent is a PRODUCER span, every task run a CONSUMER span, in one trace.

Waits for ``celery.app.amqp`` (:func:`patch`, producers), ``celery.app.trace`` (:func:`patch_worker`,
task runs) and ``billiard.pool`` (:func:`patch_pool`, prefork children). The spans are
:mod:`autotrace.messaging`'s, with ``messaging.system`` = ``celery``.

Producer. ``AMQP.send_task_message`` is the one call through which Celery sends a task
message: ``delay``, ``apply_async``, ``send_task``, the canvas (a chain's first task, a
group's and a chord header's tasks; a chain's next task and a chord's body are sent by the
worker, from the task before them), ``Task.retry``, and ``celery beat``. It is made per
app by ``AMQP._create_task_sender``, whose result is wrapped: a span ``send {task name}``
around the publish (``messaging.destination.name``: the queue, else the routing key;
``messaging.message.id``: the task id), whose context goes into the message's headers
(W3C ``traceparent`` ...). A countdown or ETA is part of the message: the consumer's
``autotrace.messaging.queue_time_ms`` includes it. kombu's publish under it is its lower
layer (no span of its own, no Redis span for the broker's commands).

Consumer. ``celery.app.trace.build_tracer`` makes the function that runs a task (each pool
calls it, in the thread or greenlet that runs the task: prefork, threads, solo, gevent
and eventlet; the agent's export thread stays a real thread under their monkey-patching:
:mod:`autotrace.green`). Each function it makes for a worker is wrapped, with what is the
same for every run of that task: ``process {task name}`` starts from the request
(the message's headers, with Celery's own fields: the dict the tracer is given) and is
current while the task runs: what the task does (HTTP calls, queries, tasks it sends,
and a chain's next task) is its child. The tracer's result ends it: a ``FAILURE`` records
the task's exception; ``RETRY`` (the task raised ``Retry``) is not an error, the retry's
own run is a new span with ``autotrace.messaging.retry_count``. (Celery's ``task_prerun``
and ``task_postrun`` signals would do the same at about 50,000 instructions a task more:
their ``send`` gathers the receivers again, under a lock, at every call.) A task called
eagerly (``apply()``, ``task_always_eager``: a tracer made with ``eager=True``) is a
function call, not a message: no span.

Prefork children. A pool child ends with ``os._exit``: ``atexit`` does not run there.
billiard's ``Worker._do_exit`` is where every child ends (after ``max_tasks_per_child``
tasks, when the pool closes at a warm shutdown, and on the SIGTERM of a cold shutdown,
which billiard turns into ``SystemExit``): it is wrapped to export what the child recorded
first (:func:`autotrace.messaging.export_now`, bounded by ``AUTOTRACE_SHUTDOWN_TIMEOUT``),
and again after its ``on_exit`` (Celery's ``worker_process_shutdown`` handlers, whose
spans would be lost otherwise).
A child killed with SIGKILL (a hard time limit) loses what it had not exported yet.
The pool's main process sets the SDK up before it forks its first child (Celery's
``worker_before_create_process``, 5.3 and later): children inherit it instead of each
setting it up at its first task.

Supported: Celery 5 (message protocol 2, and 1 for the producer).
"""

from __future__ import annotations

from autotrace import messaging
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable

SYSTEM = "celery"

_DISPATCH_UID = "autotrace.hooks.celery"


# -- producer: celery.app.amqp -------------------------------------------------------------


def patch(module: ModuleType) -> None:
    """``celery.app.amqp``: each app's task sender."""
    wrap_function(module.AMQP, "_create_task_sender", _wrap_sender_factory)


def _wrap_sender_factory(original: Callable) -> Callable:
    def _create_task_sender(self):
        sender = original(self)
        try:
            return _traced_sender(sender, self)
        except Exception:  # noqa: BLE001 - the app's sender, untraced
            return sender

    return _create_task_sender


def _traced_sender(sender: Callable, amqp: Any) -> Callable:
    def send_task_message(producer, name, message, *args, **kwargs):
        call = messaging.send(
            SYSTEM,
            name,
            destination=_destination(amqp, args, kwargs),
            message_id=_task_id(message),
            attributes={messaging.TASK_NAME: str(name)},
        )
        if call is None:
            return sender(producer, name, message, *args, **kwargs)
        _inject(call, message, kwargs)
        return messaging.run(call, sender, producer, name, message, *args, **kwargs)

    send_task_message.__wrapped__ = sender  # type: ignore[attr-defined]
    return send_task_message


def _inject(call: messaging.MessagingSpan, message: Any, kwargs: dict) -> None:
    """The span's context into the message's headers, and over the same names in the
    ``headers`` option (a retry passes its request's headers, which Celery merges last)."""
    try:
        fields: dict[str, object] = {}
        call.inject(fields)
        headers = message[0]
        if isinstance(headers, dict):
            headers.update(fields)
        extra = kwargs.get("headers")
        if isinstance(extra, dict) and fields:
            kwargs["headers"] = {**extra, **fields}
    except Exception as exc:  # noqa: BLE001 - the message goes as it is
        call.report(exc)


def _destination(amqp: Any, args: tuple, kwargs: dict) -> str | None:
    """The queue the message goes to (the routing key when no queue is named)."""
    try:
        if args:  # exchange, routing_key, queue given by position: Celery never does
            return None
        queue = kwargs.get("queue")
        if isinstance(queue, str):
            return queue
        if queue is not None:
            return getattr(queue, "name", None)
        routing_key = kwargs.get("routing_key")
        if routing_key:
            return str(routing_key)
        if kwargs.get("exchange") is None:
            return amqp.app.conf.task_default_queue
    except Exception:  # noqa: BLE001
        pass
    return None


def _task_id(message: Any) -> object:
    try:
        headers = message[0]
        if isinstance(headers, dict) and headers.get("id"):
            return headers["id"]
        body = message[2]
        if isinstance(body, dict):  # protocol 1: everything in the body
            return body.get("id")
    except Exception:  # noqa: BLE001
        pass
    return None


# -- consumer: celery.app.trace ------------------------------------------------------------


def patch_worker(module: ModuleType) -> None:
    """``celery.app.trace``: a span around each task run, by the tracers ``build_tracer`` makes."""
    from celery import signals

    wrap_function(module, "build_tracer", _wrap_build_tracer)
    before_fork = getattr(signals, "worker_before_create_process", None)  # Celery 5.3 and later
    if before_fork is not None:
        before_fork.connect(_before_create_process, weak=False, dispatch_uid=_DISPATCH_UID)


def _before_create_process(**_ignored: Any) -> None:
    """The prefork pool's main process, about to fork a child: the SDK set up here once."""
    messaging.set_up_now()


def _wrap_build_tracer(original: Callable) -> Callable:
    def build_tracer(name, task, *args, **kwargs):
        trace_task = original(name, task, *args, **kwargs)
        if kwargs.get("eager") or (len(args) > 4 and args[4]):  # apply(): a function call
            return trace_task
        try:
            return _traced_runs(trace_task, str(name))
        except Exception:  # noqa: BLE001 - the task runs untraced
            return trace_task

    return build_tracer


def _traced_runs(trace_task: Callable, name: str) -> Callable:
    """``trace_task`` (Celery's run of task ``name``) inside its CONSUMER span; its result
    untouched, what it raises re-raised untouched."""

    def traced_task(uuid, args, kwargs, request=None):
        call = _start(name, uuid, request)
        if call is None:
            return trace_task(uuid, args, kwargs, request)
        try:
            result = trace_task(uuid, args, kwargs, request)
        except BaseException:  # Celery's tracer keeps the task's own exceptions: its own failure
            call.close()
            raise
        _end(call, result)
        return result

    traced_task.__wrapped__ = trace_task  # type: ignore[attr-defined]
    return traced_task


def _start(name: str, task_id: object, request: Any) -> messaging.MessagingSpan | None:
    """The CONSUMER span of one run, from its request (the message's headers and Celery's fields)."""
    try:
        if request is None:  # a run without a message: a root span
            return messaging.process(SYSTEM, name, None, message_id=task_id, retry_count=0)
        if request.get("is_eager"):
            return None
        delivery = request.get("delivery_info")
        return messaging.process(
            SYSTEM,
            name,
            request,
            destination=delivery.get("routing_key") if isinstance(delivery, dict) else None,
            message_id=task_id,
            retry_count=request.get("retries") or 0,
        )
    except Exception:  # noqa: BLE001 - the task runs untraced
        return None


def _end(call: messaging.MessagingSpan, result: Any) -> None:
    """End the span by the tracer's result, ``(retval, info, runtime, retstr)``: ``info`` is
    None for a success, else the run's state and exception (``TraceInfo``)."""
    try:
        info = result[1]
        if info is not None:
            state, exc = info.state, info.retval
            if state == "RETRY":
                call.retried(exc if isinstance(exc, BaseException) else None)
            elif state == "FAILURE" and isinstance(exc, BaseException):
                call.fail(exc)
    except Exception:  # noqa: BLE001 - a result of another shape: the span ends as it is
        pass
    call.close()


# -- prefork children: billiard.pool -------------------------------------------------------


def patch_pool(module: ModuleType) -> None:
    """``billiard.pool``: a pool child exports what it recorded before it exits."""
    wrap_function(module.Worker, "_do_exit", _wrap_do_exit)


def _wrap_do_exit(original: Callable) -> Callable:
    def _do_exit(self, *args, **kwargs):
        messaging.export_now()  # the tasks' spans, whatever the handlers below do
        on_exit = getattr(self, "on_exit", None)
        if on_exit is not None:
            try:
                self.on_exit = _exported_after(on_exit)
            except Exception:  # noqa: BLE001 - the handlers' spans are left to chance
                pass
        return original(self, *args, **kwargs)

    return _do_exit


def _exported_after(on_exit: Callable) -> Callable:
    """``on_exit`` (Celery's ``worker_process_shutdown`` signal), then an export of the spans
    its handlers made: the child's last chance before ``os._exit``."""

    def exported_after(*args: Any, **kwargs: Any) -> Any:
        try:
            return on_exit(*args, **kwargs)
        finally:
            messaging.export_now()

    exported_after.__wrapped__ = on_exit  # type: ignore[attr-defined]
    return exported_after
