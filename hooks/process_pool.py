"""concurrent.futures.ProcessPoolExecutor: each task runs in the trace context of its submitter.

Waits for ``concurrent.futures.process``. ``ProcessPoolExecutor.submit`` is patched:
the function is replaced by an :class:`~autotrace.hooks.multiprocessing._InContext`
holding the propagation fields of the context current at ``submit`` (``traceparent``,
``tracestate``, ``baggage``), pickled with the task to a worker process, where that
context is current while the function runs and detached after. ``Executor.map`` goes
through ``submit`` and is covered with it, as is a subclass that overrides ``submit``
and calls the base class's. When there is nothing to carry the task goes to the pool
as it was given; a function that cannot be pickled fails as it would without the agent.

The executor itself carries nothing: ``_spawn_process`` (which starts each worker, from
whichever ``submit`` or from the pool's manager thread) runs with an empty context, so
a ``fork`` worker does not inherit the context of the task that happened to start it;
and so does ``_start_executor_manager_thread`` (called by the first ``submit``), so the
manager thread, which runs every future's done-callbacks, does not keep the first
submitter's context: a callback runs outside any span, as the thread runs it.
Workers end when the pool shuts down, through multiprocessing's ``_bootstrap``: the
``multiprocessing`` hook's flush covers what they recorded.
"""

from __future__ import annotations

from autotrace.hooks.multiprocessing import in_context, without_context
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    wrap_function(module.ProcessPoolExecutor, "submit", _wrap_submit)
    wrap_function(module.ProcessPoolExecutor, "_spawn_process", _wrap_without_context)
    wrap_function(module.ProcessPoolExecutor, "_start_executor_manager_thread", _wrap_without_context)


def _wrap_submit(original):
    def submit(self, *args, **kwargs):
        if not args:
            return original(self, *args, **kwargs)  # Python says what is missing
        wrapped = in_context(args[0])
        if wrapped is args[0]:
            return original(self, *args, **kwargs)
        return original(self, wrapped, *args[1:], **kwargs)

    return submit


def _wrap_without_context(original):
    def method(self, *args, **kwargs):
        return without_context(original, self, *args, **kwargs)

    return method
