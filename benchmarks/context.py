"""Cost of carrying the trace context to threads and pools (and of trace ids in log records).

    python benchmarks/context.py [--rounds 9] [--scale 1.0] [--only submit] [--cpu all]

Patched against unpatched in one process: each round measures every case once with the
agent's hooks applied (``patch()`` of the threading, thread_pool and logging hooks, as
the registry applies them) and once with the originals put back
(``patching.undo``), in alternating order, and the table gives medians over the rounds
and the ratio patched / unpatched. In-process rather than plain Python against
``AUTOTRACE_ENABLED=true`` child processes: the costs measured are a few hundred
nanoseconds on calls of microseconds, well under the noise between two processes
(other work on the machine, memory layout); the same process, the same objects and
warm caches leave only the hooks' own work as the difference.

Each case runs outside any span, where the hooks find nothing to carry, and inside a
span (an SDK ``TracerProvider`` with no processor: spans are made, nothing is
exported), where every submit and every thread start captures the context and the
work attaches and detaches it:

- ``submit+result``: ``ThreadPoolExecutor.submit`` of a trivial function and waiting
  for its result, one at a time (a round trip to the worker thread each);
- ``submit, queued`` and ``queued task run``: a batch of trivial tasks submitted while
  the pool's only worker is held busy (time per ``submit``: capture and bind, nothing
  else crosses threads), then run back to back by that worker (time per task: attach
  and detach around it);
- ``submit throughput``: submitting a batch of trivial tasks to a 4-worker pool, then
  waiting for all of them; time per task. This one measures how often workers go idle
  and must be woken more than anything: a wrapper around ``submit`` that does nothing
  at all already reads about 1.15x here;
- ``Thread start+join``: starting a thread with a trivial target and joining it;
- ``asyncio task``: ``create_task`` of a trivial coroutine, and awaiting all of them
  (nothing is patched for asyncio: expected 1.0x);
- ``log record``: ``Logger.makeRecord`` (the factory the logging hook adds to); most of
  what the hook adds is CPython growing the record's ``__dict__`` for the four fields
  (a LogRecord has 20 attributes: the 22nd makes the dict resize), about 1 us;
- ``log line``: ``logger.warning`` formatted by a ``StreamHandler`` into memory.

Targets: submit at most 1.10x, Thread.start small, asyncio tasks 1.05x. The machine's
noise shows in the spread column (the largest minus the smallest ratio of the rounds).

The process is pinned to one CPU (``--cpu all`` to leave it free). On several cores the
cases that hand work to another thread are dominated by how often the GIL changes hands
through a wake-up, which tiny timing differences change: ratios then move by 30% from
round to round, either way, even for a wrapper that does nothing. On one core the
hand-overs are regular.

A second table gives the hooks' own work per operation, timed in one thread with a span
current, free of that noise: at submit (capture the context, bind the task), and on the
worker (attach and detach it around the task).

A third table, ``pool map``, is end to end in child processes: ``Pool(2).map`` (fork) of
2000 items in chunks of 100, each item recording a span inside a request span, in plain
Python (the API's no-op spans) and under ``autotrace run`` exporting over OTLP/HTTP to a
local sink (``clients.py``'s), with ``OTEL_BSP_SCHEDULE_DELAY`` long enough that only
the workers' own flushes export. A worker flushes once per chunk, before the chunk's
result goes back (20 exports here); when it flushed after every item this took seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import concurrent.futures.thread
import gc
import logging
import os
import statistics
import sys
import threading
import time
import subprocess
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from autotrace import patching  # noqa: E402
from autotrace.hooks import logging as logging_hook  # noqa: E402
from autotrace.hooks import thread_pool as thread_pool_hook  # noqa: E402
from autotrace.hooks import threading as threading_hook  # noqa: E402


def noop(*args):
    return None


def submit_and_result(count: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(noop).result()  # the worker started before timing
        start = time.perf_counter()
        for _ in range(count):
            pool.submit(noop).result()
        return (time.perf_counter() - start) / count


def _queued(count: int) -> tuple[float, float]:
    """Submit ``count`` tasks while the only worker is held busy, then let it run them all.

    Returns (seconds per submit, seconds per task run). Nothing crosses threads while
    either part is timed: the submits queue without waking a worker, and the worker
    then runs them back to back while this thread waits for the last one.
    """
    import threading as _threading

    go = _threading.Event()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(noop).result()
        blocker = pool.submit(go.wait)
        start = time.perf_counter()
        futures = [pool.submit(noop, i) for i in range(count)]
        submitted = time.perf_counter()
        go.set()
        blocker.result()
        released = time.perf_counter()
        futures[-1].result()
        drained = time.perf_counter()
        concurrent.futures.wait(futures)
    return (submitted - start) / count, (drained - released) / count


def submit_queued(count: int) -> float:
    return _queued(count)[0]


def run_queued(count: int) -> float:
    return _queued(count)[1]


def submit_throughput(count: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(noop, range(8)))
        start = time.perf_counter()
        futures = [pool.submit(noop, i) for i in range(count)]
        concurrent.futures.wait(futures)
        return (time.perf_counter() - start) / count


def thread_start_join(count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        thread = threading.Thread(target=noop)
        thread.start()
        thread.join()
    return (time.perf_counter() - start) / count


async def _nothing():
    return None


def asyncio_tasks(count: int) -> float:
    async def main():
        start = time.perf_counter()
        tasks = [asyncio.create_task(_nothing()) for _ in range(count)]
        await asyncio.gather(*tasks)
        return time.perf_counter() - start

    return asyncio.run(main()) / count


def log_records(count: int) -> float:
    logger = logging.getLogger("benchmark")
    make = logger.makeRecord
    start = time.perf_counter()
    for _ in range(count):
        make("benchmark", logging.INFO, __file__, 1, "message %s", ("x",), None)
    return (time.perf_counter() - start) / count


def added_work(count: int) -> list[tuple[str, float]]:
    """The hooks' own work per operation (seconds), in one thread, with a span current."""
    import functools

    from autotrace import carry

    def per_call(function) -> float:
        gc.collect()
        start = time.perf_counter()
        for _ in range(count):
            function()
        return (time.perf_counter() - start) / count

    with trace.get_tracer("benchmark").start_as_current_span("current"):
        ctx = carry.capture()
        bound = functools.partial(carry.run_in, ctx, noop)
        baseline = per_call(noop)
        rows = [
            ("submit: capture + bind", per_call(lambda: functools.partial(carry.run_in, carry.capture(), noop)) - baseline),
            ("worker: attach + detach around the task", per_call(bound) - baseline),
        ]
    return rows


def log_lines(count: int) -> float:
    import io

    logger = logging.getLogger("benchmark.lines")
    logger.propagate = False
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    logger.addHandler(handler)
    try:
        start = time.perf_counter()
        for _ in range(count):
            logger.warning("message %s", "x")
        return (time.perf_counter() - start) / count
    finally:
        logger.removeHandler(handler)


CASES = (
    ("submit+result", submit_and_result, 3000),
    ("submit, queued", submit_queued, 20000),
    ("queued task run", run_queued, 20000),
    ("submit throughput", submit_throughput, 20000),
    ("Thread start+join", thread_start_join, 1500),
    ("asyncio task", asyncio_tasks, 20000),
    ("log record", log_records, 50000),
    ("log line", log_lines, 20000),
)


POOL_MAP = """
import multiprocessing, sys, time
from opentelemetry import trace

tracer = trace.get_tracer("benchmark")


def item(i):
    with tracer.start_as_current_span("item"):
        return i


if __name__ == "__main__":
    items, chunksize = int(sys.argv[1]), int(sys.argv[2])
    with multiprocessing.get_context("fork").Pool(2) as pool:
        with tracer.start_as_current_span("warm-up"):
            pool.map(item, range(4), 1)  # the workers started, the SDK set up in them
        with tracer.start_as_current_span("request"):
            start = time.perf_counter()
            pool.map(item, range(items), chunksize)
            print(time.perf_counter() - start)
"""


def pool_map(rounds: int, items: int = 2000, chunksize: int = 100) -> tuple[float, float]:
    """Median seconds of the map in plain Python and under ``autotrace run`` (child processes)."""
    from clients import _serve, _Sink

    autotrace = str(Path(sys.executable).parent / "autotrace")
    sink = _serve(_Sink)
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    traced_env = dict(
        plain_env,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.server_address[1]}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="bench-pool",
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    times: dict[str, list[float]] = {"plain": [], "autotrace": []}
    try:
        with tempfile.TemporaryDirectory() as directory:
            script = Path(directory, "pool_map.py")
            script.write_text(POOL_MAP)
            for _ in range(rounds):
                for name, command, env in (
                    ("plain", [sys.executable], plain_env),
                    ("autotrace", [autotrace, "run", sys.executable], traced_env),
                ):
                    out = subprocess.run(
                        [*command, str(script), str(items), str(chunksize)],
                        env=env, capture_output=True, text=True, timeout=300, check=False,
                    )
                    if out.returncode != 0:
                        raise SystemExit(f"pool map ({name}) failed:\n{out.stderr}")
                    times[name].append(float(out.stdout.split()[-1]))
    finally:
        sink.shutdown()
    return statistics.median(times["plain"]), statistics.median(times["autotrace"])


class Hooks:
    def __init__(self) -> None:
        self.mark = len(patching.history)
        self.factory = logging.getLogRecordFactory()

    def apply(self) -> None:
        threading_hook.patch(threading)
        thread_pool_hook.patch(concurrent.futures.thread)
        logging_hook.patch(logging)

    def remove(self) -> None:
        patching.undo(self.mark)
        logging_hook.unpatch(logging)
        assert logging.getLogRecordFactory() is self.factory


def measure(function, count: int, in_span: bool) -> float:
    gc.collect()
    if not in_span:
        return function(count)
    with trace.get_tracer("benchmark").start_as_current_span("current"):
        return function(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--cpu", default="last", help="a CPU number to pin to, 'last' (default) or 'all'")
    options = parser.parse_args()
    cases = [case for case in CASES if options.only in case[0]]
    if options.only in "pool map":  # child processes, before this one is pinned
        pool_rounds = max(1, options.rounds // 3)
        pool_figures = pool_map(pool_rounds, max(1, int(2000 * options.scale)))
    pinned = _pin(options.cpu)

    trace.set_tracer_provider(TracerProvider())
    hooks = Hooks()
    # (case, in_span) -> {"plain": [...], "patched": [...]} of seconds per operation
    results: dict[tuple[str, bool], dict[str, list[float]]] = {}
    ratios: dict[tuple[str, bool], list[float]] = {}
    for round_number in range(options.rounds):
        order = ("plain", "patched") if round_number % 2 == 0 else ("patched", "plain")
        for name, function, count in cases:
            count = max(1, int(count * options.scale))
            for in_span in (False, True):
                got = {}
                for variant in order:
                    if variant == "patched":
                        hooks.apply()
                    try:
                        got[variant] = measure(function, count, in_span)
                    finally:
                        hooks.remove()
                slot = results.setdefault((name, in_span), {"plain": [], "patched": []})
                for variant, seconds in got.items():
                    slot[variant].append(seconds)
                ratios.setdefault((name, in_span), []).append(got["patched"] / got["plain"])
        print(f"round {round_number + 1}/{options.rounds} done", file=sys.stderr)

    print(f"\nPython {sys.version.split()[0]}, {options.rounds} rounds, medians, {pinned}\n")
    if cases:
        print("| case | span current | plain | patched | ratio | spread |")
        print("|---|---|---|---|---|---|")
    for name, _, _ in cases:
        for in_span in (False, True):
            slot = results[(name, in_span)]
            plain, patched = statistics.median(slot["plain"]), statistics.median(slot["patched"])
            spread = max(ratios[(name, in_span)]) - min(ratios[(name, in_span)])
            print(
                f"| {name} | {'yes' if in_span else 'no'} | {plain * 1e6:.2f} us | {patched * 1e6:.2f} us "
                f"| {statistics.median(ratios[(name, in_span)]):.3f}x | {spread:.3f} |"
            )

    if cases:
        hooks.apply()
        try:
            added = [added_work(max(1, int(200000 * options.scale))) for _ in range(options.rounds)]
        finally:
            hooks.remove()
        print("\n| hooks' own work, span current | per operation |")
        print("|---|---|")
        for index, (name, _) in enumerate(added[0]):
            print(f"| {name} | {statistics.median(rows[index][1] for rows in added) * 1e9:.0f} ns |")

    if options.only in "pool map":
        plain, traced = pool_figures
        items = max(1, int(2000 * options.scale))
        print(f"\n| pool map: Pool(2).map of {items} items, chunks of 100, a span each ({pool_rounds} rounds) | plain "
              "| autotrace run | per item added |")
        print("|---|---|---|---|")
        print(f"| map | {plain * 1e3:.1f} ms | {traced * 1e3:.1f} ms | {(traced - plain) / items * 1e6:.1f} us |")


def _pin(cpu: str) -> str:
    """Pin this process (and so its threads) to one CPU; a description for the table."""
    if cpu == "all" or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    available = sorted(os.sched_getaffinity(0))
    chosen = available[-1] if cpu == "last" else int(cpu)
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen} of {len(available)}"


if __name__ == "__main__":
    main()
