"""threading: a thread runs in the trace context of the code that started it.

Waits for ``threading`` (imported before or during the agent's start-up: patched at
once). Two methods of ``Thread`` are patched, so every subclass is covered, including
one that overrides ``run()`` (OpenTelemetry's own threading instrumentation wraps
``run`` and misses those) and ``threading.Timer``:

- ``start``: the current context is captured (:func:`autotrace.carry.capture`) and kept
  on the instance. When there is nothing to carry (no span, no baggage, or the
  OpenTelemetry API not even imported) nothing is stored: two lookups, no more.
- ``_bootstrap_inner``: the first thing the new thread runs; it calls ``run()``. The
  captured context is taken off the instance and is current for the whole body
  (``run()``, and ``threading.excepthook`` if ``run()`` raises), then detached.
  From Python 3.14 a thread runs ``run()`` inside a ``contextvars.Context`` of its own
  (``Thread(context=...)``, made by ``start()``): the context is attached inside that
  one, and detached from it after. ``start()`` returns only once the new thread has
  begun ``_bootstrap_inner``, so what is still on the instance then (a subclass whose
  own ``_bootstrap_inner`` never calls the base class's, or a failed start) is dropped:
  a Thread never holds on to a Context.

A thread keeps the context it was started in for as long as it runs: a long-lived
thread started inside a request (a worker that takes jobs from a queue) runs every later
job in that request's context, unless the job carries its own (as thread-pool tasks do).

What is carried is a Context captured at ``start()``, not a live span: a parent span
that ends before the thread runs still parents what the thread records. Only the
OpenTelemetry context is carried: the thread sees the app's own ``contextvars`` exactly
as without the agent (a new thread starts from an empty context).

Threads whose ``target`` is in :data:`_not_carried` get nothing: the worker threads of
``ThreadPoolExecutor`` (registered by the ``thread_pool`` hook) are started from inside
``submit`` by whichever task needs one; each *task* carries its own submitter's context
instead, so a worker never runs tasks in the context of the request that started it.
Nor do the OpenTelemetry SDK's own threads (a ``target`` that is a method defined in
``opentelemetry.sdk``): the batch processors' export thread is started when the SDK is
set up, which may be inside a request (a remote parent or baggage current already), and
again in every ``fork`` child (a ``multiprocessing.Process`` started in a span); it
lives as long as the process, and what it logs must not name that request's trace. Nor
does a ``multiprocessing`` queue's feeder thread (``Queue._feed``, started by the first
``put``): it only moves pickled objects to the pipe, and would otherwise keep the first
caller's context (and its span) for the queue's lifetime.

Not covered: threads started with ``_thread.start_new_thread`` directly.
"""

from __future__ import annotations

import contextvars as _contextvars

from autotrace import api, carry
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

# Where the captured context waits, in the Thread's __dict__, between start() and the
# thread's first instruction.
_CONTEXT = "_autotrace_context"

# id() of thread targets that get no context (pool workers: their tasks carry their own).
_not_carried: set[int] = set()


def do_not_carry(target) -> None:
    """Threads running ``target`` (a function that lives as long as the process) carry nothing."""
    _not_carried.add(id(target))


def patch(module: ModuleType) -> None:
    wrap_function(module.Thread, "start", _wrap_start)
    if _has_thread_context(module.Thread):
        wrap_function(module.Thread, "_bootstrap_inner", _wrap_bootstrap_inner_in_thread_context)
    else:
        wrap_function(module.Thread, "_bootstrap_inner", _wrap_bootstrap_inner)


def _has_thread_context(thread_class) -> bool:
    """Whether threads run in a contextvars.Context of their own (``Thread(context=...)``, 3.14)."""
    try:
        code = thread_class.__init__.__code__
        return "context" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    except AttributeError:
        return False


def _wrap_start(original):
    capture = carry.capture

    def start(self, *args, **kwargs):
        try:
            ctx = capture()
            if ctx is not None:
                target = self.__dict__.get("_target")
                if id(target) in _not_carried or _is_infrastructure(target):
                    ctx = None
                else:
                    self.__dict__[_CONTEXT] = ctx
        except Exception:  # noqa: BLE001 - an odd Thread: start it untraced
            ctx = None
        if ctx is None:
            return original(self, *args, **kwargs)
        try:
            return original(self, *args, **kwargs)
        finally:
            # Taken by _bootstrap_inner before start() returns; still there when a
            # subclass's own _bootstrap_inner never called ours, or when not started.
            self.__dict__.pop(_CONTEXT, None)

    return start


def _is_infrastructure(target) -> bool:
    """Whether ``target`` runs a thread that records nothing for the app: a method of the
    OpenTelemetry SDK (its worker threads), or a ``multiprocessing`` queue's feeder."""
    function = getattr(target, "__func__", target)
    module = getattr(function, "__module__", None)
    if not isinstance(module, str):
        return False
    if module.startswith("opentelemetry.sdk."):
        return function is not target  # a bound method, as the SDK starts its threads
    return module == "multiprocessing.queues" and getattr(function, "__name__", None) == "_feed"


def _wrap_bootstrap_inner(original):
    run_in = carry.run_in

    def _bootstrap_inner(self, *args, **kwargs):
        try:
            ctx = self.__dict__.pop(_CONTEXT, None)
        except Exception:  # noqa: BLE001
            ctx = None
        if ctx is None:
            return original(self, *args, **kwargs)
        return run_in(ctx, original, self, *args, **kwargs)

    return _bootstrap_inner


def _wrap_bootstrap_inner_in_thread_context(original):
    """Python 3.14+: ``run()`` runs in ``self._context``; the captured context goes in there."""
    def _bootstrap_inner(self, *args, **kwargs):
        try:
            ctx = self.__dict__.pop(_CONTEXT, None)
        except Exception:  # noqa: BLE001
            ctx = None
        if ctx is None:
            return original(self, *args, **kwargs)
        thread_context = self.__dict__.get("_context")
        if not isinstance(thread_context, _contextvars.Context):
            return carry.run_in(ctx, original, self, *args, **kwargs)
        context = api.context  # loaded: a context was captured
        try:
            token = thread_context.run(context.attach, ctx)
        except Exception:  # noqa: BLE001 - (a Context entered elsewhere) run untraced
            return original(self, *args, **kwargs)
        try:
            return original(self, *args, **kwargs)
        finally:
            try:
                thread_context.run(context.detach, token)
            except Exception:  # noqa: BLE001
                pass

    return _bootstrap_inner
