"""Cost of a PostgreSQL call through psycopg2 and psycopg 3: plain Python vs under ``autotrace run``.

    python benchmarks/db_psycopg.py [--calls 3000] [--rounds 3]

Starts PostgreSQL on loopback as the tests do (tests/dbservers.py), then a client process
runs ``--calls`` sequential ``SELECT 1`` (``cursor.execute`` + ``fetchone``) inside a
request span (the API's no-op span when plain) and prints the mean time per call (wall
clock, and the client's CPU time: on a loaded machine the wall clock swings with the
scheduler, the CPU time much less), for:
psycopg2, psycopg 3, and psycopg 3 through a ``psycopg_pool.ConnectionPool``
(``with pool.connection()`` around each query, autocommit). Each runs plain, under the
agent (spans exported over OTLP/HTTP to a local sink that discards them) and under the
agent with ``OTEL_TRACES_EXPORTER=none``, alternating for ``--rounds`` rounds. Ratios
are medians against plain in the same run. A last line gives the hooks' own cost
outside a request (no span current), measured in process against a no-op cursor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CLIENT = '''
import sys, time
from opentelemetry import trace
form, calls, dsn = sys.argv[1], int(sys.argv[2]), sys.argv[3]

if form == "psycopg2":
    import psycopg2
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    def call():
        cur.execute("SELECT 1")
        cur.fetchone()
elif form == "psycopg":
    import psycopg
    cur = psycopg.connect(dsn, autocommit=True).cursor()
    def call():
        cur.execute("SELECT 1")
        cur.fetchone()
else:
    from psycopg_pool import ConnectionPool
    pool = ConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True})
    pool.wait()
    def call():
        with pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()

with trace.get_tracer("bench").start_as_current_span("request"):
    for _ in range(min(500, calls)):  # warm-up: caches, the SDK's set-up
        call()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    print((time.perf_counter() - start) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6)
'''

FORMS = ("psycopg2", "psycopg", "psycopg_pool")


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def hooks_alone(calls: int = 20000) -> float:
    """us the psycopg hook adds to ``execute`` outside a request (no span current): wrapper, Target, Statement, the decision."""
    import time

    from autotrace import db
    from autotrace.hooks import psycopg as hook

    hook.patch  # noqa: B018 - imported: the module's functions are what is measured

    class Connection:
        pass

    class Cursor:
        __slots__ = ("_conn",)

        def execute(self, query, params=None):
            return self

    conn = Connection()
    conn.__dict__[hook.TARGET] = db.Target("postgresql", "db", "127.0.0.1", 5432, "127.0.0.1")
    cursor = Cursor()
    cursor._conn = conn
    traced = hook._wrap_execute(Cursor.execute)
    db.start("psycopg", db.Target("postgresql"))  # loads the API
    best = []
    for function in (Cursor.execute, traced):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                function(cursor, "SELECT 1")
            times.append((time.perf_counter() - start) / calls * 1e6)
        best.append(min(times))
    return best[1] - best[0]


def main() -> None:
    import dbservers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forms", default=",".join(FORMS))
    args = parser.parse_args()

    autotrace = shutil.which("autotrace", path=str(Path(sys.executable).parent)) or "autotrace"
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    sink.daemon_threads = True
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    traced_env = dict(
        env,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.server_address[1]}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="bench-psycopg",
    )
    postgres = dbservers._serve("postgresql", dbservers._launch_postgres, dbservers.signal.SIGINT)
    server = next(postgres)
    dsn = f"host={server.host} port={server.port} dbname={server.database} user={server.user} password={server.password}"
    try:
        with tempfile.TemporaryDirectory() as directory:
            script = Path(directory, "client.py")
            script.write_text(CLIENT)
            print(f"{args.calls} sequential SELECT 1 per run, {args.rounds} rounds; mean us per call (median of rounds)")
            print(f"{'form':13} {'plain':>9} {'autotrace':>10} {'ratio':>7} {'no export':>10} {'ratio':>7}   client CPU: plain, autotrace")
            for form in args.forms.split(","):
                plain, traced, unexported = [], [], []
                cpu: dict[int, list[float]] = {id(plain): [], id(traced): [], id(unexported): []}
                for _ in range(args.rounds):
                    for command, environ, into in (
                        ([sys.executable, str(script)], env, plain),
                        ([autotrace, "run", sys.executable, str(script)], traced_env, traced),
                        ([autotrace, "run", sys.executable, str(script)], dict(traced_env, OTEL_TRACES_EXPORTER="none"), unexported),
                    ):
                        out = subprocess.run([*command, form, str(args.calls), dsn], env=environ, capture_output=True, text=True, timeout=600)
                        if out.returncode != 0:
                            raise SystemExit(f"{form} failed:\n{out.stderr}")
                        wall, used = out.stdout.split()[-2:]
                        into.append(float(wall))
                        cpu[id(into)].append(float(used))
                p, t, u = statistics.median(plain), statistics.median(traced), statistics.median(unexported)
                pc, tc = statistics.median(cpu[id(plain)]), statistics.median(cpu[id(traced)])
                print(f"{form:13} {p:9.1f} {t:10.1f} {t / p:6.2f}x {u:10.1f} {u / p:6.2f}x   {pc:.1f}, {tc:.1f} ({tc / pc:.2f}x)", flush=True)
    finally:
        postgres.close()
        sink.shutdown()
    print(f"the psycopg hook alone, outside a request: {hooks_alone():.2f} us per execute")


if __name__ == "__main__":
    main()
