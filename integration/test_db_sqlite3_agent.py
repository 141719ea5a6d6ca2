"""sqlite3 under ``autotrace run``: one CLIENT span per query a request runs, under its SERVER span.

A stdlib http.server service (no tracing code) keeps a SQLite file. At start-up, outside
any request, it creates its table and inserts a row; ``GET /items`` inserts (``execute``
with inlined literals, ``executemany`` with a list of parameters) and selects;
``GET /bad`` runs a query on a table that does not exist and answers with the error it
got. At a real OTLP receiver: exactly one span per query, each a child of its request's
SERVER span, with the sanitized text; the failing query's span has ``error.type`` and
``db.response.status_code`` while the app saw SQLite's own error. The start-up queries
make no span, unless ``AUTOTRACE_DB_ROOT_SPANS=true``: then each is a root span.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from agent import AUTOTRACE, SERVE_ON_ARGV_PORT, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

SERVER, CLIENT = 2, 3  # proto SpanKind
ERROR = 2  # proto status code
SCOPE = "autotrace.db.sqlite3"

SERVICE = (
    """
import os
import sqlite3
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shop.db")

setup = sqlite3.connect(DB)
setup.executescript("DROP TABLE IF EXISTS items; CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL);")
setup.execute("INSERT INTO items (name, price) VALUES ('startup', 0)")
setup.commit()
setup.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        status, body = 404, "not found"
        conn = sqlite3.connect(DB)
        try:
            if self.path == "/items":
                conn.execute("INSERT INTO items (name, price) VALUES ('pen', 2.5)")
                conn.executemany("INSERT INTO items (name, price) VALUES (?, ?)", [("a", 1), ("b", 2)])
                rows = conn.execute("SELECT name FROM items WHERE price > 1.0 ORDER BY id").fetchall()
                conn.commit()
                status, body = 200, ",".join(row[0] for row in rows)
            elif self.path == "/bad":
                try:
                    conn.execute("SELECT * FROM nowhere WHERE id = 42")
                except sqlite3.OperationalError as exc:
                    status, body = 500, f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

"""
    + SERVE_ON_ARGV_PORT
)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def run_service(tmp_path, **env_extra: str):
    """Start the service, make its requests, stop it; every span received, and the answers."""
    write(tmp_path, "service.py", SERVICE)
    with OTLPReceiver() as receiver:
        port = free_port()
        env = clean_env(**receiver.env("http/protobuf"), OTEL_SERVICE_NAME="shop", **env_extra)
        with Watched([AUTOTRACE, "run", "python", "service.py", str(port)], tmp_path, env) as service:
            service.wait_for_line("serving", timeout=10)
            wait_until_answers(f"http://127.0.0.1:{port}/nothing", timeout=10, process=service)
            items = get(f"http://127.0.0.1:{port}/items")
            bad = get(f"http://127.0.0.1:{port}/bad")
            # 3 requests (the readiness probe too), 4 queries in them.
            receiver.wait_for_spans(3, timeout=15, predicate=lambda s: s.kind == SERVER)
            receiver.wait_for_spans(4, timeout=15, predicate=lambda s: s.scope == SCOPE and s.parent_span_id)
            service.stop()  # SIGTERM: the service flushes what it still holds, then exits
            stderr = service.text("stderr")
        spans = receiver.spans()
    assert "autotrace WARNING" not in stderr, stderr
    return spans, items, bad


def by_request(spans, path: str):
    [server] = [s for s in spans if s.kind == SERVER and s.attributes.get("url.path") == path]
    return server, [s for s in spans if s.trace_id == server.trace_id and s is not server]


def test_one_span_per_query_under_the_request_and_none_outside(tmp_path):
    spans, items, bad = run_service(tmp_path)
    assert items == (200, "pen,b")
    # The app got SQLite's own error, unchanged.
    assert bad == (500, "sqlite3.OperationalError: no such table: nowhere")

    server, queries = by_request(spans, "/items")
    assert [s.name for s in queries] == ["INSERT items", "INSERT items", "SELECT items"]
    for span in queries:
        assert span.kind == CLIENT and span.scope == SCOPE
        assert span.parent_span_id == server.span_id
        assert span.attributes["db.system.name"] == "sqlite"
        assert span.attributes["db.namespace"] == str(tmp_path / "shop.db")
        assert span.status_code != ERROR
    insert, many, select = queries
    assert insert.attributes["db.query.text"] == "INSERT INTO items (name, price) VALUES (?, ?)"
    assert many.attributes["db.query.text"] == "INSERT INTO items (name, price) VALUES (?, ?)"
    assert many.attributes["db.operation.batch.size"] == 2
    assert select.attributes["db.query.text"] == "SELECT name FROM items WHERE price > ? ORDER BY id"
    assert select.attributes["db.collection.name"] == "items"

    server, [failed] = by_request(spans, "/bad")
    assert failed.parent_span_id == server.span_id
    assert failed.status_code == ERROR
    assert failed.attributes["error.type"] == "sqlite3.OperationalError"
    assert failed.attributes["db.query.text"] == "SELECT * FROM nowhere WHERE id = ?"
    if sys.version_info >= (3, 11):  # sqlite3.Error.sqlite_errorname
        assert failed.attributes["db.response.status_code"] == "SQLITE_ERROR"

    by_probe, nothing = by_request(spans, "/nothing")
    assert nothing == []  # connect and close are not spans
    # The start-up queries ran outside any request: no span.
    assert len([s for s in spans if s.scope == SCOPE]) == 4
    assert len(spans) == 3 + 4


def test_root_spans_for_queries_outside_a_request_when_asked(tmp_path):
    spans, items, _ = run_service(tmp_path, AUTOTRACE_DB_ROOT_SPANS="true")
    assert items[0] == 200
    roots = [s for s in spans if s.scope == SCOPE and not s.parent_span_id]
    assert sorted(s.name for s in roots) == ["DROP TABLE items CREATE TABLE items", "INSERT items"]
    assert len({s.trace_id for s in roots}) == 2  # each a trace of its own
    assert len([s for s in spans if s.scope == SCOPE]) == 4 + 2
