"""Forks while the export thread exports over OTLP/gRPC (issue 18): lost child spans and fork times.

    python benchmarks/fork_grpc.py [--runs 10] [--forks 16] [--slow SECONDS] [--protocol grpc]
                                   [--compare LABEL=VENV_BIN_DIR ...]

A script under ``autotrace run`` forks ``--forks`` times while a thread makes spans (two
every 2 ms, exported every 100 ms); each child makes one span and exits normally. The
test receiver (integration/otlp_receiver.py) takes the exports, answering each one
``--slow`` seconds late if given (a slow collector: most forks then happen during an
export). Per install, over ``--runs`` runs (installs alternate): the runs where a span
was lost, the child spans lost, children that waited for their flush bound ("not
flushed"), grpc's "skipping fork() handlers" lines, spans received twice, and the time
``os.fork()`` took in the parent (median and max over all forks).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from otlp_receiver import Fault, OTLPReceiver  # noqa: E402

APP = """
import os, sys, threading, time
from opentelemetry import trace

tracer = trace.get_tracer("fork-bench")
stop = threading.Event()
made = []


def background():
    while not stop.is_set():
        with tracer.start_as_current_span("bg-%d" % len(made)):
            with tracer.start_as_current_span("bg-child-%d" % len(made)):
                pass
        made.append(1)
        time.sleep(0.002)


thread = threading.Thread(target=background)
thread.start()
took = []
for k in range(FORKS):
    time.sleep(0.05)
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        with tracer.start_as_current_span("forked-%d" % k):
            pass
        sys.exit(0)
    took.append(time.perf_counter() - started)
    deadline = time.monotonic() + 60
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("child %d hung" % k, flush=True)
            break
        time.sleep(0.005)
stop.set()
thread.join(30)
print("made %d" % len(made), flush=True)
print("fork_s " + " ".join("%.6f" % t for t in took), flush=True)
"""

SKIPPED = "skipping fork() handlers"


def run_once(bin_dir: Path, protocol: str, forks: int, slow: float, workdir: Path) -> dict:
    fault = Fault("slow", seconds=slow) if slow else Fault()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(OTEL_SERVICE_NAME="fork-bench", AUTOTRACE_SHUTDOWN_TIMEOUT="2000")
    script = workdir / "app.py"
    script.write_text(APP.replace("FORKS", str(forks)))
    with OTLPReceiver(fault=fault) as receiver:
        env.update(receiver.env(protocol))
        done = subprocess.run([str(bin_dir / "autotrace"), "run", "python", script.name], cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=300)
        made = int(done.stdout.split("made ")[1].split()[0])
        wanted = {f"forked-{k}" for k in range(forks)} | {f"bg-{i}" for i in range(made)} | {
            f"bg-child-{i}" for i in range(made)}
        try:
            receiver.wait_for_spans(len(wanted), timeout=10 + 2 * slow, predicate=lambda s: s.name in wanted)
        except AssertionError:
            pass
        spans = receiver.spans()
    names = [s.name for s in spans]
    lost = wanted - set(names)
    return {
        "lost": len(lost),
        "lost_children": sum(1 for name in lost if name.startswith("forked-")),
        "stuck": done.stderr.count("not flushed"),
        "skipped": done.stderr.count(SKIPPED),
        "twice": len(names) - len(set(names)),
        "fork_s": [float(t) for t in done.stdout.split("fork_s ")[1].split()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--forks", type=int, default=16)
    parser.add_argument("--slow", type=float, default=0.0, help="the collector answers each export this late")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=VENV_BIN_DIR")
    args = parser.parse_args()
    installs = {"this": Path(sys.executable).parent}
    for item in args.compare:
        label, _, directory = item.partition("=")
        if not directory or not (Path(directory) / "autotrace").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
        installs[label] = Path(directory)
    results: dict[str, list[dict]] = {label: [] for label in installs}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for label, bin_dir in installs.items():
                results[label].append(run_once(bin_dir, args.protocol, args.forks, args.slow, Path(tmp)))
    print(f"{args.runs} runs of {args.forks} forks over {args.protocol}"
          + (f", the collector answering {args.slow:g} s late" if args.slow else ""))
    for label, runs in results.items():
        forks = [t for run in runs for t in run["fork_s"]]
        print(f"  {label:>8}: runs losing a span {sum(1 for r in runs if r['lost'])}/{len(runs)}, "
              f"child spans lost {sum(r['lost_children'] for r in runs)}/{len(runs) * args.forks}, "
              f"other spans lost {sum(r['lost'] - r['lost_children'] for r in runs)}, "
              f"stuck children {sum(r['stuck'] for r in runs)}, '{SKIPPED}' {sum(r['skipped'] for r in runs)}, "
              f"spans received twice {sum(r['twice'] for r in runs)}; "
              f"os.fork() median {statistics.median(forks) * 1000:.1f} ms, max {max(forks) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
