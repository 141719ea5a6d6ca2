"""The trace context carried to threads, thread pools and asyncio executors (in process).

The threading and thread_pool hooks are applied with their ``patch()`` for each test
and undone after. Work on the other side creates its span with the OpenTelemetry API,
as app code would; its parent must be the span current where the work was submitted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread
import contextvars
import pickle
import queue
import sys
import threading
import types
import weakref

import pytest
from opentelemetry import baggage, context, trace

from autotrace import api, carry, patching
from autotrace.hooks import thread_pool as thread_pool_hook
from autotrace.hooks import threading as threading_hook

WAIT = 5  # seconds: every wait in these tests is bounded


@pytest.fixture
def hooks(spans):
    mark = len(patching.history)
    threading_hook.patch(threading)
    thread_pool_hook.patch(concurrent.futures.thread)
    yield spans
    patching.undo(mark)


def tracer():
    return trace.get_tracer("test-context-threads")


def work(name: str = "child") -> str:
    """What a worker does: a span of its own (and an answer the caller gets back)."""
    with tracer().start_as_current_span(name):
        return name + "-done"


def finished(spans, name: str):
    [span] = [s for s in spans.get_finished_spans() if s.name == name]
    return span


def assert_child_of(spans, child: str, parent: str = "parent") -> None:
    c, p = finished(spans, child), finished(spans, parent)
    assert c.parent is not None, f"{child} is a root span"
    assert c.parent.span_id == p.context.span_id
    assert c.context.trace_id == p.context.trace_id


def assert_root(spans, name: str) -> None:
    assert finished(spans, name).parent is None


# -- threading.Thread ----------------------------------------------------------------


def test_thread_target_runs_in_the_starting_span(hooks):
    results = []
    with tracer().start_as_current_span("parent"):
        thread = threading.Thread(target=lambda: results.append(work()))
        thread.start()
    thread.join(WAIT)
    assert results == ["child-done"]
    assert_child_of(hooks, "child")


def test_thread_subclass_overriding_run(hooks):
    class Worker(threading.Thread):
        def run(self):
            work("subclass-child")

    with tracer().start_as_current_span("parent"):
        thread = Worker()
        thread.start()
    thread.join(WAIT)
    assert_child_of(hooks, "subclass-child")


def test_timer(hooks):
    with tracer().start_as_current_span("parent"):
        timer = threading.Timer(0.01, work, args=("timer-child",))
        timer.start()
    timer.join(WAIT)
    assert_child_of(hooks, "timer-child")


def test_thread_started_outside_a_span_stores_nothing_and_has_no_parent(hooks):
    thread = threading.Thread(target=work, args=("lonely",))
    assert threading_hook._CONTEXT not in thread.__dict__
    thread.start()
    assert threading_hook._CONTEXT not in thread.__dict__
    thread.join(WAIT)
    assert_root(hooks, "lonely")


def test_the_context_is_captured_at_start_not_when_the_thread_is_made(hooks):
    thread = threading.Thread(target=work)
    with tracer().start_as_current_span("parent"):
        thread.start()
    thread.join(WAIT)
    assert_child_of(hooks, "child")
    assert threading_hook._CONTEXT not in thread.__dict__  # taken off when the thread ran


def test_a_parent_that_ended_before_the_thread_runs_still_parents_it(hooks):
    go = threading.Event()

    def late():
        assert go.wait(WAIT)
        work("late-child")

    with tracer().start_as_current_span("parent"):
        thread = threading.Thread(target=late)
        thread.start()
    assert finished(hooks, "parent")  # ended
    go.set()
    thread.join(WAIT)
    assert_child_of(hooks, "late-child")


def test_a_subclass_whose_bootstrap_never_calls_ours_holds_no_context(hooks):
    """A Thread subclass that runs the unpatched _bootstrap_inner (saved before the agent)."""
    plain_bootstrap = threading.Thread._bootstrap_inner.__wrapped__
    results = []

    class OwnBootstrap(threading.Thread):
        def _bootstrap_inner(self):
            plain_bootstrap(self)

    with tracer().start_as_current_span("parent"):
        thread = OwnBootstrap(target=lambda: results.append(work("own-bootstrap")))
        thread.start()
        held = weakref.ref(context.get_current())
    thread.join(WAIT)
    assert results == ["own-bootstrap-done"]
    assert threading_hook._CONTEXT not in thread.__dict__
    assert held() is None  # nothing keeps the span's Context alive
    assert_root(hooks, "own-bootstrap")  # its own _bootstrap_inner: not carried


def test_a_long_lived_thread_keeps_the_context_it_was_started_in(hooks):
    """Documented: a worker thread started in a request runs later jobs in that request's context."""
    jobs: queue.Queue = queue.Queue()

    def serve():
        for job in iter(lambda: jobs.get(timeout=WAIT), None):
            job()

    with tracer().start_as_current_span("parent"):
        thread = threading.Thread(target=serve)
        thread.start()
    jobs.put(lambda: work("later-job"))  # queued outside any span
    jobs.put(None)
    thread.join(WAIT)
    assert_child_of(hooks, "later-job")


def test_baggage_is_carried_too(hooks):
    seen = []
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        thread = threading.Thread(target=lambda: seen.append(baggage.get_baggage("tenant")))
        thread.start()
        thread.join(WAIT)
    finally:
        context.detach(token)
    assert seen == ["acme"]


def test_an_exception_in_a_thread_reaches_excepthook_with_the_context_current(hooks, monkeypatch):
    caught = []
    monkeypatch.setattr(
        threading, "excepthook", lambda args: caught.append((args.exc_value, trace.get_current_span().get_span_context().span_id))
    )
    error = ValueError("boom")

    def fail():
        raise error

    with tracer().start_as_current_span("parent") as parent:
        thread = threading.Thread(target=fail)
        thread.start()
    thread.join(WAIT)
    assert caught == [(error, parent.get_span_context().span_id)]


def _app_var_seen_in_thread(var: contextvars.ContextVar) -> list:
    seen = []
    token = var.set("set by the app")
    try:
        thread = threading.Thread(target=lambda: seen.append(var.get("unset")))
        thread.start()
        thread.join(WAIT)
    finally:
        var.reset(token)
    return seen


def test_the_apps_own_contextvars_are_not_carried_into_a_thread(spans):
    var = contextvars.ContextVar("app-var")
    plain = _app_var_seen_in_thread(var)  # plain Python, before the hooks
    mark = len(patching.history)
    threading_hook.patch(threading)
    try:
        with tracer().start_as_current_span("parent"):
            patched = _app_var_seen_in_thread(var)
    finally:
        patching.undo(mark)
    assert patched == plain
    assert plain == ["unset"]  # what Python itself does (3.11: threads start empty)


def test_threads_with_a_context_of_their_own_get_it_there(spans):
    """Python 3.14: ``Thread(context=...)``; run() runs in ``self._context`` (emulated here)."""

    class Thread314(threading.Thread):
        def __init__(self, *args, context=None, **kwargs):
            super().__init__(*args, **kwargs)
            self._context = context

        def start(self):
            if self._context is None:
                self._context = contextvars.Context()  # as 3.14 does without inheriting
            super().start()

        def _bootstrap_inner(self):
            run = self.run
            self.run = lambda: self._context.run(run)
            threading.Thread._bootstrap_inner(self)

    assert threading_hook._has_thread_context(Thread314)
    assert not threading_hook._has_thread_context(threading.Thread)  # 3.11 here
    mark = len(patching.history)
    threading_hook.patch(threading)  # Thread.start
    patching.wrap_function(Thread314, "_bootstrap_inner", threading_hook._wrap_bootstrap_inner_in_thread_context)
    try:
        own = contextvars.Context()
        with tracer().start_as_current_span("parent"):
            made = Thread314(target=work, args=("own-context",))
            given = Thread314(target=work, args=("given-context",), context=own)
            made.start()
            given.start()
        made.join(WAIT)
        given.join(WAIT)
    finally:
        patching.undo(mark)
    assert_child_of(spans, "own-context")
    assert_child_of(spans, "given-context")
    assert dict(own.run(context.get_current)) == {}  # the app's Context is left as it was


def test_a_multiprocessing_queues_feeder_thread_carries_nothing(hooks, monkeypatch):
    """The feeder starts at the first put(): it must not keep that caller's span for the queue's life."""
    import functools
    import multiprocessing
    from multiprocessing import queues

    seen: queue.Queue = queue.Queue()
    feed = queues.Queue._feed

    @functools.wraps(feed)  # multiprocessing's own function, as the hook sees it
    def noting_feed(*args, **kwargs):
        seen.put(trace.get_current_span().get_span_context().span_id)
        return feed(*args, **kwargs)

    monkeypatch.setattr(queues.Queue, "_feed", staticmethod(noting_feed))
    q = multiprocessing.get_context("spawn").Queue()
    try:
        with tracer().start_as_current_span("parent"):
            q.put("item")
        assert seen.get(timeout=WAIT) == 0  # the feeder runs in no span
        assert q.get(timeout=WAIT) == "item"
    finally:
        q.close()
        q.join_thread()


def test_the_sdks_export_thread_started_in_a_span_carries_nothing(hooks):
    """The SDK set up inside a request: its batch processor's thread lives as long as the process."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    exported: queue.Queue = queue.Queue()

    class Exporter(SpanExporter):
        def export(self, batch):
            current = trace.get_current_span().get_span_context().span_id
            exported.put((threading.current_thread().name, current))
            return SpanExportResult.SUCCESS

    provider = TracerProvider(shutdown_on_exit=False)
    with tracer().start_as_current_span("parent") as parent:
        processor = BatchSpanProcessor(Exporter(), schedule_delay_millis=10)  # starts its thread
        app_thread = threading.Thread(target=lambda: exported.put(("app", trace.get_current_span().get_span_context().span_id)))
        app_thread.start()
    provider.add_span_processor(processor)
    try:
        app_thread.join(WAIT)
        with provider.get_tracer("sdk-thread").start_as_current_span("recorded"):
            pass
        got = [exported.get(timeout=WAIT), exported.get(timeout=WAIT)]
    finally:
        provider.shutdown()
    assert ("app", parent.get_span_context().span_id) in got  # the app's own thread: carried
    [(name, span_id)] = [item for item in got if item[0] != "app"]
    assert name.startswith("OtelBatch")  # exported on the processor's own thread
    assert span_id == 0  # which holds no request's context


def test_the_hooks_make_no_spans_of_their_own(hooks):
    class Worker(threading.Thread):
        def run(self):
            work("subclass")

    async def in_asyncio():
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, work, "executor")
        await asyncio.to_thread(work, "to-thread")

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        with tracer().start_as_current_span("parent"):
            threads = [threading.Thread(target=work, args=("thread",)), Worker(), threading.Timer(0, work, ("timer",))]
            for thread in threads:
                thread.start()
            pool.submit(work, "submit").result(WAIT)
            list(pool.map(work, ["map"], timeout=WAIT))
            asyncio.run(in_asyncio())
        for thread in threads:
            thread.join(WAIT)
    workers = ["thread", "subclass", "timer", "submit", "map", "executor", "to-thread"]
    assert sorted(span.name for span in hooks.get_finished_spans()) == sorted(["parent", *workers])
    for name in workers:
        assert_child_of(hooks, name)


# -- concurrent.futures.ThreadPoolExecutor ---------------------------------------------


def test_submit(hooks):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        with tracer().start_as_current_span("parent"):
            future = pool.submit(work, "pool-child")
        assert future.result(WAIT) == "pool-child-done"
    assert_child_of(hooks, "pool-child")


def test_submit_passes_arguments_and_exceptions_unchanged(hooks):
    error = KeyError("nope")

    def echo(*args, **kwargs):
        return args, kwargs

    def fail():
        raise error

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with tracer().start_as_current_span("parent"):
            echoed = pool.submit(echo, 1, "two", three=3, fn="named fn")
            failed = pool.submit(fail)
        assert echoed.result(WAIT) == ((1, "two"), {"three": 3, "fn": "named fn"})
        assert failed.exception(WAIT) is error


def test_map(hooks):
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        with tracer().start_as_current_span("parent"):
            results = list(pool.map(work, ["m1", "m2", "m3"], timeout=WAIT))
    assert results == ["m1-done", "m2-done", "m3-done"]
    for name in ("m1", "m2", "m3"):
        assert_child_of(hooks, name)


def test_nested_pools(hooks):
    def outer():
        with tracer().start_as_current_span("outer"):
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as inner:
                return inner.submit(work, "inner").result(WAIT)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with tracer().start_as_current_span("parent"):
            assert pool.submit(outer).result(WAIT) == "inner-done"
    assert_child_of(hooks, "outer", "parent")
    assert_child_of(hooks, "inner", "outer")


def test_a_parent_that_ended_before_the_task_starts_still_parents_it(hooks):
    go = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        blocker = pool.submit(go.wait, WAIT)  # the only worker is busy until go is set
        with tracer().start_as_current_span("parent"):
            future = pool.submit(work, "queued-child")
        assert finished(hooks, "parent")
        go.set()
        assert blocker.result(WAIT) is True
        future.result(WAIT)
    assert_child_of(hooks, "queued-child")


def test_each_task_runs_in_its_own_submitters_context(hooks):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with tracer().start_as_current_span("parent"):
            pool.submit(work, "first").result(WAIT)  # starts the worker, inside "parent"
        with tracer().start_as_current_span("other"):
            pool.submit(work, "second").result(WAIT)  # same worker, other submitter
        outside = pool.submit(work, "outside").result(WAIT)  # same worker, no span
        assert len(pool._threads) == 1
    assert outside == "outside-done"
    assert_child_of(hooks, "first", "parent")
    assert_child_of(hooks, "second", "other")
    assert_root(hooks, "outside")


def test_where_threads_inherit_contextvars_a_task_outside_a_span_runs_in_none(hooks, monkeypatch):
    """sys.flags.thread_inherit_context (3.14 free-threaded): a worker may hold a span."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    held = trace.set_span_in_context(NonRecordingSpan(SpanContext(0xAB, 0xCD, is_remote=True)))

    def span_id():
        return trace.get_current_span().get_span_context().span_id

    # A worker thread holding a span in its context, as one inheriting it would.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=context.attach, initargs=(held,)) as pool:
        assert pool.submit(span_id).result(WAIT) == 0xCD  # plain: the worker's own context
        monkeypatch.setattr(thread_pool_hook, "_threads_inherit", True)
        assert pool.submit(span_id).result(WAIT) == 0  # none, as submitted
        with tracer().start_as_current_span("parent") as parent:
            assert pool.submit(span_id).result(WAIT) == parent.get_span_context().span_id


def _run_pickled(data: bytes):
    function, args, kwargs = pickle.loads(data)
    return function(*args, **kwargs)


def test_an_interpreter_pool_gets_its_tasks_as_given(hooks, monkeypatch):
    """Python 3.14's InterpreterPoolExecutor pickles each task in submit() (emulated here)."""

    class InterpreterPoolExecutor(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            data = pickle.dumps((fn, args, kwargs))  # as its _resolve_work_item_task does
            return concurrent.futures.ThreadPoolExecutor.submit.__wrapped__(self, _run_pickled, data)

    module = types.ModuleType("concurrent.futures.interpreter")
    module.InterpreterPoolExecutor = InterpreterPoolExecutor
    monkeypatch.setitem(sys.modules, "concurrent.futures.interpreter", module)
    mark = len(patching.history)
    patching.wrap_function(InterpreterPoolExecutor, "submit", thread_pool_hook._wrap_submit)
    try:
        with InterpreterPoolExecutor(max_workers=1) as pool:
            with tracer().start_as_current_span("parent"):
                assert pool.submit(work, "in-interpreter").result(WAIT) == "in-interpreter-done"
    finally:
        patching.undo(mark)
    assert_root(hooks, "in-interpreter")  # not carried: the agent does not run in a subinterpreter


def test_pool_worker_threads_carry_nothing_themselves(hooks):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with tracer().start_as_current_span("parent"):
            pool.submit(work, "first").result(WAIT)
        [worker] = pool._threads
        assert threading_hook._CONTEXT not in worker.__dict__


def test_nothing_is_left_current_on_the_worker_after_a_task(hooks):
    def current():
        return dict(context.get_current())

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with tracer().start_as_current_span("parent"):
            during = pool.submit(current).result(WAIT)
        after = pool.submit(current).result(WAIT)
    assert during and after == {}
    assert trace.get_current_span() is trace.INVALID_SPAN  # nor here


def test_app_contextvars_are_not_carried_into_the_pool(hooks):
    var = contextvars.ContextVar("app-pool-var")
    token = var.set("set by the app")
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            with tracer().start_as_current_span("parent"):
                seen = pool.submit(var.get, "unset").result(WAIT)
    finally:
        var.reset(token)
    assert seen == "unset"  # as in plain Python


# -- asyncio -----------------------------------------------------------------------------


def test_run_in_executor_default_and_custom(hooks):
    async def main():
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as custom:
            with tracer().start_as_current_span("parent"):
                default_result = await loop.run_in_executor(None, work, "default-executor")
                custom_result = await loop.run_in_executor(custom, work, "custom-executor")
        return default_result, custom_result

    assert asyncio.run(main()) == ("default-executor-done", "custom-executor-done")
    assert_child_of(hooks, "default-executor")
    assert_child_of(hooks, "custom-executor")


def test_run_in_executor_outside_a_span_after_one_inside(hooks):
    async def main():
        loop = asyncio.get_running_loop()
        with tracer().start_as_current_span("parent"):
            await loop.run_in_executor(None, work, "inside")
        await loop.run_in_executor(None, work, "after")

    asyncio.run(main())
    assert_child_of(hooks, "inside")
    assert_root(hooks, "after")


def test_to_thread(hooks):
    var = contextvars.ContextVar("app-to-thread-var")

    async def main():
        var.set("copied by asyncio")
        with tracer().start_as_current_span("parent"):
            result = await asyncio.to_thread(work, "to-thread")
        return result, await asyncio.to_thread(var.get, "unset")

    assert asyncio.run(main()) == ("to-thread-done", "copied by asyncio")  # to_thread copies contextvars
    assert_child_of(hooks, "to-thread")


def test_create_task_and_call_soon(hooks):
    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with tracer().start_as_current_span("parent"):
            task = asyncio.create_task(_async_work("task-child"))
            loop.call_soon(lambda: (work("callback-child"), done.set_result(None)))
        await asyncio.wait_for(asyncio.gather(task, done), WAIT)

    asyncio.run(main())
    assert_child_of(hooks, "task-child")
    assert_child_of(hooks, "callback-child")


async def _async_work(name: str) -> None:
    await asyncio.sleep(0)
    with tracer().start_as_current_span(name):
        await asyncio.sleep(0)


@pytest.fixture
def broken_api(monkeypatch):
    """The OpenTelemetry API not importable, as with a broken install (not loaded by the agent yet)."""
    import opentelemetry

    monkeypatch.setattr(api, "loaded", False)
    monkeypatch.setattr(carry, "_api_failed", False, raising=False)
    monkeypatch.delattr(opentelemetry, "propagate")
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", None)


def test_a_broken_api_install_leaves_threads_and_pools_untraced(hooks, broken_api, warnings):
    with pytest.raises(ImportError):
        api.load()  # what the hooks run into
    results = []
    with tracer().start_as_current_span("parent"):
        thread = threading.Thread(target=lambda: results.append(work("thread")))
        thread.start()
        timer = threading.Timer(0, lambda: results.append(work("timer")))
        timer.start()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            results.append(pool.submit(work, "submit").result(WAIT))
            results.extend(pool.map(work, ["map"], timeout=WAIT))
        assert carry.bind(work) is work
    thread.join(WAIT)
    timer.join(WAIT)
    assert sorted(results) == ["map-done", "submit-done", "thread-done", "timer-done"]
    [line] = warnings()
    assert "cannot import the OpenTelemetry API" in line and "opentelemetry.propagate" in line
    for name in ("thread", "timer", "submit", "map"):
        assert_root(hooks, name)  # nothing carried


def test_hooks_undone_restore_the_originals(spans):
    start, bootstrap = threading.Thread.start, threading.Thread._bootstrap_inner
    submit = concurrent.futures.ThreadPoolExecutor.submit
    mark = len(patching.history)
    threading_hook.patch(threading)
    thread_pool_hook.patch(concurrent.futures.thread)
    assert threading.Thread.start is not start
    assert concurrent.futures.ThreadPoolExecutor.submit.__wrapped__ is submit
    patching.undo(mark)
    assert threading.Thread.start is start and threading.Thread._bootstrap_inner is bootstrap
    assert concurrent.futures.ThreadPoolExecutor.submit is submit
