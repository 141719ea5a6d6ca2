"""asyncpg against a real PostgreSQL: one CLIENT span per query the app awaits, in its task.

In process, with the in-memory exporter. Each test runs its own event loop; the request's
span is started inside it (as a server hook would, in the task that serves the request).
The same under ``autotrace run`` is in integration/test_db_mysql_asyncpg.py.
"""

from __future__ import annotations

import asyncio
import io
import uuid

import asyncpg
import pytest
from opentelemetry.trace import StatusCode

from autotrace import patching
from autotrace.hooks import asyncpg as hook
import db_checks as checks
from db_checks import assert_child, db_env, request_span  # noqa: F401 (db_env: a fixture)

# fetchmany: asyncpg 0.30+ (connections and prepared statements).
HAS_FETCHMANY = hasattr(asyncpg.Connection, "fetchmany")


@pytest.fixture
def pg(postgres_server, spans, db_env):
    """The hook applied (the originals put back after), db settings at their defaults; yields the server."""
    mark = len(patching.history)
    hook.patch(asyncpg)
    yield postgres_server
    patching.undo(mark)


def db_spans(exporter) -> list:
    return checks.db_spans(exporter, "asyncpg")


def run(coroutine_function, *args):
    return asyncio.run(asyncio.wait_for(coroutine_function(*args), 60))


def assert_target(span, server) -> None:
    attributes = span.attributes
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.namespace"] == server.database
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == server.port
    assert attributes["network.peer.address"] == "127.0.0.1"


async def connect(server):
    return await asyncpg.connect(server.url())


async def make_table(connection) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    await connection.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text)")
    await connection.execute(f"INSERT INTO {name} VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')")
    return name


def test_each_query_method_is_one_span_in_the_request(pg, spans):
    async def main():
        connection = await connect(pg)
        table = await make_table(connection)
        with request_span() as parent:
            results = [
                await connection.execute(f"INSERT INTO {table} VALUES ($1, $2)", 4, "dee"),
                await connection.fetch(f"SELECT id FROM {table} WHERE id < $1 ORDER BY id", 3),
                await connection.fetchval(f"SELECT name FROM {table} WHERE id = $1", 2),
                await connection.fetchrow(f"SELECT id, name FROM {table} WHERE id = $1", 3),
                await connection.executemany(f"UPDATE {table} SET name = $2 WHERE id = $1", [(1, "a"), (2, "b")]),
            ]
            if HAS_FETCHMANY:
                results.append(await connection.fetchmany(f"UPDATE {table} SET name = $2 WHERE id = $1 RETURNING id", [(3, "c"), (4, "d")]))
        await connection.close()
        return parent, table, results

    parent, table, results = run(main)
    assert results[0] == "INSERT 0 1"
    assert [r["id"] for r in results[1]] == [1, 2]
    assert results[2] == "bob" and tuple(results[3]) == (3, "cy") and results[4] is None
    if HAS_FETCHMANY:
        assert [r["id"] for r in results[5]] == [3, 4]
    spans = db_spans(spans)
    names = [f"INSERT {table}", f"SELECT {table}", f"SELECT {table}", f"SELECT {table}", f"UPDATE {table}"]
    assert [s.name for s in spans] == names + [f"UPDATE {table}"] * HAS_FETCHMANY
    for span in spans:
        assert_child(span, parent)
        assert_target(span, pg)
        assert span.status.status_code == StatusCode.UNSET
    assert spans[1].attributes["db.query.text"] == f"SELECT id FROM {table} WHERE id < $1 ORDER BY id"
    for batch in spans[4:]:
        assert batch.attributes["db.operation.batch.size"] == 2
        assert batch.attributes["db.operation.name"] == "BATCH UPDATE"


def test_literals_are_sanitized(pg, spans):
    async def main():
        connection = await connect(pg)
        with request_span():
            await connection.fetch("SELECT 'secret' AS a, 42 AS b WHERE 1 IN (1, 2, 3)")
        await connection.close()

    run(main)
    [span] = db_spans(spans)
    assert span.attributes["db.query.text"] == "SELECT ? AS a, ? AS b WHERE ? IN (?)"


def test_type_introspection_is_not_traced(pg, spans):
    """asyncpg looks unknown types up with its own queries: the app's query is the one span."""

    async def main():
        connection = await connect(pg)
        enum = "mood_" + uuid.uuid4().hex[:8]
        await connection.execute(f"CREATE TYPE {enum} AS ENUM ('sad', 'happy')")
        with request_span() as parent:
            value = await connection.fetchval(f"SELECT $1::{enum}", "happy")
            rows = await connection.fetch(f"SELECT ARRAY['sad'::{enum}]")
        await connection.execute(f"DROP TYPE {enum}")
        await connection.close()
        return parent, value, rows

    parent, value, rows = run(main)
    assert value == "happy" and rows[0][0] == ["sad"]
    spans = db_spans(spans)
    assert [s.name for s in spans] == ["SELECT", "SELECT"]
    for span in spans:
        assert_child(span, parent)


def test_a_prepared_statement_is_a_span_when_prepared_and_one_per_use(pg, spans):
    async def main():
        connection = await connect(pg)
        table = await make_table(connection)
        with request_span() as parent:
            statement = await connection.prepare(f"SELECT name FROM {table} WHERE id = $1")
            results = [await statement.fetch(1), await statement.fetchval(2), await statement.fetchrow(3)]
            results.append(await statement.fetchmany([(1,), (2,)]) if HAS_FETCHMANY else None)
            plan = await statement.explain(1)
            analyzed = await statement.explain(1, analyze=True)  # in a transaction it rolls back
            insert = await connection.prepare(f"INSERT INTO {table} VALUES ($1, $2)")
            await insert.executemany([(7, "g"), (8, "h"), (9, "i")])
        count = await connection.fetchval(f"SELECT count(*) FROM {table}")
        await connection.close()
        return parent, table, results, plan, analyzed, count

    parent, table, results, plan, analyzed, count = run(main)
    assert results[0][0]["name"] == "ann" and results[1] == "bob" and results[2]["name"] == "cy"
    if HAS_FETCHMANY:
        assert [r["name"] for r in results[3]] == ["ann", "bob"]
    assert isinstance(plan, list) and "Execution Time" in analyzed[0]
    assert count == 6
    spans = db_spans(spans)
    assert [s.name for s in spans] == [
        f"PREPARE SELECT {table}",
        f"SELECT {table}",
        f"SELECT {table}",
        f"SELECT {table}",
        *[f"SELECT {table}"] * HAS_FETCHMANY,
        f"EXPLAIN SELECT {table}",
        f"EXPLAIN SELECT {table}",
        f"PREPARE INSERT {table}",
        f"INSERT {table}",
    ]
    for span in spans:
        assert_child(span, parent)
    assert spans[0].attributes["db.operation.name"] == "PREPARE"
    assert spans[0].attributes["db.query.text"] == f"SELECT name FROM {table} WHERE id = $1"
    if HAS_FETCHMANY:
        assert spans[4].attributes["db.operation.batch.size"] == 2
    assert spans[-1].attributes["db.operation.batch.size"] == 3


def test_a_cursor_is_one_span_its_fetches_none(pg, spans):
    async def main():
        connection = await connect(pg)
        table = await make_table(connection)
        await connection.executemany(f"INSERT INTO {table} VALUES ($1, 'x')", [(i,) for i in range(10, 30)])
        with request_span() as parent:
            async with connection.transaction():
                iterated = [row["id"] async for row in connection.cursor(f"SELECT id FROM {table} ORDER BY id", prefetch=4)]
                cursor = await connection.cursor(f"SELECT id FROM {table} WHERE id > $1 ORDER BY id", 20)
                first = await cursor.fetch(3)
                await cursor.forward(2)
                row = await cursor.fetchrow()
                empty = [row async for row in connection.cursor(f"SELECT id FROM {table} WHERE false")]
        await connection.close()
        return parent, table, iterated, first, row, empty

    parent, table, iterated, first, row, empty = run(main)
    assert iterated == [1, 2, 3] + list(range(10, 30))
    assert [r["id"] for r in first] == [21, 22, 23] and row["id"] == 26 and empty == []
    spans = db_spans(spans)
    assert [s.name for s in spans] == ["BEGIN", f"SELECT {table}", f"SELECT {table}", f"SELECT {table}", "COMMIT"]
    for span in spans:
        assert_child(span, parent)
        assert span.status.status_code == StatusCode.UNSET


def test_copy_is_one_span_each(pg, spans):
    async def main():
        connection = await connect(pg)
        table = await make_table(connection)
        with request_span() as parent:
            await connection.copy_to_table(table, source=io.BytesIO(b"5\tev\n6\tfay\n"))
            await connection.copy_records_to_table(table, records=[(7, "gus"), (8, "hal")])
            out_table, out_query = io.BytesIO(), io.BytesIO()
            await connection.copy_from_table(table, output=out_table)
            await connection.copy_from_query(f"SELECT name FROM {table} WHERE id > $1", 6, output=out_query)
        await connection.close()
        return parent, table, out_table.getvalue(), out_query.getvalue()

    parent, table, out_table, out_query = run(main)
    assert out_table.count(b"\n") == 7 and out_query == b"gus\nhal\n"
    spans = db_spans(spans)
    assert [s.name for s in spans] == [f"COPY {table}"] * 3 + [f"COPY SELECT {table}"]
    for span in spans:
        assert_child(span, parent)
        assert span.attributes["db.operation.name"] == "COPY"
    assert spans[0].attributes["db.collection.name"] == table
    assert spans[3].attributes["db.query.text"] == f"COPY (SELECT name FROM {table} WHERE id > $1) TO STDOUT"


def test_a_pool_query_is_one_span_and_acquire_and_release_none(pg, spans):
    async def main():
        async with asyncpg.create_pool(pg.url(), min_size=1, max_size=1) as pool:
            with request_span() as parent:
                results = [
                    await pool.fetchval("SELECT 1"),
                    await pool.execute("SELECT 2"),
                    await pool.fetch("SELECT 3"),
                    await pool.fetchrow("SELECT 4"),
                ]
                async with pool.acquire() as connection:
                    results.append(await connection.fetchval("SELECT 5"))
                    async with connection.transaction():
                        results.append(await connection.fetchval("SELECT 6"))
            return parent, results

    parent, results = run(main)
    assert results[0] == 1 and results[1] == "SELECT 1" and results[4:] == [5, 6]
    spans = db_spans(spans)
    assert [s.name for s in spans] == ["SELECT"] * 5 + ["BEGIN", "SELECT", "COMMIT"]
    for span in spans:
        assert_child(span, parent)
        assert_target(span, pg)


def test_bad_sql_gets_the_servers_error_unchanged_and_the_span_records_it(pg, spans):
    async def main():
        connection = await connect(pg)
        original = getattr(asyncpg.Connection.__dict__["fetch"], patching.ORIGINAL)
        try:
            await original(connection, "SELEC 1")
        except asyncpg.PostgresError as exc:
            plain = exc
        with request_span() as parent:
            try:
                await connection.fetch("SELEC 1")
            except asyncpg.PostgresError as exc:
                traced = exc
        await connection.close()
        return parent, plain, traced

    parent, plain, traced = run(main)
    assert type(traced) is type(plain) is asyncpg.exceptions.PostgresSyntaxError
    assert traced.args == plain.args and traced.sqlstate == "42601"
    [span] = db_spans(spans)
    assert_child(span, parent)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "asyncpg.exceptions.PostgresSyntaxError"
    assert span.attributes["db.response.status_code"] == "42601"
    assert [event.name for event in span.events] == ["exception"]


def test_each_span_is_a_child_of_the_span_of_its_own_task(pg, spans):
    async def serve(pool, name):
        with request_span(name) as parent:
            await asyncio.sleep(0)
            value = await pool.fetchval("SELECT $1::text, pg_sleep(0.05)", name)
            await pool.execute("SELECT 1")
            return parent, value

    async def main():
        async with asyncpg.create_pool(pg.url(), min_size=2, max_size=2) as pool:
            return await asyncio.gather(serve(pool, "a"), serve(pool, "b"))

    served = run(main)
    assert [value for _, value in served] == ["a", "b"]
    spans = db_spans(spans)
    assert len(spans) == 4
    for parent, _ in served:
        children = [s for s in spans if s.parent.span_id == parent.get_span_context().span_id]
        assert len(children) == 2


def test_connect_is_a_span_inside_a_request_only(pg, spans):
    async def main():
        outside = await connect(pg)
        await outside.fetchval("SELECT 1")
        await outside.close()
        assert db_spans(spans) == []
        with request_span() as parent:
            inside = await connect(pg)
        await inside.close()
        return parent

    parent = run(main)
    [span] = db_spans(spans)
    assert span.name == "connect"
    assert_child(span, parent)
    assert_target(span, pg)


def test_a_failed_connect_is_recorded_and_raised_unchanged(pg, spans):
    async def main():
        with request_span():
            try:
                await asyncpg.connect(host=pg.host, port=pg.port, user=pg.user, password="wrong", database=pg.database)
            except asyncpg.PostgresError as exc:
                return exc

    raised = run(main)
    assert isinstance(raised, asyncpg.InvalidPasswordError)
    [span] = db_spans(spans)
    assert span.name == "connect" and span.status.status_code == StatusCode.ERROR
    assert span.attributes["db.response.status_code"] == "28P01"
    assert span.attributes["server.port"] == pg.port


def test_no_spans_outside_a_request_by_default(pg, spans):
    async def main():
        connection = await connect(pg)
        table = await make_table(connection)
        await connection.fetch(f"SELECT * FROM {table}")
        await (await connection.prepare("SELECT 1")).fetchval()
        async with asyncpg.create_pool(pg.url(), min_size=1, max_size=1) as pool:
            await pool.fetchval("SELECT 1")
        await connection.close()

    run(main)
    assert db_spans(spans) == []


def test_root_spans_when_asked(pg, spans, db_env):
    db_env(AUTOTRACE_DB_ROOT_SPANS="true")

    async def main():
        connection = await connect(pg)
        await connection.fetchval("SELECT 1")
        await connection.close()

    run(main)
    connect_span, select = db_spans(spans)
    assert connect_span.name == "connect" and connect_span.parent is None
    assert select.name == "SELECT" and select.parent is None


def test_sql_comment_only_on_a_simple_execute(pg, spans, db_env):
    db_env(AUTOTRACE_SQL_COMMENT="true")

    async def main():
        connection = await connect(pg)
        seen = "seen_" + uuid.uuid4().hex[:8]
        with request_span():
            # What the server runs, as it records it.
            await connection.execute(f"CREATE TEMP TABLE {seen} AS SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            fetched = await connection.fetchval("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        received = await connection.fetchval(f"SELECT query FROM {seen}")
        await connection.close()
        return seen, received, fetched

    seen, received, fetched = run(main)
    execute, fetch = db_spans(spans)
    flags = f"{execute.context.trace_flags:02x}"
    traceparent = f"00-{execute.context.trace_id:032x}-{execute.context.span_id:016x}-{flags}"
    assert received.endswith(f" /*traceparent='{traceparent}'*/")
    assert fetched == "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"  # cached statement: as written
    assert "traceparent" not in execute.attributes["db.query.text"]
