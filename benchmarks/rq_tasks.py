"""RQ worker throughput: no-op jobs through a SimpleWorker and the forking Worker, plain vs ``autotrace run``.

    python benchmarks/rq_tasks.py [--jobs 2000] [--fork-jobs 200] [--rounds 5] [--no-export] [--compare LABEL=VENV_BIN_DIR ...]

A Redis server (Debian's ``redis-server``, started as the tests start it:
tests/dbservers.py) holds the queues, and is stopped at the end. Each round, for each
worker kind and each variant in turn (plain, then ``autotrace run`` exporting over
OTLP/HTTP to a local sink that accepts the spans):

1. a queue is filled with no-op jobs by a producer run the same way as the worker
   (under ``autotrace run`` each job carries its send's context, as in a traced deployment);
2. a burst worker (``rq worker --burst``, the ``SimpleWorker`` or the ``Worker`` that
   forks a work horse per job) runs them and exits. Throughput is the jobs divided by the
   time from the first job's start to the last job's end as rq recorded them in the jobs'
   hashes (the worker's start-up left out). CPU per job is the worker's CPU time, its work
   horses' included (``RUSAGE_CHILDREN``), less that of the same variant's worker over an
   empty queue (its start-up and exit), over the jobs.

The workers are subclasses without rq's pub/sub thread: with rq 3 and redis-py 8 a burst
worker can wait 60 s for it at its exit (agent or not), which would only add noise.
``--no-export`` adds ``autotrace run`` with ``OTEL_TRACES_EXPORTER=none``: the hooks' cost
without the export's. Medians of the rounds and the ratio traced/plain are printed
(target: >= 0.85).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import harness

JOBS_MODULE = """
from rq import SimpleWorker, Worker


def noop():
    return None


class QuietSimpleWorker(SimpleWorker):
    def subscribe(self):
        pass


class QuietWorker(Worker):
    def subscribe(self):
        pass
"""

FILL = """
import os
import sys

import redis
from rq import Queue

import benchjobs

queue = Queue(sys.argv[1], connection=redis.Redis.from_url(os.environ["REDIS_URL"]))
with open(sys.argv[3], "w") as out:
    out.write("\\n".join(queue.enqueue(benchjobs.noop).id for _ in range(int(sys.argv[2]))))
"""

WORKERS = {"simple": "benchjobs.QuietSimpleWorker", "fork": "benchjobs.QuietWorker"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(directory: Path, prefix: list[str], env: dict[str, str], kind: str, queue: str) -> float:
    """A burst worker over ``queue``: its CPU time (its work horses' too), in seconds."""
    before = children_cpu()
    command = [*prefix, str(harness.BIN / "rq"), "worker", "-w", WORKERS[kind], "--burst", "--url", env["REDIS_URL"],
               "--logging_level", "WARNING", queue]
    done = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"the {kind} worker failed:\n{done.stderr}")
    return children_cpu() - before


def one_round(directory: Path, prefix: list[str], env: dict[str, str], kind: str, jobs: int, queue: str) -> tuple[float, float]:
    """Fill a queue, run a burst worker over it: jobs per second, and CPU microseconds per job."""
    import redis
    from rq.job import Job

    ids_file = directory / f"{queue}.ids"
    fill = subprocess.run([*prefix, sys.executable, "fill.py", queue, str(jobs), str(ids_file)], cwd=directory, env=env,
                          capture_output=True, text=True, timeout=600)
    if fill.returncode != 0:
        raise SystemExit(f"filling the queue failed:\n{fill.stderr}")
    idle_cpu = run_worker(directory, prefix, env, kind, queue + "-empty")
    cpu = run_worker(directory, prefix, env, kind, queue)
    connection = redis.Redis.from_url(env["REDIS_URL"])
    try:
        found = Job.fetch_many(ids_file.read_text().split(), connection=connection)
        if any(job is None or job.ended_at is None for job in found):
            raise SystemExit(f"the {kind} worker left jobs undone")
        first = min(job.started_at for job in found)
        last = max(job.ended_at for job in found)
        connection.flushdb()
    finally:
        connection.close()
    return jobs / (last - first).total_seconds(), (cpu - idle_cpu) * 1e6 / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per SimpleWorker round")
    parser.add_argument("--fork-jobs", type=int, default=200, help="jobs per forking Worker round (0: none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-export", action="store_true", help="also autotrace run with OTEL_TRACES_EXPORTER=none")
    harness.add_compare(parser)
    args = parser.parse_args()
    others = harness.compared(parser, args.compare)

    directory = Path(tempfile.mkdtemp(prefix="autotrace-bench-rq-"))
    (directory / "benchjobs.py").write_text(textwrap.dedent(JOBS_MODULE))
    (directory / "fill.py").write_text(textwrap.dedent(FILL))
    sys.path.insert(0, str(harness.ROOT / "tests"))
    import dbservers

    stack = contextlib.ExitStack()
    server = stack.enter_context(dbservers.running("redis"))
    sink = harness.serve(harness.Sink)
    kinds = {"simple": args.jobs, **({"fork": args.fork_jobs} if args.fork_jobs else {})}
    try:
        plain = dict(harness.plain_env(), REDIS_URL=server.url())
        plain["PATH"] = f"{harness.BIN}{os.pathsep}{plain.get('PATH', '')}"
        traced = harness.exporting_env(plain, sink, "bench-rq")
        variants: dict[str, tuple[list[str], dict[str, str]]] = {
            "plain": ([], plain),
            "autotrace run": ([harness.autotrace(), "run"], traced),
        }
        if args.no_export:
            variants["autotrace run, no export"] = ([harness.autotrace(), "run"], dict(traced, OTEL_TRACES_EXPORTER="none"))
        for label, other_bin in others.items():
            variants[f"autotrace run ({label})"] = ([str(other_bin / "autotrace"), "run"], traced)
        counter = iter(range(1_000_000))
        results = {}
        for kind, jobs in kinds.items():

            def measure(name: str, variant: tuple[list[str], dict[str, str]], kind=kind, jobs=jobs) -> tuple[float, float]:
                prefix, env = variant
                return one_round(directory, prefix, env, kind, jobs, f"bench-{next(counter)}")

            results[kind] = harness.alternate(args.rounds, variants, measure)
    finally:
        sink.shutdown()
        stack.close()
        shutil.rmtree(directory, ignore_errors=True)
    for kind, by_variant in results.items():
        worker = {"simple": "SimpleWorker", "fork": "Worker (a forked work horse per job)"}[kind]
        print(f"{kinds[kind]} no-op RQ jobs through a burst {worker}; median of {args.rounds} rounds, {os.cpu_count()} cores")
        print(f"  {'':28s} {'throughput':>18s}   {'worker CPU per job':>24s}")
        base = harness.median(rate for rate, _ in by_variant["plain"])
        base_cpu = harness.median(cpu for _, cpu in by_variant["plain"])
        for name, values in by_variant.items():
            rate = harness.median(r for r, _ in values)
            cpu = harness.median(c for _, c in values)
            rounds = " ".join(f"{r:.0f}" for r, _ in values)
            print(f"  {name:28s} {rate:7.0f} jobs/s {rate / base:5.2f}x   {cpu:7.0f} us {base_cpu / cpu:5.2f}x (plain/this)   (rounds, jobs/s: {rounds})")


if __name__ == "__main__":
    main()
