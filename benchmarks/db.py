"""Cost of a database or cache call: plain Python vs under ``autotrace run``, inside a request span.

    python benchmarks/db.py [--calls 5000] [--rounds 7] [--forms redis.get,psycopg.select1,...] [--no-export] [--hook-alone] [--instructions] [--opcodes] [--compare LABEL=VENV_BIN_DIR ...]

One script for every database hook. A client process makes ``--calls`` sequential calls
over loopback and prints the mean time per call (wall clock, and the CPU time of the
process, all threads: on a loaded machine the wall clock swings with the scheduler, the
CPU time much less), for each form:

- ``redis.get``: a redis ``GET`` of a short value (redis-py);
- ``psycopg2.select1``, ``psycopg.select1`` (psycopg 3), ``psycopg_pool.select1`` (psycopg 3
  through a ``ConnectionPool``, ``with pool.connection()`` around each query),
  ``sqlalchemy.select1`` (a SQLAlchemy connection over psycopg 3), ``pymysql.select1``,
  ``mysqlclient.select1``: ``SELECT 1`` and its fetch; ``asyncpg.select1``: ``fetchval``;
- ``sdk.span``, the floor no hook can go below: no I/O, an SDK span with a redis span's
  six attributes started, made current and ended (what the OpenTelemetry SDK costs per
  span on this machine).

The calls run inside a SERVER span the client opens through the OpenTelemetry API, as a
web framework's request would: under the agent the SDK records it and every call is a
CLIENT span in it, exported over OTLP/HTTP to a local sink that accepts and discards it
(as a collector would); plain Python runs the same code with the API's no-op tracer.
``--no-export`` adds a third variant, the agent with ``OTEL_TRACES_EXPORTER=none`` (spans
made, not exported; for each ``--compare`` install too). Variants alternate for ``--rounds`` rounds; ratios are medians
against plain in the same run. ``--hook-alone`` adds the psycopg hook's own cost outside a
request (no span current), measured in process against a no-op cursor. ``--instructions``:
instead of timing, the client process's instructions per call as valgrind's callgrind
counts them (Debian package valgrind): load-proof, where the times above swing.
``--opcodes``: the Python bytecodes each call runs (``sys.settrace`` in the client
process, 300 calls after the warm-up): exact and quick where valgrind takes minutes a
run, but blind to C code (the drivers' own, the context variables, allocation).

The servers are started for the run from the Debian packages, as the tests start them
(tests/dbservers.py: loopback, a temporary directory, an unprivileged user when root);
``--redis-url`` / ``--postgres-url`` / ``--mariadb-url`` use running ones instead.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import harness

CLIENT = '''
import asyncio, sys, time
from urllib.parse import unquote, urlsplit
from opentelemetry import trace

form, url, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
OPCODES = len(sys.argv) > 4 and sys.argv[4] == "opcodes"
library = form.partition(".")[0]
call = None
if form == "redis.get":
    import redis
    client = redis.Redis.from_url(url)
    client.set("bench:key", "a short value")
    call = lambda: client.get("bench:key")
elif library in ("psycopg2", "psycopg"):
    module = __import__(library)
    connection = module.connect(url)
    connection.autocommit = True
    cursor = connection.cursor()
    def call():
        cursor.execute("SELECT 1")
        return cursor.fetchone()
elif library == "psycopg_pool":
    from psycopg_pool import ConnectionPool
    pool = ConnectionPool(url, min_size=1, max_size=1, kwargs={"autocommit": True})
    pool.wait()
    def call():
        with pool.connection() as connection:
            return connection.execute("SELECT 1").fetchone()
elif library == "sqlalchemy":
    from sqlalchemy import create_engine, text
    connection = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)).connect()
    select = text("SELECT 1")
    call = lambda: connection.execute(select).fetchone()
elif library in ("pymysql", "mysqlclient"):
    module = __import__("pymysql" if library == "pymysql" else "MySQLdb")
    parts = urlsplit(url)
    connection = module.connect(host=parts.hostname, port=parts.port, user=unquote(parts.username),
                                password=unquote(parts.password), database=unquote(parts.path[1:]))
    cursor = connection.cursor()
    def call():
        cursor.execute("SELECT 1")
        return cursor.fetchall()
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
elif library != "asyncpg":
    raise SystemExit(f"unknown form {form}")


counting = [0]


def count_opcodes(frame, event, arg):  # sys.settrace: every bytecode the calls run, in any frame
    frame.f_trace_opcodes = True
    if event == "opcode":
        counting[0] += 1
    return count_opcodes


def opcodes(call):  # (--opcodes) the Python bytecodes per call instead of times: deterministic
    sys.settrace(count_opcodes)
    for _ in range(calls):
        call()
    sys.settrace(None)
    return counting[0], 0.0


def timed(call):
    for _ in range(min(500, calls)):  # warm-up: connections, caches, the SDK's set-up
        call()
    if OPCODES:
        return opcodes(call)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return time.perf_counter() - start, time.process_time() - cpu


async def timed_asyncpg():
    import asyncpg
    connection = await asyncpg.connect(url)
    for _ in range(min(500, calls)):
        await connection.fetchval("SELECT 1")
    if OPCODES:
        sys.settrace(count_opcodes)
        for _ in range(calls):
            await connection.fetchval("SELECT 1")
        sys.settrace(None)
        await connection.close()
        return counting[0], 0.0
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await connection.fetchval("SELECT 1")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await connection.close()
    return elapsed, cpu


with trace.get_tracer("bench").start_as_current_span("GET /bench", kind=trace.SpanKind.SERVER):  # the request
    elapsed, cpu = asyncio.run(timed_asyncpg()) if library == "asyncpg" else timed(call)  # the task keeps the request's context
print(elapsed / calls * 1e6, cpu / calls * 1e6)
'''

# Form -> the server it needs (None: no I/O).
FORMS = {
    "redis.get": "redis",
    "psycopg2.select1": "postgresql",
    "psycopg.select1": "postgresql",
    "psycopg_pool.select1": "postgresql",
    "sqlalchemy.select1": "postgresql",
    "pymysql.select1": "mariadb",
    "mysqlclient.select1": "mariadb",
    "asyncpg.select1": "postgresql",
    "sdk.span": None,
}


def hook_alone(calls: int = 20000) -> float:
    """us the psycopg hook adds to ``execute`` outside a request (no span current): wrapper, Target, Statement, the decision."""
    import time

    from autotrace import db
    from autotrace.hooks import psycopg as hook

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated, of: " + ", ".join(FORMS))
    parser.add_argument("--no-export", action="store_true", help="also under the agent with OTEL_TRACES_EXPORTER=none")
    parser.add_argument("--hook-alone", action="store_true", help="also the psycopg hook's own cost outside a request")
    parser.add_argument("--redis-url", help="a running Redis (default: one started for the run)")
    parser.add_argument("--postgres-url", help="a running PostgreSQL (default: one started for the run)")
    parser.add_argument("--mariadb-url", help="a running MariaDB or MySQL (default: a MariaDB started for the run)")
    parser.add_argument(
        "--instructions", action="store_true",
        help="count the client process's instructions per call with valgrind (callgrind) instead of timing: 500 and 1500 calls, once each",
    )
    parser.add_argument(
        "--opcodes", action="store_true",
        help="count the Python bytecodes each call runs (sys.settrace, in the client process) instead of timing: exact and quick, the C code left out",
    )
    harness.add_compare(parser)
    args = parser.parse_args()
    forms = args.forms.split(",")
    unknown = [form for form in forms if form not in FORMS]
    if unknown:
        parser.error(f"unknown forms {unknown}: choose from {', '.join(FORMS)}")

    sink = harness.serve(harness.Sink)
    env = harness.plain_env()
    traced_env = harness.exporting_env(env, sink, "bench-db")
    autotrace = harness.autotrace()
    python = sys.executable
    variants = {"plain": ([python], env), "autotrace": ([autotrace, "run", python], traced_env)}
    if args.no_export:
        variants["no export"] = ([autotrace, "run", python], dict(traced_env, OTEL_TRACES_EXPORTER="none"))
    others = harness.compared(parser, args.compare)
    for label, other_bin in others.items():
        variants[label] = ([str(other_bin / "autotrace"), "run", str(other_bin / "python")], traced_env)
        if args.no_export:
            variants[f"{label}, no export"] = (variants[label][0], dict(traced_env, OTEL_TRACES_EXPORTER="none"))
    sys.path.insert(0, str(harness.ROOT / "tests"))
    import dbservers

    given = {"redis": args.redis_url, "postgresql": args.postgres_url, "mariadb": args.mariadb_url}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as directory:
        urls: dict[str, str] = {}
        for system in sorted({FORMS[form] for form in forms} - {None}):
            urls[system] = given[system] or stack.enter_context(dbservers.running(system)).url()
        script = Path(directory, "client.py")
        script.write_text(CLIENT)
        if args.opcodes:
            print("Python bytecodes per call (sys.settrace; spans not exported): deterministic, quick; C code not counted")
            for form in forms:
                url = urls.get(FORMS[form] or "", "-")
                counts = {
                    name: harness.run_client([*prefix, str(script), form, url, "300", "opcodes"], harness.unexported(environ), form)[0] / 1e6  # the count per call, as the script prints it
                    for name, (prefix, environ) in variants.items()
                    if "no export" not in name
                }
                plain = counts.pop("plain")
                line = "".join(f"   {name} {count:,.0f} (+{count - plain:,.0f})" for name, count in counts.items())
                print(f"{form:20} plain {plain:,.0f}{line}", flush=True)
            sink.shutdown()
            return
        if args.instructions:
            print("instructions per call of the client process, user space, spans not exported (valgrind --tool=callgrind; 1500 minus 500 calls)")
            for form in forms:
                url = urls.get(FORMS[form] or "", "-")
                counts = {
                    name: harness.instructions(lambda calls: [*prefix, str(script), form, url, str(calls)], harness.unexported(environ), form, 500, 1500)
                    for name, (prefix, environ) in variants.items()
                    if "no export" not in name
                }
                plain = counts.pop("plain")
                line = "".join(f"   {name} {count:,.0f} {count / plain:.2f}x (+{count - plain:,.0f})" for name, count in counts.items())
                print(f"{form:20} plain {plain:,.0f}{line}", flush=True)
            sink.shutdown()
            return
        print(f"{args.calls} sequential calls per run in one request span, {args.rounds} rounds; mean µs per call (median of rounds)")
        print(f"{'':20} {'wall clock':^39} | {'CPU of the process (all threads)':^39}" + (" | no export: wall, ratio; CPU, ratio" if args.no_export else ""))
        print(f"{'form':20} {'plain':>9} {'autotrace':>10} {'ratio':>7} {'added':>9} | {'plain':>9} {'autotrace':>10} {'ratio':>7} {'added':>9}")
        for form in forms:
            url = urls.get(FORMS[form] or "", "-")

            def measure(name: str, variant: tuple) -> list[float]:
                prefix, environ = variant
                return harness.run_client([*prefix, str(script), form, url, str(args.calls)], environ, form)

            results = harness.alternate(args.rounds, variants, measure)
            for name in ("autotrace", *others):
                columns = []
                for index in (0, 1):  # wall clock, CPU
                    p = harness.median(r[index] for r in results["plain"])
                    t = harness.median(r[index] for r in results[name])
                    columns.append(f"{p:9.1f} {t:10.1f} {t / p:6.2f}x {t - p:7.1f}µs")
                label = form if name == "autotrace" else f"{form} ({name})"
                line = f"{label:20} {columns[0]} | {columns[1]}"
                if args.no_export:
                    unexported = results["no export" if name == "autotrace" else f"{name}, no export"]
                    for index in (0, 1):  # wall clock, CPU
                        p = harness.median(r[index] for r in results["plain"])
                        u = harness.median(r[index] for r in unexported)
                        line += f" | {u:9.1f} {u / p:6.2f}x"
                print(line, flush=True)
    sink.shutdown()
    if args.hook_alone:
        print(f"the psycopg hook alone, outside a request: {hook_alone():.2f} µs per execute")


if __name__ == "__main__":
    main()
