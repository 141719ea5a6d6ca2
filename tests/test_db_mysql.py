"""PyMySQL and mysqlclient (MySQLdb) against a real MariaDB: one CLIENT span per cursor call, connect, commit, rollback.

In process, with the in-memory exporter; each test runs for both drivers (the same
DB-API calls). The same drivers under ``autotrace run`` are in
integration/test_db_mysql_asyncpg.py.
"""

from __future__ import annotations

import importlib
import uuid

import pytest
from opentelemetry import context
from opentelemetry.trace import StatusCode

from autotrace import db, patching
from db_checks import assert_child, db_env, db_spans  # noqa: F401 (db_env: a fixture)

# name -> (the module the hook waits for, the hook)
DRIVERS = {"pymysql": ("pymysql", "autotrace.hooks.pymysql"), "mysqlclient": ("MySQLdb.connections", "autotrace.hooks.mysqlclient")}


class Driver:
    def __init__(self, name: str, server) -> None:
        module_name, hook_name = DRIVERS[name]
        self.name = name
        self.patched = importlib.import_module(module_name)
        self.module = importlib.import_module(module_name.partition(".")[0])
        self.hook = importlib.import_module(hook_name)
        self.server = server
        self.opened: list = []

    def connect(self, own: bool = False, **extra):
        """A connection; closed at the end of the test unless ``own`` (the caller closes it)."""
        s = self.server
        connection = self.module.connect(
            host=s.host, port=s.port, user=s.user, password=s.password, database=s.database, **extra
        )
        if not own:
            self.opened.append(connection)
        return connection

    def close_all(self) -> None:
        """Close what a test left open (a failed one): its transaction would hold the table."""
        for connection in self.opened:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - closed already
                pass

    @property
    def programming_error(self) -> type:
        return self.module.ProgrammingError

    @property
    def scope(self) -> str:
        return "autotrace.db." + self.name

    def cursor_classes(self) -> list[type]:
        cursors = self.module.cursors
        return [cursors.Cursor, cursors.DictCursor, cursors.SSCursor, cursors.SSDictCursor]


@pytest.fixture(params=sorted(DRIVERS))
def driver(request, mariadb_server, spans, db_env):
    """The driver with its hook applied (the originals put back after); db settings at their defaults."""
    mark = len(patching.history)
    made = Driver(request.param, mariadb_server)
    made.spans = spans
    made.hook.patch(made.patched)
    yield made
    made.close_all()
    patching.undo(mark)


@pytest.fixture
def table(driver):
    """A table of its own (id, name), with three rows; made and dropped untraced."""
    name = "t_" + uuid.uuid4().hex[:12]
    connection = driver.connect(own=True, autocommit=True)
    cursor = connection.cursor()
    cursor.execute(f"CREATE TABLE {name} (id INT PRIMARY KEY, name VARCHAR(40))")
    cursor.execute(f"INSERT INTO {name} VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')")
    yield name
    driver.close_all()
    cursor.execute("SET SESSION lock_wait_timeout = 10")
    cursor.execute(f"DROP TABLE {name}")
    connection.close()


def connected(driver, **extra):
    """A connection made in the test's request, its connect span dropped."""
    connection = driver.connect(**extra)
    assert [s.name for s in db_spans(driver.spans)] == ["connect"]
    driver.spans.clear()
    return connection


def assert_target(span, driver) -> None:
    attributes = span.attributes
    assert attributes["db.system.name"] == "mariadb"  # the server's handshake says MariaDB
    assert attributes["db.namespace"] == driver.server.database
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == driver.server.port
    assert span.instrumentation_scope.name == driver.scope


def test_execute_is_one_span_with_the_sanitized_text(driver, table, parent):
    connection = driver.connect(autocommit=True)
    driver.spans.clear()  # its connect span
    cursor = connection.cursor()
    before = context.get_current()
    sql = f"SELECT name FROM {table} WHERE id = 2 AND name <> 'secret'"
    assert cursor.execute(sql) == 1  # the driver's return value, untouched
    assert context.get_current() is before
    assert cursor.fetchall() == (("bob",),)
    [span] = db_spans(driver.spans)
    assert_child(span, parent)
    assert_target(span, driver)
    text = span.attributes["db.query.text"]
    assert text == db.sanitize(sql, "mariadb") == f"SELECT name FROM {table} WHERE id = ? AND name <> ?"
    assert span.attributes["db.operation.name"] == "SELECT"
    assert span.attributes["db.collection.name"] == table
    assert span.name == f"SELECT {table}"
    assert span.status.status_code == StatusCode.UNSET
    connection.close()


def test_parameters_are_recorded_as_placeholders(driver, table, parent):
    connection = connected(driver)
    cursor = connection.cursor()
    cursor.execute(f"SELECT name FROM {table} WHERE id = %s", (3,))
    assert cursor.fetchone() == ("cy",)
    cursor.execute(f"SELECT name FROM {table} WHERE name = %(name)s", {"name": "ann"})
    assert cursor.fetchone() == ("ann",)
    first, second = db_spans(driver.spans)
    assert first.attributes["db.query.text"] == f"SELECT name FROM {table} WHERE id = %s"
    assert second.attributes["db.query.text"] == f"SELECT name FROM {table} WHERE name = %(name)s"
    connection.close()


def test_every_cursor_class_is_covered(driver, table, parent):
    connection = connected(driver)
    for cursor_class in driver.cursor_classes():
        cursor = connection.cursor(cursor_class)
        cursor.execute(f"SELECT id FROM {table} ORDER BY id")
        assert len(list(cursor.fetchall())) == 3
        cursor.close()
    spans = db_spans(driver.spans)
    assert [s.name for s in spans] == [f"SELECT {table}"] * 4
    for span in spans:
        assert_child(span, parent)
    connection.close()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO {table} (id, name) VALUES (%s, %s)",  # sent as multi-row INSERTs
        "UPDATE {table} SET name = %s WHERE id = %s",  # one execute per row, inside
    ],
    ids=["insert", "update"],
)
def test_executemany_is_one_span_with_the_batch_size(driver, table, parent, statement):
    connection = connected(driver)
    cursor = connection.cursor()
    sql = statement.format(table=table)
    rows = [(10, "x"), (11, "y"), (12, "z")] if sql.startswith("INSERT") else [("x", 1), ("y", 2), ("z", 3)]
    assert cursor.executemany(sql, rows) == 3
    connection.commit()
    executemany, commit = db_spans(driver.spans)
    assert_child(executemany, parent)
    assert_target(executemany, driver)
    assert executemany.attributes["db.operation.batch.size"] == 3
    assert executemany.attributes["db.query.text"] == sql
    assert executemany.attributes["db.operation.name"] == "BATCH " + sql.split()[0]
    assert commit.name == "COMMIT"
    connection.close()


def test_executemany_of_an_iterator_is_one_span_and_the_rows_all_go(driver, table, parent):
    connection = connected(driver, autocommit=True)
    cursor = connection.cursor()
    cursor.executemany(f"UPDATE {table} SET name = %s WHERE id = %s", iter([("p", 1), ("q", 2)]))
    cursor.execute(f"SELECT name FROM {table} ORDER BY id")
    assert [row[0] for row in cursor.fetchall()] == ["p", "q", "cy"]
    many, select = db_spans(driver.spans)
    assert "db.operation.batch.size" not in many.attributes  # not known without consuming it
    assert many.attributes["db.operation.name"] == "UPDATE"
    connection.close()


def test_callproc_is_one_span(driver, parent):
    procedure = "p_" + uuid.uuid4().hex[:12]
    connection = driver.connect(autocommit=True)
    connection.cursor().execute(f"CREATE PROCEDURE {procedure}(IN a INT) BEGIN SELECT a + 1; END")
    driver.spans.clear()
    try:
        cursor = connection.cursor()
        assert cursor.callproc(procedure, (41,)) == (41,)
        assert cursor.fetchall() == ((42,),)
        while cursor.nextset():
            pass
        [span] = db_spans(driver.spans)
        assert_child(span, parent)
        assert span.name == span.attributes["db.query.summary"] == f"CALL {procedure}"
        assert span.attributes["db.stored_procedure.name"] == procedure
        assert span.attributes["db.query.text"] == f"CALL {procedure}"  # not the SET of its argument 41
    finally:
        connection.cursor().execute(f"DROP PROCEDURE {procedure}")
        connection.close()


def test_connect_commit_rollback_are_spans_inside_a_request(driver, table, parent):
    connection = driver.connect()
    cursor = connection.cursor()
    cursor.execute(f"UPDATE {table} SET name = 'z' WHERE id = 1")
    connection.rollback()
    connection.begin()
    cursor.execute(f"UPDATE {table} SET name = 'w' WHERE id = 2")
    connection.commit()
    connection.close()
    names = [s.name for s in db_spans(driver.spans)]
    assert names == ["connect", f"UPDATE {table}", "ROLLBACK", "BEGIN", f"UPDATE {table}", "COMMIT"]
    cursor = driver.connect().cursor()
    cursor.execute(f"SELECT name FROM {table} ORDER BY id")
    assert [row[0] for row in cursor.fetchall()] == ["ann", "w", "cy"]  # rolled back, committed
    connect = db_spans(driver.spans)[0]
    assert_child(connect, parent)
    assert_target(connect, driver)  # what the handshake said, set when it returned
    for span in db_spans(driver.spans):
        assert_child(span, parent)
        assert span.status.status_code == StatusCode.UNSET


def test_a_failed_connect_is_recorded_and_raised_unchanged(driver, parent):
    server = driver.server
    with pytest.raises(driver.module.OperationalError) as raised:
        driver.module.connect(host=server.host, port=server.port, user=server.user, password="wrong", database=server.database)
    [span] = db_spans(driver.spans)
    assert span.name == "connect"
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["db.response.status_code"] == str(raised.value.args[0]) == "1045"  # access denied


def test_bad_sql_gets_the_servers_error_unchanged_and_the_span_records_it(driver, parent):
    connection = driver.connect()
    untraced = connection.cursor()
    with pytest.raises(driver.programming_error) as plain:
        _original(driver, "execute")(untraced, "SELEC 1")  # the same call without the hook
    driver.spans.clear()
    cursor = connection.cursor()
    with pytest.raises(driver.programming_error) as traced:
        cursor.execute("SELEC 1")
    assert type(traced.value) is type(plain.value) and traced.value.args == plain.value.args
    assert traced.value.args[0] == 1064
    [span] = db_spans(driver.spans)
    assert_child(span, parent)
    assert span.status.status_code == StatusCode.ERROR
    exc_type = type(traced.value)
    assert span.attributes["error.type"] == f"{exc_type.__module__}.{exc_type.__qualname__}"
    assert span.attributes["db.response.status_code"] == "1064"
    assert [event.name for event in span.events] == ["exception"]
    connection.close()


def _original(driver, name: str):
    cursor_class = driver.module.cursors.BaseCursor if driver.name == "mysqlclient" else driver.module.cursors.Cursor
    return getattr(cursor_class.__dict__[name], patching.ORIGINAL)


def test_no_spans_outside_a_request_by_default(driver, table):
    connection = driver.connect()
    cursor = connection.cursor()
    cursor.execute(f"SELECT * FROM {table}")
    cursor.executemany(f"UPDATE {table} SET name = %s WHERE id = %s", [("a", 1), ("b", 2)])
    connection.commit()
    connection.close()
    assert db_spans(driver.spans) == []


def test_root_spans_when_asked(driver, table, db_env):
    db_env(AUTOTRACE_DB_ROOT_SPANS="true")
    connection = driver.connect()
    connection.cursor().execute(f"SELECT * FROM {table}")
    connection.close()
    connect, select = db_spans(driver.spans)
    assert connect.name == "connect" and connect.parent is None
    assert select.name == f"SELECT {table}" and select.parent is None


def test_statements_inside_connect_are_not_spans_of_their_own(driver, parent):
    # init_command runs through the driver's own cursor (PyMySQL) or query (mysqlclient)
    # during connect: part of the connect span.
    connection = driver.connect(init_command="SET @x = 1")
    connection.close()
    assert [s.name for s in db_spans(driver.spans)] == ["connect"]


def test_sql_comment_is_appended_when_asked(driver, table, parent, db_env):
    db_env(AUTOTRACE_SQL_COMMENT="true")
    connection = driver.connect(autocommit=True)
    driver.spans.clear()  # its connect span
    cursor = connection.cursor()
    # The server's own record of the statement it runs (MariaDB keeps the comment).
    sql = "SELECT info FROM information_schema.processlist WHERE id = CONNECTION_ID() AND %s = 1"
    cursor.execute(sql, (1,))
    [(received,)] = cursor.fetchall()
    received = received.decode() if isinstance(received, bytes) else received
    [span] = db_spans(driver.spans)
    traceparent = f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{span.context.trace_flags:02x}"
    assert received == sql.replace("%s", "1") + f" /*traceparent='{traceparent}'*/"
    assert "traceparent" not in span.attributes["db.query.text"]
    connection.close()


def test_suppressed_instrumentation_makes_no_span(driver, table, parent, suppressed):
    connection = driver.connect()
    connection.cursor().execute(f"SELECT * FROM {table}")
    connection.close()
    assert db_spans(driver.spans) == []


def test_sql_comment_with_a_tracestate_reaches_the_server_as_made(driver, db_env):
    """A URL-encoded tracestate has "%": the driver's own %-formatting must leave it as it is."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState, set_span_in_context

    db_env(AUTOTRACE_SQL_COMMENT="true")
    caller = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "k:v/x")]))
    token = context.attach(set_span_in_context(NonRecordingSpan(caller)))
    try:
        connection = connected(driver, autocommit=True)
        cursor = connection.cursor()
        sql = "SELECT info FROM information_schema.processlist WHERE id = CONNECTION_ID() AND %s = 1"
        cursor.execute(sql, (1,))
        [(received,)] = cursor.fetchall()
    finally:
        context.detach(token)
    received = received.decode() if isinstance(received, bytes) else received
    [span] = db_spans(driver.spans)
    traceparent = f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{span.context.trace_flags:02x}"
    assert received == sql.replace("%s", "1") + f" /*traceparent='{traceparent}',tracestate='vendor%3Dk%3Av%2Fx'*/"


def test_the_status_code_is_the_error_number_of_a_mysql_driver_error():
    import MySQLdb
    import pymysql

    assert db.status_code_of(pymysql.err.ProgrammingError(1064, "syntax")) == "1064"
    with_sqlstate = pymysql.err.ProgrammingError(1064, "syntax")
    with_sqlstate.sqlstate = "42000"  # PyMySQL 1.2 sets it too: the number still wins
    assert db.status_code_of(with_sqlstate) == "1064"
    assert db.status_code_of(MySQLdb.ProgrammingError(1146, "no table")) == "1146"
    assert db.status_code_of(pymysql.err.InterfaceError("closed")) is None
    assert db.status_code_of(OSError(111, "Connection refused")) is None
    assert db.status_code_of(ValueError(3)) is None
