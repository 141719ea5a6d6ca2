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

Consumer. Celery's signals ``task_prerun`` and ``task_postrun`` are sent around each task
run by the task tracer, in the thread (or greenlet) that runs it, whatever the pool:
prefork, threads, solo, gevent and eventlet (the agent's export thread stays a real thread
under their monkey-patching: :mod:`autotrace.green`). ``task_prerun`` starts ``process {task name}``
from the request's headers (Celery keeps a message's headers as attributes of
``task.request``) and makes it current: what the task does (HTTP calls, queries, tasks it
sends, and a chain's next task, sent before ``task_postrun``) is its child. ``task_postrun``
ends it: a ``FAILURE`` records the task's exception; ``RETRY`` (the task raised ``Retry``)
is not an error, the retry's own run is a new span with ``autotrace.messaging.retry_count``.
A task called eagerly (``apply()``, ``task_always_eager``) is a function call, not a
message: no span.

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

# The attribute of a task's request (celery.app.task.Context) that holds its CONSUMER span.
_SPAN_ATTRIBUTE = "_autotrace_span"
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
    """``celery.app.trace``: a span around each task run, by the task signals."""
    from celery import signals

    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid=_DISPATCH_UID)
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid=_DISPATCH_UID)
    before_fork = getattr(signals, "worker_before_create_process", None)  # Celery 5.3 and later
    if before_fork is not None:
        before_fork.connect(_before_create_process, weak=False, dispatch_uid=_DISPATCH_UID)


def _before_create_process(**_ignored: Any) -> None:
    """The prefork pool's main process, about to fork a child: the SDK set up here once."""
    messaging.set_up_now()


def _on_prerun(sender=None, task_id=None, task=None, **_ignored: Any) -> None:
    try:
        request = task.request
        if getattr(request, "is_eager", False):
            return
        headers = vars(request)  # the message's headers, with Celery's own fields
        delivery = getattr(request, "delivery_info", None) or {}
        call = messaging.process(
            SYSTEM,
            task.name,
            headers,
            destination=delivery.get("routing_key") if isinstance(delivery, dict) else None,
            message_id=task_id,
            retry_count=getattr(request, "retries", None) or 0,
        )
        if call is not None:
            setattr(request, _SPAN_ATTRIBUTE, call)
    except Exception:  # noqa: BLE001 - the task runs untraced
        pass


def _on_postrun(sender=None, task_id=None, task=None, retval=None, state=None, **_ignored: Any) -> None:
    try:
        call = vars(task.request).pop(_SPAN_ATTRIBUTE, None)
    except Exception:  # noqa: BLE001
        return
    if call is None:
        return
    if state == "RETRY":
        call.retried(retval if isinstance(retval, BaseException) else None)
    elif state == "FAILURE" and isinstance(retval, BaseException):
        call.fail(retval)
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
