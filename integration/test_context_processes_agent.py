"""Work handed to child processes joins the submitting span's trace, under ``autotrace run``.

An app (OpenTelemetry API only, no agent code) starts a span, and inside it fans out
to ``multiprocessing.Process`` (fork, spawn, forkserver), ``multiprocessing.Pool``
(fork, spawn: ``apply_async``, ``map_async``, ``starmap_async``, ``imap``,
``imap_unordered``) and ``ProcessPoolExecutor`` (fork, spawn: ``submit``, ``map``).
The span ends before any child does its work: each child waits for a file the parent
writes once the span has ended, then records a span of its own. A task submitted
outside any span records a root span.

At the real OTLP receiver: every worker's span arrived (the child flushed it before it
ended: nothing is exported while the app runs, see ``OTEL_BSP_SCHEDULE_DELAY``), once,
from a process other than the parent, as a child of the submitting span in its trace.

The same holds with ``OTEL_PROPAGATORS=none``: the agent carries W3C fields to its own
children whatever formats it speaks to other services.

A ``Pool.map`` of many items in a few chunks, one span per item, is exported in one
request per chunk (the worker flushes before it sends a chunk's result), not per item.
"""

from __future__ import annotations

import pytest

from agent import AUTOTRACE, Watched, clean_env, write

PROTOCOLS = ["grpc", "http"]
HOLD = "60000"  # OTEL_BSP_SCHEDULE_DELAY: nothing is exported before a process flushes

APP = """
import concurrent.futures
import multiprocessing
import os
import sys
import time

from opentelemetry import trace

tracer = trace.get_tracer("app")
GATES = os.path.join(os.getcwd(), "gates")


def gate(case):
    return os.path.join(GATES, case)


def work(item):
    case, label = item
    deadline = time.monotonic() + 30
    while not os.path.exists(gate(case)):  # the submitting span has ended
        if time.monotonic() > deadline:
            raise RuntimeError("the gate of %s never opened" % case)
        time.sleep(0.01)
    with tracer.start_as_current_span("work %s %s" % (case, label)):
        pass
    return os.getpid()


def work_pair(case, label):
    return work((case, label))


def opened(case):
    open(gate(case), "w").close()


def run_process(method):
    case = "process-" + method
    ctx = multiprocessing.get_context(method)
    with tracer.start_as_current_span("submit " + case):
        process = ctx.Process(target=work, args=((case, "target"),))
        process.start()
    opened(case)
    process.join(60)
    assert process.exitcode == 0, (case, process.exitcode)


def run_pool(method, ending):
    case = "pool-%s-%s" % (method, ending)
    ctx = multiprocessing.get_context(method)
    pool = ctx.Pool(2)
    try:
        with tracer.start_as_current_span("submit " + case):
            results = [
                pool.apply_async(work, ((case, "apply_async"),)),
                pool.map_async(work, [(case, "map_async-1"), (case, "map_async-2")]),
                pool.starmap_async(work_pair, [(case, "starmap_async")]),
            ]
            iterators = [
                pool.imap(work, [(case, "imap")]),
                pool.imap_unordered(work, [(case, "imap_unordered-1"), (case, "imap_unordered-2")], 2),
            ]
        outside = pool.apply_async(work, ((case, "outside"),))
        opened(case)
        for result in results + [outside]:
            result.get(60)
        for iterator in iterators:
            for _ in iterator:
                pass
    finally:
        if ending == "terminate":  # what Pool.__exit__ does
            pool.terminate()
        else:
            pool.close()
        pool.join()


def run_chunks(method, items, chunksize):
    case = "chunks-" + method
    with multiprocessing.get_context(method).Pool(2) as pool:
        with tracer.start_as_current_span("submit " + case):
            pids = pool.map(record_item, [(case, i) for i in range(int(items))], int(chunksize))
    assert len(pids) == int(items)


def record_item(item):
    with tracer.start_as_current_span("item %s %s" % item):
        pass
    return os.getpid()


def run_executor(method):
    case = "executor-" + method
    context = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
        with tracer.start_as_current_span("submit " + case):
            futures = [executor.submit(work, (case, "submit")), executor.submit(work_pair, case, label="keyword")]
            mapped = executor.map(work, [(case, "map-1"), (case, "map-2")])
        futures.append(executor.submit(work, (case, "outside")))
        opened(case)
        for future in futures:
            future.result(60)
        list(mapped)


if __name__ == "__main__":
    os.makedirs(GATES, exist_ok=True)
    for name in sys.argv[1:]:
        kind, _, args = name.partition(":")
        runs = {"process": run_process, "pool": run_pool, "executor": run_executor, "chunks": run_chunks}
        runs[kind](*args.split(","))
        print("done", name, flush=True)
    print("app done", flush=True)
"""

POOL_LABELS = ["apply_async", "map_async-1", "map_async-2", "starmap_async", "imap", "imap_unordered-1", "imap_unordered-2"]
EXECUTOR_LABELS = ["submit", "keyword", "map-1", "map-2"]


def expected_work(cases: list[str]) -> dict[str, list[str]]:
    """Case name -> the labels of the spans its workers record inside the submitting span."""
    wanted = {}
    for name in cases:
        kind, _, args = name.partition(":")
        case = f"{kind}-{args.replace(',', '-')}"
        wanted[case] = {"process": ["target"], "pool": POOL_LABELS, "executor": EXECUTOR_LABELS}[kind]
    return wanted


def run_app(tmp_path, receiver, protocol: str, cases: list[str], timeout: float = 120, **extra_env: str):
    script = write(tmp_path, "app.py", APP)
    env = clean_env(**receiver.env(protocol), **extra_env)
    env["OTEL_BSP_SCHEDULE_DELAY"] = HOLD
    # Its own session: children left hanging are cleaned up with it.
    with Watched([AUTOTRACE, "run", "python", script.name, *cases], tmp_path, env) as app:
        code = app.finish(timeout=timeout)
    return app, code


def check_spans(receiver, app, cases: list[str]) -> None:
    wanted = expected_work(cases)
    outside = [case for case in wanted if not case.startswith("process-")]
    total = len(wanted) + sum(len(labels) for labels in wanted.values()) + len(outside)
    # Every process has exited, each flushing before it did: what is missing never comes.
    receiver.wait_for_spans(total, timeout=5)
    spans = receiver.spans()
    names = [s.name for s in spans]
    assert len(names) == len(set(names)), f"a span arrived twice: {sorted(names)}"
    by_name = {s.name: s for s in spans}
    assert len(spans) == total, sorted(names)

    for case, labels in wanted.items():
        submit = by_name[f"submit {case}"]
        assert submit.resource["process.pid"] == app.pid
        for label in labels:
            work = by_name[f"work {case} {label}"]
            assert work.trace_id == submit.trace_id, (case, label)
            assert work.parent_span_id == submit.span_id, (case, label)
            assert work.resource["process.pid"] != app.pid, (case, label)
            assert work.resource["service.name"] == "app"
            # The parent span had ended before the child did its work.
            assert work.start_time_unix_nano > submit.end_time_unix_nano, (case, label)
    for case in outside:
        work = by_name[f"work {case} outside"]
        assert work.parent_span_id == "", case  # a task submitted outside any span: a root
        assert work.trace_id not in {s.trace_id for s in spans if s.name.startswith("submit ")}


def check_app(app, code: int, cases: list[str]) -> None:
    stderr = app.text("stderr")
    assert code == 0, stderr
    assert app.text().splitlines()[-1] == "app done", app.text()
    assert "Traceback" not in stderr, stderr
    for hook in ("multiprocessing", "multiprocessing_pool", "process_pool"):
        assert f"hook {hook} failed" not in stderr, stderr


CASES = [
    "process:fork",
    "process:spawn",
    "process:forkserver",
    "pool:fork,close",
    "pool:spawn,close",
    "executor:fork",
    "executor:spawn",
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_children_and_pool_tasks_join_the_submitting_span(tmp_path, otlp_receiver, protocol):
    app, code = run_app(tmp_path, otlp_receiver, protocol, CASES)
    check_app(app, code, CASES)
    check_spans(otlp_receiver, app, CASES)


NO_PROPAGATORS = ["process:spawn", "pool:fork,close", "pool:spawn,close", "executor:spawn"]


def test_children_join_the_trace_with_otel_propagators_none(tmp_path, otlp_receiver):
    """OTEL_PROPAGATORS says how to talk to other services, not whether children continue the trace."""
    app, code = run_app(tmp_path, otlp_receiver, "http", NO_PROPAGATORS, OTEL_PROPAGATORS="none")
    check_app(app, code, NO_PROPAGATORS)
    check_spans(otlp_receiver, app, NO_PROPAGATORS)


TERMINATED = ["pool:fork,terminate", "pool:spawn,terminate"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_terminated_pool_workers_flush_their_spans(tmp_path, otlp_receiver, protocol):
    app, code = run_app(tmp_path, otlp_receiver, protocol, TERMINATED, timeout=60)
    check_app(app, code, TERMINATED)
    check_spans(otlp_receiver, app, TERMINATED)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_map_exports_once_per_chunk_not_per_item(tmp_path, otlp_receiver, method):
    items, chunks = 400, 4
    case = f"chunks:{method},{items},{items // chunks}"
    app, code = run_app(tmp_path, otlp_receiver, "http", [case], timeout=60)
    check_app(app, code, [case])
    spans = otlp_receiver.wait_for_spans(items + 1, timeout=5)
    [submit] = [s for s in spans if s.name == f"submit chunks-{method}"]
    recorded = [s for s in spans if s.name.startswith("item ")]
    assert sorted(int(s.name.split()[-1]) for s in recorded) == list(range(items))
    assert all(s.parent_span_id == submit.span_id and s.resource["process.pid"] != app.pid for s in recorded)
    # One request per chunk from the workers, one from the parent at exit: never one per item.
    assert chunks + 1 <= len(otlp_receiver.export_requests()) <= chunks + 2, len(otlp_receiver.export_requests())
