"""autotrace.db: the database CLIENT span every DB hook starts, statements, settings, sqlcommenter.

In process, with the in-memory exporter. The sanitizer's properties (hypothesis) are in
tests/test_db_sanitize.py; the sqlite3 hook in tests/test_db_sqlite3.py.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import api, config, db
from db_checks import db_env  # noqa: F401 (a fixture)


@pytest.fixture
def recorded(spans, db_env):
    return spans


TARGET = db.Target("postgresql", "shop", "127.0.0.1", 5432, "127.0.0.1", extra={"db.x": 1, "db.none": None})


def test_target_prebuilds_its_attributes_without_nones():
    assert TARGET.attributes == {
        "db.system.name": "postgresql",
        "db.namespace": "shop",
        "server.address": "127.0.0.1",
        "server.port": 5432,
        "network.peer.address": "127.0.0.1",
        "db.x": 1,
    }
    assert db.Target("sqlite").attributes == {"db.system.name": "sqlite"}


def test_statement_is_cached_by_text_and_reads_str_and_bytes(db_env):
    first = db.statement("SELECT * FROM users WHERE id = 42")
    assert first is db.statement("SELECT * FROM users WHERE id = 42")
    assert (first.text, first.operation, first.collection, first.summary) == (
        "SELECT * FROM users WHERE id = ?",
        "SELECT",
        "users",
        "SELECT users",
    )
    assert db.statement(b"DELETE FROM t WHERE a = 'x\xff'").text == "DELETE FROM t WHERE a = ?"
    assert db.statement(bytearray(b"SELECT 'x'")).text == "SELECT ?"  # not cached: unhashable
    assert db.statement(object()) is None
    assert db.statement(None) is None
    assert db.statement(["SELECT 1"]) is None


def test_statement_text_follows_the_setting(db_env):
    sql = "SELECT * FROM users WHERE name = 'bob'"
    assert db.statement(sql).text == "SELECT * FROM users WHERE name = ?"
    db_env(AUTOTRACE_DB_STATEMENT="raw")
    assert db.statement(sql).text == sql  # the reset dropped the cached sanitized one
    db_env(AUTOTRACE_DB_STATEMENT="off")
    found = db.statement(sql)
    assert found.text is None and found.summary == "SELECT users"
    assert "db.query.text" not in found.attributes


def test_query_text_is_capped_with_a_marker(db_env):
    long = "SELECT " + ", ".join(f"c{i}" for i in range(2000)) + " FROM t"
    text = db.statement(long).text
    assert len(text) == db.MAX_QUERY_TEXT and text.endswith(db.TRUNCATED)
    assert db.cap("short") == "short"


def test_mysql_lexing_reads_double_quotes_as_strings(db_env):
    sql = 'SELECT * FROM t WHERE name = "bob" AND note = \'it\\\'s\''
    assert db.statement(sql, system="mysql").text == "SELECT * FROM t WHERE name = ? AND note = ?"
    assert db.statement('SELECT "name" FROM "t"').text == 'SELECT "name" FROM "t"'  # identifiers elsewhere


def test_start_makes_a_current_client_span_under_the_request(recorded, parent):
    before = context.get_current()
    call = db.start("psycopg2", TARGET, db.statement("SELECT * FROM users WHERE id = %s"))
    assert call is not None and isinstance(call, db.DbCall)
    assert trace.get_current_span() is call.span
    assert db.current() is call
    call.close()
    assert context.get_current() is before and db.current() is None
    [span] = recorded.get_finished_spans()
    assert span.name == "SELECT users"
    assert span.kind is SpanKind.CLIENT
    assert span.instrumentation_scope.name == "autotrace.db.psycopg2"
    assert span.parent.span_id == parent.get_span_context().span_id
    assert dict(span.attributes) == {
        **TARGET.attributes,
        "db.query.text": "SELECT * FROM users WHERE id = %s",
        "db.operation.name": "SELECT",
        "db.collection.name": "users",
        "db.query.summary": "SELECT users",
    }


def test_no_span_outside_a_trace_unless_root_spans_are_asked_for(recorded, db_env):
    assert db.start("sqlite3", TARGET, db.statement("SELECT 1")) is None
    db_env(AUTOTRACE_DB_ROOT_SPANS="true")
    call = db.start("sqlite3", TARGET, db.statement("SELECT 1"))
    assert call is not None
    call.close()
    [span] = recorded.get_finished_spans()
    assert span.parent is None and span.name == "SELECT"


def test_no_span_when_suppressed(recorded, parent, suppressed):
    assert db.start("sqlite3", TARGET, db.statement("SELECT 1")) is None


def test_a_call_inside_a_call_is_the_outer_ones(recorded, parent):
    outer = db.start("sqlalchemy", TARGET, db.statement("SELECT 1"))
    assert db.start("psycopg2", TARGET, db.statement("SELECT 1")) is None
    assert db.current() is outer
    outer.close()
    assert len(recorded.get_finished_spans()) == 1


def test_api_key_is_a_context_key_after_load(recorded):
    api.load()
    assert api.IN_DB_CALL != "autotrace-db-call" and str(api.IN_DB_CALL).startswith("autotrace-db-call")


def test_names_and_overrides(recorded, parent):
    starts = [
        lambda: db.start("redis", db.Target("redis", "0"), None, name="GET", operation="GET", query_text="GET user:42"),
        lambda: db.start("x", TARGET, None, operation="connect"),
        lambda: db.start("x", TARGET, None, operation="COPY", collection="items"),
        lambda: db.start("x", TARGET, None),
        lambda: db.start("x", TARGET, db.statement("SELECT 1"), name="override", attributes={"db.extra": "y"}),
        lambda: db.start("x", TARGET, None, query_text="x" * 5000),
    ]
    for start in starts:
        call = start()
        assert call is not None
        call.close()
    redis, connect, copy, bare, override, long = recorded.get_finished_spans()
    assert (redis.name, redis.attributes["db.query.text"], redis.attributes["db.operation.name"]) == ("GET", "GET user:42", "GET")
    assert redis.attributes["db.namespace"] == "0"
    assert connect.name == "connect"
    assert copy.name == "COPY items" and copy.attributes["db.collection.name"] == "items"
    assert bare.name == "postgresql"
    assert override.name == "override" and override.attributes["db.extra"] == "y"
    assert len(long.attributes["db.query.text"]) == db.MAX_QUERY_TEXT


def test_batch_size_only_from_two_on_and_the_operation_says_batch(recorded, parent):
    insert = db.statement("INSERT INTO items (a) VALUES (?)")
    for size in (None, 1, 3):
        db.start("sqlite3", TARGET, insert, batch_size=size).close()
    none, one, three = recorded.get_finished_spans()
    for span in (none, one):
        assert "db.operation.batch.size" not in span.attributes
        assert span.attributes["db.operation.name"] == "INSERT"
    assert three.attributes["db.operation.batch.size"] == 3
    assert three.attributes["db.operation.name"] == "BATCH INSERT"
    assert three.name == "INSERT items"
    assert insert.attributes["db.operation.name"] == "INSERT"  # the cached statement is untouched


class SqlStateError(Exception):
    sqlstate = "42P01"


def test_call_returns_the_result_and_reraises_the_apps_exception_untouched(recorded, parent):
    result = object()
    assert db.call("x", TARGET, db.statement("SELECT 1"), lambda a, b=None: result, (1,), {"b": 2}) is result
    error = SqlStateError("relation does not exist")

    def fails():
        raise error

    with pytest.raises(SqlStateError) as raised:
        db.call("x", TARGET, db.statement("SELECT * FROM nowhere"), fails, (), {})
    assert raised.value is error
    ok, failed = recorded.get_finished_spans()
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == f"{__name__}.SqlStateError"
    assert failed.attributes["db.response.status_code"] == "42P01"
    assert [e.name for e in failed.events] == ["exception"]
    assert db.current() is None


def test_call_without_a_span_just_calls(recorded):
    assert db.call("x", TARGET, None, lambda: 5, (), {}) == 5
    assert recorded.get_finished_spans() == ()


def test_call_async(recorded, parent):
    async def query(value):
        await asyncio.sleep(0)
        assert db.current() is not None
        return value

    async def fails():
        raise SqlStateError("no")

    async def main():
        assert await db.call_async("asyncpg", TARGET, db.statement("SELECT 1"), query, (7,), {}) == 7
        with pytest.raises(SqlStateError):
            await db.call_async("asyncpg", TARGET, db.statement("SELECT 2"), fails, (), {})
        assert db.current() is None

    asyncio.run(main())
    first, second = recorded.get_finished_spans()
    assert first.parent.span_id == second.parent.span_id == parent.get_span_context().span_id
    assert second.attributes["db.response.status_code"] == "42P01"


def test_fail_with_an_explicit_status_code(recorded, parent):
    call = db.start("redis", TARGET)
    call.fail(ValueError("x"), "WRONGTYPE")
    call.close()
    call.fail(ValueError("after the end"))  # ignored
    [span] = recorded.get_finished_spans()
    assert span.attributes["db.response.status_code"] == "WRONGTYPE"
    assert span.attributes["error.type"] == "ValueError"


def _error_in(module: str, *args, **attributes):
    cls = type("Error", (Exception,), {"__module__": module, **attributes})
    return cls(*args)


def test_status_code_of():
    assert db.status_code_of(_error_in("psycopg.errors", sqlstate="23505")) == "23505"
    assert db.status_code_of(_error_in("psycopg2.errors", pgcode="42601")) == "42601"
    assert db.status_code_of(_error_in("sqlite3", sqlite_errorname="SQLITE_ERROR")) == "SQLITE_ERROR"
    assert db.status_code_of(_error_in("pymysql.err", 1146, "Table doesn't exist")) == "1146"
    assert db.status_code_of(_error_in("MySQLdb._exceptions", 1064, "syntax")) == "1064"
    assert db.status_code_of(_error_in("pymysql.err", 1146, "no table", sqlstate="42S02")) == "1146"  # the number first
    assert db.status_code_of(_error_in("pymysql.err", "closed", sqlstate="HY000")) == "HY000"  # no number: the SQLSTATE
    reply_error = type("ResponseError", (Exception,), {"__module__": "redis.exceptions"})
    assert db.status_code_of(reply_error("WRONGTYPE Operation against a key")) == "WRONGTYPE"
    assert db.status_code_of(reply_error("unknown command 'X'")) == "ERR"  # redis-py strips "ERR "
    assert db.status_code_of(_error_in("redis.exceptions", "Error 111 connecting")) is None  # no reply
    assert db.status_code_of(OSError(111, "refused")) is None  # an errno is not a database's code
    assert db.status_code_of(_error_in("psycopg2.errors", pgcode=None)) is None
    assert db.status_code_of(ValueError()) is None
    # An ORM's exception: the code of the driver error it wraps.
    driver_error = _error_in("pymysql.err", 1146, "no table", sqlstate="42S02")
    wrapped = _error_in("sqlalchemy.exc", "(pymysql.err.ProgrammingError) ...")
    wrapped.orig = driver_error
    assert db.status_code_of(wrapped) == "1146"
    django_error = _error_in("django.db.utils", "no table")
    django_error.__cause__ = _error_in("psycopg.errors", sqlstate="42P01")
    assert db.status_code_of(django_error) == "42P01"


def test_with_comment_is_off_by_default_and_returns_the_same_object(recorded, parent):
    sql = "SELECT 1"
    call = db.start("x", TARGET, db.statement(sql))
    assert db.with_comment(sql, call) is sql
    call.close()


def test_with_comment_appends_the_db_spans_traceparent(recorded, parent, db_env):
    db_env(AUTOTRACE_SQL_COMMENT="true")
    call = db.start("x", TARGET, db.statement("SELECT 1"))
    ids = call.span.get_span_context()
    traceparent = f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"
    assert db.with_comment("SELECT 1", call) == f"SELECT 1 /*traceparent='{traceparent}'*/"
    assert db.with_comment("SELECT 1 ;  ", call) == f"SELECT 1 /*traceparent='{traceparent}'*/;"
    assert db.with_comment(b"SELECT 1", call) == f"SELECT 1 /*traceparent='{traceparent}'*/".encode()
    hinted = "SELECT /*+ INDEX(t i) */ 1"
    assert db.with_comment(hinted, call) is hinted  # a statement with a comment is left alone
    assert db.with_comment("SELECT 1", None) == "SELECT 1"
    call.close()
    [span] = recorded.get_finished_spans()
    assert span.attributes["db.query.text"] == "SELECT ?"  # recorded without the comment


def test_with_comment_adds_tracestate_url_encoded_keys_sorted(recorded, db_env):
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    db_env(AUTOTRACE_SQL_COMMENT="true")
    state = TraceState([("vendor", "a b"), ("other", "x")])
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    try:
        call = db.start("x", TARGET, db.statement("SELECT 1"))
        ids = call.span.get_span_context()
        commented = db.with_comment("SELECT 1", call)
        formatted = db.with_comment("SELECT %s;", call, percent_format=True)
        formatted_bytes = db.with_comment(b"SELECT %s", call, percent_format=True)
        call.close()
    finally:
        context.detach(token)
    traceparent = f"traceparent='00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}'"
    assert commented == f"SELECT 1 /*{traceparent},tracestate='vendor%3Da%20b%2Cother%3Dx'*/"
    # For a driver that %-formats the text: the comment's "%" doubled, the statement's own kept.
    assert formatted == f"SELECT %s /*{traceparent},tracestate='vendor%%3Da%%20b%%2Cother%%3Dx'*/;"
    assert formatted_bytes == f"SELECT %s /*{traceparent},tracestate='vendor%%3Da%%20b%%2Cother%%3Dx'*/".encode()


def test_db_settings_are_read_once_and_wrong_values_warn_once(db_env, warnings):
    assert repr(config.db_settings()) == "DbSettings(statement='sanitized', sql_comment=False, root_spans=False)"
    db_env(AUTOTRACE_DB_STATEMENT="Verbose", AUTOTRACE_SQL_COMMENT="perhaps", AUTOTRACE_DB_ROOT_SPANS="1")
    settings = config.db_settings()
    assert (settings.statement, settings.sql_comment, settings.root_spans) == ("sanitized", False, True)
    assert config.db_settings() is settings
    lines = warnings()
    assert len(lines) == 2
    assert "AUTOTRACE_DB_STATEMENT='Verbose'" in lines[0] and "sanitized" in lines[0]
    assert "AUTOTRACE_SQL_COMMENT='perhaps'" in lines[1]
    config.reset_db_settings()
    config.db_settings()
    assert warnings() == []  # once per process
    db_env(AUTOTRACE_DB_STATEMENT="RAW")
    assert config.db_settings().statement == "raw"


def test_db_settings_are_listed_for_the_doctor_and_debug():
    assert config.VARIABLES["db statement"] == ("AUTOTRACE_DB_STATEMENT",)
    assert config.VARIABLES["sql comment"] == ("AUTOTRACE_SQL_COMMENT",)
    assert config.VARIABLES["db root spans"] == ("AUTOTRACE_DB_ROOT_SPANS",)
    described = dict(config.read({"AUTOTRACE_DB_STATEMENT": "off", "AUTOTRACE_SQL_COMMENT": "yes"}).describe())
    assert (described["db statement"], described["sql comment"], described["db root spans"]) == ("off", "True", "False")
    s = config.read({"AUTOTRACE_DB_ROOT_SPANS": "sure"})
    assert [w.variable for w in s.warnings] == ["AUTOTRACE_DB_ROOT_SPANS"] and s.db.root_spans is False


def _left_for_the_collector(kind: type, work) -> list:
    """Objects of ``kind`` that ``work()`` left in reference cycles (freed only by the garbage collector)."""
    gc.collect()
    gc.disable()
    try:
        work()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [found for found in gc.garbage if isinstance(found, kind)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_closed_call_is_freed_at_once_not_by_the_garbage_collector(recorded, parent):
    # Its context holds the call (db.current()): the call drops the context when it closes,
    # so neither waits for a collection (whose passes every query would pay for).
    # (A query that raises is left to the collector all the same: its traceback holds the frames.)
    def queries():
        for _ in range(3):
            db.call("psycopg2", TARGET, db.statement("SELECT 1"), lambda: 1, (), {})

    assert _left_for_the_collector(db.DbCall, queries) == []
    assert len(recorded.get_finished_spans()) == 3


def test_a_targets_span_of_a_statement_is_made_once_bounded_and_never_another_statements(recorded, db_env):
    target = db.Target("postgresql", "shop")
    first = db.statement("SELECT * FROM users WHERE id = 1")
    name, attributes = target.span_of(first)
    assert (name, attributes) == ("SELECT users", {**target.attributes, **first.attributes})
    assert target.span_of(first) is target.span_of(first)  # kept
    made = []
    for i in range(db.SPANS_KEPT * 3):
        statement = db.statement(f"UPDATE t{i} SET a = {i}")
        made.append(statement)
        found = target.span_of(statement)
        assert found == (f"UPDATE t{i}", {**target.attributes, **statement.attributes})
        assert len(target._spans) <= db.SPANS_KEPT  # noqa: SLF001 - bounded
    for i, statement in enumerate(made):  # after evictions: each statement's own, made again
        assert target.span_of(statement)[1]["db.query.text"] == f"UPDATE t{i} SET a = ?"
    db_env(AUTOTRACE_DB_STATEMENT="raw")  # a new setting: new statements, their own spans
    assert target.span_of(db.statement("SELECT * FROM users WHERE id = 1"))[1]["db.query.text"] == "SELECT * FROM users WHERE id = 1"


def test_start_statement_is_start_for_a_statement_alone(recorded, parent):
    statement = db.statement("DELETE FROM carts WHERE id = 7")
    call = db.start_statement("psycopg", TARGET, statement, db.call_parent())
    assert db.current() is call and call.comment is False
    call.close()
    other = db.start("psycopg", TARGET, statement)
    other.close()
    first, second = recorded.get_finished_spans()
    assert (first.name, dict(first.attributes)) == (second.name, dict(second.attributes)) == ("DELETE carts", {**TARGET.attributes, **statement.attributes})


def test_a_call_says_whether_the_sql_comment_is_wanted_as_the_setting_says(recorded, parent, db_env):
    call = db.start("x", TARGET, db.statement("SELECT 1"))
    assert call.comment is False
    call.close()
    db_env(AUTOTRACE_SQL_COMMENT="true")  # read again after a reset
    call = db.start("x", TARGET, db.statement("SELECT 1"))
    assert call.comment is True
    call.close()


# -- start_cached: the usual query's one call ------------------------------------------------


def test_start_cached_keeps_a_statements_span_under_its_text_never_another_ones(recorded, parent):
    target = db.Target("postgresql", "shop")
    for sql in ("SELECT * FROM users WHERE id = 1", "SELECT * FROM users WHERE id = 1", b"DELETE FROM carts WHERE id = 2", "UPDATE t SET a = 3"):
        db.start_cached("psycopg", target, sql, db.query_span).close()
    assert target.kept("SELECT * FROM users WHERE id = 1") == ("SELECT users", {**target.attributes, **db.statement("SELECT * FROM users WHERE id = ?").attributes})
    assert target.kept(b"DELETE FROM carts WHERE id = 2")[1]["db.query.text"] == "DELETE FROM carts WHERE id = ?"
    texts = [(s.name, s.attributes["db.query.text"]) for s in recorded.get_finished_spans()]
    assert texts == [
        ("SELECT users", "SELECT * FROM users WHERE id = ?"),
        ("SELECT users", "SELECT * FROM users WHERE id = ?"),
        ("DELETE carts", "DELETE FROM carts WHERE id = ?"),
        ("UPDATE t", "UPDATE t SET a = ?"),
    ]
    assert all(s.parent.span_id == parent.get_span_context().span_id and s.kind is SpanKind.CLIENT for s in recorded.get_finished_spans())


def test_start_cached_is_bounded_and_keeps_no_long_text(recorded, parent):
    target = db.Target("postgresql")
    for i in range(db.SPANS_KEPT * 3):
        db.start_cached("psycopg", target, f"UPDATE t{i} SET a = {i}", db.query_span).close()
        assert len(target._spans) <= db.SPANS_KEPT  # noqa: SLF001 - bounded
    long = "SELECT " + "a, " * db.KEPT_TEXT_CHARS + "b FROM t"
    db.start_cached("psycopg", target, long, db.query_span).close()
    assert target.kept(long) is None  # kept under its Statement (the statement cache bounds texts)
    spans = recorded.get_finished_spans()
    assert [s.attributes["db.query.text"] for s in spans[:-1]] == [f"UPDATE t{i} SET a = ?" for i in range(db.SPANS_KEPT * 3)]
    assert spans[-1].name == "SELECT t" and spans[-1].attributes["db.query.text"].endswith(db.TRUNCATED)


def test_start_cached_reads_what_is_not_a_hashable_text(recorded, parent):
    target = db.Target("sqlite")
    db.start_cached("sqlite3", target, bytearray(b"SELECT 'x'"), db.query_span).close()
    db.start_cached("sqlite3", target, object(), db.query_span).close()
    first, second = recorded.get_finished_spans()
    assert (first.name, first.attributes["db.query.text"]) == ("SELECT", "SELECT ?")
    assert (second.name, dict(second.attributes)) == ("sqlite", target.attributes)
    assert len(target._spans) == 0  # noqa: SLF001 - neither kept


def test_start_cached_follows_a_settings_reset(recorded, parent, db_env):
    target = db.Target("postgresql")
    sql = "SELECT * FROM users WHERE name = 'bob'"
    db.start_cached("psycopg", target, sql, db.query_span).close()
    db_env(AUTOTRACE_DB_STATEMENT="raw", AUTOTRACE_SQL_COMMENT="true")  # the reset drops what targets keep
    call = db.start_cached("psycopg", target, sql, db.query_span)
    assert call.comment is True
    call.close()
    first, second = recorded.get_finished_spans()
    assert first.attributes["db.query.text"] == "SELECT * FROM users WHERE name = ?"
    assert second.attributes["db.query.text"] == sql


def test_start_cached_decides_per_context(recorded, db_env):
    target = db.Target("postgresql")
    sql = "SELECT 1"
    assert db.start_cached("psycopg", target, sql, db.query_span) is None  # no trace current
    with trace.get_tracer("test").start_as_current_span("request"):
        call = db.start_cached("psycopg", target, sql, db.query_span)
        assert call is not None and db.current() is call
        assert db.start_cached("psycopg", target, sql, db.query_span) is None  # under a call in progress
        call.close()
        token = context.attach(context.set_value(api.SUPPRESS_INSTRUMENTATION, True))
        assert db.start_cached("psycopg", target, sql, db.query_span) is None
        context.detach(token)
        db.start_cached("psycopg", target, sql, db.query_span).close()
    assert db.start_cached("psycopg", target, sql, db.query_span) is None
    db_env(AUTOTRACE_DB_ROOT_SPANS="true")  # the reset drops the decision kept
    db.start_cached("psycopg", target, sql, db.query_span).close()
    spans = [s for s in recorded.get_finished_spans() if s.name == "SELECT"]
    assert len(spans) == 3 and spans[2].parent is None


def test_a_cached_call_is_freed_at_once_not_by_the_garbage_collector(recorded, parent):
    target = db.Target("postgresql")

    def queries():
        for _ in range(3):
            db.start_cached("psycopg", target, "SELECT 1", db.query_span).close()

    assert _left_for_the_collector(db.DbCall, queries) == []
    assert len(recorded.get_finished_spans()) == 3


def test_a_failing_make_leaves_the_call_untraced(recorded, parent):
    def broken(target, key):
        raise RuntimeError("hook bug")

    assert db.start_cached("psycopg", db.Target("postgresql"), "SELECT 1", broken) is None
    assert recorded.get_finished_spans() == ()
    assert context.get_current().get(api.IN_DB_CALL) is None
