"""Cost of a database or cache call: plain Python vs under ``autotrace run``, inside a request span.

    python benchmarks/db.py [--calls 5000] [--rounds 7] [--forms redis.get,psycopg.select1] [--compare LABEL=VENV_BIN_DIR ...]

A client process makes ``--calls`` sequential calls over loopback and prints the mean
time per call: a redis ``GET`` of a short value (redis-py), a ``SELECT 1`` and its
``fetchone`` through psycopg 3; and, as the floor no hook can go below, ``sdk.span``: no
I/O, an SDK span with a redis span's six attributes started, made current and ended
(what the OpenTelemetry SDK costs per span on this machine). Each form runs plain and under the agent, alternating for
``--rounds`` rounds; ratios are medians against plain in the same run.

The calls run inside a SERVER span the script opens through the OpenTelemetry API, as a
web framework's request would: under the agent the SDK records it and every call is a
CLIENT span in it, exported over OTLP/HTTP to a local sink that accepts and discards it
(as a collector would); plain Python runs the same code with the API's no-op tracer. A
form whose library has no hook yet measures what the agent does without one.

The servers are started for the run from the Debian packages, as the tests start them
(tests/dbservers.py: loopback, a temporary directory, an unprivileged user when root);
``--redis-url`` / ``--postgres-url`` use running ones instead. ``--compare`` adds
``autotrace run`` of another install (a venv holding an earlier checkout), with that venv's
Python: a before/after figure from the same run (its rows are named by the label).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLIENT = '''
import sys, time
from opentelemetry import trace

form, url, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
if form == "redis.get":
    import redis
    client = redis.Redis.from_url(url)
    client.set("bench:key", "a short value")
    call = lambda: client.get("bench:key")
elif form == "psycopg.select1":
    import psycopg
    connection = psycopg.connect(url, autocommit=True)
    cursor = connection.cursor()
    def call():
        cursor.execute("SELECT 1")
        return cursor.fetchone()
elif form == "sdk.span":  # no I/O: the floor, an SDK span with a redis span's attributes
    from opentelemetry import context
    span_tracer = trace.get_tracer("autotrace.db.redis")
    attributes = {"db.system.name": "redis", "db.namespace": "0", "server.address": "127.0.0.1",
                  "server.port": 6379, "db.operation.name": "GET", "db.query.text": "GET bench:key"}
    def call():
        span = span_tracer.start_span("GET", kind=trace.SpanKind.CLIENT, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span))
        context.detach(token)
        span.end()
else:
    raise SystemExit(f"unknown form {form}")

tracer = trace.get_tracer("bench")
with tracer.start_as_current_span("GET /bench", kind=trace.SpanKind.SERVER):  # the request
    for _ in range(min(500, calls)):  # warm-up: connections, caches, the SDK's set-up
        call()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
print(elapsed / calls * 1e6, cpu / calls * 1e6)
'''

FORMS = ("redis.get", "psycopg.select1", "sdk.span")


class _Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and discards them."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--redis-url", help="a running Redis (default: one started for the run)")
    parser.add_argument("--postgres-url", help="a running PostgreSQL (default: one started for the run)")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=VENV_BIN_DIR",
        help="also time `autotrace run` of the install in that venv's bin directory",
    )
    args = parser.parse_args()
    forms = args.forms.split(",")

    autotrace = shutil.which("autotrace", path=str(Path(sys.executable).parent)) or "autotrace"
    traced_variants = {"": [autotrace, "run", sys.executable]}
    for item in args.compare:
        label, sep, other_bin = item.partition("=")
        if not sep or not Path(other_bin, "autotrace").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
        traced_variants[f" ({label})"] = [str(Path(other_bin, "autotrace")), "run", str(Path(other_bin, "python"))]
    sink = _serve(_Sink)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    traced_env = dict(
        env,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.server_address[1]}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="bench-db",
    )
    sys.path.insert(0, str(ROOT / "tests"))
    import dbservers

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as directory:
        urls = {}
        if "redis.get" in forms:
            urls["redis.get"] = args.redis_url or stack.enter_context(dbservers.running("redis")).url()
        if "psycopg.select1" in forms:
            urls["psycopg.select1"] = args.postgres_url or stack.enter_context(dbservers.running("postgresql")).url()
        script = Path(directory, "client.py")
        script.write_text(CLIENT)
        print(f"{args.calls} sequential calls per run in one request span, {args.rounds} rounds; mean µs per call (median of rounds)")
        print(f"{'':18} {'wall clock':^39} | {'CPU of the process (all threads)':^39}")
        print(f"{'form':18} {'plain':>9} {'autotrace':>10} {'ratio':>7} {'added':>9} | {'plain':>9} {'autotrace':>10} {'ratio':>7} {'added':>9}")
        for form in forms:
            plain, plain_cpu = [], []
            traced = {name: ([], []) for name in traced_variants}
            for _ in range(args.rounds):
                runs = [([sys.executable], env, plain, plain_cpu)]
                runs += [(prefix, traced_env, *traced[name]) for name, prefix in traced_variants.items()]
                for command, environ, into, into_cpu in runs:
                    out = subprocess.run(
                        [*command, str(script), form, urls.get(form, "-"), str(args.calls)],
                        env=environ,
                        capture_output=True,
                        text=True,
                        timeout=600,
                    )
                    if out.returncode != 0:
                        raise SystemExit(f"{form} failed:\n{out.stderr}")
                    wall, cpu = out.stdout.split()[-2:]
                    into.append(float(wall))
                    into_cpu.append(float(cpu))
            for name, (wall_times, cpu_times) in traced.items():
                columns = []
                for before, after in ((plain, wall_times), (plain_cpu, cpu_times)):
                    p, t = statistics.median(before), statistics.median(after)
                    columns.append(f"{p:9.1f} {t:10.1f} {t / p:6.2f}x {t - p:7.1f}µs")
                print(f"{form + name:18} {columns[0]} | {columns[1]}", flush=True)
    sink.shutdown()


if __name__ == "__main__":
    main()
