"""What the benchmarks share: a local OTLP/HTTP sink, the environments of a plain and a
traced run, running a client script, alternating variants over rounds, medians.

Each benchmark measures plain Python and ``autotrace run`` in the same run, alternating
(a loaded machine drifts: alternating spreads the drift over both), and reports medians
of the rounds and their ratio.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # this venv's programs (autotrace, gunicorn ...)

V = TypeVar("V")
R = TypeVar("R")


class Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and discards them, as a collector would: export does its real work."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """``handler`` served on a free loopback port, in this process's daemon threads (``.shutdown()`` to stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def plain_env() -> dict[str, str]:
    """This environment without the agent's and OpenTelemetry's settings (and with bytecode written)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def exporting_env(env: Mapping[str, str], sink: ThreadingHTTPServer, service_name: str | None = None) -> dict[str, str]:
    """``env`` with spans exported over OTLP/HTTP to ``sink``."""
    out = dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.server_address[1]}", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    if service_name:
        out["OTEL_SERVICE_NAME"] = service_name
    return out


def autotrace() -> str:
    """The ``autotrace`` command of this venv."""
    return shutil.which("autotrace", path=str(BIN)) or "autotrace"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_client(command: list[str], env: Mapping[str, str], what: str, timeout: float = 600) -> list[float]:
    """Run a client script; the numbers of the last line it prints. Exits with its stderr if it fails."""
    out = subprocess.run(command, env=dict(env), capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr}")
    return [float(word) for word in out.stdout.strip().splitlines()[-1].split()]


def instructions(command: Callable[[int], list[str]], env: Mapping[str, str], what: str, low: int, high: int) -> float:
    """User-space instructions per call of a client script, as valgrind's callgrind counts
    them (every thread, and the process ``autotrace run`` execs): ``command(calls)`` run with
    ``low`` then ``high`` calls, the difference divided by ``high - low``, so start-up,
    imports and warm-up cancel out. Unlike a time, the count does not move with the load of
    the machine (it leaves out the kernel's work, which the agent does not change); string
    hashing is seeded alike in every run (``PYTHONHASHSEED=0``: a random seed moved the
    counts by about 1%).
    ``low`` must be at least the script's warm-up.

    The command first runs once outside valgrind with ``low`` calls: a run that finds a
    module's bytecode cache stale compiles and writes it, and if that were the ``low`` run
    its count would include the compilation (a negative figure after any edit)."""
    subprocess.run(command(low), env=dict(env, PYTHONHASHSEED="0"), capture_output=True, timeout=3600, check=False)
    counts = []
    for calls in (low, high):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null", *command(calls)],
            env=dict(env, PYTHONHASHSEED="0"), capture_output=True, text=True, timeout=3600,
        )
        if out.returncode != 0:
            raise SystemExit(f"{what} failed under valgrind:\n{out.stderr[-3000:]}")
        counts.append(sum(int(found) for found in re.findall(r"Collected : (\d+)", out.stderr)))
    return (counts[1] - counts[0]) / (high - low)


def unexported(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with spans made but not exported (``OTEL_TRACES_EXPORTER=none``), for
    :func:`instructions`: under valgrind the threads take turns, so the export thread's
    share (and the spans the full queue drops) would depend on valgrind's scheduling."""
    return dict(env, OTEL_TRACES_EXPORTER="none")


def alternate(rounds: int, variants: Mapping[str, V], measure: Callable[[str, V], R]) -> dict[str, list[R]]:
    """``measure(name, variant)`` for each variant in turn, ``rounds`` times: the results by variant."""
    results: dict[str, list[R]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            results[name].append(measure(name, variant))
    return results


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def add_compare(parser) -> None:
    """``--compare LABEL=VENV_BIN_DIR`` (repeatable): ``autotrace run`` of another install, in the same run."""
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=VENV_BIN_DIR",
        help="also measure `autotrace run` of the install in that venv's bin directory (an earlier checkout: a before/after figure)",
    )


def compared(parser, items: Iterable[str]) -> dict[str, Path]:
    """The ``--compare`` installs by label: each a venv's bin directory holding ``autotrace`` (and its ``python``)."""
    found: dict[str, Path] = {}
    for item in items:
        label, sep, other_bin = item.partition("=")
        if not sep or not Path(other_bin, "autotrace").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
        found[label] = Path(other_bin)
    return found
