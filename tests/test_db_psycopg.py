"""psycopg 3 against a real PostgreSQL: one CLIENT span per statement, sync and async, pools included."""

from __future__ import annotations

import asyncio

import pytest
from db_checks import (  # noqa: F401  (db_env, dsn: fixtures)
    apply_hook,
    assert_child,
    assert_failed,
    assert_statement,
    db_env,
    db_spans,
    dsn,
    hooked,
    request_span,
    server_attributes,
    table_name,
)

import psycopg
from psycopg import sql  # noqa: E402

LIBRARY = "psycopg"


@pytest.fixture
def traced(spans, db_env):
    """The psycopg hook applied as under the agent; the originals put back after."""
    yield from hooked(spans, "autotrace.hooks.psycopg", ("psycopg", "patch"), ("psycopg_pool", "patch_pool"))


@pytest.fixture
def table(dsn):
    """A fresh table (id int, name text), made and dropped before the hook is applied or after it is undone."""
    name = table_name()
    with psycopg.connect(dsn, autocommit=True, options="-c lock_timeout=10000") as plain:
        plain.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text)")
        plain.execute(f"INSERT INTO {name} VALUES (1, 'one'), (2, 'two')")
    yield name
    with psycopg.connect(dsn, autocommit=True, options="-c lock_timeout=10000") as plain:
        plain.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def conn(table, traced, dsn):
    """A connection made before any span is current (no connect span), closed before the table is dropped."""
    made = psycopg.connect(dsn)
    yield made
    made.close()


def test_connection_execute_is_one_span_with_sanitized_text(traced, conn, table, postgres_server, parent):
    assert conn.execute(f"SELECT name FROM {table} WHERE id = %s AND name <> 'secret'", (1,)).fetchall() == [("one",)]
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    text = f"SELECT name FROM {table} WHERE id = %s AND name <> ?"
    assert_statement(span, postgres_server, text, "SELECT", table, f"SELECT {table}", peer=True)


def test_every_cursor_class_is_traced(traced, conn, table, parent):
    with conn.cursor() as cur:
        cur.execute(f"SELECT name FROM {table} WHERE id = %(id)s", {"id": 1})
        assert cur.fetchone() == ("one",)
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(f"SELECT name FROM {table} WHERE id = %s", (2,))
        assert cur.fetchone() == ("two",)
    raw = hasattr(psycopg, "RawCursor")  # psycopg 3.2+
    if raw:
        with psycopg.RawCursor(conn) as cur:
            cur.execute(f"SELECT name FROM {table} WHERE id = $1", (2,))
            assert cur.fetchone() == ("two",)
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT name FROM {table} WHERE id = 1")
        assert cur.fetchone() == {"name": "one"}
    found = db_spans(traced)
    assert [s.attributes["db.query.text"] for s in found] == [
        f"SELECT name FROM {table} WHERE id = %(id)s",
        f"SELECT name FROM {table} WHERE id = %s",
        *([f"SELECT name FROM {table} WHERE id = $1"] if raw else []),
        f"SELECT name FROM {table} WHERE id = ?",
    ]
    for span in found:
        assert_child(span, parent, LIBRARY)


def test_a_server_cursor_is_a_span_at_execute_and_its_fetches_are_none(traced, conn, table, parent):
    with conn.cursor(name="server_side") as cur:
        assert isinstance(cur, psycopg.ServerCursor)
        cur.itersize = 1
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert cur.fetchone() == (1,)
        assert list(cur) == [(2,)]
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert span.name == f"SELECT {table}"


def test_no_span_outside_a_trace_by_default(traced, conn, table):
    conn.execute(f"SELECT * FROM {table}").fetchall()
    conn.commit()
    psycopg.connect(conn.info.dsn + f" password={conn.info.password}").close()
    assert db_spans(traced) == []


def test_bad_sql_gets_postgresqls_own_error_and_the_span_records_it(traced, conn, dsn, parent):
    missing = table_name()
    with pytest.raises(psycopg.errors.UndefinedTable) as raised:
        conn.execute(f"SELECT * FROM {missing}")
    assert raised.value.sqlstate == "42P01"
    assert str(raised.value).startswith(f'relation "{missing}" does not exist')
    conn.rollback()
    failed, rollback = db_spans(traced)
    assert_child(failed, parent, LIBRARY)
    assert failed.name == f"SELECT {missing}"
    assert_failed(failed, "psycopg.errors.UndefinedTable", "42P01")
    assert rollback.name == "ROLLBACK"


def test_executemany_is_one_span_with_the_batch_size(traced, conn, table, parent):
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(10, "a"), (11, "b"), (12, "c")])
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert span.attributes["db.operation.batch.size"] == 3
    assert span.attributes["db.operation.name"] == "BATCH INSERT"


def test_copy_is_one_span_that_lasts_until_the_block_ends(traced, conn, table, parent):
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} (id, name) FROM STDIN") as copy:
            copy.write_row((30, "x"))
            copy.write_row((31, "y"))
            assert db_spans(traced) == []  # not ended yet
        [span] = db_spans(traced)
        assert_child(span, parent, LIBRARY)
        assert span.attributes["db.query.text"] == f"COPY {table} (id, name) FROM STDIN"
        assert span.attributes["db.operation.name"] == "COPY"
        assert span.name == f"COPY {table}" and span.attributes["db.collection.name"] == table
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (4,)


def test_a_copy_that_fails_is_recorded(traced, conn, table, parent):
    with conn.cursor() as cur:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            with cur.copy(f"COPY {table} (nothing) FROM STDIN") as copy:
                copy.write_row((1,))
    [span] = db_spans(traced)
    assert_failed(span, "psycopg.errors.UndefinedColumn", "42703")


def test_a_pipeline_has_a_span_per_statement(traced, conn, table, parent):
    with conn.pipeline():
        conn.execute(f"INSERT INTO {table} VALUES (40, 'x')")
        cur = conn.execute(f"SELECT name FROM {table} WHERE id = %s", (40,))
    assert cur.fetchone() == ("x",)
    found = db_spans(traced)
    assert [s.name for s in found] == [f"INSERT {table}", f"SELECT {table}"]
    for span in found:
        assert_child(span, parent, LIBRARY)


def test_commit_and_rollback_are_spans_only_when_a_transaction_is_open(traced, conn, table, parent):
    conn.commit()  # nothing open: psycopg sends nothing
    conn.execute(f"INSERT INTO {table} VALUES (50, 'x')")
    conn.commit()
    conn.rollback()
    conn.execute(f"INSERT INTO {table} VALUES (51, 'y')")
    conn.rollback()
    conn.autocommit = True
    conn.execute(f"INSERT INTO {table} VALUES (52, 'z')")
    conn.commit()
    insert = f"INSERT {table}"
    assert [s.name for s in db_spans(traced)] == [insert, "COMMIT", insert, "ROLLBACK", insert]


def test_connect_is_a_span_only_in_a_trace(traced, dsn, postgres_server, parent):
    psycopg.connect(dsn).close()
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert span.name == "connect"
    assert dict(span.attributes) == {**server_attributes(postgres_server), "network.peer.address": postgres_server.host}


def test_a_failed_connect_is_recorded(traced, parent):
    from ports import free_port

    port = free_port()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={port} dbname=nothing user=nobody connect_timeout=5")
    [span] = db_spans(traced)
    assert span.name == "connect"
    assert span.attributes["server.port"] == port and span.attributes["db.namespace"] == "nothing"
    assert span.attributes["error.type"] == "psycopg.OperationalError"


def test_sql_objects_are_recorded_as_psycopg_sends_them(traced, conn, table, parent):
    query = sql.SQL("SELECT {} FROM {} WHERE id = {}").format(sql.Identifier("name"), sql.Identifier(table), sql.Literal(2))
    assert conn.execute(query).fetchone() == ("two",)
    [span] = db_spans(traced)
    assert span.attributes["db.query.text"] == f'SELECT "name" FROM "{table}" WHERE id = ?'


def test_a_pools_connections_are_traced_and_a_checkout_is_not_a_span(traced, dsn, table):
    from psycopg_pool import ConnectionPool

    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool:
        pool.wait(timeout=10)  # connected by the pool's worker, outside any trace
        with request_span() as parent:
            with pool.connection() as conn:  # commits at the end: the transaction is open
                assert conn.execute(f"SELECT name FROM {table} WHERE id = %s", (1,)).fetchone() == ("one",)
    select, commit = db_spans(traced)
    for span in (select, commit):
        assert_child(span, parent, LIBRARY)
    assert (select.name, commit.name) == (f"SELECT {table}", "COMMIT")


# -- asyncio ---------------------------------------------------------------------------------


def test_async_connections_and_cursors(traced, dsn, table, postgres_server):
    async def main():
        with request_span() as parent:
            conn = await psycopg.AsyncConnection.connect(dsn)
            try:
                cur = await conn.execute(f"SELECT name FROM {table} WHERE id = %s", (1,))
                assert await cur.fetchall() == [("one",)]
                async with psycopg.AsyncClientCursor(conn) as cur:
                    await cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(60, "a"), (61, "b")])
                async with conn.cursor() as cur:
                    async with cur.copy(f"COPY {table} (id, name) FROM STDIN") as copy:
                        await copy.write_row((62, "c"))
                async with conn.cursor(name="server_side") as cur:
                    await cur.execute(f"SELECT id FROM {table} ORDER BY id")
                    assert len(await cur.fetchall()) == 5
                await conn.commit()
            finally:
                await conn.close()
        return parent

    parent = asyncio.run(main())
    found = db_spans(traced)
    assert [s.name for s in found] == ["connect", f"SELECT {table}", f"INSERT {table}", found[3].name, f"SELECT {table}", "COMMIT"]
    assert found[3].attributes["db.query.text"] == f"COPY {table} (id, name) FROM STDIN"
    assert found[2].attributes["db.operation.batch.size"] == 2
    for span in found:
        assert_child(span, parent, LIBRARY)
    assert_statement(found[1], postgres_server, f"SELECT name FROM {table} WHERE id = %s", "SELECT", table, f"SELECT {table}", peer=True)


def test_async_bad_sql_gets_postgresqls_own_error(traced, dsn):
    missing = table_name()

    async def main():
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            with request_span() as parent:
                with pytest.raises(psycopg.errors.UndefinedTable) as raised:
                    await conn.execute(f"SELECT * FROM {missing}")
            return parent, raised.value

    parent, error = asyncio.run(main())
    assert error.sqlstate == "42P01"
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert_failed(span, "psycopg.errors.UndefinedTable", "42P01")


def test_an_async_pools_connections_are_traced(traced, dsn, table):
    from psycopg_pool import AsyncConnectionPool

    async def main():
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False)
        await pool.open(wait=True, timeout=10)  # its workers are tasks made outside any trace
        try:
            with request_span() as parent:
                async with pool.connection() as conn:
                    cur = await conn.execute(f"SELECT name FROM {table} WHERE id = %s", (2,))
                    assert await cur.fetchone() == ("two",)
        finally:
            await pool.close()
        return parent

    parent = asyncio.run(main())
    select, commit = db_spans(traced)
    for span in (select, commit):
        assert_child(span, parent, LIBRARY)
    assert (select.name, commit.name) == (f"SELECT {table}", "COMMIT")


def test_sql_comment_carries_the_spans_context_when_asked(traced, db_env, conn, parent):
    db_env(AUTOTRACE_SQL_COMMENT="true")
    [(sent,)] = conn.execute("SELECT current_query() WHERE %s = 1", (1,)).fetchall()
    [(prepared,)] = conn.execute("SELECT current_query()", prepare=True).fetchall()
    first, second = db_spans(traced)
    context = first.get_span_context()
    flags = f"{int(context.trace_flags):02x}"
    assert sent == f"SELECT current_query() WHERE $1 = 1 /*traceparent='00-{context.trace_id:032x}-{context.span_id:016x}-{flags}'*/"
    assert prepared == "SELECT current_query()"  # a statement to prepare stays as written
    assert first.attributes["db.query.text"] == "SELECT current_query() WHERE %s = ?"


def test_stream_is_one_span_to_its_first_row(traced, conn, table, parent):
    rows = conn.cursor().stream(f"SELECT id FROM {table} ORDER BY id")
    assert db_spans(traced) == []  # nothing sent yet
    assert next(rows) == (1,)
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert span.name == f"SELECT {table}"
    assert list(rows) == [(2,)]
    for row in conn.cursor().stream(f"SELECT id FROM {table} ORDER BY id"):
        break  # left early: psycopg cleans up, the connection goes on
    assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.errors.UndefinedTable):
        list(conn.cursor().stream("SELECT * FROM nowhere_at_all"))
    assert [s.name for s in db_spans(traced)] == [f"SELECT {table}", f"SELECT {table}", "SELECT", "SELECT nowhere_at_all"]
    assert_failed(db_spans(traced)[-1], "psycopg.errors.UndefinedTable", "42P01")


def test_async_stream_is_one_span_to_its_first_row(traced, dsn, table):
    async def main():
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            with request_span() as parent:
                cur = conn.cursor()
                found = [row async for row in cur.stream(f"SELECT id FROM {table} ORDER BY id")]
                async for row in cur.stream(f"SELECT id FROM {table} ORDER BY id"):
                    break  # left early: the generator is closed, psycopg cleans up
                cur = await conn.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
            return parent, found

    parent, found = asyncio.run(main())
    assert found == [(1,), (2,)]
    spans = db_spans(traced)
    assert [s.name for s in spans] == [f"SELECT {table}", f"SELECT {table}", "SELECT"]
    for span in spans:
        assert_child(span, parent, LIBRARY)


def test_the_end_of_an_outermost_transaction_block_is_a_span(traced, conn, table, parent):
    with conn.transaction():
        conn.execute(f"INSERT INTO {table} VALUES (70, 'a')")
        with conn.transaction():  # a savepoint: released, no span
            conn.execute(f"INSERT INTO {table} VALUES (71, 'b')")
    with pytest.raises(ZeroDivisionError):
        with conn.transaction():
            conn.execute(f"INSERT INTO {table} VALUES (72, 'c')")
            1 / 0
    with conn.transaction():
        conn.execute(f"INSERT INTO {table} VALUES (73, 'd')")
        raise psycopg.Rollback()  # psycopg rolls back and swallows it
    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (4,)
    insert = f"INSERT {table}"
    names = [s.name for s in db_spans(traced)]
    assert names == [insert, insert, "COMMIT", insert, "ROLLBACK", insert, "ROLLBACK", f"SELECT {table}"]
    for span in db_spans(traced):
        assert_child(span, parent, LIBRARY)
        assert span.status.status_code.name == "UNSET"


def test_a_pools_check_is_not_a_span(traced, dsn, table):
    from psycopg_pool import ConnectionPool

    if not hasattr(ConnectionPool, "check_connection"):
        pytest.skip("psycopg_pool < 3.2 has no check")
    with ConnectionPool(dsn, min_size=1, max_size=1, check=ConnectionPool.check_connection) as pool:
        pool.wait(timeout=10)
        with request_span() as parent:
            with pool.connection() as conn:  # checked: an empty query
                assert conn.execute(f"SELECT name FROM {table} WHERE id = 1").fetchone() == ("one",)
    found = db_spans(traced)
    assert [s.name for s in found] == [f"SELECT {table}", "COMMIT"]
    for span in found:
        assert_child(span, parent, LIBRARY)


def test_a_null_pools_connect_is_a_span_of_the_checkout(traced, dsn, table, postgres_server):
    from psycopg_pool import NullConnectionPool

    with NullConnectionPool(dsn) as pool:
        with request_span() as parent:
            with pool.connection() as conn:  # connected now, for this checkout: the app waits for it
                assert conn.execute(f"SELECT name FROM {table} WHERE id = 1").fetchone() == ("one",)
    found = db_spans(traced)
    assert [s.name for s in found] == ["connect", f"SELECT {table}", "COMMIT"]
    for span in found:
        assert_child(span, parent, LIBRARY)


def test_an_async_pools_check_is_not_a_span(traced, dsn, table):
    from psycopg_pool import AsyncConnectionPool

    if not hasattr(AsyncConnectionPool, "check_connection"):
        pytest.skip("psycopg_pool < 3.2 has no check")

    async def main():
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, check=AsyncConnectionPool.check_connection) as pool:
            await pool.wait(timeout=10)
            with request_span() as parent:
                async with pool.connection() as conn:
                    cur = await conn.execute(f"SELECT name FROM {table} WHERE id = 1")
                    assert await cur.fetchone() == ("one",)
        return parent

    parent = asyncio.run(main())
    found = db_spans(traced)
    assert [s.name for s in found] == [f"SELECT {table}", "COMMIT"]
    for span in found:
        assert_child(span, parent, LIBRARY)


def test_no_span_when_instrumentation_is_suppressed(traced, conn, table, parent, suppressed):
    conn.execute(f"SELECT * FROM {table}")
    assert db_spans(traced) == []


def test_a_pool_opened_in_a_request_does_not_keep_its_context(traced, dsn, table):
    from psycopg_pool import ConnectionPool

    apply_hook("autotrace.hooks.threading", ("threading", "patch"))  # threads carry the context, as under the agent
    pool = ConnectionPool(dsn, min_size=2, max_size=2, open=False)
    try:
        with request_span() as parent:
            pool.open(wait=True, timeout=10)  # the workers start here, and connect
            with pool.connection() as conn:
                assert conn.execute(f"SELECT name FROM {table} WHERE id = 1").fetchone() == ("one",)
    finally:
        pool.close()
    found = db_spans(traced)
    assert [s.name for s in found] == [f"SELECT {table}", "COMMIT"]  # no connect of the workers
    for span in found:
        assert_child(span, parent, LIBRARY)


def test_an_async_pool_opened_in_a_request_does_not_keep_its_context(traced, dsn, table):
    from psycopg_pool import AsyncConnectionPool

    async def main():
        pool = AsyncConnectionPool(dsn, min_size=2, max_size=2, open=False)
        try:
            with request_span() as parent:
                await pool.open(wait=True, timeout=10)  # its worker tasks are made here, and connect
                async with pool.connection() as conn:
                    cur = await conn.execute(f"SELECT name FROM {table} WHERE id = 1")
                    assert await cur.fetchone() == ("one",)
        finally:
            await pool.close()
        return parent

    parent = asyncio.run(main())
    found = db_spans(traced)
    assert [s.name for s in found] == [f"SELECT {table}", "COMMIT"]
    for span in found:
        assert_child(span, parent, LIBRARY)
