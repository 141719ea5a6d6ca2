"""multiprocessing: a child process, and each ``Pool`` task, runs in the trace context of its starter.

What crosses to the other process is the propagation fields of the context current
when the work was started or submitted (:func:`autotrace.carry.to_carrier`:
``traceparent``, ``tracestate``, ``baggage``), never a live span: a parent span that
has ended by the time the child runs still parents what the child records. When there
is nothing to carry (no span, no baggage, or the OpenTelemetry API not even imported)
nothing is added: a lookup or two, no more.

``Process`` (:func:`patch`, waits for ``multiprocessing.process``), any start method:

- ``BaseProcess.start``: the carrier is stored on the instance. A ``spawn`` or
  ``forkserver`` child gets the Process object pickled with its ``__dict__``, carrier
  included; the agent starts in that child from the inherited environment and arms
  this hook before the object is unpickled.
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

The pool's workers themselves carry nothing: ``Pool._repopulate_pool_static`` (which
starts them, at creation and when replacing a worker that exited) runs with an empty
context, so a ``fork`` worker does not inherit the creating request's span either, and
a task submitted outside any span runs outside any span.

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
every task a Pool sends is wrapped (with or without a context to carry), and the
worker flushes what a task recorded when the task ends (nothing to do, and nothing
done, when it recorded nothing).
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
        try:
            return carry.run_in(ctx, self.function, *args, **kwargs)
        finally:
            if _in_pool_worker:
                _flush_task()

    def __repr__(self) -> str:
        return f"<autotrace in-context {self.function!r}>"


def in_context(function, always: bool = False):
    """``function`` with the current context to carry to another process.

    Itself when there is none to carry, unless ``always`` (a Pool's task: wrapped so
    that the worker flushes what the task recorded, see _in_pool_worker).
    """
    try:
        carrier = carry.to_carrier()
    except Exception:  # noqa: BLE001 - never fail the submit
        return function
    if carrier is None and not always:
        return function
    return _InContext(function, carrier)


def without_context(function, *args, **kwargs):
    """Call ``function`` with an empty OpenTelemetry context (as is if none is current)."""
    if carry.capture() is None:
        return function(*args, **kwargs)
    try:
        from opentelemetry.context import Context

        empty = Context()
    except Exception:  # noqa: BLE001
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
        except BaseException:  # not started: hold on to nothing
            self.__dict__.pop(_CARRIER, None)
            raise
        finally:
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
        if provider is None or provider._state not in ("set up", "declined"):  # noqa: SLF001
            return  # nothing recorded here (or the agent is not running in this process)
        sdk = sys.modules.get("autotrace.sdk")
        if sdk is not None and getattr(sdk, "_exit_flush_pid", 0) == os.getpid():
            return  # flushed by the finalizer that _bootstrap has just run
        settings = provider._setup_args[0]  # noqa: SLF001
        provider.flush(settings.shutdown_timeout_s)
    except Exception:  # noqa: BLE001 - fail open
        pass


# -- Pool --------------------------------------------------------------------------------

# True in a Pool's worker process. Such a worker is stopped by Pool.terminate() (what
# ``with Pool() as pool:`` does on exit) with SIGTERM, and must die of it at once: the
# agent's SIGTERM handler is removed there (see signals.release), and the spans of
# each traced task are flushed when the task ends instead, so none is lost.
_in_pool_worker = False


def _flush_task() -> None:
    try:
        provider = sys.modules.get("autotrace.provider")
        sdk = sys.modules.get("autotrace.sdk")
        if provider is None or sdk is None or provider._state != "set up":  # noqa: SLF001
            return
        sdk.flush_if_recorded(provider._setup_args[0].shutdown_timeout_s)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - fail open
        pass


def _wrap_worker(original):
    def worker(*args, **kwargs):
        global _in_pool_worker
        # A worker process runs this in its main thread; a ThreadPool, in a thread.
        if threading.current_thread() is threading.main_thread():
            _in_pool_worker = True
            try:
                from autotrace import signals

                signals.release()
            except Exception:  # noqa: BLE001
                pass
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
    wrap_function(pool, "_repopulate_pool_static", _wrap_repopulate)


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
                wrapped = in_context(function, always=True)
        except Exception:  # noqa: BLE001
            wrapped = function
        if wrapped is function:
            return original(self, *args, **kwargs)
        if args:
            return original(self, wrapped, *args[1:], **kwargs)
        return original(self, *args, **{**kwargs, "func": wrapped})

    return method


def _wrap_repopulate(original):
    def _repopulate_pool_static(*args, **kwargs):
        return without_context(original, *args, **kwargs)

    return _repopulate_pool_static
