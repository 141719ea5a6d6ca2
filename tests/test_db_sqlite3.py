"""sqlite3: one CLIENT span per execute/executemany/executescript, on connections and cursors.

In process, the hook applied to the real ``sqlite3`` module (put back after each test).
The same under ``autotrace run``, in a service's requests: integration/test_db_sqlite3_agent.py.
"""

from __future__ import annotations

import importlib
import sqlite3

import pytest
from opentelemetry import context
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import db, patching
import db_checks as checks
from db_checks import db_env  # noqa: F401 (a fixture)

SQLITE_ERRORNAME = hasattr(sqlite3.Error, "sqlite_errorname")  # Python 3.11+


@pytest.fixture
def hooked(spans, db_env):
    """The sqlite3 hook applied, database settings at their defaults; yields the exporter."""
    mark = len(patching.history)
    importlib.import_module("autotrace.hooks.sqlite3").patch(sqlite3)
    yield spans
    patching.undo(mark)


def db_spans(exporter) -> list:
    return checks.db_spans(exporter, "sqlite3")


def test_each_query_is_one_span_under_the_current_one(hooked, parent, tmp_path):
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(str(path))
    assert isinstance(conn, sqlite3.Connection)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    cur = conn.cursor()
    assert isinstance(cur, sqlite3.Cursor)
    before = context.get_current()
    assert cur.execute("INSERT INTO items (name, price) VALUES ('pen', 1.5)") is cur
    assert context.get_current() is before
    cur.executemany("INSERT INTO items (name, price) VALUES (?, ?)", [("a", 1), ("b", 2), ("c", 3)])
    rows = conn.execute("SELECT name FROM items WHERE price > 1 ORDER BY id").fetchall()
    assert rows == [("pen",), ("b",), ("c",)]
    conn.executescript("UPDATE items SET price = 0 WHERE id = 1; DELETE FROM items WHERE name = 'c';")
    conn.commit()
    conn.close()

    spans = db_spans(hooked)
    assert [s.name for s in spans] == [
        "CREATE TABLE items",
        "INSERT items",
        "INSERT items",
        "SELECT items",
        "UPDATE items DELETE items",
    ]
    assert len(hooked.get_finished_spans()) == 5  # nothing else (commit and close are not spans)
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["db.system.name"] == "sqlite"
        assert span.attributes["db.namespace"] == str(path)
    create, insert, many, select, script = spans
    assert insert.attributes["db.query.text"] == "INSERT INTO items (name, price) VALUES (?, ?)"
    assert insert.attributes["db.collection.name"] == "items"
    assert insert.attributes["db.operation.name"] == "INSERT"
    assert many.attributes["db.operation.batch.size"] == 3
    assert many.attributes["db.operation.name"] == "BATCH INSERT"
    assert select.attributes["db.query.text"] == "SELECT name FROM items WHERE price > ? ORDER BY id"
    assert script.attributes["db.query.text"] == "UPDATE items SET price = ? WHERE id = ?; DELETE FROM items WHERE name = ?;"
    assert "db.operation.name" not in script.attributes  # two statements: no one operation
    assert create.attributes["db.operation.name"] == "CREATE TABLE"


def test_an_iterator_given_to_executemany_is_not_consumed_for_its_size(hooked, parent):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a)")
    given = iter([(1,), (2,)])
    conn.executemany("INSERT INTO t VALUES (?)", given)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)
    spans = db_spans(hooked)
    assert "db.operation.batch.size" not in spans[1].attributes
    assert spans[1].attributes["db.namespace"] == ":memory:"
    conn.close()


def test_bad_sql_gets_sqlites_own_error_and_the_span_records_it(hooked, parent):
    conn = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError) as raised:
        conn.execute("SELECT * FROM missing WHERE id = 7")
    assert str(raised.value) == "no such table: missing"
    cur = conn.cursor()
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        cur.execute("SELEC 1")
    first, second = db_spans(hooked)
    for span in (first, second):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "sqlite3.OperationalError"
        if SQLITE_ERRORNAME:
            assert span.attributes["db.response.status_code"] == "SQLITE_ERROR"
    assert first.attributes["db.query.text"] == "SELECT * FROM missing WHERE id = ?"
    assert db.current() is None
    conn.close()


def test_the_apps_own_classes_are_kept_and_traced(hooked, parent):
    class Conn(sqlite3.Connection):
        def tag(self):
            return "mine"

    class Cur(sqlite3.Cursor):
        def execute(self, sql, parameters=()):
            self.seen = sql
            return super().execute(sql, parameters)

    conn = sqlite3.connect(":memory:", factory=Conn)
    assert isinstance(conn, Conn) and conn.tag() == "mine"
    assert type(conn).__name__ == "Conn"
    cur = conn.cursor(Cur)
    assert isinstance(cur, Cur)
    cur.execute("SELECT 1")
    assert cur.seen == "SELECT 1"
    assert cur.fetchone() == (1,)
    again = sqlite3.connect(":memory:", 5.0, 0, "DEFERRED", True, Conn)  # factory given by position
    assert type(again) is type(conn)  # one traced class per class asked for
    assert type(again.cursor(Cur)) is type(cur)
    again.execute("SELECT 2")
    spans = db_spans(hooked)
    assert [s.attributes["db.query.text"] for s in spans] == ["SELECT ?", "SELECT ?"]  # one span each, no duplicate
    conn.close()
    again.close()


def test_a_connection_class_overriding_execute_gets_one_span(hooked, parent):
    class Conn(sqlite3.Connection):
        def execute(self, sql, parameters=()):
            return self.cursor().execute(sql, parameters)

    conn = sqlite3.connect(":memory:", factory=Conn)
    assert conn.execute("SELECT 3").fetchone() == (3,)
    assert len(db_spans(hooked)) == 1
    conn.close()


def test_the_cursor_connection_execute_returns_traces_later_queries(hooked, parent):
    conn = sqlite3.connect(":memory:")
    cur = conn.execute("SELECT 1")
    cur.execute("SELECT 2")
    assert cur.fetchone() == (2,)
    assert len(db_spans(hooked)) == 2
    conn.row_factory = sqlite3.Row
    assert conn.execute("SELECT 5 AS five").fetchone()["five"] == 5  # the row factory still applies
    conn.close()


def test_dbapi2_connect_is_the_same_wrapper_family(hooked, parent):
    from sqlite3 import dbapi2

    conn = dbapi2.connect(":memory:")
    conn.execute("SELECT 1")
    assert len(db_spans(hooked)) == 1
    conn.close()


def test_no_span_outside_a_request_by_default(hooked):
    conn = sqlite3.connect(":memory:")
    conn.execute("SELECT 1")
    conn.close()
    assert db_spans(hooked) == []


def test_root_spans_when_asked(hooked, db_env):
    db_env(AUTOTRACE_DB_ROOT_SPANS="true")
    conn = sqlite3.connect(":memory:")
    conn.execute("SELECT 1")
    conn.close()
    [span] = db_spans(hooked)
    assert span.parent is None


def test_sql_comment_on_execute_and_executescript_not_executemany(hooked, parent, db_env):
    db_env(AUTOTRACE_SQL_COMMENT="true")
    sent: list[str] = []
    conn = sqlite3.connect(":memory:")
    conn.set_trace_callback(sent.append)  # what SQLite was given
    conn.execute("CREATE TABLE t (a)")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    conn.executescript("SELECT 1;")
    conn.close()
    create, many, script = db_spans(hooked)

    def traceparent(span):
        ids = span.context
        return f"/*traceparent='00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}'*/"

    assert sent[0] == f"CREATE TABLE t (a) {traceparent(create)}"
    inserts = [line for line in sent if line.startswith("INSERT")]
    assert inserts == ["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"]  # byte-identical, no comment
    assert f"SELECT 1 {traceparent(script)};" in sent
    assert create.attributes["db.query.text"] == "CREATE TABLE t (a)"  # recorded without the comment


def test_instrumentation_suppressed_is_no_span(hooked, parent, suppressed):
    conn = sqlite3.connect(":memory:")
    conn.execute("SELECT 1")
    conn.close()
    assert db_spans(hooked) == []


def test_the_viewers_store_is_never_traced(hooked, parent, tmp_path):
    from view_checks import body, new_trace_id, span

    from autotrace.view.otlp import decode_json
    from autotrace.view.store import Store

    store = Store(str(tmp_path / "view.db"))
    try:
        assert store.write(decode_json(body([span(new_trace_id(), "GET /")]))) == 1
        assert store.span_count == 1 and store.services() == ["svc"]
    finally:
        store.close()
    memory = Store(":memory:")
    memory.close()
    assert db_spans(hooked) == []
    # The hook is applied all the same: the app's connections are traced.
    conn = sqlite3.connect(":memory:")
    conn.execute("SELECT 1")
    conn.close()
    assert len(db_spans(hooked)) == 1


def test_a_wrong_factory_gets_sqlites_own_error(hooked):
    with pytest.raises(TypeError) as hooked_error:
        sqlite3.connect(":memory:", factory=int)
    original = patching.unwrapped(sqlite3.connect)
    assert original is not sqlite3.connect
    with pytest.raises(TypeError) as plain_error:
        original(":memory:", factory=int)
    assert str(hooked_error.value) == str(plain_error.value)
