"""Celery worker throughput: 2,000 no-op tasks through a solo worker, plain vs ``autotrace run``.

    python benchmarks/tasks.py [--tasks 2000] [--rounds 5] [--compare LABEL=VENV_BIN_DIR ...]
    python benchmarks/tasks.py --hook-alone [--instructions]
    python benchmarks/tasks.py --instructions [--compare LABEL=VENV_BIN_DIR ...]

A Redis server (Debian's ``redis-server``, started as the tests start it:
tests/dbservers.py) serves as the broker, and is stopped at the end. Each round, for each variant in turn (plain,
then ``autotrace run`` exporting over OTLP/HTTP to a local sink that accepts the spans):

1. the queue is filled with ``--tasks`` no-op task messages by a producer run the same way
   as the worker (under ``autotrace run`` its messages carry the trace context, as in a
   traced deployment);
2. a solo worker (``celery -A benchtasks worker -P solo``) is started and runs them; the
   task module notes the time at the end of the first tenth of the tasks (the warm-up: the
   worker's first tasks, and under the agent the SDK's set-up at the first span, paid once
   per process, are not timed) and at the last task's end, and writes the throughput
   (tasks per second of the worker's steady work)
   and the worker's CPU time per task over the same stretch (every thread: the export's
   too, but for the last batch, exported after). On a loaded machine the throughput
   varies from round to round; the CPU time much less;
3. the worker is stopped (SIGTERM: a warm shutdown).

Medians of the rounds and the ratio traced/plain are printed (target: >= 0.85).

``--hook-alone`` measures, in this process and without a broker, what the consumer hook
adds to each task run: Celery's own task tracer run 20,000 times without and with the
hook (the span exported over OTLP/HTTP to a local sink), best of 7 alternating rounds, wall
clock and the process's CPU. It moves much less than the worker's throughput on a loaded
machine.

``--instructions`` counts instead of timing (valgrind's callgrind, user space, every
thread; :func:`harness.instructions`: a run of ``high`` tasks minus a run of ``low``,
divided by the difference, so start-up and warm-up cancel out), which the machine's load
does not move. With ``--hook-alone``: Celery's task tracer in a process of its own, plain
``python`` against ``autotrace run python`` (the hook as the agent installs it, the
agent's own span queue): 200 and 1,200 runs. Without: the solo worker itself over the
Redis broker, 100 and 600 tasks. Under the agent the spans are encoded into the queue
and not exported (a schedule delay of an hour and a queue larger than the run; the
process ends with ``os._exit`` after the last task): under valgrind the threads take
turns, so the export thread's share would depend on valgrind's scheduling.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Tuple

import harness

TASKS_MODULE = """
import os
import time

from celery import Celery

app = Celery("benchtasks", broker=os.environ["BROKER_URL"])
app.conf.task_default_queue = os.environ["QUEUE"]
app.conf.broker_connection_retry_on_startup = True
app.conf.task_ignore_result = True
app.conf.worker_hijack_root_logger = False
TOTAL = int(os.environ["BENCH_TASKS"])
WARM_UP = TOTAL // 10  # not timed: the worker's first tasks (and the agent's SDK set-up at the first span)
_seen = [0, 0.0, 0.0]


@app.task
def noop(n):
    seen = _seen
    seen[0] += 1
    if seen[0] == WARM_UP:
        seen[1] = time.perf_counter()
        seen[2] = time.process_time()
    elif seen[0] == TOTAL:
        if os.environ.get("BENCH_EXIT"):  # counted by valgrind: the worker ends here (see --instructions)
            os._exit(0)
        wall, cpu = time.perf_counter() - seen[1], time.process_time() - seen[2]
        with open(os.environ["BENCH_OUT"], "w") as out:
            out.write(f"{(TOTAL - WARM_UP) / wall} {cpu * 1e6 / (TOTAL - WARM_UP)}")
"""

FILL = """
import os

import benchtasks

for n in range(int(os.environ["BENCH_TASKS"])):
    benchtasks.noop.delay(n)
"""

# Celery's task tracer run argv[1] times for a no-op task whose request carries a
# ``traceparent`` (a message of a traced producer), then os._exit: what --hook-alone
# --instructions counts, run plain and under ``autotrace run``.
TRACER_RUNS = """
import os
import sys
import time

from celery import Celery
from celery.app import trace

app = Celery("bench", broker="memory://")
app.conf.task_ignore_result = True


@app.task(name="bench.noop", shared=False)
def noop(n):
    return None


run = trace.build_tracer("bench.noop", noop, app=app, hostname="bench@host")
request = {
    "id": "5d4d5d1c-4b0c-4d0e-9d38-000000000000", "task": "bench.noop", "retries": 0, "root_id": None, "parent_id": None,
    "delivery_info": {"exchange": "", "routing_key": "celery", "priority": 0, "redelivered": False},
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "autotrace-sent-at": "%.3f" % (time.time() * 1000),
}
for n in range(int(sys.argv[1])):
    run(request["id"], (n,), {}, request)
sys.stdout.flush()
os._exit(0)
"""

# Under the agent, for counting: spans encoded into the queue, none exported while the run lasts.
QUEUED_ONLY = {"OTEL_BSP_SCHEDULE_DELAY": "3600000", "OTEL_BSP_MAX_QUEUE_SIZE": "100000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100000"}


Variant = Tuple[List[str], Dict[str, str], Path]  # command prefix, environment, the venv's bin directory


def fill(directory: Path, variant: Variant, tasks: int, queue: str, out: Path) -> dict[str, str]:
    """Put ``tasks`` no-op task messages on ``queue``, sent the variant's way; the worker's environment."""
    prefix, env, bin_dir = variant
    env = dict(env, QUEUE=queue, BENCH_TASKS=str(tasks), BENCH_OUT=str(out))
    command = [*prefix, str(bin_dir / "python"), "fill.py"]
    done = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"filling the queue failed:\n{done.stderr}")
    return env


def worker_command(variant: Variant) -> list[str]:
    prefix, _, bin_dir = variant
    celery = str(bin_dir / "celery")
    return [*prefix, celery, "-A", "benchtasks", "worker", "-P", "solo", "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]


def one_round(directory: Path, variant: Variant, tasks: int, queue: str) -> tuple[float, float]:
    """Fill the queue, run a solo worker over it; the worker's tasks per second, and its
    CPU time per task (microseconds, every thread of the worker: the export's too)."""
    out = directory / f"{queue}.out"
    env = fill(directory, variant, tasks, queue, out)
    worker = subprocess.Popen(worker_command(variant), cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not out.exists() or not out.read_text():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not run the {tasks} tasks:\n{worker.stderr.read() if worker.poll() is not None else ''}")
            time.sleep(0.05)
        rate, cpu = out.read_text().split()
        return float(rate), float(cpu)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)


def worker_instructions(directory: Path, variant: Variant, name: str, low: int = 100, high: int = 600) -> float:
    """The solo worker's instructions per task, as :func:`harness.instructions` counts a
    client's (``high`` tasks minus ``low``), the queue filled before each count; the
    worker ends itself after its last task (``BENCH_EXIT``)."""
    counts = []
    for tasks in (low, high):
        queue = f"count-{name}-{tasks}".replace(" ", "-").replace("(", "").replace(")", "")
        env = fill(directory, variant, tasks, queue, directory / f"{queue}.out")
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null", *worker_command(variant)],
            cwd=directory, env=dict(env, BENCH_EXIT="1", PYTHONHASHSEED="0"), capture_output=True, text=True, timeout=3600,
        )
        if out.returncode != 0:
            raise SystemExit(f"{name}: the worker failed under valgrind:\n{out.stderr[-3000:]}")
        counts.append(sum(int(found) for found in re.findall(r"Collected : (\d+)", out.stderr)))
    return (counts[1] - counts[0]) / (high - low)


def tracer_instructions(directory: Path, variant: Variant, name: str, low: int = 200, high: int = 1200) -> float:
    """Instructions per run of Celery's task tracer (:data:`TRACER_RUNS`), the variant's way."""
    prefix, env, bin_dir = variant
    script = directory / "tracer_runs.py"
    return harness.instructions(lambda runs: [*prefix, str(bin_dir / "python"), str(script), str(runs)], env, name, low, high)


def hook_alone(calls: int = 20000, rounds: int = 7) -> tuple[float, float, float, float]:
    """The consumer hook's own cost per task run, in this process: Celery's task tracer
    (``build_tracer``, what every pool runs) for a no-op task given a request that carries
    a ``traceparent``, as Celery makes it and as the hook wraps it, each span ended into the
    agent's OTLP/HTTP exporter (batch processor, a local sink). Rounds alternate; the best
    of each. Returns (plain us, hooked us) wall clock and (plain, hooked) process CPU us
    (every thread: the batch export's too)."""
    from celery import Celery, signals
    from celery.app import trace as celery_trace
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from autotrace import config, exporters
    from autotrace.hooks import celery as hook

    sink = harness.serve(harness.Sink)
    settings = config.read({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}"})
    provider = TracerProvider()
    handle = exporters.ExporterHandle("otlp", exporters.factories(settings)["otlp"], settings=settings)
    # A queue for a whole round: runs here outpace the export (no broker in between), and a
    # dropped span costs a log record, not an export.
    provider.add_span_processor(BatchSpanProcessor(handle, max_queue_size=calls + 1))
    trace.set_tracer_provider(provider)
    app = Celery("bench", broker="memory://")
    app.conf.task_ignore_result = True

    @app.task(name="bench.noop", shared=False)
    def noop(n):
        return None

    run = celery_trace.build_tracer("bench.noop", noop, app=app, hostname="bench@host")
    request = {
        "id": "5d4d5d1c-4b0c-4d0e-9d38-000000000000", "task": "bench.noop", "retries": 0, "root_id": None, "parent_id": None,
        "delivery_info": {"exchange": "", "routing_key": "celery", "priority": 0, "redelivered": False},
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "autotrace-sent-at": "%.3f" % (time.time() * 1000),
    }

    def measure() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for n in range(calls):
            run(request["id"], (n,), {}, request)
        provider.force_flush()
        return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6

    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    plain_run = run
    hook.patch_worker(celery_trace)
    hooked_run = celery_trace.build_tracer("bench.noop", noop, app=app, hostname="bench@host")
    signals.worker_before_create_process.disconnect(dispatch_uid=hook._DISPATCH_UID)
    for _ in range(rounds):
        for hooked in (False, True):
            run = hooked_run if hooked else plain_run
            results[hooked].append(measure())
    sink.shutdown()
    plain, traced = results[False], results[True]
    return min(w for w, _ in plain), min(w for w, _ in traced), min(c for _, c in plain), min(c for _, c in traced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hook-alone", action="store_true", help="only the consumer hook's cost per task run, in this process (no broker)")
    parser.add_argument(
        "--instructions", action="store_true",
        help="count instructions per task with valgrind (callgrind) instead of timing: the worker's (100 and 600 tasks), "
        "or with --hook-alone the task tracer's (200 and 1,200 runs)",
    )
    harness.add_compare(parser)
    args = parser.parse_args()
    others = harness.compared(parser, args.compare)
    if args.hook_alone and not args.instructions:
        plain_wall, traced_wall, plain_cpu, traced_cpu = hook_alone()
        print("Celery's task tracer, a no-op task, per run (best of 7 rounds of 20,000); the hook's spans exported over OTLP/HTTP")
        print(f"  wall: {plain_wall:6.1f} -> {traced_wall:6.1f} us (+{traced_wall - plain_wall:.1f})   "
              f"CPU: {plain_cpu:6.1f} -> {traced_cpu:6.1f} us (+{traced_cpu - plain_cpu:.1f})")
        return

    directory = Path(tempfile.mkdtemp(prefix="autotrace-bench-tasks-"))
    (directory / "benchtasks.py").write_text(textwrap.dedent(TASKS_MODULE))
    (directory / "fill.py").write_text(textwrap.dedent(FILL))
    (directory / "tracer_runs.py").write_text(textwrap.dedent(TRACER_RUNS))
    sys.path.insert(0, str(harness.ROOT / "tests"))
    import dbservers

    stack = contextlib.ExitStack()
    sink = harness.serve(harness.Sink)
    try:
        # No broker for the tracer alone (--hook-alone --instructions).
        broker = "memory://" if args.hook_alone else stack.enter_context(dbservers.running("redis")).url()
        plain = dict(harness.plain_env(), BROKER_URL=broker)
        plain["PATH"] = f"{harness.BIN}{os.pathsep}{plain.get('PATH', '')}"
        traced = harness.exporting_env(plain, sink, "bench-tasks")
        if args.instructions:
            traced.update(QUEUED_ONLY)
        variants: dict[str, Variant] = {
            "plain": ([], plain, harness.BIN),
            "autotrace run": ([harness.autotrace(), "run"], traced, harness.BIN),
        }
        for label, other_bin in others.items():
            # That venv's own python and celery, so its agent (not this one) is the one imported.
            variants[f"autotrace run ({label})"] = ([str(other_bin / "autotrace"), "run"], traced, other_bin)
        if args.instructions:
            count = tracer_instructions if args.hook_alone else worker_instructions
            counted = {name: count(directory, variant, name) for name, variant in variants.items()}
        else:
            counter = iter(range(1_000_000))

            def measure(name: str, variant: Variant) -> tuple[float, float]:
                return one_round(directory, variant, args.tasks, f"bench-{next(counter)}")

            results = harness.alternate(args.rounds, variants, measure)
    finally:
        sink.shutdown()
        stack.close()
        shutil.rmtree(directory, ignore_errors=True)
    if args.instructions:
        what = "Celery's task tracer, a no-op task, per run (1,200 minus 200 runs)" if args.hook_alone else "solo worker, Redis broker, per no-op task (600 minus 100 tasks)"
        print(f"{what}: user-space instructions (valgrind --tool=callgrind), spans encoded and queued, not exported")
        base = counted["plain"]
        for name, value in counted.items():
            print(f"  {name:28s} {value:10,.0f}   +{value - base:9,.0f} over plain   {value / base:5.2f}x")
        return
    base = harness.median(rate for rate, _ in results["plain"])
    base_cpu = harness.median(cpu for _, cpu in results["plain"])
    print(f"{args.tasks} no-op Celery tasks through a solo worker (Redis broker); median of {args.rounds} rounds, {os.cpu_count()} cores")
    print(f"  {'':28s} {'throughput':>18s}   {'worker CPU per task':>24s}")
    for name, values in results.items():
        rate = harness.median(r for r, _ in values)
        cpu = harness.median(c for _, c in values)
        rounds = " ".join(f"{r:.0f}" for r, _ in values)
        print(f"  {name:28s} {rate:7.0f} tasks/s {rate / base:5.2f}x   {cpu:7.0f} us {base_cpu / cpu:5.2f}x (plain/this)   (rounds, tasks/s: {rounds})")


if __name__ == "__main__":
    main()
