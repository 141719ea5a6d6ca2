"""concurrent.futures.ThreadPoolExecutor: each task runs in the trace context of its submitter.

Waits for ``concurrent.futures.thread``. ``ThreadPoolExecutor.submit`` is patched: the
context current at ``submit`` is captured (:func:`autotrace.carry.capture`) and the
task is bound to it; it is current while the task runs on a worker thread, and
detached after, so the worker carries nothing over to its next task. What goes through
``submit`` is covered with it: ``Executor.map``, asyncio's ``loop.run_in_executor``
with the loop's default executor or an app's ``ThreadPoolExecutor``, and
``asyncio.to_thread`` (which runs the task in a copy of the caller's contextvars, so
the context is set twice, to the same value: one attach/detach more, nothing else).
A subclass that overrides ``submit`` and calls the base class's is covered too.

Python 3.14's ``InterpreterPoolExecutor`` (a ``ThreadPoolExecutor`` whose tasks are
pickled at ``submit`` and run in a subinterpreter, where the agent does not run) gets its
tasks as they were given: a task bound to a Context cannot be pickled, and its ``submit``
would raise.

When there is nothing to carry, the task goes to the pool as it was given. Except
where new threads start with a copy of their starter's contextvars
(``sys.flags.thread_inherit_context``, the default of free-threaded Python 3.14+): a
worker started inside a span would hold it, so there a task submitted outside any span
runs with an empty context attached, as it would anywhere else.

The pool's worker threads are started from inside ``submit`` by whichever task finds
no idle worker. They carry no context themselves (the target ``_worker`` is
registered with the threading hook's :func:`~autotrace.hooks.threading.do_not_carry`):
otherwise a later task submitted outside any span would run in the context of the
request that happened to start its worker.
"""

from __future__ import annotations

import functools
import sys

from autotrace import api, carry
from autotrace.hooks import threading as threading_hook
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


# Whether a new thread starts with a copy of its starter's contextvars (3.14+ flag).
_threads_inherit = bool(getattr(sys.flags, "thread_inherit_context", 0))
_EMPTY = None  # an empty Context, made when first needed there


def patch(module: ModuleType) -> None:
    worker = getattr(module, "_worker", None)
    if worker is not None:
        threading_hook.do_not_carry(worker)
    wrap_function(module.ThreadPoolExecutor, "submit", _wrap_submit)


def _wrap_submit(original):
    capture = carry.capture
    run_in = carry.run_in
    partial = functools.partial

    def submit(self, *args, **kwargs):
        try:
            ctx = capture()
            if ctx is None and _threads_inherit:
                ctx = _empty_context()
            if ctx is not None and _in_subinterpreters(self):
                ctx = None
        except Exception:  # noqa: BLE001 - the task goes to the pool untraced
            ctx = None
        if ctx is None or not args:
            return original(self, *args, **kwargs)
        # The task, then its arguments; run_in(ctx, fn, *task_args, **task_kwargs).
        return original(self, partial(run_in, ctx, args[0]), *args[1:], **kwargs)

    return submit


def _in_subinterpreters(executor) -> bool:
    """Whether ``executor`` is an ``InterpreterPoolExecutor`` (3.14+), which pickles its tasks."""
    module = sys.modules.get("concurrent.futures.interpreter")
    if module is None:
        return False  # not imported: no such executor exists
    pool = getattr(module, "InterpreterPoolExecutor", None)
    return pool is not None and isinstance(executor, pool)


def _empty_context():
    """An empty Context once the API is imported (before, no thread can hold a span)."""
    global _EMPTY
    if _EMPTY is None:
        if not api.loaded:
            return None
        _EMPTY = api.context.Context()
    return _EMPTY
