"""multiprocessing: a child process, and each ``Pool`` task, runs in the trace context of its starter.

What crosses to the other process is the propagation fields of the context current
when the work was started or submitted (:func:`autotrace.carry.to_carrier`:
``traceparent``, ``tracestate``, ``baggage``), never a live span: a parent span that
has ended by the time the child runs still parents what the child records. When there
is nothing to carry (no span, no baggage, or the OpenTelemetry API not even imported)
nothing is added: a lookup or two, no more.

``Process`` (:func:`patch`, waits for ``multiprocessing.process``), any start method:

- ``BaseProcess.start``: the carrier is stored on the instance while ``start()`` runs.
  A ``spawn`` or ``forkserver`` child gets the Process object pickled with its
  ``__dict__``, carrier included; the agent starts in that child from the inherited
  environment and arms this hook before the object is unpickled. A ``fork`` child gets
  a copy of it. Once ``start()`` returns, the parent's Process object no longer has it.
- ``BaseProcess._bootstrap``: the first thing the child runs (it calls ``run()``, so a
  subclass that overrides ``run()`` is covered). In a ``spawn`` or ``forkserver``
  child the carrier's context is made current for the whole body. A ``fork`` child
  started by that very ``start()`` already runs in the context it was forked with (a
  copy of the starting thread's, the OpenTelemetry values the app set itself
  included): it is left as it is.

``Pool`` (:func:`patch_pool`, waits for ``multiprocessing.pool``): its workers are
started once and run the tasks of every caller, so the context travels with each
*task*: the function given to ``apply_async`` (``apply``), ``_map_async`` (``map``,
``map_async``, ``starmap``, ``starmap_async``), ``imap`` and ``imap_unordered`` is
replaced by an :class:`_InContext` (the function and the carrier, pickled by
reference to this module), whose call makes the carrier's context current around the
function. A function that cannot be pickled fails as it would without the agent (the
wrapper pickles it as its own state: same exception); what the function returns or
raises reaches the app unchanged (a remote traceback shows the wrapper's frames too).
A ``ThreadPool`` task is bound to the live Context instead (nothing is pickled there).
When there is nothing to carry the task goes to the pool as it was given.

The pool itself carries nothing: ``Pool.__init__`` runs with an empty context, so the
workers it starts (a ``fork`` worker would inherit the creating request's span) and its
three helper threads (the worker, task and result handlers, which replace workers that
exited and run the ``callback`` and ``error_callback`` of every task) do not keep the
context of whichever request created the pool: a task submitted outside any span runs,
and has its callbacks run, outside any span.

Spans a child records leave it: a ``fork`` child (which ends with ``os._exit``) is
flushed by the SDK through multiprocessing's exit finalizers when the SDK was set up
before the fork (:func:`autotrace.sdk._flush_at_multiprocessing_exit`); when it was
set up in the child (a ``forkserver`` child, or a parent that recorded nothing before
forking) the ``_bootstrap`` wrapper flushes it when the body returns. ``spawn``
children exit through ``sys.exit`` (``atexit`` flushes). A pool worker is different:
``Pool.terminate()`` (what ``with Pool() as pool:`` does on exit) stops it with
SIGTERM, and a Python-level handler there can miss a signal that arrives just before
the worker blocks on the pool's lock, which ``terminate()`` then waits for forever. So
the worker (``multiprocessing.pool.worker``) gives SIGTERM back its default action
(:func:`autotrace.signals.release`): it dies at once, as without the agent. Instead,
the worker flushes what a task recorded before it sends the task's result to the parent
(its result queue's ``put`` is wrapped): the guarantee is that the spans of every task
whose result the parent has received are exported (within the flush timeout) by then,
whatever the parent does next. That is once per task *message*: a ``map`` chunk of 100
items is one flush, not 100; and no flush at all when the task recorded nothing. A task
still running when the pool is terminated loses its spans, as it loses its result.
"""

from __future__ import annotations

import os
import sys
import threading
from contextvars import ContextVar

from autotrace import carry
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

# Where the carrier waits, in the Process's __dict__ (pickled with it to the child).
_CARRIER = "_autotrace_carrier"

# The Process whose start() runs in this thread: a fork child (a copy of this thread)
# sees itself here and knows it inherited the context already.
_starting: ContextVar[object] = ContextVar("autotrace-process-starting", default=None)

_NOTHING = object()


class _InContext:
    """A function and the propagation fields of its submitter's context; picklable.

    Calling it calls the function with that context current (and detached after). The
    context is extracted once per unpickled copy (a ``map`` chunk calls it per item).
    It flushes nothing: a Pool worker flushes per task message (see _FlushingQueue).
    """

    __slots__ = ("function", "carrier", "_context")

    def __init__(self, function, carrier) -> None:
        self.function = function
        self.carrier = carrier
        self._context = _NOTHING

    def __reduce__(self):
        return (_InContext, (self.function, self.carrier))

    def __call__(self, *args, **kwargs):
        ctx = self._context
        if ctx is _NOTHING:
            ctx = self._context = carry.from_carrier(self.carrier)
        return carry.run_in(ctx, self.function, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<autotrace in-context {self.function!r}>"


def in_context(function):
    """``function`` with the current context to carry to another process; itself when there is none."""
    try:
        carrier = carry.to_carrier()
    except Exception:  # noqa: BLE001 - never fail the submit
        return function
    if carrier is None:
        return function
    return _InContext(function, carrier)


def without_context(function, *args, **kwargs):
    """Call ``function`` with an empty OpenTelemetry context (as is if none is current)."""
    try:
        if carry.capture() is None:
            empty = None
        else:
            from opentelemetry.context import Context

            empty = Context()
    except Exception:  # noqa: BLE001 - call it as it is
        empty = None
    if empty is None:
        return function(*args, **kwargs)
    return carry.run_in(empty, function, *args, **kwargs)


# -- Process ---------------------------------------------------------------------------


def patch(module: ModuleType) -> None:
    wrap_function(module.BaseProcess, "start", _wrap_start)
    wrap_function(module.BaseProcess, "_bootstrap", _wrap_bootstrap)


def _wrap_start(original):
    to_carrier = carry.to_carrier

    def start(self, *args, **kwargs):
        try:
            carrier = to_carrier()
            if carrier is not None:
                self.__dict__[_CARRIER] = carrier
        except Exception:  # noqa: BLE001 - an odd Process: start it untraced
            carrier = None
        if carrier is None:
            return original(self, *args, **kwargs)
        token = _starting.set(self)
        try:
            return original(self, *args, **kwargs)
        finally:
            # The child has it (pickled, or copied by fork) or was not started: drop it.
            self.__dict__.pop(_CARRIER, None)
            _starting.reset(token)

    return start


def _wrap_bootstrap(original):
    def _bootstrap(self, *args, **kwargs):
        ctx = None
        try:
            carrier = self.__dict__.get(_CARRIER)
            if carrier is not None and _starting.get() is not self:
                ctx = carry.from_carrier(carrier)
        except Exception:  # noqa: BLE001
            ctx = None
        try:
            return carry.run_in(ctx, original, self, *args, **kwargs)
        finally:
            _flush_child()

    return _bootstrap


def _flush_child() -> None:
    """Flush what this child recorded, unless the SDK's own exit finalizer did already.

    A fork or forkserver child ends with ``os._exit`` right after ``_bootstrap``
    returns: ``atexit`` does not run. The SDK arms a multiprocessing finalizer only in
    children forked *after* it was set up; a child that set it up itself gets none.
    """
    try:
        provider = sys.modules.get("autotrace.provider")
        if provider is None or provider.state() not in ("set up", "declined"):
            return  # nothing recorded here (or the agent is not running in this process)
        sdk = sys.modules.get("autotrace.sdk")
        if sdk is not None and sdk.flushes_at_multiprocessing_exit():
            return  # flushed by the finalizer that _bootstrap has just run
        provider.flush(provider.settings().shutdown_timeout_s)
    except Exception:  # noqa: BLE001 - fail open
        pass


# -- Pool --------------------------------------------------------------------------------


def _flush_task() -> None:
    """In a Pool worker: export what the task recorded, if anything (bounded by the flush timeout)."""
    try:
        provider = sys.modules.get("autotrace.provider")
        sdk = sys.modules.get("autotrace.sdk")
        if provider is None or sdk is None or provider.state() != "set up":
            return
        sdk.flush_if_recorded(provider.settings().shutdown_timeout_s)
    except Exception:  # noqa: BLE001 - fail open
        pass


class _FlushingQueue:
    """A Pool worker's result queue: what the task recorded is flushed before its result is sent.

    ``worker()`` sends each task message's result once (a whole ``map`` chunk's at once),
    and the parent may terminate the worker as soon as it has the result.
    """

    __slots__ = ("_queue",)

    def __init__(self, queue) -> None:
        self._queue = queue

    def put(self, obj) -> None:
        _flush_task()
        self._queue.put(obj)

    def __getattr__(self, name):
        return getattr(self._queue, name)


def _wrap_worker(original):
    def worker(*args, **kwargs):
        # A worker process runs this in its main thread; a ThreadPool, in a thread.
        if threading.current_thread() is threading.main_thread():
            # Pool.terminate() (what ``with Pool() as pool:`` does on exit) stops this
            # process with SIGTERM: it must die of it at once (see the module's text).
            try:
                from autotrace import signals

                signals.release()
            except Exception:  # noqa: BLE001
                pass
            if len(args) > 1:
                args = (args[0], _FlushingQueue(args[1]), *args[2:])
            elif "outqueue" in kwargs:
                kwargs["outqueue"] = _FlushingQueue(kwargs["outqueue"])
        return original(*args, **kwargs)

    return worker


def patch_pool(module: ModuleType) -> None:
    pool = module.Pool
    thread_pool = getattr(module, "ThreadPool", None)
    wrap_function(module, "worker", _wrap_worker)
    wrap_function(pool, "apply_async", lambda original: _wrap_task_method(original, thread_pool))
    wrap_function(pool, "_map_async", lambda original: _wrap_task_method(original, thread_pool))
    wrap_function(pool, "imap", lambda original: _wrap_task_method(original, thread_pool))
    wrap_function(pool, "imap_unordered", lambda original: _wrap_task_method(original, thread_pool))
    wrap_function(pool, "__init__", _wrap_init)


def _wrap_task_method(original, thread_pool):
    """``method(self, func, ...)``: ``func`` replaced by itself in the submitter's context."""

    def method(self, *args, **kwargs):
        if args:
            function = args[0]
        elif "func" in kwargs:
            function = kwargs["func"]
        else:
            return original(self, *args, **kwargs)  # Python says what is missing
        try:
            if thread_pool is not None and isinstance(self, thread_pool):
                wrapped = carry.bind(function)
            else:
                wrapped = in_context(function)
        except Exception:  # noqa: BLE001
            wrapped = function
        if wrapped is function:
            return original(self, *args, **kwargs)
        if args:
            return original(self, wrapped, *args[1:], **kwargs)
        return original(self, *args, **{**kwargs, "func": wrapped})

    return method


def _wrap_init(original):
    def __init__(self, *args, **kwargs):  # noqa: N807
        without_context(original, self, *args, **kwargs)

    return __init__
