"""RQ: a job enqueued is a PRODUCER span, a job performed by a worker a CONSUMER span in the same trace.

Waits for ``rq.worker`` (importing ``rq`` imports it, and ``rq.queue`` and ``rq.job``
with it). It patches:

- ``Queue.enqueue_call`` (``enqueue`` and the ``@job`` decorator's ``delay`` go through
  it), ``Queue.enqueue_at`` (``enqueue_in`` goes through it), ``Queue.enqueue_many``
  and ``Queue.enqueue_job`` (a ``Job`` the app created itself; a job that carries a
  context already keeps it, whoever enqueues it again): one PRODUCER span
  ``send {function}`` (``send {queue}`` for ``enqueue_many``, with
  ``messaging.batch.message_count``), a child of the current span. rq's own Redis
  commands inside it are not spans of their own: the send is the operation;
- ``Queue.create_job``: each job made under such a send carries the send's context;
- ``Job.to_dict`` and ``Job.restore``: that context travels in a field of the job's
  Redis hash of its own, :data:`FIELD` (JSON: ``traceparent``, ``tracestate``,
  ``baggage``, whatever ``OTEL_PROPAGATORS`` adds, and the send time). ``job.meta``
  and the job's data are untouched; a worker without the agent ignores the field. A
  deferred (``depends_on``), scheduled or retried job keeps the context of its send;
- ``BaseWorker.work`` (rq 1.x: ``Worker.work``): the worker's own loop (dequeues,
  heartbeats, registries, its scheduler process and pub/sub thread) runs with
  instrumentation suppressed, so rq's Redis traffic makes no spans;
- ``BaseWorker.perform_job``: one CONSUMER span ``process {function}`` per job run, in
  the forked work horse of ``Worker`` (and ``SpawnWorker``'s spawned one) as in
  ``SimpleWorker``; its parent is the send's span (``AUTOTRACE_MESSAGING_PARENT=link``:
  a new trace with a link to it, :func:`autotrace.messaging.process`). A job from a
  producer without the agent is a root span; a field that is not a bounded JSON object
  of text values starts a new trace too. rq's bookkeeping around the job (status,
  result, registries, success and failure callbacks) stays untraced;
- ``Job._execute`` (the call of the job's function; ``Job.perform`` where there is
  none, and rq 1.x's ``perform`` sends a Redis command of its own before it): the
  function runs with the CONSUMER span current and instrumentation on, so what it does
  (HTTP, database, jobs it enqueues) is its children. What it raises is recorded on the
  span (status ERROR, the exception event) and re-raised untouched; a job that returns
  ``Retry`` (where rq retries such a job) is retried, not an error.

Span content: ``messaging.system`` ``rq``, ``messaging.destination.name`` the queue,
``messaging.message.id`` the job id, ``messaging.operation.type`` ``send``/``process``,
``autotrace.messaging.task.name`` the function, ``autotrace.messaging.retry_count`` (0
for the first run), ``autotrace.messaging.queue_time_ms`` (from the send to the start
of processing, across retries and schedules).

A work horse ends with ``os._exit``, so ``atexit`` never flushes there: when the job's
span ends in a horse, it is exported at once (:func:`autotrace.messaging.export_now`,
bounded by ``AUTOTRACE_SHUTDOWN_TIMEOUT``). A queue with ``is_async=False`` runs the
job inside the send: the function's spans are the send's children, with no CONSUMER span.

Supported: rq 1.10 and later; the tests pass with 1.10.0, 1.16.2, 2.0.0, 2.6.1 and 3.0.0.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar

from autotrace import api, messaging, spans
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable

SYSTEM = "rq"

# The job hash's field holding the send's context (JSON), and the attribute a Job
# instance keeps its text in (str from a send, bytes from Redis).
FIELD = "autotrace"
_FIELD_BYTES = FIELD.encode()
_CONTEXT = "_autotrace_context"
# The CONSUMER span of the job being performed, on the Job instance while perform_job runs.
_CALL = "_autotrace_call"

# In the field beside the context: a job's retries_left when it was sent with Retry(max=n).
RETRIES = "autotrace-retries"

# A field longer than this is not read (a new trace, as for an oversized header).
MAX_FIELD = 8192


class _Send:
    """The send in progress in this context: its span and the context text it gives jobs."""

    __slots__ = ("call", "headers", "text", "batch", "count")

    def __init__(self, call: messaging.MessagingSpan, headers: dict[str, object], batch: bool) -> None:
        self.call = call
        self.headers = headers
        self.text = _dumps(headers)
        self.batch = batch
        self.count = 0  # the jobs given the context (enqueue_many)


# The send in progress (or _NO_CONTEXT: a send whose context could not be made).
_sending: ContextVar[object] = ContextVar("autotrace_rq_send", default=None)
_NO_CONTEXT = object()

_OUTER: object = None  # the context key holding a worker's context from before its loop was quieted
_worker_pid = 0  # the process running a worker's loop (its forked horses inherit the value)


# -- patching ---------------------------------------------------------------------------


def patch(module: ModuleType) -> None:
    """``rq.worker``: the queue's enqueue methods, the job's context field, the worker."""
    from rq import job as job_module, queue as queue_module

    queue = queue_module.Queue
    wrap_function(queue, "enqueue_call", lambda original: _wrap_enqueue(original, False))
    wrap_function(queue, "enqueue_at", lambda original: _wrap_enqueue(original, False))
    if "enqueue_many" in queue.__dict__:
        wrap_function(queue, "enqueue_many", lambda original: _wrap_enqueue(original, True))
    wrap_function(queue, "enqueue_job", _wrap_enqueue_job)
    wrap_function(queue, "create_job", _wrap_create_job)

    job = job_module.Job
    wrap_function(job, "to_dict", _wrap_to_dict)
    wrap_function(job, "restore", _wrap_restore)
    # The job's function: Job._execute (rq 1.x's perform sends a PERSIST of its own first).
    call_site = "_execute" if "_execute" in job.__dict__ else "perform"
    wrap_function(job, call_site, lambda original: _wrap_perform(original, getattr(job_module, "Retry", None)))

    worker = _defining(module, "perform_job")
    wrap_function(worker, "perform_job", _wrap_perform_job)
    wrap_function(_defining(module, "work"), "work", _wrap_work)


def _defining(module: ModuleType, name: str) -> type:
    """The worker class that defines ``name``: ``BaseWorker`` (rq 2+), else ``Worker``."""
    for cls_name in ("BaseWorker", "Worker"):
        cls = getattr(module, cls_name, None)
        if cls is not None and name in cls.__dict__:
            return cls
    raise AttributeError(f"no rq worker class defines {name}")


# -- producer ---------------------------------------------------------------------------


def _wrap_enqueue(original: Callable, batch: bool) -> Callable:
    def enqueue(self, *args, **kwargs):
        if _sending.get() is not None:  # enqueue -> enqueue_call: the outer one sends
            return original(self, *args, **kwargs)
        name = getattr(self, "name", None)
        return _send(original, self, args, kwargs, name, name, batch, None)

    return enqueue


def _wrap_enqueue_job(original: Callable) -> Callable:
    def enqueue_job(self, job, *args, **kwargs):
        # Under enqueue_call, or a job that was sent already (rq 1.x's scheduler and
        # dependents go through here): it keeps the context of its own send.
        if _sending.get() is not None or getattr(job, _CONTEXT, None) is not None:
            return original(self, job, *args, **kwargs)
        return _send(original, self, (job,) + args, kwargs, _function_name(job), getattr(self, "name", None), False, job)

    return enqueue_job


def _send(original: Callable, queue: Any, args: tuple, kwargs: dict, target: object, destination: object,
          batch: bool, job: Any) -> Any:
    """Run an enqueue in a PRODUCER span; the jobs it creates (or ``job``) carry its context."""
    call = messaging.send(SYSTEM, str(target or "rq"), destination=destination, attach=False)
    if call is None:
        return original(queue, *args, **kwargs)
    send: object = _NO_CONTEXT
    try:
        headers: dict[str, object] = {}
        call.inject(headers)
        send = _Send(call, headers, batch)
        if job is not None:
            _carry(send, job)
    except Exception as exc:  # noqa: BLE001 - the jobs go without the context; still one span
        call.report(exc)
    token = _sending.set(send)
    # rq's Redis commands (the job's hash, the queue's list) are the send itself.
    quiet = api.attach(_quieted(call.context))
    try:
        result = original(queue, *args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        raise
    finally:
        api.detach(quiet)
        _sending.reset(token)
        call.end()
    return result


def _wrap_create_job(original: Callable) -> Callable:
    def create_job(self, *args, **kwargs):
        job = original(self, *args, **kwargs)
        send = _sending.get()
        if send is not None and send is not _NO_CONTEXT:
            _carry(send, job)
        return job

    return create_job


def _carry(send: _Send, job: Any) -> None:
    """Give ``job`` the send's context; a single job's send is named by its function and id."""
    try:
        retries = getattr(job, "retries_left", None)
        if isinstance(retries, int) and retries > 0:  # Retry(max=n): counted down from n at each retry
            setattr(job, _CONTEXT, _dumps(dict(send.headers, **{RETRIES: retries})))
        else:
            setattr(job, _CONTEXT, send.text)
        if send.batch:
            send.count += 1
            send.call.set_attributes({"messaging.batch.message_count": send.count})
            return
        send.call.set_message_id(job.id)
        name = _function_name(job)
        if name and send.call.span.is_recording():
            send.call.span.update_name("send " + name)
    except Exception as exc:  # noqa: BLE001 - the job goes as it is
        send.call.report(exc)


def _wrap_to_dict(original: Callable) -> Callable:
    def to_dict(self, *args, **kwargs):
        obj = original(self, *args, **kwargs)
        text = self.__dict__.get(_CONTEXT)
        if text is not None:
            obj[FIELD] = text
        return obj

    return to_dict


def _wrap_restore(original: Callable) -> Callable:
    def restore(self, raw_data, *args, **kwargs):
        result = original(self, raw_data, *args, **kwargs)
        try:
            value = raw_data.get(_FIELD_BYTES)
            if value is None:
                value = raw_data.get(FIELD)
            self.__dict__[_CONTEXT] = value
        except Exception:  # noqa: BLE001 - not a mapping: the job has no context
            pass
        return result

    return restore


# -- consumer ---------------------------------------------------------------------------


def _wrap_work(original: Callable) -> Callable:
    def work(self, *args, **kwargs):
        global _worker_pid
        _worker_pid = os.getpid()
        token = _quiet_worker()
        try:
            return original(self, *args, **kwargs)
        finally:
            api.detach(token)

    return work


def _wrap_perform_job(original: Callable) -> Callable:
    def perform_job(self, job, queue, *args, **kwargs):
        call = _process(job, queue)
        if call is None:
            return original(self, job, queue, *args, **kwargs)
        job.__dict__[_CALL] = call
        # rq's bookkeeping (status, result, registries, callbacks) is not the job's work.
        token = api.attach(_quieted(call.context))
        try:
            return original(self, job, queue, *args, **kwargs)
        finally:
            api.detach(token)
            job.__dict__.pop(_CALL, None)
            call.end()
            if _in_horse(self):  # it ends with os._exit next
                messaging.export_now()

    return perform_job


def _in_horse(worker: Any) -> bool:
    """Whether this process is a work horse: rq's flag, in a process other than the one
    that runs the worker's loop (rq 1.x's SimpleWorker sets the flag in that very process)."""
    return bool(getattr(worker, "_is_horse", False)) and os.getpid() != _worker_pid


def _wrap_perform(original: Callable, retry: type | None) -> Callable:
    def perform(self, *args, **kwargs):
        call = self.__dict__.get(_CALL)
        if call is None:
            return original(self, *args, **kwargs)
        token = api.attach(call.context)  # the job's own work is traced, as the span's children
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            api.detach(token)
        if retry is not None and isinstance(result, retry):
            call.retried()
        return result

    return perform


def _process(job: Any, queue: Any) -> messaging.MessagingSpan | None:
    """The CONSUMER span of ``job`` (not attached), or None; never raises."""
    try:
        if not api.loaded:
            api.load()
        current = api.context.get_current()
        outer = current.get(_OUTER) if _OUTER is not None else None
        token = api.attach(outer) if outer is not None else None
        try:
            headers = _headers(job.__dict__.get(_CONTEXT))
            return messaging.process(
                SYSTEM,
                _function_name(job) or "rq",
                headers,
                destination=getattr(queue, "name", None),
                message_id=job.id,
                retry_count=_retry_count(job, headers),
                attach=False,
            )
        finally:
            api.detach(token)
    except Exception as exc:  # noqa: BLE001 - the job runs untraced
        spans.report(exc, messaging.MessagingSpan.WHAT, "the job", "rq")
        return None


def _headers(value: object) -> dict[str, object] | None:
    """The context fields a job's :data:`FIELD` holds; None when absent or not a small JSON object."""
    if value is None:
        return None
    try:
        if len(value) > MAX_FIELD:  # type: ignore[arg-type]
            return None
        found = json.loads(value)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - garbled: a new trace
        return None
    return found if isinstance(found, dict) else None


def _retry_count(job: Any, headers: dict[str, object] | None) -> int:
    """The job's retries so far: those it asked for by returning ``Retry`` (rq 2+:
    ``number_of_retries``) and those its exceptions caused (``retries_left`` counted
    down from the value the send recorded)."""
    count = getattr(job, "number_of_retries", None) or 0
    sent = headers.get(RETRIES) if headers else None
    left = getattr(job, "retries_left", None)
    if isinstance(sent, int) and isinstance(left, int) and 0 <= left < sent:
        count += sent - left
    return count


# -- helpers ----------------------------------------------------------------------------


def _function_name(job: Any) -> str | None:
    try:
        name = job.func_name
    except Exception:  # noqa: BLE001 - the function's reference cannot be read here
        return None
    return str(name) if name else None


def _dumps(headers: dict[str, object]) -> str:
    return json.dumps(headers, separators=(",", ":"))


def _quieted(ctx: Any) -> Any:
    """``ctx`` with instrumentation suppressed."""
    return api.context.set_value(api.SUPPRESS_INSTRUMENTATION, True, ctx)


def _quiet_worker() -> object:
    """Suppress instrumentation for a worker's loop; the context before it is kept for its jobs."""
    global _OUTER
    try:
        if not api.loaded:
            api.load()
            if not api.loaded:
                return None
        if _OUTER is None:
            _OUTER = api.context.create_key("autotrace-rq-worker-outer")
        _prepare_sdk()
        current = api.context.get_current()
        return api.attach(api.context.set_value(_OUTER, current, _quieted(current)))
    except Exception:  # noqa: BLE001 - the worker runs as it is
        return None


def _prepare_sdk() -> None:
    """Set the SDK up in the worker now, before it forks its first work horse.

    Otherwise each horse would set it up (import the SDK and the exporter) for its one
    job: a third of a second per job. A horse keeps its parent's set-up and opens its
    own exporter connection. Never raises (the first span sets it up instead).
    """
    try:
        api.tracer(messaging.TRACER)  # the global provider: the agent's SDK, set up at this first use
        from autotrace import light_span  # noqa: F401 - the span class every span of the horse is
    except Exception:  # noqa: BLE001
        pass
