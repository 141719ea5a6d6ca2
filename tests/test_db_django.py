"""Django's database hook in process: each case runs in a fresh interpreter (Django's settings
are configured once per process), with the in-memory exporter and every database hook
applied (tests/db_hooks.py), against SQLite and the real servers; it prints the spans as
JSON, the test checks them. The same hook under gunicorn and ``autotrace run``:
integration/test_db_orm.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import django  # noqa: F401 - a test dependency: missing, the tests fail

TESTS = Path(__file__).resolve().parent

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
databases, scenario, table = json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from django.conf import settings

settings.configure(DATABASES=databases, INSTALLED_APPS=[], USE_TZ=True, TIME_ZONE="UTC")
import django

django.setup()

import db_hooks

db_hooks.apply()
from django.db import connections

# The request continues a remote trace with a tracestate: a "%" in a sqlcommenter comment.
remote = trace.SpanContext(0x1234, 0x5678, True, trace.TraceFlags(1), trace.TraceState([("vendor", "v1")]))
outcome = None
with trace.get_tracer("test").start_as_current_span("request", trace.set_span_in_context(trace.NonRecordingSpan(remote))) as request_span:
    try:
        if scenario == "queries":
            with connections["default"].cursor() as cursor:
                cursor.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(40))")
                cursor.execute(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [1, "secret"])
                cursor.executemany(f"INSERT INTO {table} (id, name) VALUES (%s, %s)", [(2, "a"), (3, "b")])
                cursor.execute(f"SELECT name FROM {table} WHERE name = 'secret'")
                outcome = cursor.fetchall()
                try:
                    cursor.execute("SELECT * FROM missing_table_q")
                except Exception as exc:
                    outcome = [outcome, type(exc).__module__ + "." + type(exc).__qualname__]
        elif scenario == "comment":  # what the server runs, as it got it
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() AND 1 = %s", [1])
                with_parameters = cursor.fetchone()[0]
            connections["default"].close()  # a transaction each: one snapshot of the activity per transaction
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()")
                outcome = [with_parameters, cursor.fetchone()[0]]
        elif scenario == "connect-fails":
            connections["default"].ensure_connection()
        elif scenario == "callproc":
            with connections["default"].cursor() as cursor:
                cursor.execute(f"CREATE PROCEDURE {table} (IN n INT) BEGIN SELECT n; END")
                cursor.callproc(table, [7])
                outcome = cursor.fetchall()
                cursor.execute(f"DROP PROCEDURE {table}")
    except Exception as exc:
        outcome = type(exc).__module__ + "." + type(exc).__qualname__

spans = [
    {
        "name": s.name,
        "scope": s.instrumentation_scope.name,
        "kind": s.kind.name,
        "id": s.context.span_id,
        "parent": s.parent.span_id if s.parent else None,
        "attributes": dict(s.attributes),
        "status": s.status.status_code.name,
        "events": [e.name for e in s.events],
    }
    for s in exporter.get_finished_spans()
    if s.name != "request"
]
print(json.dumps({"outcome": outcome, "request": request_span.get_span_context().span_id, "spans": spans}, default=str))
"""


def run_case(databases: dict, scenario: str, table: str = "", **environ: str) -> dict:
    table = table or "t_" + uuid.uuid4().hex[:12]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.update(environ)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS), json.dumps(databases), scenario, table],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["table"] = table
    return result


def django_spans(result: dict) -> list:
    return [s for s in result["spans"] if s["scope"] == "autotrace.db.django"]


def settings_for(server, engine: str, **extra) -> dict:
    database = {
        "ENGINE": engine,
        "NAME": server.database,
        "USER": server.user,
        "PASSWORD": server.password,
        "HOST": server.host,
        "PORT": str(server.port),
    }
    database.update(extra)
    return {"default": database}


def test_sqlite_queries_with_alias_batch_and_error(tmp_path):
    path = str(tmp_path / "shop.db")
    result = run_case({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}}, "queries")
    table = result["table"]
    assert result["outcome"] == [[["secret"]], "django.db.utils.OperationalError"]
    spans = result["spans"]
    assert all(s["scope"] == "autotrace.db.django" for s in spans), spans  # sqlite3's hook started none
    connect, create, insert, many, select, failed = spans
    assert [s["name"] for s in spans] == [
        "connect",
        f"CREATE TABLE {table}",
        f"INSERT {table}",
        f"INSERT {table}",
        f"SELECT {table}",
        "SELECT missing_table_q",
    ]
    for span in spans:
        assert span["kind"] == "CLIENT" and span["parent"] == result["request"]
        assert span["attributes"]["db.system.name"] == "sqlite"
        assert span["attributes"]["db.namespace"] == path
        assert span["attributes"]["django.db.alias"] == "default"
        assert "server.address" not in span["attributes"]
    assert insert["attributes"]["db.query.text"] == f"INSERT INTO {table} (id, name) VALUES (%s, %s)"
    assert many["attributes"]["db.operation.batch.size"] == 2
    assert select["attributes"]["db.query.text"] == f"SELECT name FROM {table} WHERE name = ?"
    assert failed["status"] == "ERROR" and failed["events"] == ["exception"]
    assert failed["attributes"]["error.type"] == "django.db.utils.OperationalError"
    assert failed["attributes"]["db.response.status_code"] == "SQLITE_ERROR"  # the driver's, under Django's


def test_connect_failure_is_the_connect_span(postgres_server):
    result = run_case(settings_for(postgres_server, "django.db.backends.postgresql", PASSWORD="wrong"), "connect-fails")
    assert result["outcome"] == "django.db.utils.OperationalError"
    [connect] = result["spans"]  # the driver's connect under Django's: none of its own
    assert connect["name"] == "connect" and connect["scope"] == "autotrace.db.django"
    assert connect["status"] == "ERROR"
    # The driver's exception (Django wraps it outside connect); libpq's connection failure has no SQLSTATE.
    assert connect["attributes"]["error.type"] == "psycopg.OperationalError"
    assert connect["attributes"]["server.port"] == postgres_server.port


def test_pooled_connection_checkout_is_no_span(postgres_server):
    import psycopg_pool  # noqa: F401 - a test dependency: missing, the tests fail
    result = run_case(settings_for(postgres_server, "django.db.backends.postgresql", OPTIONS={"pool": True}), "queries")
    names = [s["name"] for s in django_spans(result)]
    assert "connect" not in names
    assert names[0].startswith("CREATE TABLE") and len(names) == 5


def test_callproc_is_one_span_named_by_the_procedure(mariadb_server):
    result = run_case(settings_for(mariadb_server, "django.db.backends.mysql"), "callproc")
    table = result["table"]
    assert result["outcome"] == [[7]]
    spans = django_spans(result)
    names = [s["name"] for s in spans]
    assert len(names) == 4 and names[0] == "connect" and names[2] == f"CALL {table}", names
    assert names[1].startswith("CREATE PROCEDURE") and names[3].startswith("DROP PROCEDURE"), names
    call = next(s for s in spans if s["name"] == f"CALL {table}")
    assert call["attributes"]["db.stored_procedure.name"] == table
    assert call["attributes"]["db.operation.name"] == "CALL"
    assert call["attributes"]["db.system.name"] == "mariadb"
    others = [s for s in result["spans"] if s["scope"] != "autotrace.db.django"]
    assert others == [], others  # mysqlclient's hook started none


def test_sql_comment_reaches_the_server_when_asked(postgres_server):
    result = run_case(settings_for(postgres_server, "django.db.backends.postgresql"), "comment", AUTOTRACE_SQL_COMMENT="true")
    spans = [s for s in django_spans(result) if s["name"] != "connect"]
    assert len(spans) == 2
    for span, seen in zip(spans, result["outcome"]):
        # With parameters the driver interpolated the text: the comment's "%" arrived single.
        assert seen.endswith(f" /*traceparent='00-{0x1234:032x}-{span['id']:016x}-01',tracestate='vendor%3Dv1'*/"), seen
        assert "traceparent" not in span["attributes"]["db.query.text"]
