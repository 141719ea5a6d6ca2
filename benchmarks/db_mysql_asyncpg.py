"""Cost of a database call through PyMySQL, mysqlclient and asyncpg: plain Python vs under ``autotrace run``.

    python benchmarks/db_mysql_asyncpg.py [--calls 5000] [--rounds 5]

Starts MariaDB and PostgreSQL on loopback (the test fixtures' servers, tests/dbservers.py:
Debian's packages, temporary directories), then a client process makes ``--calls``
sequential ``SELECT 1`` (``cursor.execute`` + ``fetchall``; asyncpg's ``fetchval``) inside
a request span (the API's no-op span when plain) and prints the mean time per call; each
driver runs plain, under the agent, and under the agent with ``OTEL_TRACES_EXPORTER=none``
(spans made, not exported), alternating, for ``--rounds`` rounds. Under the agent every
call is a CLIENT span exported over OTLP/HTTP to a local sink that discards it. Ratios are
medians against plain in the same run.
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
import asyncio, sys, time
from opentelemetry import trace
driver, calls = sys.argv[1], int(sys.argv[2])
host, port, user, password, database = sys.argv[3:8]
port = int(port)
tracer = trace.get_tracer("bench")

def timed(call):
    for _ in range(min(500, calls)):  # warm-up: the statement cache, the SDK's set-up
        call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6

with tracer.start_as_current_span("request"):
    if driver in ("pymysql", "mysqlclient"):
        module = __import__("pymysql" if driver == "pymysql" else "MySQLdb")
        connection = module.connect(host=host, port=port, user=user, password=password, database=database)
        cursor = connection.cursor()
        def call():
            cursor.execute("SELECT 1")
            cursor.fetchall()
        print(timed(call))
    else:
        import asyncpg

        async def main():
            connection = await asyncpg.connect(host=host, port=port, user=user, password=password, database=database)
            for _ in range(min(500, calls)):
                await connection.fetchval("SELECT 1")
            start = time.perf_counter()
            for _ in range(calls):
                await connection.fetchval("SELECT 1")
            elapsed = time.perf_counter() - start
            await connection.close()
            return elapsed / calls * 1e6

        print(asyncio.run(main()))
'''

DRIVERS = ("pymysql", "mysqlclient", "asyncpg")


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


def main() -> None:
    import dbservers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--drivers", default=",".join(DRIVERS))
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
        OTEL_SERVICE_NAME="bench-db",
    )
    mariadb = dbservers._serve("mariadb", dbservers._launch_mariadb, dbservers.signal.SIGTERM)
    postgres = dbservers._serve("postgresql", dbservers._launch_postgres, dbservers.signal.SIGINT)
    servers = {"mariadb": next(mariadb), "postgresql": next(postgres)}
    try:
        with tempfile.TemporaryDirectory() as directory:
            script = Path(directory, "client.py")
            script.write_text(CLIENT)
            print(f"{args.calls} sequential SELECT 1 per run, {args.rounds} rounds; mean µs per call (median of rounds)")
            print(f"{'driver':12} {'plain':>9} {'autotrace':>10} {'ratio':>7} {'no export':>10} {'ratio':>7}")
            for driver in args.drivers.split(","):
                server = servers["postgresql" if driver == "asyncpg" else "mariadb"]
                where = [server.host, str(server.port), server.user, server.password, server.database]
                plain, traced, unexported = [], [], []
                for _ in range(args.rounds):
                    for command, environ, into in (
                        ([sys.executable, str(script)], env, plain),
                        ([autotrace, "run", sys.executable, str(script)], traced_env, traced),
                        ([autotrace, "run", sys.executable, str(script)], dict(traced_env, OTEL_TRACES_EXPORTER="none"), unexported),
                    ):
                        out = subprocess.run(
                            [*command, driver, str(args.calls), *where], env=environ, capture_output=True, text=True, timeout=600
                        )
                        if out.returncode != 0:
                            raise SystemExit(f"{driver} failed:\n{out.stderr}")
                        into.append(float(out.stdout.split()[-1]))
                p, t, u = statistics.median(plain), statistics.median(traced), statistics.median(unexported)
                print(f"{driver:12} {p:9.1f} {t:10.1f} {t / p:6.2f}x {u:10.1f} {u / p:6.2f}x", flush=True)
    finally:
        for generator in (mariadb, postgres):
            generator.close()
        sink.shutdown()


if __name__ == "__main__":
    main()
