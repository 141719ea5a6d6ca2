"""Tornado: SERVER spans of a real ``Application`` on loopback, CLIENT spans of ``AsyncHTTPClient``.

In process, spans in memory. Each test runs its own event loop (``asyncio.run``): the
app listens on a free loopback port; requests come from ``AsyncHTTPClient`` (its own
spans are left out where a test checks only the server's) or from http.client in a
thread. The Tornado hooks (and the thread-pool hook, for ``run_in_executor``) are
applied as the registry would, and taken off after. The end-to-end checks under
``autotrace run`` are in integration/test_tornado_agent.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import patching
from client_checks import assert_failed, closed_port, traceparent_ids

import tornado.web as tornado_web
import tornado.httpclient  # noqa: E402
import tornado.httputil  # noqa: E402
import tornado.simple_httpclient  # noqa: E402
import tornado.websocket  # noqa: E402
import tornado.wsgi  # noqa: E402

from autotrace.hooks import tornado as hook  # noqa: E402

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def tornado_hooks(spans):
    """The Tornado hooks and the thread-pool hook applied; the originals put back after."""
    mark = len(patching.history)
    hook.patch(tornado_web)
    hook.patch_websocket(tornado.websocket)
    hook.patch_wsgi(tornado.wsgi)
    hook.patch_client(tornado.httpclient)
    hook.patch_simple_client(tornado.simple_httpclient)
    importlib.import_module("autotrace.hooks.thread_pool").patch(importlib.import_module("concurrent.futures.thread"))
    yield spans
    patching.undo(mark)


@pytest.fixture(autouse=True)
def nothing_recorded_after_the_end(caplog):
    """The SDK warns of an attribute set, or an end, on an ended span: the hooks do neither."""
    yield
    assert not [r.getMessage() for r in caplog.records if "ended span" in r.getMessage()]


def server_spans(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


def client_spans(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]


def internal(exporter, name: str):
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


tracer = trace.get_tracer("test")


class Item(tornado_web.RequestHandler):
    async def get(self, item_id):
        with tracer.start_as_current_span("handler"):
            pass
        self.write({"id": item_id})


class Named(tornado_web.RequestHandler):
    def get(self, owner, name):
        self.write(f"{owner}/{name}")


class Fail(tornado_web.RequestHandler):
    def get(self):
        raise RuntimeError("boom")


class Missing(tornado_web.RequestHandler):
    def get(self):
        raise tornado_web.HTTPError(404)


class Unavailable(tornado_web.RequestHandler):
    def get(self):
        raise tornado_web.HTTPError(503, "down")


class SendsError(tornado_web.RequestHandler):
    def get(self):
        self.send_error(502)


class Stopped(tornado_web.RequestHandler):
    def get(self):
        raise tornado_web.Finish("done")


class Streamed(tornado_web.RequestHandler):
    async def get(self):
        for index in range(3):
            self.write(f"line {index}\n")
            await self.flush()
            await asyncio.sleep(0.02)


class Children(tornado_web.RequestHandler):
    async def get(self):
        def in_thread():
            with tracer.start_as_current_span("executor"):
                pass

        async def in_task():
            with tracer.start_as_current_span("task"):
                pass

        def in_callback():
            with tracer.start_as_current_span("callback"):
                pass

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, in_thread)
        await asyncio.to_thread(in_thread)
        await asyncio.create_task(in_task())
        done = asyncio.Event()
        tornado.ioloop.IOLoop.current().add_callback(lambda: (in_callback(), done.set()))
        await done.wait()
        self.write("ok")


@tornado_web.stream_request_body
class Upload(tornado_web.RequestHandler):
    def initialize(self):
        self.size = 0

    def data_received(self, chunk):
        self.size += len(chunk)
        self.current = trace.get_current_span()

    def put(self):
        self.write({"size": self.size, "in_span": self.current.get_span_context().is_valid})


class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message):
        with tracer.start_as_current_span("message"):
            pass
        self.write_message(message)


import tornado.ioloop  # noqa: E402

ROUTES = [
    (r"/items/([0-9]+)", Item),
    (r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)", Named),
    (r"/fail", Fail),
    (r"/missing", Missing),
    (r"/unavailable", Unavailable),
    (r"/send-error", SendsError),
    (r"/finish", Stopped),
    (r"/stream", Streamed),
    (r"/children", Children),
    (r"/upload", Upload),
    (r"/ws", Echo),
]


def make_app() -> tornado_web.Application:
    return tornado_web.Application(ROUTES, log_function=lambda handler: None)


def serve(exchange, app: tornado_web.Application | None = None):
    """Run ``await exchange(base_url)`` with the app listening on loopback; its result."""

    async def main():
        server = (app or make_app()).listen(0, "127.0.0.1")
        [sock] = server._sockets.values()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            return await exchange(base)
        finally:
            server.stop()
            await server.close_all_connections()

    return asyncio.run(main())


async def get(url: str, **kwargs) -> tornado.httpclient.HTTPResponse:
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(url, raise_error=False, request_timeout=5, **kwargs)
    finally:
        client.close()


# -- route templates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "template"),
    [
        (r"/", "/"),
        (r"/items/([0-9]+)", "/items/{1}"),
        (r"/items/([0-9]+)$", "/items/{1}"),
        (r"^/items/(?P<item_id>\d+)/?$", "/items/{item_id}/?"),
        (r"/repos/(?P<owner>[^/]+)/(?P<name>[^/)]+)", "/repos/{owner}/{name}"),
        (r"/a/(x(y))/(z)", "/a/{1}/{3}"),
        (r"/files/(.*)", "/files/{1}"),
        (r"/(favicon\.ico)", "/{1}"),
        (r"/v1\.0/(\w+)", "/v1.0/{1}"),
        (r"/static/.*", "/static/.*"),
        (r"/(?:a|b)/(\d+)", "/(?:a|b)/{1}"),
        (r"/odd/(", "/odd/("),
    ],
)
def test_route_template(pattern, template):
    assert hook.route_template(pattern) == template


# -- the server ------------------------------------------------------------------------------


def plain_requests(base: str, requests: list[tuple[str, dict]]):
    """Send ``(path, headers)`` GETs on one keep-alive connection with http.client (untraced),
    in a thread; their (status, body) pairs."""
    import http.client

    def send():
        connection = http.client.HTTPConnection("127.0.0.1", int(base.rpartition(":")[2]), timeout=5)
        try:
            answers = []
            for path, headers in requests:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                answers.append((response.status, response.read()))
            return answers
        finally:
            connection.close()

    return asyncio.get_running_loop().run_in_executor(concurrent.futures.ThreadPoolExecutor(1), send)


def test_one_server_span_per_request_named_by_the_url_spec(tornado_hooks):
    [answer] = serve(lambda base: plain_requests(base, [("/items/42?q=1", {"traceparent": TRACEPARENT, "User-Agent": "t/1"})]))
    assert answer == (200, b'{"id": "42"}')
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET /items/{1}"
    assert f"{span.parent.span_id:016x}" == SPAN_ID and f"{span.context.trace_id:032x}" == TRACE_ID
    port = span.attributes["server.port"]
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/items/42",
        "url.query": "q=1",
        "server.address": "127.0.0.1",
        "server.port": port,
        "client.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "user_agent.original": "t/1",
        "http.route": "/items/{1}",
        "http.response.status_code": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert internal(tornado_hooks, "handler").parent.span_id == span.context.span_id


def test_named_groups_name_the_route(tornado_hooks):
    response = serve(lambda base: get(base + "/repos/me/tool"))
    assert response.body == b"me/tool"
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET /repos/{owner}/{name}"
    assert span.attributes["http.route"] == "/repos/{owner}/{name}"


def test_no_url_spec_leaves_the_method_as_name(tornado_hooks):
    response = serve(lambda base: get(base + "/nowhere/1"))
    assert response.code == 404
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET" and "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404
    assert span.status.status_code is StatusCode.UNSET


def test_a_nested_router_without_a_match_names_nothing(tornado_hooks):
    # A rule whose target is a list of rules: a nested router, tried with the full path.
    app = tornado_web.Application([(r"/api/.*", [(r"/api/items/([0-9]+)", Item)]), (r"/api/other", Named)], log_function=lambda h: None)
    responses = serve(lambda base: asyncio.gather(get(base + "/api/items/7"), get(base + "/api/zzz")), app)
    assert [r.code for r in responses] == [200, 404]
    by_path = {s.attributes["url.path"]: s for s in server_spans(tornado_hooks)}
    assert by_path["/api/items/7"].name == "GET /api/items/{1}"
    assert by_path["/api/zzz"].name == "GET" and "http.route" not in by_path["/api/zzz"].attributes


def test_an_exception_is_recorded_and_the_500_is_an_error(tornado_hooks):
    response = serve(lambda base: get(base + "/fail"))
    assert response.code == 500
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET /fail"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert span.attributes["http.response.status_code"] == 500
    [event] = span.events
    assert event.name == "exception" and event.attributes["exception.message"] == "boom"


@pytest.mark.parametrize(
    ("path", "code", "error"),
    [("/missing", 404, None), ("/unavailable", 503, "HTTPError"), ("/send-error", 502, "502"), ("/finish", 200, None)],
)
def test_http_errors_keep_their_status(tornado_hooks, path, code, error):
    response = serve(lambda base: get(base + path))
    assert response.code == code
    [span] = server_spans(tornado_hooks)
    assert span.attributes["http.response.status_code"] == code
    if error is None:
        assert span.status.status_code is StatusCode.UNSET and not span.events
        assert "error.type" not in span.attributes
    else:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == error


def test_a_flushed_response_is_measured_whole(tornado_hooks):
    response = serve(lambda base: get(base + "/stream"))
    assert response.body == b"line 0\nline 1\nline 2\n"
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET /stream" and span.attributes["http.response.status_code"] == 200
    assert (span.end_time - span.start_time) / 1e9 >= 0.06  # three writes, 20 ms apart


def test_the_context_stays_with_the_request_task(tornado_hooks):
    response = serve(lambda base: get(base + "/children"))
    assert response.body == b"ok"
    [span] = server_spans(tornado_hooks)
    for name in ("task", "callback"):
        assert internal(tornado_hooks, name).parent.span_id == span.context.span_id
    executed = [s for s in tornado_hooks.get_finished_spans() if s.name == "executor"]
    assert len(executed) == 2  # run_in_executor and to_thread
    assert all(s.parent.span_id == span.context.span_id for s in executed)


def test_a_streamed_request_body_is_received_in_the_span(tornado_hooks):
    response = serve(lambda base: get(base + "/upload", method="PUT", body=b"x" * 100_000))
    assert response.code == 200 and response.body == b'{"size": 100000, "in_span": true}'
    [span] = server_spans(tornado_hooks)
    assert span.name == "PUT /upload"


def test_requests_on_one_connection_are_separate_traces(tornado_hooks):
    answers = serve(lambda base: plain_requests(base, [("/items/1", {"traceparent": TRACEPARENT}), ("/items/2", {}), ("/fail", {})]))
    assert [code for code, _ in answers] == [200, 200, 500]
    first, second, third = sorted(server_spans(tornado_hooks), key=lambda s: s.start_time)
    assert f"{first.context.trace_id:032x}" == TRACE_ID
    assert second.parent is None and third.parent is None  # nothing left current from the first
    assert len({first.context.trace_id, second.context.trace_id, third.context.trace_id}) == 3


class Waits(tornado_web.RequestHandler):
    """Answers only when told (a long poll): the client gives up first."""

    waiting: asyncio.Event

    async def get(self):
        await Waits.waiting.wait()


def test_a_client_that_goes_away_ends_the_span_without_a_status(tornado_hooks):
    Waits.waiting = asyncio.Event()
    app = tornado_web.Application([(r"/wait", Waits)], log_function=lambda h: None)

    async def exchange(base):
        with pytest.raises(tornado.httpclient.HTTPClientError):
            await tornado.httpclient.AsyncHTTPClient(force_instance=True).fetch(base + "/wait", request_timeout=0.2)
        for _ in range(200):
            if server_spans(tornado_hooks):
                break
            await asyncio.sleep(0.01)
        Waits.waiting.set()  # the handler finishes now: nothing more is recorded
        await asyncio.sleep(0.05)

    serve(exchange, app)
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET /wait" and "http.response.status_code" not in span.attributes
    assert span.status.status_code is StatusCode.UNSET


def test_a_wsgi_app_behind_a_fallback_handler_is_one_span(tornado_hooks):
    import flask.app
    import tornado.wsgi

    from autotrace.hooks import flask as flask_hook

    flask_hook.patch(flask.app)
    shop = flask.Flask("shop")

    @shop.route("/orders/<int:order_id>")
    def order(order_id):
        return {"order": order_id}

    @shop.route("/broken")
    def broken():
        return "no", 500

    def plain(environ, start_response):
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"plain"]

    app = tornado_web.Application(
        [
            (r"/plain", tornado_web.FallbackHandler, {"fallback": tornado.wsgi.WSGIContainer(plain)}),
            (r".*", tornado_web.FallbackHandler, {"fallback": tornado.wsgi.WSGIContainer(shop)}),
        ],
        log_function=lambda h: None,
    )
    responses = serve(lambda base: asyncio.gather(get(base + "/orders/5"), get(base + "/broken"), get(base + "/plain")), app)
    assert [(r.code, r.body) for r in responses] == [(200, b'{"order":5}\n'), (500, b"no"), (201, b"plain")]
    spans = {s.attributes["url.path"]: s for s in server_spans(tornado_hooks)}
    assert len(server_spans(tornado_hooks)) == 3
    assert spans["/orders/5"].name == "GET /orders/<int:order_id>"
    assert spans["/orders/5"].attributes["http.response.status_code"] == 200
    assert spans["/broken"].status.status_code is StatusCode.ERROR
    assert spans["/broken"].attributes["http.response.status_code"] == 500
    assert spans["/plain"].name == "GET /plain" and spans["/plain"].attributes["http.response.status_code"] == 201


def test_a_wsgi_container_served_directly_starts_its_span(tornado_hooks):
    import tornado.httpserver

    def plain(environ, start_response):
        with tracer.start_as_current_span("wsgi-app"):
            pass
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"plain"]

    async def main():
        server = tornado.httpserver.HTTPServer(tornado.wsgi.WSGIContainer(plain))
        server.listen(0, "127.0.0.1")
        [sock] = server._sockets.values()
        try:
            return await plain_requests(f"http://127.0.0.1:{sock.getsockname()[1]}", [("/x?a=1", {"traceparent": TRACEPARENT})])
        finally:
            server.stop()

    assert asyncio.run(main()) == [(201, b"plain")]
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET" and span.attributes["http.response.status_code"] == 201
    assert span.attributes["url.path"] == "/x" and f"{span.parent.span_id:016x}" == SPAN_ID
    assert internal(tornado_hooks, "wsgi-app").parent.span_id == span.context.span_id


def test_a_websocket_connection_is_one_span(tornado_hooks):
    async def exchange(base):
        connection = await tornado.websocket.websocket_connect(base.replace("http", "ws") + "/ws")
        await connection.write_message("hi")
        echoed = await connection.read_message()
        await connection.write_message("again")
        await connection.read_message()
        opened = server_spans(tornado_hooks)
        connection.close()
        for _ in range(200):
            if server_spans(tornado_hooks):
                break
            await asyncio.sleep(0.01)
        return echoed, opened

    echoed, opened_spans = serve(exchange)
    assert echoed == "hi"
    assert opened_spans == []  # open while the connection is
    [span] = server_spans(tornado_hooks)
    assert span.name == "GET /ws" and span.attributes["http.response.status_code"] == 101
    assert span.status.status_code is StatusCode.UNSET
    messages = [s for s in tornado_hooks.get_finished_spans() if s.name == "message"]
    assert len(messages) == 2 and all(m.parent.span_id == span.context.span_id for m in messages)


class Cookies(tornado_web.RequestHandler):
    def get(self):
        self.set_header("X-Served-By", "web-1")
        self.set_cookie("sid", "1")
        self.write("ok")


def test_named_headers_are_captured_and_sanitized(tornado_hooks, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-Request-Id,authorization")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-served-by,SET-COOKIE")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "Authorization,Set-Cookie")
    app = tornado_web.Application([(r"/cookies", Cookies)], log_function=lambda h: None)
    headers = {"X-Request-Id": "r-1", "Authorization": "Bearer s3cret"}
    [answer] = serve(lambda base: plain_requests(base, [("/cookies", headers)]), app)
    assert answer == (200, b"ok")
    [span] = server_spans(tornado_hooks)
    assert {k: tuple(v) for k, v in span.attributes.items() if ".header." in k} == {
        "http.request.header.x-request-id": ("r-1",),
        "http.request.header.authorization": ("[REDACTED]",),
        "http.response.header.x-served-by": ("web-1",),
        "http.response.header.set-cookie": ("[REDACTED]",),
    }


@pytest.mark.parametrize("mode", ["restart", "ignore"])
def test_incoming_context_setting_is_followed(tornado_hooks, monkeypatch, mode):
    monkeypatch.setenv("AUTOTRACE_INCOMING_CONTEXT", mode)
    [answer] = serve(lambda base: plain_requests(base, [("/items/1", {"traceparent": TRACEPARENT, "baggage": "k=v"})]))
    assert answer[0] == 200
    [span] = server_spans(tornado_hooks)
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE_ID
    linked = [f"{link.context.span_id:016x}" for link in span.links]
    assert linked == ([SPAN_ID] if mode == "restart" else [])


def test_a_cancelled_fetch_ends_its_span(tornado_hooks, peer):
    async def cancel(client):
        future = client.fetch(peer.url("/slow?seconds=0.5", "cancelled"), request_timeout=5)
        await asyncio.sleep(0.05)
        future.cancel()
        await asyncio.sleep(0.01)
        return future.cancelled()

    assert fetch(cancel) is True
    [span] = client_spans(tornado_hooks)
    assert span.status.status_code is StatusCode.UNSET and "http.response.status_code" not in span.attributes


def test_a_failing_propagator_sends_the_request_as_it_is(tornado_hooks, peer, monkeypatch):
    from opentelemetry import propagate

    class Broken:
        fields = {"traceparent"}

        def inject(self, carrier, context=None, setter=None):
            raise RuntimeError("broken propagator")

        def extract(self, carrier, context=None, getter=None):
            raise RuntimeError("broken propagator")

    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", Broken())
    response = fetch(lambda client: client.fetch(peer.url("/ok", "broken"), request_timeout=5))
    assert response.code == 200
    [received] = peer.requests("broken")
    assert received.header("traceparent") is None
    [span] = client_spans(tornado_hooks)
    assert span.attributes["http.response.status_code"] == 200


def test_a_websocket_handshake_is_one_client_span(tornado_hooks, parent):
    async def exchange(base):
        connection = await tornado.websocket.websocket_connect(base.replace("http", "ws") + "/ws")
        await connection.write_message("hi")
        echoed = await connection.read_message()
        connection.close()
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await tornado.websocket.websocket_connect(base.replace("http", "ws") + "/nowhere")
        for _ in range(200):
            if len(server_spans(tornado_hooks)) == 2:
                break
            await asyncio.sleep(0.01)
        return echoed, refused.value.code

    assert serve(exchange) == ("hi", 404)
    opened, missing = sorted(client_spans(tornado_hooks), key=lambda s: s.start_time)
    assert opened.name == "GET" and opened.attributes["url.full"].endswith("/ws")
    assert opened.attributes["url.full"].startswith("ws://")
    assert opened.attributes["http.response.status_code"] == 101 and opened.status.status_code is StatusCode.UNSET
    assert opened.end_time < min(s.end_time for s in server_spans(tornado_hooks))  # the handshake only
    assert missing.attributes["http.response.status_code"] == 404 and missing.status.status_code is StatusCode.ERROR
    servers = {s.attributes["url.path"]: s for s in server_spans(tornado_hooks)}
    assert servers["/ws"].parent.span_id == opened.context.span_id
    assert servers["/nowhere"].parent.span_id == missing.context.span_id
    assert opened.parent.span_id == parent.get_span_context().span_id


def test_responses_are_those_of_an_untraced_app(spans):
    paths = ["/items/3", "/repos/a/b", "/fail", "/missing", "/stream", "/nowhere"]

    def observe():
        async def exchange(base):
            responses = [await get(base + p) for p in paths]
            return [(r.code, r.body, sorted((k, v) for k, v in r.headers.get_all() if k != "Date")) for r in responses]

        return serve(exchange)

    untraced = observe()
    mark = len(patching.history)
    hook.patch(tornado_web)
    hook.patch_client(tornado.httpclient)
    try:
        traced = observe()
    finally:
        patching.undo(mark)
    assert traced == untraced
    assert len(server_spans(spans)) == len(paths)


# -- the client ------------------------------------------------------------------------------


def fetch(coroutine_function):
    """Run ``await coroutine_function(client)`` with a fresh AsyncHTTPClient; no context left current."""

    async def main():
        before = context.get_current()
        client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
        try:
            return await coroutine_function(client)
        finally:
            client.close()
            assert context.get_current() is before

    return asyncio.run(main())


def test_fetch_is_one_client_span_whose_id_the_peer_received(tornado_hooks, peer, parent):
    headers = {"X-Mine": "1"}
    response = fetch(lambda client: client.fetch(peer.url("/ok", "get"), headers=headers, request_timeout=5))
    assert response.code == 200 and response.body == b"ok\n"
    assert headers == {"X-Mine": "1"}  # the caller's dict is left as it was
    [span] = client_spans(tornado_hooks)
    [received] = peer.requests("get")
    assert len(received.headers["traceparent"]) == 1 and received.header("x-mine") == "1"
    assert traceparent_ids(received.header("traceparent")) == (span.context.trace_id, span.context.span_id)
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.name == "GET"
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "url.full": peer.url("/ok", "get"),
        "server.address": "127.0.0.1",
        "server.port": peer.port,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }
    assert span.status.status_code is StatusCode.UNSET


def test_an_http_request_object_is_left_as_it_was(tornado_hooks, peer):
    mine = "00-11111111111111111111111111111111-2222222222222222-01"
    headers = {"traceparent": mine}
    request = tornado.httpclient.HTTPRequest(peer.url("/ok", "object"), method="POST", body=b"x", headers=headers, request_timeout=5)
    before = dict(request.headers)

    async def twice(client):
        return [await client.fetch(request), await client.fetch(request)]

    responses = fetch(twice)
    assert [r.code for r in responses] == [200, 200]
    assert dict(request.headers) == before and headers == {"traceparent": mine}
    values = [r.header("traceparent") for r in peer.requests("object")]
    spans = client_spans(tornado_hooks)
    assert len(spans) == 2 and mine not in values
    assert sorted(traceparent_ids(v)[1] for v in values) == sorted(s.context.span_id for s in spans)
    assert {s.name for s in spans} == {"POST"}


def test_each_redirect_hop_is_a_sibling_span(tornado_hooks, peer, parent):
    response = fetch(lambda client: client.fetch(peer.url("/redirect/2", "redir"), request_timeout=5))
    assert response.code == 200 and response.body == b"ok\n"
    received = peer.requests("redir")
    assert [r.path for r in received] == ["/redirect/2", "/redirect/1", "/redirect/0", "/ok"]
    hops = client_spans(tornado_hooks)
    assert len(hops) == 4
    by_id = {s.context.span_id: s for s in hops}
    for index, request in enumerate(received):
        [value] = request.headers["traceparent"]
        span = by_id[traceparent_ids(value)[1]]
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["url.full"] == peer.base + request.path + "?case=redir"
        assert span.attributes.get("http.request.resend_count") == (index or None)
        assert span.attributes["http.response.status_code"] == (302 if index < 3 else 200)
    ordered = sorted(hops, key=lambda s: s.start_time)
    for first, second in zip(ordered, ordered[1:]):
        assert first.end_time <= second.start_time


def test_redirects_not_followed_is_one_span_keeping_its_status(tornado_hooks, peer):
    with pytest.raises(tornado.httpclient.HTTPClientError) as raised:
        fetch(lambda client: client.fetch(peer.url("/redirect/1"), follow_redirects=False, request_timeout=5))
    assert raised.value.code == 302
    [span] = client_spans(tornado_hooks)
    assert span.attributes["http.response.status_code"] == 302
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("raise_error", [True, False])
@pytest.mark.parametrize("code", [404, 500])
def test_error_statuses_keep_their_status(tornado_hooks, peer, code, raise_error):
    async def call(client):
        return await client.fetch(peer.url(f"/status/{code}"), raise_error=raise_error, request_timeout=5)

    if raise_error:
        with pytest.raises(tornado.httpclient.HTTPClientError) as raised:
            fetch(call)
        assert type(raised.value) is tornado.httpclient.HTTPClientError and raised.value.code == code
    else:
        assert fetch(call).code == code
    [span] = client_spans(tornado_hooks)
    assert span.attributes["http.response.status_code"] == code
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == str(code)
    assert not span.events


def test_connection_refused_reaches_the_app_and_is_recorded(tornado_hooks, parent):
    port = closed_port()
    with pytest.raises(ConnectionRefusedError) as raised:
        fetch(lambda client: client.fetch(f"http://127.0.0.1:{port}/x", request_timeout=5))
    assert type(raised.value) is ConnectionRefusedError
    [span] = client_spans(tornado_hooks)
    assert_failed(span, "ConnectionRefusedError")
    assert span.parent.span_id == parent.get_span_context().span_id


def test_a_timeout_is_recorded(tornado_hooks, peer):
    with pytest.raises(tornado.httpclient.HTTPClientError) as raised:
        fetch(lambda client: client.fetch(peer.url("/slow?seconds=1"), request_timeout=0.2))
    assert raised.value.code == 599
    [span] = client_spans(tornado_hooks)
    assert_failed(span, "tornado.simple_httpclient.HTTPTimeoutError")


def test_secrets_in_the_url_are_redacted(tornado_hooks, peer):
    url = f"http://user:pw@127.0.0.1:{peer.port}/ok?token=abc&case=secret"
    fetch(lambda client: client.fetch(url, request_timeout=5))
    [span] = client_spans(tornado_hooks)
    assert span.attributes["url.full"] == f"http://127.0.0.1:{peer.port}/ok?token=REDACTED&case=secret"


def test_the_blocking_client_is_covered(tornado_hooks, peer, parent):
    client = tornado.httpclient.HTTPClient()
    try:
        response = client.fetch(peer.url("/ok", "blocking"), request_timeout=5)
    finally:
        client.close()
    assert response.code == 200
    [span] = client_spans(tornado_hooks)
    assert span.parent.span_id == parent.get_span_context().span_id
    assert traceparent_ids(peer.requests("blocking")[0].header("traceparent"))[1] == span.context.span_id


def test_suppressed_instrumentation_makes_no_span_and_sends_no_header(tornado_hooks, peer, suppressed):
    fetch(lambda client: client.fetch(peer.url("/redirect/1", "quiet"), request_timeout=5))
    assert tornado_hooks.get_finished_spans() == ()
    assert [r.header("traceparent") for r in peer.requests("quiet")] == [None, None, None]


def test_a_server_calling_out_is_one_trace(tornado_hooks, peer):
    class Front(tornado_web.RequestHandler):
        async def get(self, name):
            client = tornado.httpclient.AsyncHTTPClient()
            response = await client.fetch(peer.url("/ok", "front"), request_timeout=5)
            self.write(response.body)

    app = tornado_web.Application([(r"/front/(\w+)", Front)], log_function=lambda h: None)
    response = serve(lambda base: get(base + "/front/x"), app)
    assert response.body == b"ok\n"
    [server] = server_spans(tornado_hooks)
    calls = {s.attributes["url.full"].rpartition("/")[2]: s for s in client_spans(tornado_hooks)}
    first, second = calls["x"], calls["ok?case=front"]  # the test's call, the handler's
    assert server.parent.span_id == first.context.span_id
    assert second.parent.span_id == server.context.span_id
    assert first.context.trace_id == server.context.trace_id == second.context.trace_id
    assert traceparent_ids(peer.requests("front")[0].header("traceparent"))[1] == second.context.span_id


def test_patch_is_idempotent_and_keeps_coroutine_functions(spans):
    mark = len(patching.history)
    hook.patch(tornado_web)
    count = len(patching.history)
    try:
        hook.patch(tornado_web)
        assert len(patching.history) == count
        assert inspect.iscoroutinefunction(tornado_web.RequestHandler._execute)
        assert tornado_web.RequestHandler.finish.__wrapped__ is not None
    finally:
        patching.undo(mark)
