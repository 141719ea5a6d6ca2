"""Frameworks end to end: unchanged Flask, Django and FastAPI apps served by real servers
under ``autotrace run``; spans checked at a real OTLP receiver, responses checked byte for
byte against a run of the same server without the agent.

The framework names the request's one SERVER span by its route template, and records the
exception it turns into a 500:

- Flask (gunicorn with two workers, ``flask run``): ``GET /items/<int:item_id>``
- Django (gunicorn: WSGI; uvicorn: ASGI): ``GET items/<int:item_id>/`` (as Django gives it)
- FastAPI (uvicorn, hypercorn): ``GET /items/{item_id}``

The ``alone`` runs disable the server's own hook: the framework then starts the span
itself (a server no hook knows); with the server's hook, the framework only enriches it.

Each server is started once per module (a fixture), every request is made, the server is
stopped (its processes flush at exit), and the tests only look at what was recorded.
"""

from __future__ import annotations

import re
import secrets
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent import AUTOTRACE, BIN, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

SERVER = 2  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2

FLASK_APP = """
from flask import Blueprint, Flask, jsonify


class ShopError(Exception):
    pass


app = Flask(__name__)
items = Blueprint("items", __name__, url_prefix="/items")


@app.route("/ready")
def ready():
    return "ready"


@items.route("/<int:item_id>")
def item(item_id):
    return jsonify(item=item_id)


@app.route("/boom")
def boom():
    raise ShopError("the shop failed")


app.register_blueprint(items)
"""

DJANGO_APP = """
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="not-a-secret",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)

import django

django.setup()

from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse, JsonResponse
from django.urls import path


class ShopError(Exception):
    pass


def ready(request):
    return HttpResponse(b"ready")


def item(request, item_id):
    return JsonResponse({"item": item_id})


def boom(request):
    raise ShopError("the shop failed")


urlpatterns = [
    path("ready", ready),
    path("items/<int:item_id>/", item),
    path("boom/", boom),
]

wsgi = get_wsgi_application()
asgi = get_asgi_application()
"""

FASTAPI_APP = """
from fastapi import APIRouter, FastAPI


class ShopError(Exception):
    pass


app = FastAPI()
items = APIRouter(prefix="/items")


@app.get("/ready")
def ready():
    return "ready"


@items.get("/{item_id}")
def item(item_id: int):
    return {"item": item_id}


@app.get("/boom")
async def boom():
    raise ShopError("the shop failed")


app.include_router(items)
"""


@dataclass(frozen=True)
class Framework:
    name: str
    route: str  # the items route's template, as the framework writes it
    item: str  # a path it matches
    missing: str
    boom: str
    boom_route: str


FRAMEWORKS = {
    "flask": Framework("flask", "/items/<int:item_id>", "/items/42", "/nope", "/boom", "/boom"),
    "django": Framework("django", "items/<int:item_id>/", "/items/42/", "/nope/", "/boom/", "boom/"),
    "fastapi": Framework("fastapi", "/items/{item_id}", "/items/42", "/nope", "/boom", "/boom"),
}

GUNICORN = ["gunicorn", "-w", "2", "-b", "127.0.0.1:{port}"]
UVICORN = ["uvicorn", "--host", "127.0.0.1", "--port", "{port}"]
HYPERCORN = ["hypercorn", "--bind", "127.0.0.1:{port}"]


@dataclass(frozen=True)
class Case:
    framework: str
    args: tuple
    hooks: tuple  # the framework's hooks that must be applied in the serving process
    server_hook: str  # the server's own hook, disabled in the "alone" runs


CASES = {
    "flask-gunicorn": Case("flask", (*GUNICORN, "flapp:app"), ("flask",), "gunicorn"),
    "flask-run": Case("flask", ("flask", "--app", "flapp", "run", "--host", "127.0.0.1", "--port", "{port}"), ("flask",), "werkzeug"),
    "django-gunicorn": Case("django", (*GUNICORN, "djapp:wsgi"), ("django", "django_wsgi"), "gunicorn"),
    "django-uvicorn": Case("django", (*UVICORN, "--lifespan", "off", "djapp:asgi"), ("django", "django_asgi"), "uvicorn"),
    "fastapi-uvicorn": Case("fastapi", (*UVICORN, "fapp:app"), ("starlette", "starlette_app", "fastapi"), "uvicorn"),
    "fastapi-hypercorn": Case("fastapi", (*HYPERCORN, "fapp:app"), ("starlette", "starlette_app", "fastapi"), "hypercorn"),
}
# Served with the server's hook disabled: the framework's hook alone gives the span.
ALONE = ("flask-gunicorn", "django-gunicorn", "django-uvicorn", "fastapi-hypercorn")
RUNS = [*CASES, *(name + "-alone" for name in ALONE)]


# -- requests --------------------------------------------------------------------------


@dataclass
class Request:
    name: str
    path: str
    trace_id: str = field(default_factory=lambda: secrets.token_hex(16))
    span_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


def requests_for(framework: Framework) -> list[Request]:
    return [
        Request("item", framework.item),
        Request("missing", framework.missing),
        Request("boom", framework.boom),
        Request("item-again", framework.item.replace("42", "7")),
    ]


def fetch(port: int, path: str, headers: dict) -> bytes:
    """The raw response to a GET (HTTP/1.1, the connection closed by the server)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def comparable(raw: bytes) -> bytes:
    """The raw response with its Date header's value blanked (it is the time of the request)."""
    return re.sub(rb"(?im)^(date):[^\r\n]*", rb"\1: -", raw)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# -- running a server ------------------------------------------------------------------


@dataclass
class Run:
    case: Case
    framework: Framework
    requests: list
    responses: dict  # request name -> raw response
    process: Watched
    spans: list = field(default_factory=list)

    def trace(self, request_name: str) -> list:
        request = next(r for r in self.requests if r.name == request_name)
        return [s for s in self.spans if s.trace_id == request.trace_id]

    def server_span(self, request_name: str):
        spans = [s for s in self.trace(request_name) if s.kind == SERVER]
        assert len(spans) == 1, f"{request_name}: {len(spans)} SERVER spans: {spans}"
        return spans[0]


def serve(case: Case, directory: Path, traced: bool, alone: bool = False) -> Run:
    """Start the server (under ``autotrace run`` when traced), make every request, stop it."""
    framework = FRAMEWORKS[case.framework]
    port = free_port()
    args = [arg.replace("{port}", str(port)) for arg in case.args]
    receiver = OTLPReceiver().start() if traced else None
    try:
        if traced:
            env = clean_env(**receiver.env("http"), OTEL_LOG_LEVEL="debug")
            if alone:
                env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = case.server_hook
            command = [AUTOTRACE, "run", *args]
        else:
            env = clean_env()
            command = [str(BIN / args[0]), *args[1:]]
        env["HOME"] = str(directory)  # gunicorn's control socket
        requests = requests_for(framework)
        with Watched(command, directory, env) as process:
            wait_until_answers(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
            responses = {r.name: fetch(port, r.path, {"traceparent": r.traceparent}) for r in requests}
            process.send(signal.SIGTERM)  # the launcher exec'd: this is the server itself
            process.finish(timeout=30)
        run = Run(case, framework, requests, responses, process)
        if receiver is not None:
            run.spans = receiver.spans()  # the processes have exited: everything has arrived
        return run
    finally:
        if receiver is not None:
            receiver.stop()


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("frameworks")
    write(directory, "flapp.py", FLASK_APP)
    write(directory, "djapp.py", DJANGO_APP)
    write(directory, "fapp.py", FASTAPI_APP)
    return directory


_plain: dict = {}
_traced: dict = {}


@pytest.fixture(scope="module", params=RUNS)
def runs(request, app_dir) -> tuple[Run, Run]:
    """(plain run, traced run) of one case; a case's plain run is shared by its alone run."""
    name = request.param
    base = name[: -len("-alone")] if name.endswith("-alone") else name
    case = CASES[base]
    if base not in _plain:
        _plain[base] = serve(case, app_dir, traced=False)
    if name not in _traced:
        _traced[name] = serve(case, app_dir, traced=True, alone=name != base)
    return _plain[base], _traced[name]


# -- the tests -------------------------------------------------------------------------


def test_responses_are_the_same_as_without_the_agent(runs):
    plain, traced = runs
    for request in traced.requests:
        assert comparable(traced.responses[request.name]) == comparable(plain.responses[request.name]), request.name
    assert [status_of(plain.responses[r.name]) for r in plain.requests] == [200, 404, 500, 200]


def test_hooks_applied_and_nothing_to_warn(runs):
    _, traced = runs
    stderr = traced.process.text("stderr")
    for hook in traced.case.hooks:
        assert f"hook {hook} applied" in stderr, stderr
    assert "autotrace WARNING" not in stderr, stderr
    assert "ended span" not in stderr, stderr  # the SDK's warnings: nothing after a span's end


def test_exactly_one_server_span_per_request_under_the_sent_parent(runs):
    _, traced = runs
    for request in traced.requests:
        span = traced.server_span(request.name)
        assert span.parent_span_id == request.span_id, request.name
    for span in traced.spans:
        assert span.scope != "fastapi", f"FastAPI's own span: {span}"


def test_route_names_the_span(runs):
    _, traced = runs
    route = traced.framework.route
    for name in ("item", "item-again"):
        span = traced.server_span(name)
        assert span.name == f"GET {route}"
        assert span.attributes["http.route"] == route
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["url.path"] == next(r.path for r in traced.requests if r.name == name)
        assert span.status_code == STATUS_UNSET
        assert "exception" not in span.events


def test_not_found_has_no_route_and_is_no_error(runs):
    _, traced = runs
    span = traced.server_span("missing")
    assert span.name == "GET"
    assert "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404
    assert span.status_code == STATUS_UNSET
    assert "error.type" not in span.attributes
    assert "exception" not in span.events


def test_exception_turned_into_a_500_is_recorded_once(runs):
    _, traced = runs
    span = traced.server_span("boom")
    assert span.attributes["http.response.status_code"] == 500
    assert span.status_code == STATUS_ERROR
    assert span.attributes["error.type"] == "ShopError"
    assert span.events.count("exception") == 1, span.events
    assert span.name == f"GET {traced.framework.boom_route}"
    assert span.attributes["http.route"] == traced.framework.boom_route
