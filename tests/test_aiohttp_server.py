"""The aiohttp server hook, in process: real aiohttp servers on loopback, spans in memory.

Each test serves an app (or a low-level ``web.Server``) with ``AppRunner`` and a
``TCPSite`` on a free loopback port inside ``asyncio.run``, and calls it with
http.client in a thread (not traced: http.client is not patched here). The end-to-end
checks under ``autotrace run`` are in integration/test_aiohttp.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json

import aiohttp.web_protocol
import pytest
from aiohttp import web
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode
from ports import free_port

from autotrace import patching
from autotrace.hooks import aiohttp_server as aiohttp_server_hook
from autotrace.hooks import thread_pool as thread_pool_hook

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def hooked(spans):
    mark = len(patching.history)
    aiohttp_server_hook.patch(aiohttp.web_protocol)
    thread_pool_hook.patch(concurrent.futures.thread)
    yield spans
    patching.undo(mark)


def request(port: int, method: str, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def serve(handler_or_app, calls):
    """Serve the app (or low-level handler) on loopback and run ``calls(port)`` in a thread."""

    async def main():
        port = free_port()
        if isinstance(handler_or_app, web.Application):
            runner = web.AppRunner(handler_or_app, access_log=None)
        else:
            runner = web.ServerRunner(web.Server(handler_or_app, access_log=None))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            return await asyncio.wait_for(asyncio.to_thread(calls, port), 20)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def server_spans(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


class Boom(Exception):
    pass


def make_app(seen: dict) -> web.Application:
    tracer = trace.get_tracer("test")

    async def item(request):
        seen["current"] = trace.get_current_span()

        async def child():
            with tracer.start_as_current_span("in-task"):
                await asyncio.sleep(0)

        def in_thread(name):
            with tracer.start_as_current_span(name):
                pass

        await asyncio.create_task(child())
        await asyncio.get_running_loop().run_in_executor(None, in_thread, "in-executor")
        await asyncio.to_thread(in_thread, "in-to-thread")
        return web.json_response({"id": request.match_info["id"]})

    async def fail(request):
        raise Boom("no luck")

    async def missing(request):
        raise web.HTTPNotFound()

    async def unavailable(request):
        raise web.HTTPServiceUnavailable()

    async def stream(request):
        response = web.StreamResponse()
        await response.prepare(request)
        for n in range(3):
            await response.write(b"line %d\n" % n)
            await asyncio.sleep(0.01)
            seen.setdefault("chunks", []).append(trace.get_current_span())
        await response.write_eof()
        return response

    async def broken_stream(request):
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        raise Boom("mid-stream")

    async def socket(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str("echo " + message.data)
        return ws

    app = web.Application()
    app.router.add_get("/items/{id:\\d+}", item)
    app.router.add_get("/fail", fail)
    app.router.add_get("/missing", missing)
    app.router.add_get("/unavailable", unavailable)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", socket)
    app.router.add_get("/broken-stream", broken_stream)
    sub = web.Application()
    sub.router.add_get("/users/{name}", ok)
    app.add_subapp("/api", sub)
    return app


async def ok(request):
    return web.Response(text="ok")


def test_one_span_per_request_named_by_the_resource(hooked):
    seen: dict = {}
    status, body, _ = serve(make_app(seen), lambda port: request(port, "GET", "/items/42?q=1&token=x", {"traceparent": TRACEPARENT}))
    assert status == 200 and json.loads(body) == {"id": "42"}

    spans = hooked.get_finished_spans()
    [server] = server_spans(hooked)
    assert server.name == "GET /items/{id}"
    assert server.kind == SpanKind.SERVER
    assert server.status.status_code == StatusCode.UNSET
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == SPAN_ID and server.parent.is_remote
    attributes = dict(server.attributes)
    port = attributes.pop("server.port")
    assert isinstance(port, int)
    assert attributes.pop("url.query").startswith("q=1&token=")
    assert attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/items/42",
        "server.address": "127.0.0.1",
        "client.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "http.route": "/items/{id}",
        "http.response.status_code": 200,
    }
    # The handler's context, and the task, executor and to_thread work it starts: children.
    assert seen["current"].get_span_context().span_id == server.context.span_id
    children = {s.name: s for s in spans if s.kind == SpanKind.INTERNAL}
    assert set(children) == {"in-task", "in-executor", "in-to-thread"}
    for child in children.values():
        assert child.parent.span_id == server.context.span_id


def test_errors_and_http_exceptions(hooked):
    def calls(port):
        return [request(port, "GET", path)[0] for path in ("/fail", "/missing", "/unavailable", "/nowhere")]

    assert serve(make_app({}), calls) == [500, 404, 503, 404]
    by_path = {s.attributes["url.path"]: s for s in server_spans(hooked)}
    assert len(by_path) == 4

    fail = by_path["/fail"]
    assert fail.name == "GET /fail"
    assert fail.status.status_code == StatusCode.ERROR
    assert fail.attributes["error.type"] == "Boom"
    assert fail.attributes["http.response.status_code"] == 500
    assert [e.name for e in fail.events] == ["exception"]

    missing = by_path["/missing"]
    assert missing.name == "GET /missing"
    assert missing.status.status_code == StatusCode.UNSET
    assert missing.attributes["http.response.status_code"] == 404
    assert not missing.events

    unavailable = by_path["/unavailable"]
    assert unavailable.status.status_code == StatusCode.ERROR
    assert unavailable.attributes["error.type"] == "503"

    nowhere = by_path["/nowhere"]
    assert nowhere.name == "GET"  # no route matched
    assert "http.route" not in nowhere.attributes
    assert nowhere.attributes["http.response.status_code"] == 404
    assert nowhere.status.status_code == StatusCode.UNSET


def test_a_handler_timing_out_is_recorded_with_aiohttps_504(hooked):
    """aiohttp answers a TimeoutError with 504 and without passing it on: it is recorded all the same."""

    async def slow(request):
        raise asyncio.TimeoutError()

    app = web.Application()
    app.router.add_get("/slow/{n}", slow)
    assert serve(app, lambda port: request(port, "GET", "/slow/1")[0]) == 504
    [server] = server_spans(hooked)
    assert server.name == "GET /slow/{n}"
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["error.type"] == "TimeoutError"
    assert server.attributes["http.response.status_code"] == 504
    assert [e.attributes["exception.type"] for e in server.events] == ["TimeoutError"]


def test_sub_application_route_has_its_prefix(hooked):
    status, body, _ = serve(make_app({}), lambda port: request(port, "GET", "/api/users/ann"))
    assert (status, body) == (200, b"ok")
    [server] = server_spans(hooked)
    assert server.name == "GET /api/users/{name}"


def test_streamed_response_is_measured_whole(hooked):
    seen: dict = {}
    status, body, _ = serve(make_app(seen), lambda port: request(port, "GET", "/stream"))
    assert status == 200 and body == b"line 0\nline 1\nline 2\n"
    [server] = server_spans(hooked)
    assert server.name == "GET /stream"
    assert [span.get_span_context().span_id for span in seen["chunks"]] == [server.context.span_id] * 3
    assert server.attributes["http.response.status_code"] == 200


def test_websocket_connection_is_one_span(hooked):
    import aiohttp

    async def talk(port):
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                replies = []
                for word in ("a", "b"):
                    await ws.send_str(word)
                    replies.append((await ws.receive()).data)
                return replies

    assert serve(make_app({}), lambda port: asyncio.run(talk(port))) == ["echo a", "echo b"]
    [server] = server_spans(hooked)
    assert server.name == "GET /ws"
    assert server.attributes["url.scheme"] == "ws"
    assert server.attributes["http.response.status_code"] == 101
    assert server.status.status_code == StatusCode.UNSET


def test_low_level_server_handler_gets_an_unnamed_span(hooked):
    async def handler(request):
        return web.Response(text="low " + trace.format_span_id(trace.get_current_span().get_span_context().span_id))

    status, body, _ = serve(handler, lambda port: request(port, "POST", "/any/thing"))
    [server] = server_spans(hooked)
    assert status == 200 and body == b"low " + trace.format_span_id(server.context.span_id).encode()
    assert server.name == "POST"
    assert server.attributes["url.path"] == "/any/thing"


def test_context_left_as_it_was_and_nothing_without_the_hook(spans):
    before = context.get_current()
    assert serve(make_app({}), lambda port: request(port, "GET", "/items/1")[0]) == 200
    assert context.get_current() is before
    assert not server_spans(spans)


def test_responses_are_the_same_with_the_hook(spans):
    paths = ["/items/3", "/fail", "/missing", "/unavailable", "/nowhere", "/stream", "/api/users/bo"]

    def calls(port):
        return [request(port, "GET", path) for path in paths]

    def comparable(results):
        return [(status, body, sorted((k, v) for k, v in headers.items() if k != "Date")) for status, body, headers in results]

    plain = comparable(serve(make_app({}), calls))
    mark = len(patching.history)
    aiohttp_server_hook.patch(aiohttp.web_protocol)
    try:
        traced = comparable(serve(make_app({}), calls))
    finally:
        patching.undo(mark)
    assert traced == plain
    assert len(server_spans(spans)) == len(paths)


def test_excluded_urls_get_no_span(hooked, monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/api/.*")
    assert serve(make_app({}), lambda port: [request(port, "GET", p)[0] for p in ("/api/users/x", "/items/5")]) == [200, 200]
    assert [s.name for s in server_spans(hooked)] == ["GET /items/{id}"]


def test_named_response_headers_are_captured(hooked, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "Content-Type")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-App")
    serve(make_app({}), lambda port: request(port, "GET", "/items/5", {"X-App": "1"}))
    [server] = server_spans(hooked)
    assert server.attributes["http.response.header.content-type"] == ("application/json; charset=utf-8",)
    assert server.attributes["http.request.header.x-app"] == ("1",)


def test_a_failing_span_start_leaves_the_request_served(hooked, monkeypatch):
    from autotrace import server_span

    def broken(*args, **kwargs):
        raise RuntimeError("broken")

    monkeypatch.setattr(server_span, "start", broken)
    status, body, _ = serve(make_app({}), lambda port: request(port, "GET", "/items/8"))
    assert (status, json.loads(body)) == (200, {"id": "8"})
    assert not server_spans(hooked)


def test_a_malformed_request_gets_no_span(hooked):
    import socket

    def calls(port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /items/1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            return sock.recv(100)

    assert b" 400 " in serve(make_app({}), calls).partition(b"\r\n")[0]
    assert not server_spans(hooked)


def test_a_framework_inside_keeps_its_finer_route_name(hooked):
    """As a WSGI framework served behind a catch-all route (through a WSGI adapter) names it."""
    from autotrace import server_span

    async def catch_all(request):
        server_span.set_route("/inner/<int:item>")
        return web.Response(text="inner")

    app = web.Application()
    app.router.add_route("*", "/{path_info:.*}", catch_all)
    assert serve(app, lambda port: request(port, "GET", "/inner/5")[:2]) == (200, b"inner")
    [server] = server_spans(hooked)
    assert server.name == "GET /inner/<int:item>"
    assert server.attributes["http.route"] == "/inner/<int:item>"


def test_a_wsgi_app_served_inside_adds_no_span(hooked):
    """A Flask app called from a handler in an executor thread (as aiohttp-wsgi does): one span, Flask's route."""
    import flask
    import flask.app
    from werkzeug.test import EnvironBuilder

    from autotrace.hooks import flask as flask_hook

    flask_hook.patch(flask.app)
    inner = flask.Flask("inner")

    @inner.get("/items/<int:item>")
    def item(item):
        return f"item {item}"

    async def wsgi(request):
        environ = EnvironBuilder(path=request.path, method=request.method).get_environ()
        status = []

        def call():
            return b"".join(inner(environ, lambda s, h, e=None: status.append(s)))

        body = await asyncio.get_running_loop().run_in_executor(None, call)
        return web.Response(body=body, status=int(status[0].split()[0]))

    app = web.Application()
    app.router.add_route("*", "/{path_info:.*}", wsgi)
    assert serve(app, lambda port: request(port, "GET", "/items/9")[:2]) == (200, b"item 9")
    [server] = server_spans(hooked)
    assert server.name == "GET /items/<int:item>"
    assert len(hooked.get_finished_spans()) == 1


def test_a_handler_failing_mid_stream_is_recorded_as_its_exception(hooked):
    def calls(port):
        try:
            return request(port, "GET", "/broken-stream")[0]
        except (http.client.HTTPException, OSError) as exc:  # the body was cut short
            return type(exc).__name__

    serve(make_app({}), calls)
    [server] = server_spans(hooked)
    assert server.name == "GET /broken-stream"
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["error.type"] == "Boom"
    [event] = server.events  # the handler's exception, not aiohttp's ConnectionError after it
    assert event.attributes["exception.type"].endswith("Boom")
