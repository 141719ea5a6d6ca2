"""psycopg2 against a real PostgreSQL: one CLIENT span per statement, with the app's own objects and errors."""

from __future__ import annotations

import io

import pytest
from db_checks import (  # noqa: F401  (db_env, dsn: fixtures)
    assert_child,
    assert_failed,
    assert_statement,
    db_env,
    db_spans,
    dsn,
    hooked,
    server_attributes,
    table_name,
)

import psycopg2
import psycopg2.errors  # noqa: E402
import psycopg2.extensions  # noqa: E402
import psycopg2.extras  # noqa: E402
import psycopg2.pool  # noqa: E402
import psycopg2.sql  # noqa: E402

LIBRARY = "psycopg2"


@pytest.fixture
def traced(spans, db_env):
    """The psycopg2 hooks applied as under the agent; the originals put back after."""
    yield from hooked(spans, "autotrace.hooks.psycopg2", ("psycopg2", "patch"), ("psycopg2.extras", "patch_extras"))


@pytest.fixture
def table(postgres_server, dsn):
    """A fresh table (id int, name text), made and dropped untraced."""
    name = table_name()
    plain = psycopg2.extensions.connection(dsn + " options='-c lock_timeout=10000'")  # never traced
    plain.autocommit = True
    with plain.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text)")
        cur.execute(f"INSERT INTO {name} VALUES (1, 'one'), (2, 'two')")
    yield name
    with plain.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {name}")
    plain.close()


@pytest.fixture
def conn(traced, dsn, table):
    """A connection made by psycopg2.connect before any span is current (no connect span), closed before the table is dropped."""
    made = psycopg2.connect(dsn)
    yield made
    made.close()


def test_execute_is_one_span_child_of_the_current_one_with_sanitized_text(traced, conn, table, postgres_server, parent):
    cur = conn.cursor()
    cur.execute(f"SELECT name FROM {table} WHERE id = %s AND name <> 'secret'", (1,))
    assert cur.fetchall() == [("one",)]
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    text = f"SELECT name FROM {table} WHERE id = %s AND name <> ?"
    assert_statement(span, postgres_server, text, "SELECT", table, f"SELECT {table}")


def test_no_span_outside_a_trace_by_default(traced, dsn, table):
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
        cur.fetchall()
    conn.commit()
    conn.close()
    assert db_spans(traced) == []


def test_a_root_span_outside_a_trace_when_asked(traced, db_env, conn, table):
    db_env(AUTOTRACE_DB_ROOT_SPANS="true")
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
    [span] = db_spans(traced)
    assert span.parent is None and span.name == f"SELECT {table}"


def test_bad_sql_gets_postgresqls_own_error_and_the_span_records_it(traced, conn, dsn, postgres_server, parent):
    missing = table_name()
    plain = psycopg2.extensions.connection(dsn)
    with pytest.raises(psycopg2.errors.UndefinedTable) as untraced:
        plain.cursor().execute(f"SELECT * FROM {missing}")
    plain.close()
    cur = conn.cursor()
    with pytest.raises(psycopg2.errors.UndefinedTable) as raised:
        cur.execute(f"SELECT * FROM {missing}")
    assert raised.value.pgcode == "42P01" and str(raised.value) == str(untraced.value)
    conn.rollback()  # the failed transaction: a ROLLBACK goes to the server
    failed, rollback = db_spans(traced)
    assert_child(failed, parent, LIBRARY)
    assert failed.name == f"SELECT {missing}"
    assert_failed(failed, "psycopg2.errors.UndefinedTable", "42P01")
    assert rollback.name == "ROLLBACK"
    assert dict(rollback.attributes) == {**server_attributes(postgres_server), "db.operation.name": "ROLLBACK"}


def test_cursor_factories_give_the_classes_asked_for(traced, dsn, table, parent):
    query = f"SELECT id, name FROM {table} WHERE id = 1"
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            assert isinstance(cur, psycopg2.extras.RealDictCursor)
            cur.execute(query)
            assert cur.fetchall() == [{"id": 1, "name": "one"}]
        conn.cursor_factory = psycopg2.extras.NamedTupleCursor
        with conn.cursor() as cur:
            assert isinstance(cur, psycopg2.extras.NamedTupleCursor)
            cur.execute(query)
            assert cur.fetchone().name == "one"
        with conn.cursor(None, psycopg2.extras.DictCursor) as cur:  # positional
            assert isinstance(cur, psycopg2.extras.DictCursor)
            cur.execute(query)
            assert cur.fetchone()["name"] == "one"
    finally:
        conn.close()
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.DictConnection)
    try:
        assert isinstance(conn, psycopg2.extras.DictConnection)
        with conn.cursor() as cur:
            assert isinstance(cur, psycopg2.extras.DictCursor)  # the connection class's choice
            cur.execute(query)
            assert cur.fetchone()["name"] == "one"
    finally:
        conn.close()
    conn = psycopg2.connect(dsn, cursor_factory=psycopg2.extras.RealDictCursor)
    try:
        with conn.cursor() as cur:
            assert isinstance(cur, psycopg2.extras.RealDictCursor)
            cur.execute(query)
            assert cur.fetchone() == {"id": 1, "name": "one"}
    finally:
        conn.close()
    found = db_spans(traced)
    select = f"SELECT {table}"
    assert [s.name for s in found] == ["connect", select, select, select, "connect", select, "connect", select]
    for span in found:
        assert_child(span, parent, LIBRARY)


def test_executemany_is_one_span_with_the_batch_size(traced, conn, table, postgres_server, parent):
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(10, "a"), (11, "b"), (12, "c")])
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert span.attributes["db.operation.batch.size"] == 3
    assert span.attributes["db.operation.name"] == "BATCH INSERT"
    assert span.attributes["db.query.text"] == f"INSERT INTO {table} (id, name) VALUES (%s, %s)"


def test_execute_values_and_execute_batch_are_one_span_each(traced, conn, table, parent):
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(cur, f"INSERT INTO {table} (id, name) VALUES %s", [(20, "a"), (21, "b"), (22, "c")], page_size=2)
        psycopg2.extras.execute_batch(cur, f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(23, "d"), (24, "e")], page_size=1)
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone() == (7,)
    values, batch, count = db_spans(traced)
    for span in (values, batch, count):
        assert_child(span, parent, LIBRARY)
    assert values.attributes["db.operation.batch.size"] == 3
    assert values.attributes["db.query.text"] == f"INSERT INTO {table} (id, name) VALUES %s"
    assert batch.attributes["db.operation.batch.size"] == 2
    assert batch.attributes["db.query.text"] == f"INSERT INTO {table} (id, name) VALUES (%s, %s)"


def test_callproc_is_a_span_named_by_the_procedure(traced, conn, table, parent):
    function = "f_" + table
    with conn.cursor() as cur:
        cur.execute(f"CREATE FUNCTION {function}(a int) RETURNS int AS 'SELECT a + 1' LANGUAGE sql")
        traced.clear()
        cur.callproc(function, (41,))
        assert cur.fetchone() == (42,)
    conn.rollback()
    call, _ = db_spans(traced)
    assert_child(call, parent, LIBRARY)
    assert call.name == f"CALL {function}"
    assert call.attributes["db.stored_procedure.name"] == function
    assert call.attributes["db.operation.name"] == "CALL"
    assert "db.query.text" not in call.attributes


def test_copy_methods_are_one_span_each(traced, conn, table, parent):
    with conn.cursor() as cur:
        cur.copy_from(io.StringIO("30\tx\n31\ty\n"), table, columns=("id", "name"))
        out = io.StringIO()
        cur.copy_to(out, table)
        assert "30\tx" in out.getvalue()
        out = io.StringIO()
        cur.copy_expert(f"COPY {table} TO STDOUT", out)
        assert out.getvalue().count("\n") == 4
    copy_from, copy_to, expert = db_spans(traced)
    for span in (copy_from, copy_to, expert):
        assert_child(span, parent, LIBRARY)
        assert span.attributes["db.operation.name"] == "COPY"
    assert copy_from.name == copy_to.name == expert.name == f"COPY {table}"
    assert copy_from.attributes["db.collection.name"] == table
    assert expert.attributes["db.query.text"] == f"COPY {table} TO STDOUT"


def test_a_named_cursor_is_a_span_at_execute_and_its_fetches_are_none(traced, conn, table, parent):
    with conn.cursor("server_side") as cur:
        cur.itersize = 1
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        assert [row for row in cur] == [(1,), (2,)]  # a FETCH per row
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert span.name == f"SELECT {table}"


def test_commit_and_rollback_are_spans_only_when_a_transaction_is_open(traced, conn, table, parent):
    conn.commit()  # nothing open: psycopg2 sends nothing
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (40, 'x')")
    conn.commit()
    conn.rollback()  # nothing open
    with conn:  # the block commits through conn.commit()
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {table} VALUES (41, 'y')")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {table} VALUES (42, 'z')")
    conn.commit()
    assert [s.name for s in db_spans(traced)] == [f"INSERT {table}", "COMMIT", f"INSERT {table}", "COMMIT", f"INSERT {table}"]


def test_connect_is_a_span_only_in_a_trace(traced, dsn, postgres_server, parent):
    conn = psycopg2.connect(dsn)
    conn.close()
    [span] = db_spans(traced)
    assert_child(span, parent, LIBRARY)
    assert span.name == "connect"
    assert dict(span.attributes) == server_attributes(postgres_server)


def test_a_failed_connect_is_recorded(traced, postgres_server, parent):
    from ports import free_port

    port = free_port()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host="127.0.0.1", port=port, dbname="nothing", user="nobody", connect_timeout=5)
    [span] = db_spans(traced)
    assert span.name == "connect"
    assert span.attributes["server.port"] == port and span.attributes["db.namespace"] == "nothing"
    assert span.attributes["error.type"] == "psycopg2.OperationalError"


def test_composed_statements_are_recorded_as_psycopg2_sends_them(traced, conn, table, parent):
    query = psycopg2.sql.SQL("SELECT {} FROM {} WHERE id = {}").format(
        psycopg2.sql.Identifier("name"), psycopg2.sql.Identifier(table), psycopg2.sql.Literal(2)
    )
    with conn.cursor() as cur:
        cur.execute(query)
        assert cur.fetchone() == ("two",)
    [span] = db_spans(traced)
    assert span.attributes["db.query.text"] == f'SELECT "name" FROM "{table}" WHERE id = ?'


def test_a_pools_connections_are_traced_and_a_checkout_is_not_a_span(traced, dsn, table, parent):
    pool = psycopg2.pool.ThreadedConnectionPool(1, 2, dsn)  # connects now: in the test's trace
    traced.clear()
    try:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute(f"SELECT name FROM {table} WHERE id = %s", (2,))
            assert cur.fetchone() == ("two",)
        pool.putconn(conn)  # the pool rolls the open transaction back: that goes to the server
    finally:
        pool.closeall()
    select, rollback = db_spans(traced)
    for span in (select, rollback):
        assert_child(span, parent, LIBRARY)
    assert (select.name, rollback.name) == (f"SELECT {table}", "ROLLBACK")


def test_statement_off_records_no_text(traced, db_env, conn, table, parent):
    db_env(AUTOTRACE_DB_STATEMENT="off")
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table} WHERE name = 'one'")
    [span] = db_spans(traced)
    assert "db.query.text" not in span.attributes and span.name == f"SELECT {table}"


def test_sql_comment_carries_the_spans_context_when_asked(traced, db_env, conn, parent):
    db_env(AUTOTRACE_SQL_COMMENT="true")
    with conn.cursor() as cur:
        cur.execute("SELECT current_query(), %s", (1,))
        [(sent, _)] = cur.fetchall()
        cur.executemany("SELECT %s", [(1,), (2,)])
        assert b"traceparent" not in cur.query  # the statement psycopg2 repeats is left alone
    span = db_spans(traced)[0]
    context = span.get_span_context()
    flags = f"{int(context.trace_flags):02x}"
    assert sent == f"SELECT current_query(), 1 /*traceparent='00-{context.trace_id:032x}-{context.span_id:016x}-{flags}'*/"
    assert span.attributes["db.query.text"] == "SELECT current_query(), %s"


def test_a_logging_connection_logs_and_is_traced(traced, dsn, table, parent):
    import logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.psycopg2.logging")
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LoggingConnection)
    try:
        conn.initialize(logger)
        with conn.cursor() as cur:
            assert isinstance(cur, psycopg2.extras.LoggingCursor)
            cur.execute(f"SELECT name FROM {table} WHERE id = %s", (1,))
    finally:
        conn.close()
    plain = psycopg2.extras.LoggingConnection(dsn)  # made directly: untraced
    try:
        plain.initialize(logger)
        plain.cursor().execute(f"SELECT name FROM {table} WHERE id = %s", (1,))
    finally:
        plain.close()
    assert len(records) == 2 and records[0] == records[1]  # the app's logger got what it gets without the agent
    assert f"SELECT name FROM {table} WHERE id = 1" in records[0]
    assert [s.name for s in db_spans(traced)] == ["connect", f"SELECT {table}"]


def test_what_cannot_be_traced_works_untraced(traced, dsn, table, parent):
    from psycopg2.extras import wait_select

    def factory(*args, **kwargs):  # a function, not a class: nothing to subclass
        return psycopg2.extensions.cursor(*args, **kwargs)

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor(cursor_factory=factory) as cur:
            assert type(cur) is psycopg2.extensions.cursor
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone() == (2,)
    finally:
        conn.close()
    asynchronous = psycopg2.connect(dsn, async_=True)  # execute only sends: not traced
    try:
        wait_select(asynchronous)
        cur = asynchronous.cursor()
        cur.execute(f"SELECT count(*) FROM {table}")
        wait_select(asynchronous)
        assert cur.fetchone() == (2,)
    finally:
        asynchronous.close()
    assert [s.name for s in db_spans(traced)] == ["connect"]


def test_execute_values_returns_what_it_fetched(traced, conn, table, parent):
    with conn.cursor() as cur:
        got = psycopg2.extras.execute_values(cur, f"INSERT INTO {table} (id, name) VALUES %s RETURNING id", [(80, "a"), (81, "b")], fetch=True)
    assert got == [(80,), (81,)]
    [span] = db_spans(traced)
    assert span.attributes["db.operation.batch.size"] == 2


def test_no_span_when_instrumentation_is_suppressed(traced, conn, table, parent, suppressed):
    with conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {table}")
    assert db_spans(traced) == []


def test_classes_made_on_the_fly_are_traced_up_to_a_bound(traced, conn, table, parent, monkeypatch, warnings):
    import autotrace.hooks.psycopg2 as hook

    monkeypatch.setattr(hook, "MAX_TRACED_CLASSES", len(hook._traced_cursors))

    class Mine(psycopg2.extensions.cursor):
        pass

    for _ in range(2):
        with conn.cursor(cursor_factory=Mine) as cur:
            assert type(cur) is Mine  # untraced: the app's class itself
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone() == (2,)
    assert db_spans(traced) == []
    [line] = warnings()
    assert "cursor classes" in line
