"""Exit time of a short script that records one span while no collector listens.

    python benchmarks/exit.py [--runs 10] [--compare LABEL=VENV_BIN_DIR ...]

The script (``python -c``, one span) runs plain, then under ``autotrace run`` with the
endpoint on a loopback port where nothing listens (connection refused), for OTLP/HTTP and
OTLP/gRPC, and with an unknown host (``.invalid``: the resolver fails at once); and, for
reference, with a local OTLP/HTTP sink that accepts the span (what remains is the SDK's
set-up and one export, not the failure). Variants alternate in the same session; the
medians and their difference to the plain run are printed. ``--compare`` adds ``autotrace run`` from another install (a venv holding an
earlier checkout, for a before/after figure measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness

SCRIPT = 'from opentelemetry import trace; trace.get_tracer("bench").start_span("one").end()'


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=VENV_BIN_DIR")
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["OTEL_SERVICE_NAME"] = "bench"
    port = closed_port()
    sink = harness.serve(harness.Sink)
    targets = {
        "http, refused": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"},
        "grpc, refused": {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"},
        "http, unknown host": {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.invalid:4318"},
        "http, a sink accepts": {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
        },
    }
    installs = {"this": bin_dir}
    for item in args.compare:
        label, sep, other = item.partition("=")
        if not sep or not Path(other, "autotrace").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
        installs[label] = Path(other)
    variants: dict[str, tuple[list[str], dict[str, str]]] = {"plain": ([sys.executable, "-c", SCRIPT], env)}
    for label, directory in installs.items():
        for target, extra in targets.items():
            path = {"PATH": f"{directory}{os.pathsep}{env['PATH']}"}
            command = [str(directory / "autotrace"), "run", "python", "-c", SCRIPT]
            variants[f"autotrace run ({label}), {target}"] = (command, {**env, **extra, **path})
    times: dict[str, list[float]] = {name: [] for name in variants}
    for command, variant_env in variants.values():  # warm caches, check each runs
        subprocess.run(command, env=variant_env, check=True, capture_output=True, timeout=120)
    for _ in range(args.runs):
        for name, (command, variant_env) in variants.items():
            start = time.perf_counter()
            subprocess.run(command, env=variant_env, check=True, capture_output=True, timeout=120)
            times[name].append(time.perf_counter() - start)
    sink.shutdown()
    base = statistics.median(times["plain"])
    print(f"exit of `python -c` with one span, no collector; median of {args.runs} runs, {os.cpu_count()} cores")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:44s} {median * 1000:7.0f} ms  {(median - base) * 1000:+7.0f} ms")


if __name__ == "__main__":
    main()
