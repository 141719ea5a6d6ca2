"""psycopg2 and psycopg 3 under ``autotrace run``: one CLIENT span per query a request runs, under its SERVER span.

A stdlib http.server service (no tracing code) talks to the real PostgreSQL fixture. At
start-up, outside any request, it opens a psycopg2 connection, a psycopg one (both in
autocommit mode) and a ``psycopg_pool.ConnectionPool``: none of that is a span. Each
``GET /<case>`` runs the queries of one case and answers with what it got (rows, or the
error's class, code and message). The same service runs plain beside it: the replies
must be the same. At a real OTLP receiver, per request (each with a trace of its own):
exactly the spans expected, each a child of the request's SERVER span, with the
sanitized text (literals replaced, placeholders kept); a failing query's span has
``error.type`` and ``db.response.status_code`` while the app got PostgreSQL's own error.
"""

from __future__ import annotations

import json
import secrets
import urllib.request

import pytest

from agent import AUTOTRACE, PYTHON, SERVE_ON_ARGV_PORT, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

import psycopg
import psycopg2  # noqa: F401 - a test dependency: missing, the tests fail
import psycopg_pool  # noqa: F401 - a test dependency: missing, the tests fail

SERVER, CLIENT = 2, 3  # proto SpanKind
ERROR = 2  # proto status code

SERVICE = (
    """
import asyncio
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import psycopg2
import psycopg2.extras
from psycopg_pool import ConnectionPool

DSN = os.environ["PG_DSN"]
TABLE = os.environ["PG_TABLE"]

OLD = psycopg2.connect(DSN)
OLD.autocommit = True
NEW = psycopg.connect(DSN, autocommit=True)
POOL = ConnectionPool(DSN, min_size=1, max_size=2, open=True)
POOL.wait(timeout=20)


def with_psycopg2():
    conn = psycopg2.connect(DSN)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(f"SELECT name FROM {TABLE} WHERE id = %s AND name <> 'secret'", (1,))
            rows = [row["name"] for row in cur.fetchall()]
            psycopg2.extras.execute_values(cur, f"INSERT INTO {TABLE} (id, name) VALUES %s ON CONFLICT DO NOTHING", [(100, "a"), (101, "b")])
        conn.commit()
    finally:
        conn.close()
    return rows


def with_psycopg():
    with psycopg.connect(DSN, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT name FROM {TABLE} WHERE id = %s AND name <> 'secret'", (2,))
            return [row[0] for row in cur.fetchall()]


def with_pool():
    with POOL.connection() as conn:
        return [row[0] for row in conn.execute(f"SELECT name FROM {TABLE} WHERE id = 1 OR id = %s", (2,)).fetchall()]


def with_async():
    async def run():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
            cur = await conn.execute(f"SELECT name FROM {TABLE} WHERE id = %s", (1,))
            return [row[0] for row in await cur.fetchall()]

    return asyncio.run(run())


def bad_psycopg2():
    OLD.cursor().execute("SELECT * FROM nowhere_at_all WHERE id = 42")


def bad_psycopg():
    NEW.execute("SELECT * FROM nowhere_at_all WHERE id = 42")


CASES = {
    "psycopg2": with_psycopg2,
    "psycopg": with_psycopg,
    "pool": with_pool,
    "async": with_async,
    "bad_psycopg2": bad_psycopg2,
    "bad_psycopg": bad_psycopg,
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        case = self.path.strip("/")
        if case not in CASES:
            status, reply = 404, {}
        else:
            try:
                status, reply = 200, {"rows": CASES[case]()}
            except Exception as exc:
                code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
                status, reply = 500, {"error": f"{type(exc).__module__}.{type(exc).__name__}", "code": code, "message": str(exc)}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

"""
    + SERVE_ON_ARGV_PORT
)

# The spans each case makes, in the order they end: (name, scope's library).
EXPECTED = {
    "psycopg2": [("connect", "psycopg2"), ("SELECT {t}", "psycopg2"), ("INSERT {t}", "psycopg2"), ("COMMIT", "psycopg2")],
    "psycopg": [("connect", "psycopg"), ("SELECT {t}", "psycopg")],
    "pool": [("SELECT {t}", "psycopg"), ("COMMIT", "psycopg")],
    "async": [("connect", "psycopg"), ("SELECT {t}", "psycopg")],
    "bad_psycopg2": [("SELECT nowhere_at_all", "psycopg2")],
    "bad_psycopg": [("SELECT nowhere_at_all", "psycopg")],
}


def get(port: int, case: str, traceparent: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{case}", headers={"traceparent": traceparent} if traceparent else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def runs(postgres_server, tmp_path_factory):
    """Every case asked of the traced service (a trace id each) and of the plain one."""
    s = postgres_server
    dsn = f"host={s.host} port={s.port} dbname={s.database} user={s.user} password={s.password}"
    table = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
        setup.execute(f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two')")
    directory = tmp_path_factory.mktemp("psycopg")
    write(directory, "service.py", SERVICE)
    env = {"PG_DSN": dsn, "PG_TABLE": table}
    try:
        with OTLPReceiver() as receiver:
            traced_port, plain_port = free_port(), free_port()
            traced_env = clean_env(**receiver.env("http/protobuf"), OTEL_SERVICE_NAME="pg", **env)
            with Watched([AUTOTRACE, "run", "python", "service.py", str(traced_port)], directory, traced_env) as traced, Watched(
                [PYTHON, "service.py", str(plain_port)], directory, clean_env(**env)
            ) as plain:
                traced.wait_for_line("serving", timeout=60)
                plain.wait_for_line("serving", timeout=60)
                wait_until_answers(f"http://127.0.0.1:{traced_port}/nothing", process=traced)
                wait_until_answers(f"http://127.0.0.1:{plain_port}/nothing", process=plain)
                replies = {}
                for case in EXPECTED:
                    trace_id = secrets.token_hex(16)
                    traced_reply = get(traced_port, case, f"00-{trace_id}-{secrets.token_hex(8)}-01")
                    replies[case] = (trace_id, traced_reply, get(plain_port, case))
                total = sum(len(spans) for spans in EXPECTED.values()) + len(EXPECTED)  # and a SERVER span each
                receiver.wait_for_spans(total, timeout=30)
                traced.stop()  # SIGTERM: the agent flushes what is left
                yield table, replies, receiver.spans(), traced.text("stderr")
    finally:
        with psycopg.connect(dsn, autocommit=True) as setup:
            setup.execute(f"DROP TABLE IF EXISTS {table}")


def test_replies_are_the_same_as_without_the_agent(runs):
    _, replies, _, _ = runs
    for case, (_, traced, plain) in replies.items():
        assert traced == plain, case
    assert replies["psycopg2"][1] == (200, {"rows": ["one"]})
    assert replies["pool"][1] == (200, {"rows": ["one", "two"]})
    status, error = replies["bad_psycopg2"][1]
    assert status == 500 and error["error"] == "psycopg2.errors.UndefinedTable" and error["code"] == "42P01"
    status, error = replies["bad_psycopg"][1]
    assert status == 500 and error["error"] == "psycopg.errors.UndefinedTable" and error["code"] == "42P01"


@pytest.mark.parametrize("case", list(EXPECTED))
def test_exactly_the_spans_of_each_request_under_its_server_span(runs, case):
    table, replies, spans, _ = runs
    trace_id = replies[case][0]
    [server] = [s for s in spans if s.trace_id == trace_id and s.kind == SERVER]
    found = [s for s in spans if s.trace_id == trace_id and s.kind == CLIENT]
    expected = [(name.format(t=table), f"autotrace.db.{library}") for name, library in EXPECTED[case]]
    assert [(s.name, s.scope) for s in found] == expected
    for span in found:
        assert span.parent_span_id == server.span_id
        assert span.attributes["db.system.name"] == "postgresql"


def test_the_target_and_the_sanitized_text(runs, postgres_server):
    table, replies, spans, _ = runs
    by_case = {case: [s for s in spans if s.trace_id == trace_id and s.kind == CLIENT] for case, (trace_id, _, _) in replies.items()}
    for found in by_case.values():
        for span in found:
            assert span.attributes["db.namespace"] == postgres_server.database
            assert span.attributes["server.address"] == "127.0.0.1"
            assert span.attributes["server.port"] == postgres_server.port
    select = by_case["psycopg2"][1]
    assert select.attributes["db.query.text"] == f"SELECT name FROM {table} WHERE id = %s AND name <> ?"
    values = by_case["psycopg2"][2]
    assert values.attributes["db.query.text"] == f"INSERT INTO {table} (id, name) VALUES %s ON CONFLICT DO NOTHING"
    assert values.attributes["db.operation.batch.size"] == 2
    assert by_case["psycopg"][1].attributes["db.query.text"] == f"SELECT name FROM {table} WHERE id = %s AND name <> ?"
    assert by_case["pool"][0].attributes["db.query.text"] == f"SELECT name FROM {table} WHERE id = ? OR id = %s"
    assert by_case["async"][1].attributes["db.query.text"] == f"SELECT name FROM {table} WHERE id = %s"


@pytest.mark.parametrize("case, error_type", [("bad_psycopg2", "psycopg2.errors.UndefinedTable"), ("bad_psycopg", "psycopg.errors.UndefinedTable")])
def test_a_failing_query_is_recorded(runs, case, error_type):
    _, replies, spans, _ = runs
    trace_id = replies[case][0]
    [span] = [s for s in spans if s.trace_id == trace_id and s.kind == CLIENT]
    assert span.status_code == ERROR
    assert span.attributes["error.type"] == error_type
    assert span.attributes["db.response.status_code"] == "42P01"
    assert span.attributes["db.query.text"] == "SELECT * FROM nowhere_at_all WHERE id = ?"
    assert "exception" in span.events


def test_no_span_outside_the_requests_and_no_warning(runs):
    _, replies, spans, stderr = runs
    traces = {trace_id for trace_id, _, _ in replies.values()}
    # Not the start-up connections, nor the pool's workers (the only other span: the SERVER span of the readiness probe).
    assert [s.name for s in spans if s.trace_id not in traces and s.kind != SERVER] == []
    assert "autotrace WARNING" not in stderr, stderr
