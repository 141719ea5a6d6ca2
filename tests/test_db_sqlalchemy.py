"""SQLAlchemy: one CLIENT span per statement the engine executes, the driver's hook starting none.

In process, with the in-memory exporter, against the real servers (tests/dbservers.py)
and SQLite: sync engines over psycopg, psycopg2, PyMySQL, mysqlclient and sqlite3; async
engines over asyncpg and psycopg. Every database hook is applied as under the agent
(tests/db_hooks.py): the driver's hook sees SQLAlchemy's span in progress and starts
none. Drivers' own transaction spans (COMMIT, ROLLBACK) are theirs: they are allowed
next to the statements' spans, never a statement's second span. A new pooled connection
is SQLAlchemy's ``connect`` span, the driver's connect under it.

Run on SQLAlchemy 2.x (the test extra) and 1.4 (a venv with ``sqlalchemy<2``; the psycopg
3 cases skip there: 1.4 has no dialect for it).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

import db_hooks
from autotrace import patching
from db_checks import db_env  # noqa: F401 (a fixture)

import sqlalchemy
from sqlalchemy import text  # noqa: E402

SA2 = int(sqlalchemy.__version__.split(".")[0]) >= 2
# 1.4's engines in 2.0 style (Connection.commit); 2.x has only that style.
ENGINE_OPTIONS = {} if SA2 else {"future": True}
SCOPE = "autotrace.db.sqlalchemy"
# The drivers' own spans, allowed next to SQLAlchemy's: a transaction ended (COMMIT, ROLLBACK).
DRIVERS_OWN = ("COMMIT", "ROLLBACK")


@pytest.fixture
def hooked(spans, db_env):
    """Every database hook applied; database settings from a clean environment."""
    mark = len(patching.history)
    applied = db_hooks.apply()
    assert "sqlalchemy" in applied
    yield spans
    db_hooks.undo(mark)


class Db:
    """One engine of a case: its URL, the attributes its spans carry, a table of its own."""

    def __init__(self, url: str, system: str, server=None, tmp_path=None) -> None:
        self.url = url
        self.system = system
        self.table = "t_" + uuid.uuid4().hex[:12]
        if server is not None:
            self.attributes = {
                "db.system.name": system,
                "db.namespace": server.database,
                "server.address": server.host,
                "server.port": server.port,
            }
        else:
            self.attributes = {"db.system.name": "sqlite", "db.namespace": str(tmp_path / "shop.db")}


SYNC = ("postgresql+psycopg", "postgresql+psycopg2", "mysql+pymysql", "mysql+mysqldb", "sqlite")
ASYNC = ("postgresql+asyncpg", "postgresql+psycopg_async")


def make_db(request, scheme: str, tmp_path) -> Db:
    if not SA2 and scheme.startswith("postgresql+psycopg") and not scheme.startswith("postgresql+psycopg2"):
        pytest.skip(f"SQLAlchemy {sqlalchemy.__version__} has no psycopg 3 dialect (2.0 added it)")
    if scheme.startswith("postgresql"):
        server = request.getfixturevalue("postgres_server")
        return Db(server.url(scheme), "postgresql", server)
    if scheme.startswith("mysql"):
        server = request.getfixturevalue("mariadb_server")
        return Db(server.url(scheme), "mariadb", server)
    return Db(f"sqlite:///{tmp_path / 'shop.db'}", "sqlite", tmp_path=tmp_path)


@pytest.fixture(params=SYNC)
def sync_db(request, tmp_path, hooked):
    """(engine, Db): the engine connected once and its table made, outside any trace (no spans)."""
    db = make_db(request, request.param, tmp_path)
    engine = sqlalchemy.create_engine(db.url, pool_pre_ping=True, **ENGINE_OPTIONS)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {db.table} (id INTEGER PRIMARY KEY, name VARCHAR(40))")
    hooked.clear()
    yield engine, db
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {db.table}")
    engine.dispose()


def db_spans(exporter) -> list:
    """The statements' spans; the drivers' own spans (DRIVERS_OWN) are checked and left out."""
    found = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    for span in found:
        if span.instrumentation_scope.name != SCOPE:
            assert span.name in DRIVERS_OWN, f"a driver's span next to SQLAlchemy's: {span.name} {dict(span.attributes)}"
            assert (span.attributes.get("db.query.text") or span.name).rstrip(";") == span.name
    return [s for s in found if s.instrumentation_scope.name == SCOPE]


def assert_child(span, parent) -> None:
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id


def test_one_span_per_statement_child_of_the_current_span(sync_db, hooked, parent):
    engine, db = sync_db
    before = context.get_current()
    with engine.connect() as conn:
        conn.execute(text(f"INSERT INTO {db.table} (id, name) VALUES (:id, :name)"), {"id": 1, "name": "bob"})
        rows = conn.execute(text(f"SELECT name FROM {db.table} WHERE id = 1 AND name = 'bob'")).all()
        conn.commit()
    assert rows == [("bob",)]
    assert context.get_current() is before
    insert, select = db_spans(hooked)
    for span in (insert, select):
        assert span.kind == SpanKind.CLIENT
        assert_child(span, parent)
        assert span.status.status_code == StatusCode.UNSET
        for name, value in db.attributes.items():
            assert span.attributes[name] == value, name
    assert insert.name == f"INSERT {db.table}"
    assert insert.attributes["db.operation.name"] == "INSERT"
    assert insert.attributes["db.collection.name"] == db.table
    # Placeholders as the dialect writes them (values never), literals replaced by ?.
    assert insert.attributes["db.query.text"] in (
        f"INSERT INTO {db.table} (id, name) VALUES (%(id)s, %(name)s)",
        f"INSERT INTO {db.table} (id, name) VALUES (%s, %s)",
        f"INSERT INTO {db.table} (id, name) VALUES (?, ?)",
    )
    assert select.name == f"SELECT {db.table}"
    assert select.attributes["db.query.text"] == f"SELECT name FROM {db.table} WHERE id = ? AND name = ?"
    assert "bob" not in str(dict(insert.attributes)) + str(dict(select.attributes))


def test_orm_session_and_core_statements(sync_db, hooked, parent):
    from sqlalchemy import Column, Integer, String, delete, insert, select, update
    from sqlalchemy.orm import Session, declarative_base

    engine, db = sync_db
    Base = declarative_base()

    class Item(Base):
        __tablename__ = db.table
        id = Column(Integer, primary_key=True)
        name = Column(String(40))

    with Session(engine) as session:
        session.add(Item(id=7, name="lamp"))
        session.commit()  # INSERT (the ORM's flush)
        assert session.scalars(select(Item).where(Item.name == "lamp")).one().id == 7  # SELECT
        session.execute(update(Item).where(Item.id == 7).values(name="desk"))  # UPDATE
        session.execute(delete(Item).where(Item.id == 7))  # DELETE
        session.execute(insert(Item), [{"id": 8, "name": "a"}, {"id": 9, "name": "b"}])  # INSERT (bulk)
        session.commit()
    names = [s.name for s in db_spans(hooked)]
    assert names == [f"INSERT {db.table}", f"SELECT {db.table}", f"UPDATE {db.table}", f"DELETE {db.table}", f"INSERT {db.table}"]


def test_executemany_is_one_span_with_its_batch_size(sync_db, hooked, parent):
    engine, db = sync_db
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {db.table} (id, name) VALUES (:id, :name)"), [{"id": i, "name": "n"} for i in range(3)])
        assert conn.execute(text(f"SELECT count(*) FROM {db.table}")).scalar() == 3
    many, count = db_spans(hooked)
    assert many.attributes["db.operation.batch.size"] == 3
    assert many.attributes["db.operation.name"] == "BATCH INSERT"
    assert "db.operation.batch.size" not in count.attributes


def test_error_is_recorded_and_the_app_gets_sqlalchemys_exception(sync_db, hooked, parent):
    engine, db = sync_db
    before = context.get_current()
    missing = "missing_" + uuid.uuid4().hex[:8]
    with engine.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
        conn.execute(text(f"SELECT * FROM {missing} WHERE id = 5"))
    assert context.get_current() is before
    assert not isinstance(raised.value.orig, sqlalchemy.exc.SQLAlchemyError)  # the driver's error, wrapped as always
    # The next statement is traced: nothing was left in progress.
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).all()
    failed, after = db_spans(hooked)
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == f"sqlalchemy.exc.{type(raised.value).__name__}"
    assert failed.attributes["db.query.text"] == f"SELECT * FROM {missing} WHERE id = ?"
    # The driver's code (PyMySQL gives the SQLSTATE, mysqlclient the error number).
    expected_code = {"postgresql": ("42P01",), "mariadb": ("42S02", "1146"), "sqlite": ("SQLITE_ERROR",)}[db.system]
    assert failed.attributes["db.response.status_code"] in expected_code
    assert [e.name for e in failed.events] == ["exception"]
    assert after.status.status_code == StatusCode.UNSET
    assert_child(after, parent)


def test_no_span_outside_a_trace_nor_for_the_pool(sync_db, hooked):
    engine, db = sync_db
    with engine.connect() as conn:  # no span is current: no root spans by default
        conn.execute(text("SELECT 1")).all()
    assert hooked.get_finished_spans() == ()


def test_pre_ping_at_checkout_is_no_span(sync_db, hooked, parent):
    engine, db = sync_db  # pool_pre_ping=True: each checkout pings the server
    for _ in range(3):
        with engine.connect() as conn:
            conn.execute(text("SELECT 2")).all()
    assert [s.attributes["db.query.text"] for s in db_spans(hooked)] == ["SELECT ?"] * 3


def test_driver_runs_under_the_statements_span_and_the_ping_suppressed(request, hooked, parent):
    """What every driver's hook sees: SQLAlchemy's span in progress; at a pre-ping, instrumentation off."""
    import psycopg2.extensions

    from autotrace import api, db

    server = request.getfixturevalue("postgres_server")
    seen = []

    class Recording(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            seen.append((query, db.current(), api.loaded and api.suppressed()))
            return super().execute(query, vars)

    engine = sqlalchemy.create_engine(
        server.url("postgresql+psycopg2"), pool_pre_ping=True, connect_args={"cursor_factory": Recording}, **ENGINE_OPTIONS
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 41")).all()
        seen.clear()
        hooked.clear()
        with engine.connect() as conn:  # checkout: the pool pings the connection first
            conn.execute(text("SELECT 42")).all()
    finally:
        engine.dispose()
    [statement] = db_spans(hooked)
    (ping, ping_call, ping_suppressed), (query, call, suppressed) = seen
    assert ping_suppressed and ping_call is None
    assert query == "SELECT 42" and not suppressed
    assert call is not None and call.library == "sqlalchemy"
    assert call.span.get_span_context().span_id == statement.context.span_id


@pytest.mark.parametrize("scheme", SYNC)
def test_a_new_connection_is_one_connect_span(request, scheme, tmp_path, hooked, parent):
    """The driver's connect and SQLAlchemy's set-up queries (on_connect, initialize) under it."""
    db = make_db(request, scheme, tmp_path)
    engine = sqlalchemy.create_engine(db.url, **ENGINE_OPTIONS)  # no connection yet
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).all()
    finally:
        engine.dispose()
    spans = db_spans(hooked)
    if db.system == "sqlite":  # no server: connecting is no span, as sqlite3's hook has it
        assert [s.name for s in spans] == ["SELECT"]
    else:
        assert [s.name for s in spans] == ["connect", "SELECT"]
    for span in spans:
        assert_child(span, parent)
        for name, value in db.attributes.items():
            assert span.attributes[name] == value, name  # MariaDB known once connected


def test_a_failed_connect_is_recorded_and_the_app_gets_sqlalchemys_exception(request, hooked, parent):
    server = request.getfixturevalue("postgres_server")
    url = sqlalchemy.engine.make_url(server.url("postgresql+psycopg2")).set(password="wrong")
    engine = sqlalchemy.create_engine(url, **ENGINE_OPTIONS)
    before = context.get_current()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        engine.connect()
    assert context.get_current() is before
    [connect] = db_spans(hooked)
    assert connect.name == "connect" and connect.status.status_code == StatusCode.ERROR
    assert connect.attributes["error.type"] == "psycopg2.OperationalError"  # raised where it connects; SQLAlchemy wraps it after


def test_mysql_reflection_error_without_handle_error_ends_its_span(request, hooked, parent):
    """The MySQL dialect probes a table with skip_user_error_events: no handle_error, the span still ends."""
    server = request.getfixturevalue("mariadb_server")
    engine = sqlalchemy.create_engine(server.url("mysql+pymysql"), **ENGINE_OPTIONS)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).all()
        hooked.clear()
        before = context.get_current()
        missing = "missing_" + uuid.uuid4().hex[:8]
        assert sqlalchemy.inspect(engine).has_table(missing) is False
        assert context.get_current() is before
        [span] = db_spans(hooked)
        if SA2:  # 1.4 asks information_schema (no error)
            assert span.name == "DESCRIBE" and span.attributes["db.response.status_code"] in ("42S02", "1146")
            assert span.status.status_code == StatusCode.ERROR
        # Nothing left in progress: the next statement is traced.
        with engine.connect() as conn:
            conn.execute(text("SELECT 3")).all()
        assert len(db_spans(hooked)) == 2
    finally:
        engine.dispose()


# The statement the server is running, as it received it (comment included).
RUNNING = {
    "postgresql": "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "mariadb": "SELECT info FROM information_schema.processlist WHERE id = connection_id()",
}


def test_sql_comment_reaches_the_server_when_asked(sync_db, hooked, db_env):
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    engine, db = sync_db
    if db.system not in RUNNING:
        pytest.skip("SQLite cannot show the statement it runs")
    db_env(AUTOTRACE_SQL_COMMENT="true")
    # A remote parent with a tracestate: its encoded "=" puts a "%" in the comment, which a
    # pyformat driver interpolating the statement must get doubled.
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "v1")]))
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    try:
        # A transaction each: PostgreSQL shows a transaction one snapshot of its activity.
        with engine.connect() as conn:
            with_parameters = conn.execute(text(RUNNING[db.system] + " AND 1 = :one"), {"one": 1}).scalar()
        with engine.connect() as conn:
            without = conn.exec_driver_sql(RUNNING[db.system]).scalar()
    finally:
        context.detach(token)
    first, second = db_spans(hooked)
    for span, seen in ((first, with_parameters), (second, without)):
        traceparent = f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"
        assert seen.endswith(f" /*traceparent='{traceparent}',tracestate='vendor%3Dv1'*/"), seen
        assert "traceparent" not in span.attributes["db.query.text"]


# -- asyncio ------------------------------------------------------------------------------


@pytest.fixture(params=ASYNC)
def async_db(request, tmp_path, hooked) -> Db:
    return make_db(request, request.param, tmp_path)


def test_async_engine_one_span_per_statement(async_db, hooked):
    from sqlalchemy.ext.asyncio import create_async_engine

    db = async_db
    tracer = trace.get_tracer("test")

    async def scenario():
        engine = create_async_engine(db.url)
        async with engine.begin() as conn:  # outside any trace: no span
            await conn.exec_driver_sql(f"CREATE TABLE {db.table} (id INTEGER PRIMARY KEY, name VARCHAR(40))")
        try:
            with tracer.start_as_current_span("request") as request_span:
                before = context.get_current()
                async with engine.connect() as conn:
                    await conn.execute(text(f"INSERT INTO {db.table} (id, name) VALUES (:id, :name)"), {"id": 1, "name": "x"})
                    rows = (await conn.execute(text(f"SELECT name FROM {db.table} WHERE id = 1"))).all()
                    with pytest.raises(sqlalchemy.exc.DBAPIError):
                        await conn.execute(text("SELECT * FROM missing_table_x"))
                    await conn.rollback()
                assert context.get_current() is before

                async def task(n):  # concurrent tasks: each statement under its own task's span
                    with tracer.start_as_current_span(f"task{n}"):
                        async with engine.connect() as own:
                            await own.execute(text(f"SELECT {n}"))

                await asyncio.gather(task(1), task(2))
            return rows, request_span
        finally:
            async with engine.begin() as conn:
                await conn.exec_driver_sql(f"DROP TABLE {db.table}")
            await engine.dispose()

    rows, request_span = asyncio.run(scenario())
    assert rows == [("x",)]
    spans = db_spans(hooked)
    assert [s.name for s in spans[:3]] == [f"INSERT {db.table}", f"SELECT {db.table}", "SELECT missing_table_x"]
    for span in spans[:3]:
        assert_child(span, request_span)
        for name, value in db.attributes.items():
            assert span.attributes[name] == value, name
    failed = spans[2]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["db.response.status_code"] == "42P01"
    assert [e.name for e in failed.events] == ["exception"]
    # The tasks' statements, one each, under their task's span; DROP TABLE (no trace) none.
    # Two at once need a second connection: its connect span is under its task's span too.
    tasks = {t.context.span_id for t in hooked.get_finished_spans() if t.name.startswith("task")}
    selects = [s for s in spans[3:] if s.name != "connect"]
    [connect] = [s for s in spans[3:] if s.name == "connect"]
    assert len(selects) == 2 and {s.parent.span_id for s in selects} == tasks
    assert connect.parent.span_id in tasks and connect.attributes["db.system.name"] == "postgresql"
