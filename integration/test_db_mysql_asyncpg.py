"""PyMySQL, mysqlclient and asyncpg end to end: unchanged services whose requests run queries,
under ``autotrace run``, spans checked at a real OTLP receiver.

- a stdlib ``http.server`` service on MariaDB, with PyMySQL and with mysqlclient (the
  request connects, runs a SELECT with inlined literals, an INSERT with parameters, an
  ``executemany``, and commits); a request whose SQL is bad answers with the driver's error;
- a Starlette app under uvicorn on PostgreSQL with an asyncpg pool (made in its lifespan,
  outside any trace): ``pool.fetchval``, ``pool.execute``, a transaction on an acquired
  connection, a prepared statement, a cursor read in ten fetches; a bad query.

Each request carries its own ``traceparent``; in its trace: one SERVER span, exactly one
CLIENT span per query (none for a pool's acquire or release, for a cursor's further
fetches, for asyncpg's own type introspection), each a child of the SERVER span, with the
sanitised text; the failing query records the server's error code and the app gets the
driver's error unchanged.
"""

from __future__ import annotations

import json
import uuid

import pytest

from agent import SERVE_ON_ARGV_PORT, write
from db_service import CLIENT, STATUS_ERROR, STATUS_UNSET, Request, Run, serve

MYSQL_SERVICE = """
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import {module} as driver

SERVER = {server!r}
TABLE = {table!r}


def connect():
    return driver.connect(host=SERVER["host"], port=SERVER["port"], user=SERVER["user"],
                          password=SERVER["password"], database=SERVER["database"])


setup = connect()  # at start-up, outside any trace: no span
setup.cursor().execute(f"CREATE TABLE {{TABLE}} (id INT PRIMARY KEY, name VARCHAR(40))")
setup.commit()
setup.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/ready":
            return self.reply(200, {{}})
        item = int(self.path.rpartition("/")[2]) if self.path.startswith("/items/") else None
        connection = connect()
        try:
            cursor = connection.cursor()
            if item is None:
                cursor.execute("SELEC name FROM nowhere WHERE id = 5")
            cursor.execute(f"SELECT count(*) FROM {{TABLE}} WHERE name = 'secret-literal' AND id > 100")
            cursor.execute(f"INSERT INTO {{TABLE}} (id, name) VALUES (%s, %s)", (item, "secret-bound"))
            cursor.executemany(f"INSERT INTO {{TABLE}} (id, name) VALUES (%s, %s)", [(item * 10 + 1, "a"), (item * 10 + 2, "b")])
            connection.commit()
            self.reply(200, {{"item": item}})
        except driver.Error as exc:
            self.reply(500, {{"error": type(exc).__module__ + "." + type(exc).__qualname__, "args": list(exc.args)}})
        finally:
            connection.close()

    def reply(self, status, body):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

""" + SERVE_ON_ARGV_PORT

ASYNCPG_APP = """
import contextlib

import asyncpg
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

URL = {url!r}
TABLE = {table!r}
pool = None


@contextlib.asynccontextmanager
async def lifespan(app):
    global pool
    # At start-up, outside any request: no span (the pool's connections, the table).
    pool = await asyncpg.create_pool(URL, min_size=2, max_size=2)
    await pool.execute(f"CREATE TABLE {{TABLE}} (id int PRIMARY KEY, name text)")
    yield
    await pool.close()


async def ready(request):
    return JSONResponse({{}})


async def item(request):
    item_id = request.path_params["item_id"]
    count = await pool.fetchval(f"SELECT count(*) FROM {{TABLE}} WHERE name = 'secret-literal' AND id > 100")
    await pool.execute(f"INSERT INTO {{TABLE}} (id, name) VALUES ($1, $2)", item_id, "secret-bound")
    async with pool.acquire() as connection:
        async with connection.transaction():
            statement = await connection.prepare(f"SELECT name FROM {{TABLE}} WHERE id = $1")
            name = await statement.fetchval(item_id)
            # 500 rows, 50 a fetch: one span for the cursor, not one a fetch.
            rows = [row[0] async for row in connection.cursor("SELECT generate_series(1, 500)", prefetch=50)]
    return JSONResponse({{"item": item_id, "count": count, "name": name, "rows": len(rows)}})


async def boom(request):
    try:
        await pool.fetch("SELEC name FROM nowhere WHERE id = 5")
    except asyncpg.PostgresError as exc:
        return JSONResponse({{"error": type(exc).__module__ + "." + type(exc).__qualname__, "sqlstate": exc.sqlstate}}, status_code=500)
    return JSONResponse({{}})


app = Starlette(
    routes=[Route("/ready", ready), Route("/items/{{item_id:int}}", item), Route("/boom", boom)],
    lifespan=lifespan,
)
"""


class DbRun(Run):
    def db_spans(self, name: str) -> list:
        """The request's CLIENT spans in start order, each checked to be a child of its SERVER span."""
        server = self.server_span(name)
        found = sorted((s for s in self.trace(name) if s.kind == CLIENT), key=lambda s: s.start_time_unix_nano)
        for span in found:
            assert span.parent_span_id == server.span_id, (name, span)
            assert span.scope.startswith("autotrace.db."), span
        return found


def assert_clean(run: Run, hook: str) -> None:
    assert f"hook {hook} applied" in run.stderr, run.stderr
    assert "autotrace WARNING" not in run.stderr, run.stderr


def assert_target(span, server, system: str) -> None:
    assert span.attributes["db.system.name"] == system
    assert span.attributes["db.namespace"] == server.database
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == server.port


# -- PyMySQL and mysqlclient ----------------------------------------------------------------

MYSQL_DRIVERS = {"pymysql": ("pymysql", "pymysql"), "mysqlclient": ("MySQLdb", "mysqlclient")}


@pytest.fixture(scope="module", params=sorted(MYSQL_DRIVERS))
def mysql_run(request, mariadb_server, tmp_path_factory):
    module, hook = MYSQL_DRIVERS[request.param]
    directory = tmp_path_factory.mktemp("mysql")
    table = "t_" + uuid.uuid4().hex[:12]
    server = {k: getattr(mariadb_server, k) for k in ("host", "port", "user", "password", "database")}
    write(directory, "service.py", MYSQL_SERVICE.format(module=module, server=server, table=table))
    requests = [Request("item", "/items/1"), Request("item-again", "/items/2"), Request("boom", "/boom")]
    run = serve(["python", "service.py", "{port}"], directory, requests, DbRun)
    run.table = table
    run.hook = hook
    return run


def test_mysql_one_span_per_call_under_the_request(mysql_run, mariadb_server):
    run, table = mysql_run, mysql_run.table
    assert run.replies["item"] == (200, {"item": 1}) and run.replies["item-again"] == (200, {"item": 2})
    assert_clean(run, run.hook)
    for name in ("item", "item-again"):
        spans = run.db_spans(name)
        assert [s.name for s in spans] == ["connect", f"SELECT {table}", f"INSERT {table}", f"INSERT {table}", "COMMIT"]
        connect, select, insert, many, commit = spans
        for span in spans:
            assert_target(span, mariadb_server, "mariadb")
            assert span.scope == f"autotrace.db.{run.hook}"
            assert span.status_code == STATUS_UNSET
            assert "secret" not in json.dumps(span.attributes)
        assert select.attributes["db.query.text"] == f"SELECT count(*) FROM {table} WHERE name = ? AND id > ?"
        assert insert.attributes["db.query.text"] == f"INSERT INTO {table} (id, name) VALUES (%s, %s)"
        assert many.attributes["db.operation.batch.size"] == 2
        assert many.attributes["db.operation.name"] == "BATCH INSERT"


def test_mysql_bad_sql_gets_the_servers_error_and_the_span_records_it(mysql_run):
    run = mysql_run
    status, body = run.replies["boom"]
    assert status == 500 and body["args"][0] == 1064 and "SELEC" in body["args"][1]
    connect, failed = run.db_spans("boom")
    assert connect.name == "connect"
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"] == body["error"]
    assert failed.attributes["db.response.status_code"] == "1064"
    assert failed.attributes["db.query.text"] == "SELEC name FROM nowhere WHERE id = ?"
    assert failed.events.count("exception") == 1


def test_mysql_no_span_outside_a_request(mysql_run):
    # The table made at start-up, the readiness probe: no trace has a database span but the requests'.
    traces = {r.trace_id for r in mysql_run.requests}
    assert [s for s in mysql_run.spans if s.kind == CLIENT and s.trace_id not in traces] == []


# -- asyncpg --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncpg_run(postgres_server, tmp_path_factory):
    directory = tmp_path_factory.mktemp("asyncpg")
    table = "t_" + uuid.uuid4().hex[:12]
    write(directory, "pgapp.py", ASYNCPG_APP.format(url=postgres_server.url(), table=table))
    requests = [Request("item", "/items/1"), Request("item-again", "/items/2"), Request("boom", "/boom")]
    run = serve(["uvicorn", "--host", "127.0.0.1", "--port", "{port}", "pgapp:app"], directory, requests, DbRun)
    run.table = table
    return run


def test_asyncpg_one_span_per_query_under_the_request(asyncpg_run, postgres_server):
    run, table = asyncpg_run, asyncpg_run.table
    assert run.replies["item"] == (200, {"item": 1, "count": 0, "name": "secret-bound", "rows": 500})
    assert run.replies["item-again"][0] == 200
    assert_clean(run, "asyncpg")
    for name in ("item", "item-again"):
        spans = run.db_spans(name)
        assert [s.name for s in spans] == [
            f"SELECT {table}",
            f"INSERT {table}",
            "BEGIN",
            f"PREPARE SELECT {table}",
            f"SELECT {table}",
            "SELECT",  # the cursor: its ten fetches are one span
            "COMMIT",
        ]
        for span in spans:
            assert_target(span, postgres_server, "postgresql")
            assert span.scope == "autotrace.db.asyncpg"
            assert span.status_code == STATUS_UNSET
            assert "secret" not in json.dumps(span.attributes)
        assert spans[0].attributes["db.query.text"] == f"SELECT count(*) FROM {table} WHERE name = ? AND id > ?"
        assert spans[1].attributes["db.query.text"] == f"INSERT INTO {table} (id, name) VALUES ($1, $2)"
        assert spans[4].attributes["db.query.text"] == f"SELECT name FROM {table} WHERE id = $1"


def test_asyncpg_bad_sql_gets_the_servers_error_and_the_span_records_it(asyncpg_run):
    run = asyncpg_run
    assert run.replies["boom"] == (500, {"error": "asyncpg.exceptions.PostgresSyntaxError", "sqlstate": "42601"})
    [failed] = run.db_spans("boom")
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"] == "asyncpg.exceptions.PostgresSyntaxError"
    assert failed.attributes["db.response.status_code"] == "42601"
    assert failed.attributes["db.query.text"] == "SELEC name FROM nowhere WHERE id = ?"
    assert failed.events.count("exception") == 1


def test_asyncpg_no_span_outside_a_request(asyncpg_run):
    # The pool made (its connections opened) and the table created at start-up, the
    # readiness probes: no database span outside the requests' traces.
    traces = {r.trace_id for r in asyncpg_run.requests}
    assert [s for s in asyncpg_run.spans if s.kind == CLIENT and s.trace_id not in traces] == []
