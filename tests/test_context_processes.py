"""Carrying the trace context to child processes: ``multiprocessing`` and ``ProcessPoolExecutor``.

The hooks are applied in this process (and undone after each test). Children report
what they see as current (trace and span id, a baggage entry, a value the app set in
the context) through a ``Queue`` or the pool's result; nothing is exported.

A ``fork`` child runs the hooked code it inherited. A ``spawn`` child is a fresh
interpreter: the agent runs in it only when it bootstraps from the environment
(``AUTOTRACE_ENABLED``, the way ``autotrace run`` children do, with the exporter off);
a pool task needs no agent in the child: its wrapper is unpickled there.
"""

from __future__ import annotations

import concurrent.futures
import os
import multiprocessing
import multiprocessing.context
import multiprocessing.pool
import multiprocessing.process
import pickle
import sys
import threading
import time

import pytest

from autotrace import api, carry, patching
from autotrace.hooks import multiprocessing as mp_hook
from autotrace.hooks import process_pool as pp_hook

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork start method")

TIMEOUT = 30
APP_KEY = "autotrace-test-app-value"


# -- what a child sees (module level: picklable by reference for spawn children) ---------


def seen(label=None):
    """(label, trace id, span id, baggage "tenant", the app's own context value) here."""
    from opentelemetry import baggage, context, trace

    span_context = trace.get_current_span().get_span_context()
    return (
        label,
        format(span_context.trace_id, "032x") if span_context.is_valid else None,
        format(span_context.span_id, "016x") if span_context.is_valid else None,
        baggage.get_baggage("tenant"),
        context.get_value(APP_KEY),
    )


def seen_pair(a, b):
    return seen(f"{a}{b}")


def report(queue, label=None):
    queue.put(seen(label))


class Reporter(multiprocessing.context.SpawnProcess):
    """A Process subclass that overrides run()."""

    def __init__(self, queue):
        super().__init__()
        self.queue = queue

    def run(self):
        self.queue.put(seen("subclass"))


def fail(message):
    raise ValueError(message)


def wait_for_file(path):
    """Return once ``path`` exists (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)
    return path


def log_item(path_and_item):
    """A task that notes, in the file ``path``, that it ran here; returns its item."""
    path, item = path_and_item
    with open(path, "a") as log:
        log.write(f"item {os.getpid()}\n")
    return item


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def hooked(spans):
    """The three hooks applied, as the agent applies them; the originals put back after."""
    import concurrent.futures.process

    mark = len(patching.history)
    mp_hook.patch(multiprocessing.process)
    mp_hook.patch_pool(multiprocessing.pool)
    pp_hook.patch(concurrent.futures.process)
    yield spans
    patching.undo(mark)


@pytest.fixture
def threads_hooked(hooked):
    """The threading hook too: helper threads started in a span would carry it."""
    import threading as threading_module

    from autotrace.hooks import threading as threading_hook

    threading_hook.patch(threading_module)  # undone with the others by ``hooked``


@pytest.fixture
def tracer(hooked):
    from opentelemetry import trace

    return trace.get_tracer("test_context_processes")


@pytest.fixture
def agent_in_spawn_children(monkeypatch):
    """Spawn children bootstrap the agent from the environment (no exporter, quiet)."""
    for name in [n for n in os.environ if n.startswith(("OTEL_", "AUTOTRACE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AUTOTRACE_ENABLED", "true")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_LOG_LEVEL", "error")


def ids(span):
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


class in_span:
    """A span current, with baggage ``tenant=acme`` and an app value in the context."""

    def __init__(self, tracer, name="submit"):
        self.tracer = tracer
        self.name = name

    def __enter__(self):
        from opentelemetry import baggage, context

        self._span_cm = self.tracer.start_as_current_span(self.name)
        self.span = self._span_cm.__enter__()
        ctx = baggage.set_baggage("tenant", "acme")
        ctx = context.set_value(APP_KEY, "app-only", ctx)
        self._token = context.attach(ctx)
        return self

    def __exit__(self, *exc):
        from opentelemetry import context

        context.detach(self._token)
        return self._span_cm.__exit__(*exc)

    def expected(self, label=None, app_value=None):
        return (label, *ids(self.span), "acme", app_value)


NOTHING = (None, None, None, None, None)


# -- the wrapper ------------------------------------------------------------------------------


def test_in_context_is_the_function_itself_when_there_is_nothing_to_carry(hooked):
    assert mp_hook.in_context(seen) is seen


def test_wrapper_survives_pickling_and_runs_the_function_in_the_context(tracer):
    with in_span(tracer) as parent:
        wrapped = mp_hook.in_context(seen)
    assert isinstance(wrapped, mp_hook._InContext)
    assert "traceparent" in wrapped.carrier
    copy = pickle.loads(pickle.dumps(wrapped))
    assert copy.function is seen and copy.carrier == wrapped.carrier

    assert seen() == NOTHING
    # The propagation fields cross, not the app's own values; the span has ended already.
    assert copy("x") == parent.expected("x")
    assert copy("y") == parent.expected("y")  # the extracted context is reused
    assert seen() == NOTHING  # detached after


def test_wrapper_passes_exceptions_and_results_unchanged(tracer):
    with tracer.start_as_current_span("submit"):
        wrapped = mp_hook.in_context(fail)
        doubled = mp_hook.in_context(lambda x: [x, x])
    with pytest.raises(ValueError, match="^boom$"):
        wrapped("boom")
    item = object()
    result = doubled(item)
    assert result[0] is item and result[1] is item


def _unpicklable():
    return [lambda: 1, _local_function()]


def _local_function():
    def local():
        return 1

    return local


@pytest.mark.parametrize("function", _unpicklable(), ids=["lambda", "local"])
def test_unpicklable_function_fails_to_pickle_as_without_the_agent(tracer, function):
    with pytest.raises(Exception) as plain:
        pickle.dumps(function)
    with tracer.start_as_current_span("submit"):
        wrapped = mp_hook.in_context(function)
    assert wrapped is not function
    with pytest.raises(type(plain.value)) as traced:
        pickle.dumps(wrapped)
    assert str(traced.value) == str(plain.value)


def test_pool_methods_wrap_every_task_with_the_context_if_any(tracer):
    calls = []

    def original(self, *args, **kwargs):
        calls.append((args, kwargs))
        return "result"

    method = mp_hook._wrap_task_method(original, multiprocessing.pool.ThreadPool)
    # No context: the task as it was given (the worker flushes per task message itself).
    assert method(object(), seen, [1]) == "result"
    assert calls.pop() == ((seen, [1]), {})
    with tracer.start_as_current_span("submit"):
        method(object(), seen, [1], chunksize=2)
        method(object(), func=seen, iterable=[1])
        method(object())  # no function: the original says what is missing
    (args, kwargs), (kw_args, kw_kwargs), (none_args, none_kwargs) = calls
    assert isinstance(args[0], mp_hook._InContext) and args[1:] == ([1],) and kwargs == {"chunksize": 2}
    assert kw_args == () and isinstance(kw_kwargs["func"], mp_hook._InContext)
    assert kw_kwargs["iterable"] == [1]
    assert none_args == () and none_kwargs == {}


# -- Process ----------------------------------------------------------------------------------


def _run_process(process, queue):
    if process._popen is None:
        process.start()
    try:
        return queue.get(timeout=TIMEOUT)
    finally:
        process.join(TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(5)


def test_fork_child_keeps_the_context_it_inherited(tracer):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with in_span(tracer) as parent:
        process = ctx.Process(target=report, args=(queue, "fork"))
        got = _run_process(process, queue)
    # The whole context, the app's own value included, as without the agent.
    assert got == parent.expected("fork", app_value="app-only")
    assert process.exitcode == 0
    assert mp_hook._CARRIER not in process.__dict__  # the parent's object keeps nothing


def test_the_sdks_export_thread_in_a_fork_child_carries_nothing(threads_hooked, tracer):
    """The SDK restarts its batch processor's thread in a fork child, from the thread that forked."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    ctx = multiprocessing.get_context("fork")
    reports = ctx.Queue()
    exported = threading.Event()  # the child's copy is set by the child's export

    class Exporter(SpanExporter):
        def export(self, batch):
            reports.put((threading.current_thread().name, os.getpid(), seen()[1:3]))
            exported.set()
            return SpanExportResult.SUCCESS

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(Exporter(), schedule_delay_millis=10))

    def child():
        with provider.get_tracer("fork-child").start_as_current_span("in-child"):
            pass
        assert exported.wait(TIMEOUT)

    try:
        with in_span(tracer):
            process = ctx.Process(target=child)
            process.start()
        name, pid, current = reports.get(timeout=TIMEOUT)
        process.join(TIMEOUT)
    finally:
        provider.shutdown()
    assert process.exitcode == 0
    assert pid == process.pid and name.startswith("OtelBatch")  # the child's export thread
    assert current == (None, None)  # holds no request's context


def test_process_started_outside_any_span_carries_nothing(tracer):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    process = ctx.Process(target=report, args=(queue,))
    assert _run_process(process, queue) == NOTHING
    assert mp_hook._CARRIER not in process.__dict__


@pytest.mark.parametrize("subclass", [False, True], ids=["target", "run-overridden"])
def test_spawn_child_runs_in_the_starters_context(tracer, agent_in_spawn_children, subclass):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with in_span(tracer) as parent:
        if subclass:
            process, label = Reporter(queue), "subclass"
        else:
            process, label = ctx.Process(target=report, args=(queue, "spawn")), "spawn"
        process.start()  # the span ends while the child starts up
    assert mp_hook._CARRIER not in process.__dict__  # pickled to the child by start()
    got = _run_process(process, queue)
    assert got == parent.expected(label)
    assert process.exitcode == 0


def test_unpicklable_target_fails_to_start_as_without_the_agent(tracer):
    ctx = multiprocessing.get_context("spawn")
    with pytest.raises(Exception) as plain:
        ctx.Process(target=lambda: 1).start()
    with tracer.start_as_current_span("submit"):
        process = ctx.Process(target=lambda: 1)
        with pytest.raises(type(plain.value)) as traced:
            process.start()
    assert str(traced.value) == str(plain.value)
    assert mp_hook._CARRIER not in process.__dict__


class _FakeProvider:
    def __init__(self, state):
        self._state = state
        self._settings = type("Settings", (), {"shutdown_timeout_s": 1.5})()
        self.flushed = []

    def state(self):
        return self._state

    def settings(self):
        return self._settings

    def flush(self, timeout_s, final=True):
        self.flushed.append((timeout_s, final))
        return True


@pytest.mark.parametrize(
    ("state", "armed_here", "flushed"),
    [
        ("set up", False, [(1.5, True)]),  # set up in the child: nothing else flushes
        ("declined", False, [(1.5, True)]),  # the app's own provider
        ("set up", True, []),  # the SDK's multiprocessing finalizer has flushed
        ("waiting", False, []),  # nothing recorded in this process
    ],
)
def test_child_flushes_at_the_end_of_its_body_unless_flushed_already(monkeypatch, state, armed_here, flushed):
    provider = _FakeProvider(state)
    sdk = type(sys)("autotrace.sdk")
    pid = os.getpid() if armed_here else 0
    sdk.flushes_at_multiprocessing_exit = lambda: pid == os.getpid()
    monkeypatch.setitem(sys.modules, "autotrace.provider", provider)
    monkeypatch.setitem(sys.modules, "autotrace.sdk", sdk)
    mp_hook._flush_child()
    assert provider.flushed == flushed


def test_spawn_child_without_the_agent_runs_as_without_it(tracer, monkeypatch):
    monkeypatch.delenv("AUTOTRACE_ENABLED", raising=False)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with in_span(tracer):
        process = ctx.Process(target=report, args=(queue, "plain"))
        got = _run_process(process, queue)
    assert got == ("plain", None, None, None, None)
    assert process.exitcode == 0


# -- Pool ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_tasks_run_in_their_submitters_context(tracer, method):
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(1) as pool:
        with in_span(tracer, "first") as first:
            results = [
                pool.apply_async(seen, ("apply_async",)),
                pool.map_async(seen, ["map_async"]),
                pool.starmap_async(seen_pair, [("star", "map_async")]),
            ]
            sync = [pool.apply(seen, ("apply",)), *pool.map(seen, ["map", "map-chunked"], 1)]
            sync += pool.starmap(seen_pair, [("star", "map")])
            lazy = [pool.imap(seen, ["imap"]), pool.imap(seen, ["imap-2"], 2)]
            lazy += [pool.imap_unordered(seen, ["imap_unordered"]), pool.imap_unordered(seen, ["u2"], 2)]
        with in_span(tracer, "second") as second:
            other = pool.apply_async(seen, ("second",))
        untraced = pool.apply_async(seen, ("outside",))

        got = [results[0].get(TIMEOUT), *results[1].get(TIMEOUT), *results[2].get(TIMEOUT), *sync]
        got += [item for iterator in lazy for item in iterator]
        expected = ["apply_async", "map_async", "starmap_async", "apply", "map", "map-chunked", "starmap"]
        expected += ["imap", "imap-2", "imap_unordered", "u2"]
        assert got == [first.expected(label) for label in expected]
        assert other.get(TIMEOUT) == second.expected("second")
        assert untraced.get(TIMEOUT) == ("outside", None, None, None, None)


def test_pool_workers_started_in_a_span_do_not_carry_it(tracer):
    ctx = multiprocessing.get_context("fork")
    with in_span(tracer):
        pool = ctx.Pool(1)
    try:
        assert pool.apply(seen, ("later",)) == ("later", None, None, None, None)
    finally:
        pool.terminate()
        pool.join()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_callbacks_do_not_run_in_the_pools_creators_context(threads_hooked, tracer, method):
    """The result handler thread, which runs callbacks, is started by Pool() in a span."""
    ctx = multiprocessing.get_context(method)
    called = []
    with in_span(tracer, "creator"):
        pool = ctx.Pool(1)
    try:
        with in_span(tracer, "submitter"):
            inside = pool.apply_async(seen, ("inside",), callback=lambda result: called.append(seen("callback")))
        outside = pool.apply_async(fail, ("boom",), error_callback=lambda error: called.append(seen("errback")))
        assert inside.get(TIMEOUT)[0] == "inside"
        with pytest.raises(ValueError):
            outside.get(TIMEOUT)
    finally:
        pool.terminate()
        pool.join()
    # Python runs callbacks in the result handler thread: outside any span, as without the agent.
    assert called == [("callback", None, None, None, None), ("errback", None, None, None, None)]
    for handler in (pool._worker_handler, pool._task_handler, pool._result_handler):
        assert "_autotrace_context" not in handler.__dict__


def test_pool_workers_flush_once_per_task_message_before_its_result(tracer, tmp_path, monkeypatch):
    """One flush per chunk of map (not per item), per apply; each before the result is sent."""
    log = tmp_path / "log"

    def flush_task():  # in the fork workers, which inherit it
        with open(log, "a") as out:
            out.write(f"flush {os.getpid()}\n")

    monkeypatch.setattr(mp_hook, "_flush_task", flush_task)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        with tracer.start_as_current_span("submit"):
            assert pool.map(log_item, [(str(log), i) for i in range(200)], chunksize=50) == list(range(200))
            lines = log.read_text().splitlines()  # the workers' flushes came before the results
            assert pool.apply(log_item, ((str(log), "one"),)) == "one"
        assert pool.map(log_item, [(str(log), "outside")]) == ["outside"]  # nothing carried: flushed too
        after = log.read_text().splitlines()
    assert len(lines) == 200 + 4 and [line.split()[0] for line in lines].count("flush") == 4
    by_worker: dict[str, list[str]] = {}
    for line in after:
        kind, pid = line.split()
        by_worker.setdefault(pid, []).append(kind)
    blocks = [block for kinds in by_worker.values() for block in " ".join(kinds).split("flush") if block.strip()]
    assert sorted(block.split().count("item") for block in blocks) == [1, 1, 50, 50, 50, 50]
    assert all(kinds[-1] == "flush" for kinds in by_worker.values())


def test_pool_task_errors_and_unpicklable_functions_fail_as_without_the_agent(tracer):
    ctx = multiprocessing.get_context("fork")
    with pytest.raises(Exception) as plain:
        pickle.dumps(lambda: 1)
    with ctx.Pool(1) as pool, tracer.start_as_current_span("submit"):
        with pytest.raises(ValueError, match="^boom$"):
            pool.apply(fail, ("boom",))
        with pytest.raises(type(plain.value)):
            pool.apply(lambda: 1)
        with pytest.raises(type(plain.value)):
            pool.map(lambda x: x, [1])
        # The pool still works.
        assert pool.apply(seen_pair, ("a", "b"))[0] == "ab"


def test_thread_pool_tasks_get_the_live_context(tracer):
    with multiprocessing.pool.ThreadPool(1) as pool, in_span(tracer) as parent:
        # Nothing pickled: a lambda is fine, and the app's own values are there too.
        assert pool.apply(lambda: seen("thread")) == parent.expected("thread", app_value="app-only")
        assert pool.map(seen, ["m"]) == [parent.expected("m", app_value="app-only")]


# -- ProcessPoolExecutor ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_executor_tasks_run_in_their_submitters_context(tracer, method):
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        with in_span(tracer, "first") as first:
            future = executor.submit(seen, "submit")
            mapped = executor.map(seen, ["map-1", "map-2"], chunksize=2)
        untraced = executor.submit(seen, "outside")
        with in_span(tracer, "second") as second:
            keyword = executor.submit(seen_pair, "key", b="word")

        assert future.result(TIMEOUT) == first.expected("submit")
        assert list(mapped) == [first.expected("map-1"), first.expected("map-2")]
        # The worker was started by the first submit, in its span: it carries nothing itself.
        assert untraced.result(TIMEOUT) == ("outside", None, None, None, None)
        assert keyword.result(TIMEOUT) == second.expected("keyword")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_executor_done_callbacks_do_not_run_in_the_first_submitters_context(threads_hooked, tracer, tmp_path, method):
    """The manager thread, which runs done-callbacks, is started by the first submit, in its span."""
    ctx = multiprocessing.get_context(method)
    gate = tmp_path / "gate"
    called, done = [], threading.Event()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        with in_span(tracer, "first") as first:
            assert executor.submit(seen, "first").result(TIMEOUT) == first.expected("first")
        later = executor.submit(wait_for_file, str(gate))  # outside any span
        later.add_done_callback(lambda future: (called.append(seen("callback")), done.set()))
        gate.touch()
        assert later.result(TIMEOUT) == str(gate)
        assert done.wait(TIMEOUT)
        manager = executor._executor_manager_thread
        assert "_autotrace_context" not in manager.__dict__
    assert called == [("callback", None, None, None, None)]


def test_executor_errors_and_unpicklable_functions_fail_as_without_the_agent(tracer):
    ctx = multiprocessing.get_context("fork")
    with pytest.raises(Exception) as plain:
        pickle.dumps(lambda: 1)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        with tracer.start_as_current_span("submit"):
            failing = executor.submit(fail, "boom")
            unpicklable = executor.submit(lambda: 1)
        with pytest.raises(ValueError, match="^boom$"):
            failing.result(TIMEOUT)
        with pytest.raises(type(plain.value)):
            unpicklable.result(TIMEOUT)


def test_a_broken_api_install_leaves_processes_and_pools_untraced(tracer, monkeypatch, capsys):
    import opentelemetry

    monkeypatch.setattr(api, "loaded", False)
    monkeypatch.setattr(carry, "_api_failed", False, raising=False)
    monkeypatch.delattr(opentelemetry, "propagate")
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", None)
    ctx = multiprocessing.get_context("fork")
    with tracer.start_as_current_span("submit"):
        assert mp_hook.without_context(seen_pair, "a", b="b")[0] == "ab"
        assert mp_hook.in_context(seen) is seen
        queue = ctx.Queue()
        process = ctx.Process(target=report, args=(queue, "process"))
        assert _run_process(process, queue)[0] == "process"
        with ctx.Pool(1) as pool:
            assert pool.apply(seen_pair, ("po", "ol"))[0] == "pool"
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as executor:
            assert executor.submit(seen_pair, "ex", "ecutor").result(TIMEOUT)[0] == "executor"
    assert process.exitcode == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autotrace ")]
    assert len(lines) == 1 and "cannot import the OpenTelemetry API" in lines[0], lines


def test_carry_is_what_crosses(tracer):
    """The carrier holds the propagation fields only (a dict of strings)."""
    with in_span(tracer):
        carrier = carry.to_carrier()
    assert set(carrier) == {"traceparent", "baggage"}
    assert all(isinstance(value, str) for value in carrier.values())


@pytest.fixture
def propagators(monkeypatch):
    """``propagators("b3")``: OTEL_PROPAGATORS here (the global textmap) and in spawn children."""
    from opentelemetry import propagate

    from autotrace.propagation import build

    def use(names: str) -> None:
        monkeypatch.setenv("OTEL_PROPAGATORS", names)
        monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", build(names.split(",")))

    return use


@pytest.mark.parametrize(
    ("names", "fields"),
    [
        ("tracecontext,baggage", {"traceparent", "baggage"}),  # the default: as configured, nothing added
        ("none", {"traceparent", "baggage"}),  # nothing configured: W3C
        ("baggage", {"traceparent", "baggage"}),
        ("b3", {"b3", "traceparent", "baggage"}),  # B3's own field (its debug flag) and W3C's
    ],
)
def test_the_carrier_continues_the_trace_whatever_otel_propagators_says(tracer, propagators, names, fields):
    """OTEL_PROPAGATORS is how to talk to other services; a child process of this one continues its trace."""
    propagators(names)
    with in_span(tracer) as parent:
        carrier = carry.to_carrier()
    assert set(carrier) == fields
    from opentelemetry import context

    token = context.attach(carry.from_carrier(carrier))
    try:
        assert seen("child") == parent.expected("child")
    finally:
        context.detach(token)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_and_executor_tasks_join_the_trace_with_otel_propagators_none(tracer, propagators, method):
    propagators("none")
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(1) as pool, concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        with in_span(tracer) as parent:
            pooled = pool.apply_async(seen, ("pool",))
            submitted = executor.submit(seen, "executor")
        assert pooled.get(TIMEOUT) == parent.expected("pool")
        assert submitted.result(TIMEOUT) == parent.expected("executor")
