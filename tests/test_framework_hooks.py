"""Framework hooks in process: Flask, Django, Starlette and FastAPI name the one SERVER span
by their route template and record the exception they turn into a 500.

Each app is served two ways: under ``wsgi.wrap``/``asgi.wrap`` (what a server hook does:
the framework only enriches the span) and called as it is (a server no hook knows: the
framework's own entry point starts the span). Either way there is exactly one span.
"""

from __future__ import annotations

import asyncio
import importlib

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import asgi, server_span, wsgi
from autotrace.patching import unwrap_function

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


class ShopError(Exception):
    pass


def only(spans):
    finished = spans.get_finished_spans()
    assert len(finished) == 1, [(s.name, s.instrumentation_scope.name) for s in finished]
    span = finished[0]
    assert span.kind is SpanKind.SERVER
    return span


def exception_events(span) -> list:
    return [e for e in span.events if e.name == "exception"]


def patched(module_name: str, hook: str, function: str, undo: list):
    """Apply a hook to a library module (as the registry would); undo it after the tests."""
    module = importlib.import_module(module_name)
    getattr(importlib.import_module(f"autotrace.hooks.{hook}"), function)(module)
    yield module
    for owner, name in undo:
        unwrap_function(owner, name)


# --- WSGI: Flask, Django ----------------------------------------------------------------


def environ(path: str, method: str = "GET") -> dict:
    import io

    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_TRACEPARENT": TRACEPARENT,
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def wsgi_get(app, path: str, served: bool) -> tuple[str, bytes]:
    """GET through the app (under wsgi.wrap when ``served``); the status and the body."""
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)
        return lambda data: None

    result = (wsgi.wrap(app) if served else app)(environ(path), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return statuses[0], body


SERVED = pytest.mark.parametrize("served", [True, False], ids=["under-a-server-hook", "alone"])


@pytest.fixture(scope="module")
def flask_hooked():
    flask_app = importlib.import_module("flask.app")  # a test dependency: missing fails, never skips
    cls = flask_app.Flask
    yield from patched("flask.app", "flask", "patch", [(cls, "__call__"), (cls, "full_dispatch_request"), (cls, "handle_exception")])


def make_flask_app(testing: bool = False):
    from flask import Blueprint, Flask, abort

    app = Flask("shop")
    app.testing = testing  # PROPAGATE_EXCEPTIONS: Flask re-raises instead of making the 500
    items = Blueprint("items", "shop", url_prefix="/items")

    @items.route("/<int:item_id>")
    def item(item_id):
        return f"item {item_id}"

    @app.route("/boom")
    def boom():
        raise ShopError("the shop failed")

    @app.route("/abort")
    def aborted():
        abort(503)

    app.register_blueprint(items)
    return app


@SERVED
def test_flask_rule_names_the_span(spans, flask_hooked, served):
    status, body = wsgi_get(make_flask_app(), "/items/42", served)
    assert (status, body) == ("200 OK", b"item 42")
    span = only(spans)
    assert span.name == "GET /items/<int:item_id>"
    assert span.attributes["http.route"] == "/items/<int:item_id>"
    assert span.parent.span_id == int(SPAN_ID, 16)


@SERVED
def test_flask_404_has_no_route(spans, flask_hooked, served):
    status, _ = wsgi_get(make_flask_app(), "/nope", served)
    assert status.startswith("404")
    span = only(spans)
    assert span.name == "GET" and "http.route" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


@SERVED
def test_flask_500_records_the_exception_once(spans, flask_hooked, served):
    status, _ = wsgi_get(make_flask_app(), "/boom", served)
    assert status.startswith("500")
    span = only(spans)
    assert span.name == "GET /boom"
    assert span.attributes["error.type"] == "ShopError"  # not "500": the exception names it
    assert span.status.status_code is StatusCode.ERROR
    assert len(exception_events(span)) == 1


@SERVED
def test_flask_propagated_exception_recorded_once(spans, flask_hooked, served):
    with pytest.raises(ShopError):
        wsgi_get(make_flask_app(testing=True), "/boom", served)
    span = only(spans)
    assert span.attributes["error.type"] == "ShopError"
    assert len(exception_events(span)) == 1


def test_flask_http_error_is_an_error_without_exception(spans, flask_hooked):
    status, _ = wsgi_get(make_flask_app(), "/abort", True)
    assert status.startswith("503")
    span = only(spans)
    assert span.attributes["error.type"] == "503"
    assert exception_events(span) == []


def test_flask_untraced_where_instrumentation_is_suppressed(spans, flask_hooked):
    from opentelemetry import context

    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        assert wsgi_get(make_flask_app(), "/items/1", False)[1] == b"item 1"
    finally:
        context.detach(token)
    assert spans.get_finished_spans() == ()


@pytest.fixture(scope="module")
def django_hooked():
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["127.0.0.1"],
            ROOT_URLCONF=__name__ + "_urls",
            SECRET_KEY="not-a-secret",
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
    import django

    django.setup()
    undo = []
    base = importlib.import_module("django.core.handlers.base")
    exception = importlib.import_module("django.core.handlers.exception")
    handlers_wsgi = importlib.import_module("django.core.handlers.wsgi")
    handlers_asgi = importlib.import_module("django.core.handlers.asgi")
    from autotrace.hooks import django as hook

    hook.patch(base)
    hook.patch_wsgi(handlers_wsgi)
    hook.patch_asgi(handlers_asgi)
    undo = [
        (base.BaseHandler, "resolve_request"),
        (exception, "handle_uncaught_exception"),
        (handlers_wsgi.WSGIHandler, "__call__"),
        (handlers_asgi.ASGIHandler, "__call__"),
    ]
    _django_urls()
    yield
    for owner, name in undo:
        unwrap_function(owner, name)


def _django_urls() -> None:
    import sys
    import types

    from django.http import HttpResponse
    from django.urls import include, path

    def item(request, item_id):
        return HttpResponse(f"item {item_id}".encode())

    def boom(request):
        raise ShopError("the shop failed")

    urls = types.ModuleType(__name__ + "_urls")
    urls.urlpatterns = [
        path("shop/", include([path("items/<int:item_id>/", item)])),
        path("boom/", boom),
    ]
    sys.modules[urls.__name__] = urls


@SERVED
def test_django_wsgi_route_and_exception(spans, django_hooked, served):
    from django.core.handlers.wsgi import WSGIHandler

    app = WSGIHandler()
    assert wsgi_get(app, "/shop/items/42/", served) == ("200 OK", b"item 42")
    assert wsgi_get(app, "/nope/", served)[0].startswith("404")
    assert wsgi_get(app, "/boom/", served)[0].startswith("500")
    item, missing, boom = spans.get_finished_spans()
    assert item.name == "GET shop/items/<int:item_id>/"  # included prefixes joined, as Django gives it
    assert item.attributes["http.route"] == "shop/items/<int:item_id>/"
    assert missing.name == "GET" and missing.status.status_code is StatusCode.UNSET
    assert boom.name == "GET boom/"
    assert boom.attributes["error.type"] == "ShopError"
    assert len(exception_events(boom)) == 1


def test_django_propagated_exception_recorded_once(spans, django_hooked):
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=True), pytest.raises(ShopError):
        wsgi_get(WSGIHandler(), "/boom/", True)
    span = only(spans)
    assert span.attributes["error.type"] == "ShopError"
    assert len(exception_events(span)) == 1


@SERVED
def test_django_asgi_route_and_exception(spans, django_hooked, served):
    from django.core.handlers.asgi import ASGIHandler

    app = ASGIHandler()
    assert asgi_get(app, "/shop/items/7/", served)[:2] == (200, b"item 7")
    assert asgi_get(app, "/boom/", served)[0] == 500
    item, boom = spans.get_finished_spans()
    assert item.name == "GET shop/items/<int:item_id>/"
    assert boom.attributes["error.type"] == "ShopError"
    assert len(exception_events(boom)) == 1


# --- ASGI: Starlette, FastAPI --------------------------------------------------------------


def http_scope(path: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"traceparent", TRACEPARENT.encode())],
        "client": ("127.0.0.1", 55555),
        "server": ("127.0.0.1", 8000),
    }


def asgi_get(app, path: str, served: bool) -> tuple:
    """GET through the app (under asgi.wrap when ``served``): status, body, what it raised."""
    sent = []
    incoming = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)  # no disconnect while the app runs

    async def send(message):
        sent.append(message)

    raised = None
    try:
        asyncio.run((asgi.wrap(app) if served else app)(http_scope(path), receive, send))
    except Exception as exc:  # noqa: BLE001 - Starlette re-raises after its 500
        raised = exc
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, raised


@pytest.fixture(scope="module")
def starlette_hooked():
    routing = importlib.import_module("starlette.routing")
    applications = importlib.import_module("starlette.applications")
    errors = importlib.import_module("starlette.middleware.errors")
    from autotrace.hooks import starlette as hook

    hook.patch(routing)
    hook.patch_app(applications)
    undo = [
        (routing.Route, "handle"),
        (routing.WebSocketRoute, "handle"),
        (routing.Mount, "handle"),
        (applications.Starlette, "__call__"),
        (errors.ServerErrorMiddleware, "__init__"),
    ]
    try:
        fastapi_applications = importlib.import_module("fastapi.applications")
    except ImportError:
        pass
    else:
        hook.patch_fastapi(fastapi_applications)
        fastapi_routing = importlib.import_module("fastapi.routing")
        undo += [(fastapi_applications.FastAPI, "__call__"), (fastapi_routing.APIRoute, "handle")]
        native = getattr(fastapi_applications, "NativeTelemetry", None)
        if native is not None:
            undo.append((native, "__init__"))
    yield
    for owner, name in undo:
        unwrap_function(owner, name)


def make_starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Mount, Route

    async def item(request):
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    async def boom(request):
        raise ShopError("the shop failed")

    async def late(request):
        async def body():
            yield b"first part"
            raise ShopError("failed while streaming")

        return StreamingResponse(body())

    async def files(scope, receive, send):  # a plain ASGI app behind a mount
        await PlainTextResponse("file " + scope["path"])(scope, receive, send)

    api = [Route("/items/{item_id:int}", item), Mount("/v{version}", routes=[Route("/items/{item_id}", item)])]
    return Starlette(
        routes=[
            Mount("/api", routes=api),
            Mount("/static", app=files),
            Route("/boom", boom),
            Route("/late", late),
        ]
    )


@SERVED
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/items/42", "GET /api/items/{item_id:int}"),
        ("/api/v2/items/42", "GET /api/v{version}/items/{item_id}"),
        ("/static/css/site.css", "GET /static/{path:path}"),
        ("/nope", "GET"),
    ],
)
def test_starlette_route_with_its_mounts(spans, starlette_hooked, served, path, name):
    status, _, raised = asgi_get(make_starlette_app(), path, served)
    assert raised is None and status == (404 if name == "GET" else 200)
    span = only(spans)
    assert span.name == name
    assert span.attributes.get("http.route") == (name[4:] or None)
    assert span.parent.span_id == int(SPAN_ID, 16)


@SERVED
def test_starlette_500_records_the_exception_before_the_response(spans, starlette_hooked, served):
    status, body, raised = asgi_get(make_starlette_app(), "/boom", served)
    assert (status, body) == (500, b"Internal Server Error")
    assert isinstance(raised, ShopError)  # re-raised by Starlette, untouched
    span = only(spans)
    assert span.name == "GET /boom"
    assert span.attributes["error.type"] == "ShopError"
    assert span.status.status_code is StatusCode.ERROR
    assert len(exception_events(span)) == 1


@SERVED
def test_starlette_exception_while_streaming_recorded_once(spans, starlette_hooked, served):
    status, body, raised = asgi_get(make_starlette_app(), "/late", served)
    assert (status, body) == (200, b"first part")
    assert isinstance(raised, ShopError)
    span = only(spans)
    assert span.attributes["error.type"] == "ShopError"
    assert len(exception_events(span)) == 1


def make_fastapi_app():
    from fastapi import APIRouter, FastAPI

    app = FastAPI()
    outer, inner = APIRouter(prefix="/shop"), APIRouter(prefix="/items")

    @inner.get("/{item_id}")
    def item(item_id: int):
        return {"item": item_id}

    outer.include_router(inner)
    app.include_router(outer)

    sub = FastAPI()

    @sub.get("/orders/{order_id}")
    async def order(order_id: int):
        return {"order": order_id}

    app.mount("/sub", sub)

    @app.get("/boom")
    async def boom():
        raise ShopError("the shop failed")

    return app


@SERVED
@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/shop/items/42", "GET /shop/items/{item_id}"),  # routers included with prefixes
        ("/sub/orders/7", "GET /sub/orders/{order_id}"),  # a mounted FastAPI app
        ("/nope", "GET"),
    ],
)
def test_fastapi_route_and_one_span(spans, starlette_hooked, served, path, name):
    status, _, raised = asgi_get(make_fastapi_app(), path, served)
    assert raised is None and status == (404 if name == "GET" else 200)
    span = only(spans)  # FastAPI's own telemetry adds no span of its own
    assert span.instrumentation_scope.name == "autotrace.http.server"
    assert span.name == name


@SERVED
def test_fastapi_500_records_the_exception(spans, starlette_hooked, served):
    status, _, raised = asgi_get(make_fastapi_app(), "/boom", served)
    assert status == 500 and isinstance(raised, ShopError)
    span = only(spans)
    assert span.name == "GET /boom"
    assert span.attributes["error.type"] == "ShopError"
    assert len(exception_events(span)) == 1


def test_fastapi_native_telemetry_keeps_its_settings_but_not_its_spans(starlette_hooked):
    fastapi = importlib.import_module("fastapi")
    app = fastapi.FastAPI(telemetry={"metrics": False}) if hasattr(fastapi.applications, "NativeTelemetry") else None
    if app is None:
        pytest.skip("this FastAPI has no native telemetry")
    assert app._telemetry["tracing"] is True  # the app's own settings are left alone
    assert app._native_telemetry.config["tracing"] is False
    assert app._native_telemetry.config["metrics"] is False


def test_no_span_without_a_current_one_and_no_server(starlette_hooked, spans):
    """Route naming and exception recording do nothing outside a request's span."""
    assert server_span.current() is None
    server_span.set_route("/x")
    server_span.record_exception(ShopError("x"))
    assert spans.get_finished_spans() == ()
