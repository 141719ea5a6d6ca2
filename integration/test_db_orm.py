"""ORMs end to end: unchanged apps whose requests run SQLAlchemy and Django queries on a real
PostgreSQL, served under ``autotrace run``; spans checked at a real OTLP receiver.

- Flask + SQLAlchemy (a sync engine over psycopg) under gunicorn;
- Starlette + SQLAlchemy asyncio (an async engine over asyncpg) under uvicorn;
- Django (its ORM over psycopg on PostgreSQL, over mysqlclient on MariaDB; a model made
  by ``migrate``, two aliases) under gunicorn.

Each request carries its own ``traceparent``; in its trace: one SERVER span, one CLIENT
span per query (the ORM's, never the driver's next to it), each a child of the SERVER
span, with the sanitised text; a query that fails records its error. Each server is
started once per module, every request made, the server stopped (its processes flush at
exit), and the tests only look at what was recorded.
"""

from __future__ import annotations

import uuid

import pytest

from agent import PYTHON, clean_env, run, write
from db_service import CLIENT, STATUS_ERROR, STATUS_UNSET, Request, Run, serve
SQLALCHEMY, DJANGO = "autotrace.db.sqlalchemy", "autotrace.db.django"
# A driver's own spans allowed next to an ORM's: a transaction ended (the ORM opens connections in spans of its own).
DRIVERS_OWN = ("COMMIT", "ROLLBACK")

FLASK_APP = """
from flask import Flask, jsonify
from sqlalchemy import create_engine, text

TABLE = {table!r}
engine = create_engine({url!r})
with engine.begin() as conn:  # at start-up, outside any trace: no span
    conn.execute(text(f"CREATE TABLE {{TABLE}} (id INTEGER PRIMARY KEY, name VARCHAR(40))"))

app = Flask(__name__)


@app.route("/ready")
def ready():
    return "ready"


@app.route("/items/<int:item_id>")
def item(item_id):
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {{TABLE}} (id, name) VALUES (:id, :name)"), {{"id": item_id, "name": "secret-bound"}})
        count = conn.execute(text(f"SELECT count(*) FROM {{TABLE}} WHERE name = 'secret-literal'")).scalar()
    return jsonify(item=item_id, count=count)


@app.route("/boom")
def boom():
    with engine.connect() as conn:
        conn.execute(text("SELECT * FROM missing_table_q WHERE id = 5"))
    return "unreachable"
"""

STARLETTE_APP = """
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

TABLE = {table!r}
engine = create_async_engine({url!r})
made = False


async def ready(request):
    global made
    if not made:  # the first request (the test's readiness probe, without a trace) makes the table
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE {{TABLE}} (id INTEGER PRIMARY KEY, name VARCHAR(40))"))
        made = True
    return PlainTextResponse("ready")


async def item(request):
    item_id = request.path_params["item_id"]
    async with engine.begin() as conn:
        await conn.execute(text(f"INSERT INTO {{TABLE}} (id, name) VALUES (:id, :name)"), {{"id": item_id, "name": "secret-bound"}})
        count = (await conn.execute(text(f"SELECT count(*) FROM {{TABLE}} WHERE name = 'secret-literal'"))).scalar()
    return JSONResponse({{"item": item_id, "count": count}})


async def boom(request):
    async with engine.connect() as conn:
        await conn.execute(text("SELECT * FROM missing_table_q WHERE id = 5"))
    return PlainTextResponse("unreachable")


app = Starlette(routes=[
    Route("/ready", ready),
    Route("/items/{{item_id:int}}", item),
    Route("/boom", boom),
])
"""

DJANGO_APP = """
from django.conf import settings

DATABASE = {{
    "ENGINE": {engine!r},
    "NAME": {database!r},
    "USER": {user!r},
    "PASSWORD": {password!r},
    "HOST": {host!r},
    "PORT": {port!r},
}}
settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="not-a-secret",
    MIDDLEWARE=[],
    INSTALLED_APPS=["shop"],
    DATABASES={{"default": DATABASE, "reports": dict(DATABASE)}},
    USE_TZ=True,
    TIME_ZONE="UTC",
)

import django

django.setup()

from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.urls import path

from shop.models import Item


def ready(request):
    return HttpResponse(b"ready")


def item(request, item_id):
    Item.objects.create(id=item_id, name="secret-bound")
    names = list(Item.objects.filter(name="secret-bound").values_list("name", flat=True))
    total = Item.objects.using("reports").count()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {{Item._meta.db_table}} WHERE name = 'secret-literal'")
        literal = cursor.fetchone()[0]
        table = Item._meta.db_table
        cursor.executemany(f"INSERT INTO {{table}} (id, name) VALUES (%s, %s)", [(item_id * 100 + n, "secret-many") for n in (1, 2, 3)])
    return JsonResponse({{"item": item_id, "names": len(names), "total": total, "literal": literal}})


def boom(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM missing_table_q WHERE id = %s", [5])
    return HttpResponse(b"unreachable")


urlpatterns = [
    path("ready", ready),
    path("items/<int:item_id>/", item),
    path("boom/", boom),
]

wsgi = get_wsgi_application()
"""

DJANGO_MODELS = """
from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=40)

    class Meta:
        app_label = "shop"
        db_table = {table!r}
"""


class OrmRun(Run):
    def db_spans(self, name: str, scope: str) -> list:
        """The ORM's spans of a request, in start order; the drivers' own checked and left out."""
        found = []
        for span in self.trace(name):
            if span.kind != CLIENT:
                continue
            if span.scope == scope:
                found.append(span)
            else:
                assert span.name in DRIVERS_OWN, f"{name}: a driver's span next to the ORM's: {span}"
                assert (span.attributes.get("db.query.text") or span.name).rstrip(";") == span.name
        return sorted(found, key=lambda s: s.start_time_unix_nano)


def assert_clean(run: Run, hooks: tuple) -> None:
    stderr = run.stderr
    for hook in hooks:
        assert f"hook {hook} applied" in stderr, stderr
    assert "autotrace WARNING" not in stderr, stderr
    assert "ended span" not in stderr, stderr


def assert_children_of_the_request(run: Run, name: str, spans: list, system: str = "postgresql") -> None:
    server = run.server_span(name)
    for span in spans:
        assert span.parent_span_id == server.span_id, (name, span)
        assert span.kind == CLIENT
        assert span.attributes["db.system.name"] == system


# -- SQLAlchemy ---------------------------------------------------------------------------

SQLALCHEMY_CASES = {
    "flask-gunicorn-psycopg": ("flapp.py", FLASK_APP, "postgresql+psycopg", ["gunicorn", "-w", "1", "-b", "127.0.0.1:{port}", "flapp:app"]),
    "starlette-uvicorn-asyncpg": ("stapp.py", STARLETTE_APP, "postgresql+asyncpg", ["uvicorn", "--host", "127.0.0.1", "--port", "{port}", "stapp:app"]),
}


@pytest.fixture(scope="module", params=list(SQLALCHEMY_CASES))
def sqlalchemy_run(request, postgres_server, tmp_path_factory):
    filename, source, scheme, command = SQLALCHEMY_CASES[request.param]
    directory = tmp_path_factory.mktemp("orm")
    table = "t_" + uuid.uuid4().hex[:12]
    write(directory, filename, source.format(table=table, url=postgres_server.url(scheme)))
    requests = [Request("item", "/items/1"), Request("item-again", "/items/2"), Request("boom", "/boom")]
    run_ = serve(command, directory, requests, OrmRun)
    run_.table = table
    return run_


def test_sqlalchemy_one_span_per_statement_under_the_request(sqlalchemy_run, postgres_server):
    run_ = sqlalchemy_run
    assert run_.statuses == {"item": 200, "item-again": 200, "boom": 500}
    assert_clean(run_, ("sqlalchemy",))
    table = run_.table
    for name in ("item", "item-again"):
        insert, select = run_.db_spans(name, SQLALCHEMY)
        assert_children_of_the_request(run_, name, [insert, select])
        assert insert.name == f"INSERT {table}"
        assert insert.attributes["db.query.text"] in (
            f"INSERT INTO {table} (id, name) VALUES (%(id)s::INTEGER, %(name)s::VARCHAR)",
            f"INSERT INTO {table} (id, name) VALUES (%(id)s, %(name)s)",
            f"INSERT INTO {table} (id, name) VALUES ($1, $2)",
        )
        assert select.attributes["db.query.text"] == f"SELECT count(*) FROM {table} WHERE name = ?"
        for span in (insert, select):
            assert span.attributes["db.namespace"] == postgres_server.database
            assert span.attributes["server.address"] == "127.0.0.1"
            assert span.attributes["server.port"] == postgres_server.port
            assert span.status_code == STATUS_UNSET
            assert "secret" not in str(span.attributes)


def test_sqlalchemy_error_recorded_on_the_statements_span(sqlalchemy_run):
    run_ = sqlalchemy_run
    [failed] = run_.db_spans("boom", SQLALCHEMY)
    assert_children_of_the_request(run_, "boom", [failed])
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"].startswith("sqlalchemy.exc.")
    assert failed.attributes["db.response.status_code"] == "42P01"
    assert failed.attributes["db.query.text"] == "SELECT * FROM missing_table_q WHERE id = ?"
    assert failed.events.count("exception") == 1
    assert run_.server_span("boom").status_code == STATUS_ERROR


# -- Django -------------------------------------------------------------------------------


# Django's backend per server: (ENGINE, its identifier quote, the error's status code).
DJANGO_BACKENDS = {
    "postgresql": ("django.db.backends.postgresql", '"', "42P01"),
    "mariadb": ("django.db.backends.mysql", "`", "1146"),
}


@pytest.fixture(scope="module", params=list(DJANGO_BACKENDS))
def django_run(request, tmp_path_factory):
    system = request.param
    server = request.getfixturevalue("postgres_server" if system == "postgresql" else "mariadb_server")
    engine, quote, code = DJANGO_BACKENDS[system]
    directory = tmp_path_factory.mktemp("django")
    table = "item_" + uuid.uuid4().hex[:12]
    write(
        directory,
        "djdb.py",
        DJANGO_APP.format(
            engine=engine, database=server.database, user=server.user, password=server.password, host=server.host, port=str(server.port)
        ),
    )
    write(directory, "shop/__init__.py", "")
    write(directory, "shop/models.py", DJANGO_MODELS.format(table=table))
    # The model's table, made as an app makes it (not traced: plain python).
    migrate = "import djdb\nfrom django.core.management import call_command\ncall_command('migrate', run_syncdb=True, verbosity=0)\n"
    made = run([PYTHON, "-c", migrate], directory, clean_env())
    assert made.returncode == 0, made.stderr
    requests = [Request("item", "/items/1/"), Request("item-again", "/items/2/"), Request("boom", "/boom/")]
    run_ = serve(["gunicorn", "-w", "1", "-b", "127.0.0.1:{port}", "djdb:wsgi"], directory, requests, OrmRun)
    run_.table, run_.system, run_.server, run_.quote, run_.code = table, system, server, quote, code
    return run_


def test_django_one_span_per_query_with_its_alias(django_run):
    run_ = django_run
    assert run_.statuses == {"item": 200, "item-again": 200, "boom": 500}
    assert_clean(run_, ("django", "django_db", "django_db_connect"))
    table, q = run_.table, run_.quote
    for name in ("item", "item-again"):
        spans = run_.db_spans(name, DJANGO)
        assert_children_of_the_request(run_, name, spans, run_.system)
        # Django connects per request (CONN_MAX_AGE=0): one connect span per alias used,
        # the driver's connect and Django's set-up queries under it, none of their own.
        assert [(s.name.split()[0], s.attributes["django.db.alias"]) for s in spans] == [
            ("connect", "default"),
            ("INSERT", "default"),
            ("SELECT", "default"),
            ("connect", "reports"),
            ("SELECT", "reports"),
            ("SELECT", "default"),
            ("INSERT", "default"),
        ]
        connect, insert, select, _, count, literal, many = spans
        assert insert.attributes["db.operation.name"] == "INSERT"
        assert insert.attributes["db.collection.name"].strip(q) == table
        assert insert.attributes["db.query.text"].startswith(f"INSERT INTO {q}{table}{q} ({q}id{q}, {q}name{q}) VALUES (%s, %s)")
        assert select.attributes["db.query.text"].endswith(f"WHERE {q}{table}{q}.{q}name{q} = %s")
        assert count.attributes["db.query.text"].startswith("SELECT COUNT(*)")
        assert literal.attributes["db.query.text"] == f"SELECT count(*) FROM {table} WHERE name = ?"
        assert many.attributes["db.operation.batch.size"] == 3
        assert many.attributes["db.operation.name"] == "BATCH INSERT"
        assert "db.operation.batch.size" not in insert.attributes
        for span in spans:
            assert span.attributes["db.namespace"] == run_.server.database
            assert span.attributes["server.address"] == "127.0.0.1"
            assert span.attributes["server.port"] == run_.server.port
            assert span.status_code == STATUS_UNSET
            assert "secret" not in str(span.attributes)


def test_django_error_recorded_on_the_querys_span(django_run):
    run_ = django_run
    connect, failed = run_.db_spans("boom", DJANGO)
    assert connect.name == "connect"
    assert_children_of_the_request(run_, "boom", [connect, failed], run_.system)
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"] == "django.db.utils.ProgrammingError"
    assert failed.attributes["db.response.status_code"] == run_.code
    assert failed.attributes["db.query.text"] == "SELECT * FROM missing_table_q WHERE id = %s"
    assert failed.events.count("exception") == 1
    server = run_.server_span("boom")
    assert server.status_code == STATUS_ERROR
    assert server.attributes["error.type"].endswith("ProgrammingError")  # as the server span names it
