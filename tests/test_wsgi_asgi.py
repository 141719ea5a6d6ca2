"""The WSGI and ASGI wrappers: one SERVER span per request, ended when the response is complete."""

from __future__ import annotations

import asyncio
import copy

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import asgi, server_span, wsgi

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def only(spans):
    finished = spans.get_finished_spans()
    assert len(finished) == 1, [s.name for s in finished]
    return finished[0]


# --- WSGI ------------------------------------------------------------------------------


def environ(path="/items", query="", method="GET", **extra):
    env = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "shop.example:8080",
        "wsgi.url_scheme": "http",
    }
    env.update(extra)
    return env


class StartResponse:
    def __init__(self):
        self.calls = []

    def __call__(self, status, headers, exc_info=None):
        self.calls.append((status, headers, exc_info))
        return self.write

    def write(self, data):
        pass


def list_app(status="200 OK", body=(b"hello",), headers=(("Content-Type", "text/plain"),)):
    def app(environ, start_response):
        start_response(status, list(headers))
        return list(body)

    return app


def test_wsgi_list_response_returned_as_is_and_span_ended_at_return(spans):
    body = [b"hello", b" world"]

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    start_response = StartResponse()
    result = wsgi.wrap(app)(environ(query="a=1", HTTP_USER_AGENT="test/1.0"), start_response)
    assert result is body
    assert start_response.calls == [("200 OK", [("Content-Type", "text/plain")], None)]
    recorded = only(spans)  # ended already
    assert recorded.name == "GET" and recorded.kind is SpanKind.SERVER
    assert dict(recorded.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/items",
        "url.query": "a=1",
        "server.address": "shop.example",
        "server.port": 8080,
        "client.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "user_agent.original": "test/1.0",
        "http.response.status_code": 200,
    }
    assert recorded.status.status_code is StatusCode.UNSET
    assert server_span.current() is None


def test_wsgi_tuple_response_returned_as_is(spans):
    body = (b"a",)
    app = wsgi.wrap(lambda env, sr: (sr("200 OK", []), body)[1])
    assert app(environ(), StartResponse()) is body
    assert len(spans.get_finished_spans()) == 1


def test_wsgi_start_response_return_value_and_exc_info_passed_on(spans):
    seen = []

    def app(environ, start_response):
        write = start_response("200 OK", [])
        seen.append(write)
        try:
            raise ValueError("late")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b""]

    start_response = StartResponse()
    wsgi.wrap(app)(environ(), start_response)
    assert seen == [start_response.write]
    assert start_response.calls[0] == ("200 OK", [], None)
    assert start_response.calls[1][2][0] is ValueError
    recorded = only(spans)
    assert recorded.attributes["http.response.status_code"] == 500


def test_wsgi_generator_response_ends_after_exhaustion_in_the_request_context(spans):
    children = []

    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"one"
        with trace.get_tracer("test").start_as_current_span("render") as child:
            children.append((child, server_span.current()))
        yield b"two"

    result = wsgi.wrap(app)(environ(), StartResponse())
    assert spans.get_finished_spans() == ()
    assert server_span.current() is None  # not current between the server's calls
    assert next(result) == b"one"
    assert spans.get_finished_spans() == ()
    assert server_span.current() is None
    assert next(result) == b"two"
    with pytest.raises(StopIteration):
        next(result)
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert set(by_name) == {"GET", "render"}
    server = by_name["GET"]
    assert by_name["render"].parent.span_id == server.context.span_id
    assert by_name["render"].context.trace_id == server.context.trace_id
    assert children[0][1] is not None and children[0][1].get_span_context().span_id == server.context.span_id
    assert server.attributes["http.response.status_code"] == 200
    assert server.end_time >= by_name["render"].end_time
    result.close()
    assert len(spans.get_finished_spans()) == 2  # ended once


def test_wsgi_iterable_response_ends_when_a_for_loop_finishes(spans):
    class Body:
        closed = False

        def __iter__(self):
            return iter([b"a", b"b"])

        def close(self):
            Body.closed = True

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    result = wsgi.wrap(app)(environ(), StartResponse())
    assert b"".join(result) == b"ab"
    assert len(spans.get_finished_spans()) == 1
    result.close()
    assert Body.closed
    assert len(spans.get_finished_spans()) == 1


def test_wsgi_close_without_exhaustion_ends_the_span(spans):
    closed = []

    def app(environ, start_response):
        start_response("200 OK", [])
        try:
            yield b"one"
            yield b"two"
        finally:
            closed.append(server_span.current())

    result = wsgi.wrap(app)(environ(), StartResponse())
    assert next(result) == b"one"
    assert spans.get_finished_spans() == ()
    result.close()
    recorded = only(spans)
    assert closed and closed[0] is not None  # the app's clean-up ran in the request's context
    assert recorded.status.status_code is StatusCode.UNSET
    assert server_span.current() is None


def test_wsgi_close_before_iterating_ends_the_span(spans):
    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"never"

    wsgi.wrap(app)(environ(), StartResponse()).close()
    assert len(spans.get_finished_spans()) == 1


def test_wsgi_app_raising_before_start_response(spans):
    error = KeyError("missing")

    def app(environ, start_response):
        raise error

    start_response = StartResponse()
    with pytest.raises(KeyError) as caught:
        wsgi.wrap(app)(environ(), start_response)
    assert caught.value is error
    assert start_response.calls == []
    recorded = only(spans)
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.attributes["error.type"] == "KeyError"
    assert [e.name for e in recorded.events] == ["exception"]
    assert server_span.current() is None


def test_wsgi_app_raising_during_iteration(spans):
    error = RuntimeError("stream broke")

    def app(environ, start_response):
        start_response("200 OK", [])
        yield b"first"
        raise error

    result = wsgi.wrap(app)(environ(), StartResponse())
    assert next(result) == b"first"
    with pytest.raises(RuntimeError) as caught:
        next(result)
    assert caught.value is error
    recorded = only(spans)
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.attributes["error.type"] == "RuntimeError"
    assert recorded.attributes["http.response.status_code"] == 200
    assert server_span.current() is None


def test_wsgi_response_whose_iter_raises(spans):
    class Broken:
        def __iter__(self):
            raise OSError("no body")

    error_holder = []

    def app(environ, start_response):
        start_response("200 OK", [])
        return Broken()

    result = wsgi.wrap(app)(environ(), StartResponse())
    with pytest.raises(OSError) as caught:
        next(result)
    error_holder.append(caught.value)
    recorded = only(spans)
    assert recorded.attributes["error.type"] == "OSError"
    assert server_span.current() is None


@pytest.mark.parametrize(
    "status, code, error",
    [("200 OK", 200, False), ("301 Moved Permanently", 301, False), ("404 Not Found", 404, False), ("500 Internal Server Error", 500, True), ("503 Busy", 503, True)],
)
def test_wsgi_status(spans, status, code, error):
    wsgi.wrap(list_app(status))(environ(), StartResponse())
    recorded = only(spans)
    assert recorded.attributes["http.response.status_code"] == code
    assert (recorded.status.status_code is StatusCode.ERROR) is error
    assert recorded.attributes.get("error.type") == ("500" if code == 500 else "503" if code == 503 else None)


def test_wsgi_malformed_status_passed_to_the_server(spans):
    start_response = StartResponse()
    wsgi.wrap(list_app("bogus"))(environ(), start_response)
    assert start_response.calls[0][0] == "bogus"
    assert "http.response.status_code" not in only(spans).attributes


def test_wsgi_wrap_is_idempotent_and_keeps_attributes(spans):
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    app.custom = "kept"
    wrapped = wsgi.wrap(app)
    assert wsgi.wrap(wrapped) is wrapped
    assert wrapped.__wrapped__ is app
    assert wrapped.custom == "kept"
    assert wsgi.wrap(None) is None


def test_wsgi_wrapped_app_can_be_copied(spans):
    wrapped = wsgi.wrap(list_app())
    assert copy.copy(wrapped).__wrapped__ is wrapped.__wrapped__
    with pytest.raises(AttributeError):
        wrapped.no_such_attribute


def test_wsgi_two_layers_give_one_span(spans):
    inner_seen = []

    def app(environ, start_response):
        inner_seen.append(server_span.current())
        start_response("200 OK", [])
        yield b"x"

    outer = wsgi.TracedWSGIApp(wsgi.TracedWSGIApp(app))
    assert b"".join(outer(environ(), StartResponse())) == b"x"
    recorded = only(spans)
    assert inner_seen[0].get_span_context().span_id == recorded.context.span_id


def test_wsgi_traceparent_is_the_parent(spans):
    wsgi.wrap(list_app())(environ(HTTP_TRACEPARENT=TRACEPARENT, HTTP_TRACESTATE="v=1"), StartResponse())
    recorded = only(spans)
    assert f"{recorded.context.trace_id:032x}" == TRACE_ID
    assert f"{recorded.parent.span_id:016x}" == SPAN_ID


@pytest.mark.parametrize(
    "traceparent",
    [
        f"{TRACEPARENT}, 00-{'1' * 32}-{'2' * 16}-01",  # duplicated: WSGI joins repeated headers
        "00-not-a-trace-01",
        TRACEPARENT[:-1],
        "0" * 9000,
        TRACEPARENT + "x" * 9000,
    ],
)
def test_wsgi_bad_traceparent_starts_a_new_trace(spans, traceparent):
    wsgi.wrap(list_app())(environ(HTTP_TRACEPARENT=traceparent), StartResponse())
    recorded = only(spans)
    assert recorded.parent is None
    assert f"{recorded.context.trace_id:032x}" != TRACE_ID


def test_wsgi_junk_tracestate_and_baggage_are_harmless(spans):
    wsgi.wrap(list_app())(
        environ(HTTP_TRACEPARENT=TRACEPARENT, HTTP_TRACESTATE="==junk,,\u00ff=\u00ff", HTTP_BAGGAGE=";;=\u00ff" * 10000, HTTP_X_BIG="x" * 65536),
        StartResponse(),
    )
    assert f"{only(spans).parent.span_id:016x}" == SPAN_ID


def test_wsgi_query_redacted(spans):
    query = "user=alice&token=abc123&page=2&password=hunter2&X-Amz-Signature=deadbeef&empty="
    wsgi.wrap(list_app())(environ(query=query), StartResponse())
    assert only(spans).attributes["url.query"] == "user=alice&token=REDACTED&page=2&password=REDACTED&X-Amz-Signature=REDACTED&empty="


def test_wsgi_non_ascii_path(spans):
    raw = "/caf\u00e9/\u65e5\u672c".encode("utf-8").decode("latin-1")  # as a WSGI server gives it
    wsgi.wrap(list_app())(environ(path=raw, query="q=%C3%BC"), StartResponse())
    recorded = only(spans)
    assert recorded.attributes["url.path"] == "/caf\u00e9/\u65e5\u672c"
    assert recorded.name == "GET"


def test_wsgi_path_not_utf8_kept_as_given(spans):
    raw = b"/\xff\xfe".decode("latin-1")
    wsgi.wrap(list_app())(environ(path=raw), StartResponse())
    assert only(spans).attributes["url.path"] == raw


def test_wsgi_script_name_is_part_of_the_path(spans):
    app = wsgi.wrap(list_app())
    app(environ(path="/items", SCRIPT_NAME="/shop"), StartResponse())
    app(environ(path="", SCRIPT_NAME="/shop"), StartResponse())
    app(environ(path="", SCRIPT_NAME=""), StartResponse())
    assert [s.attributes["url.path"] for s in spans.get_finished_spans()] == ["/shop/items", "/shop", "/"]


def test_wsgi_server_address_from_host_or_server_name(spans):
    app = wsgi.wrap(list_app())
    app(environ(HTTP_HOST="[::1]:9000"), StartResponse())
    app(environ(HTTP_HOST="plain.example"), StartResponse())
    del_host = environ()
    del del_host["HTTP_HOST"]
    app(del_host, StartResponse())
    got = [(s.attributes.get("server.address"), s.attributes.get("server.port")) for s in spans.get_finished_spans()]
    assert got[0][1] == 9000 and "::1" in got[0][0]
    assert got[1] == ("plain.example", 8000)
    assert got[2] == ("localhost", 8000)


def test_wsgi_unknown_method(spans):
    wsgi.wrap(list_app())(environ(method="PURGE"), StartResponse())
    recorded = only(spans)
    assert recorded.name == "HTTP"
    assert recorded.attributes["http.request.method"] == "_OTHER"
    assert recorded.attributes["http.request.method_original"] == "PURGE"


def test_wsgi_excluded_urls(spans, monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/healthz$,^http://shop\\.example:8080/internal/")
    ran = []

    def app(environ, start_response):
        ran.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    traced = wsgi.wrap(app)
    for path in ("/healthz", "/internal/stats", "/orders", "/healthz/deep"):
        traced(environ(path=path), StartResponse())
    assert ran == ["/healthz", "/internal/stats", "/orders", "/healthz/deep"]
    assert sorted(s.attributes["url.path"] for s in spans.get_finished_spans()) == ["/healthz/deep", "/orders"]


def test_wsgi_invalid_excluded_regex_warns_once(spans, monkeypatch, warnings):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "*bad,/healthz")
    traced = wsgi.wrap(list_app())
    for path in ("/healthz", "/a", "/b"):
        traced(environ(path=path), StartResponse())
    assert len(spans.get_finished_spans()) == 2
    lines = warnings()
    assert len(lines) == 1 and "OTEL_PYTHON_EXCLUDED_URLS" in lines[0] and "*bad" in lines[0]


def test_wsgi_header_capture_and_sanitize(spans, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-Request-Id,authorization,Content-Type")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-served-by,SET-COOKIE")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "Authorization,Set-Cookie")
    app = list_app(headers=[("X-Served-By", "web-1"), ("Set-Cookie", "sid=1"), ("Set-Cookie", "t=2"), ("X-Hidden", "no")])
    wsgi.wrap(app)(environ(HTTP_X_REQUEST_ID="r-1", HTTP_AUTHORIZATION="Bearer s3cr3t", CONTENT_TYPE="application/json"), StartResponse())
    attributes = only(spans).attributes
    captured = {k: tuple(v) for k, v in attributes.items() if ".header." in k}
    assert captured == {
        "http.request.header.x-request-id": ("r-1",),
        "http.request.header.authorization": ("[REDACTED]",),
        "http.request.header.content-type": ("application/json",),
        "http.response.header.x-served-by": ("web-1",),
        "http.response.header.set-cookie": ("[REDACTED]", "[REDACTED]"),
    }


def test_wsgi_set_route_from_inside_the_app(spans):
    def app(environ, start_response):
        server_span.set_route("/items/{id}")
        start_response("200 OK", [])
        return [b""]

    wsgi.wrap(app)(environ(path="/items/42"), StartResponse())
    recorded = only(spans)
    assert recorded.name == "GET /items/{id}"
    assert recorded.attributes["http.route"] == "/items/{id}"
    assert recorded.attributes["url.path"] == "/items/42"


def test_wsgi_suppressed_instrumentation_runs_the_app_untraced(spans):
    body = [b"ok"]
    ran = []

    def app(environ, start_response):
        ran.append(True)
        start_response("200 OK", [])
        return body

    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        assert wsgi.wrap(app)(environ(), StartResponse()) is body
    finally:
        context.detach(token)
    assert ran == [True]
    assert spans.get_finished_spans() == ()


def test_wsgi_junk_environ_still_runs_the_app(spans):
    body = [b"ok"]

    def app(environ, start_response):
        start_response("200 OK", [])
        return body

    assert wsgi.wrap(app)({"REQUEST_METHOD": None, "SERVER_PORT": object()}, StartResponse()) is body


# --- ASGI ------------------------------------------------------------------------------


def http_scope(path="/items", query=b"", method="GET", headers=(), **extra):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"api.example:8443"), *headers],
        "client": ("10.1.2.3", 55555),
        "server": ("127.0.0.1", 8000),
    }
    scope.update(extra)
    return scope


class Channel:
    """Fake receive/send: records what is sent and the span state at each send."""

    def __init__(self, spans, incoming=None):
        self.spans = spans
        self.incoming = list(incoming or [{"type": "http.request", "body": b"", "more_body": False}])
        self.sent = []
        self.finished_at_send = []

    async def receive(self):
        if self.incoming:
            return self.incoming.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(self, message):
        self.sent.append(message)
        self.finished_at_send.append(len(self.spans.get_finished_spans()))


def run(app, scope, channel):
    return asyncio.run(asgi.wrap(app)(scope, channel.receive, channel.send))


def test_asgi_http_response(spans):
    messages = [
        {"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]},
        {"type": "http.response.body", "body": b"made"},
    ]
    after_body = []

    async def app(scope, receive, send):
        await receive()
        for message in messages:
            await send(message)
        after_body.append(len(spans.get_finished_spans()))

    channel = Channel(spans)
    assert run(app, http_scope(query=b"id=1&api_key=xyz", headers=[(b"user-agent", b"ua/2")]), channel) is None
    assert channel.sent == messages and all(a is b for a, b in zip(channel.sent, messages))
    assert channel.finished_at_send == [0, 0]
    assert after_body == [1]  # ended right after the last body message
    recorded = only(spans)
    assert recorded.name == "GET" and recorded.kind is SpanKind.SERVER
    assert dict(recorded.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/items",
        "url.query": "id=1&api_key=REDACTED",
        "server.address": "api.example",
        "server.port": 8443,
        "client.address": "10.1.2.3",
        "network.protocol.version": "1.1",
        "user_agent.original": "ua/2",
        "http.response.status_code": 201,
    }


def test_asgi_streaming_response(spans):
    during = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in (b"a", b"b"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            during.append(len(spans.get_finished_spans()))
        with trace.get_tracer("test").start_as_current_span("chunk"):
            pass
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        during.append(len(spans.get_finished_spans()))

    channel = Channel(spans)
    run(app, http_scope(), channel)
    assert during == [0, 0, 2]
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["chunk"].parent.span_id == by_name["GET"].context.span_id
    assert [m.get("more_body", False) for m in channel.sent[1:]] == [True, True, False]


def test_asgi_exception_recorded_and_reraised(spans):
    error = ValueError("handler failed")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise error

    with pytest.raises(ValueError) as caught:
        run(app, http_scope(), Channel(spans))
    assert caught.value is error
    recorded = only(spans)
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.attributes["error.type"] == "ValueError"
    assert [e.name for e in recorded.events] == ["exception"]


def test_asgi_exception_before_response(spans):
    error = LookupError("nothing sent")

    async def app(scope, receive, send):
        raise error

    with pytest.raises(LookupError) as caught:
        run(app, http_scope(), Channel(spans))
    assert caught.value is error
    recorded = only(spans)
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.attributes["error.type"] == "LookupError"


def test_asgi_404_is_not_an_error_and_500_is(spans):
    async def make(status):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        return app

    for status in (404, 500):
        run(asyncio.run(make(status)), http_scope(), Channel(spans))
    not_found, failed = spans.get_finished_spans()
    assert not_found.attributes["http.response.status_code"] == 404
    assert not_found.status.status_code is StatusCode.UNSET and "error.type" not in not_found.attributes
    assert failed.attributes["http.response.status_code"] == 500
    assert failed.status.status_code is StatusCode.ERROR and failed.attributes["error.type"] == "500"


def test_asgi_lifespan_passes_through(spans):
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["type"], server_span.current()))
        message = await receive()
        await send({"type": "lifespan.startup.complete"})
        return message

    channel = Channel(spans, [{"type": "lifespan.startup"}])
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    assert run(app, scope, channel) == {"type": "lifespan.startup"}
    assert seen == [("lifespan", None)]
    assert channel.sent == [{"type": "lifespan.startup.complete"}]
    assert spans.get_finished_spans() == ()


def test_asgi_websocket(spans):
    finished_after_accept = []

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        finished_after_accept.append(len(spans.get_finished_spans()))
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        await send({"type": "websocket.close", "code": 1000})
        finished_after_accept.append(len(spans.get_finished_spans()))

    scope = http_scope(path="/ws", type="websocket", scheme="ws")
    del scope["method"]
    channel = Channel(spans, [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}])
    run(app, scope, channel)
    assert finished_after_accept == [0, 0]  # a connection's span ends when the app returns
    assert [m["type"] for m in channel.sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    recorded = only(spans)
    assert recorded.attributes["http.response.status_code"] == 101
    assert recorded.attributes["url.scheme"] == "ws"
    assert recorded.attributes["url.path"] == "/ws"
    assert recorded.status.status_code is StatusCode.UNSET


def test_asgi_header_capture(spans, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", "X-Request-Id,Cookie,accept")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "Content-Type,set-cookie")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "COOKIE,set-.*")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html"), (b"set-cookie", b"a=1")]})
        await send({"type": "http.response.body", "body": b""})

    headers = [(b"x-request-id", b"r-9"), (b"cookie", b"session=s3cret"), (b"accept", b"a/b"), (b"accept", b"c/d")]
    run(app, http_scope(headers=headers), Channel(spans))
    captured = {k: tuple(v) for k, v in only(spans).attributes.items() if ".header." in k}
    assert captured == {
        "http.request.header.x-request-id": ("r-9",),
        "http.request.header.cookie": ("[REDACTED]",),
        "http.request.header.accept": ("a/b", "c/d"),
        "http.response.header.content-type": ("text/html",),
        "http.response.header.set-cookie": ("[REDACTED]",),
    }


def test_asgi_messages_passed_unchanged(spans):
    messages = [
        {"type": "http.response.start", "status": 200, "headers": [(b"x", b"1")], "trailers": False},
        {"type": "http.response.body", "body": b"a", "more_body": True},
        {"type": "http.response.body", "body": b"b", "more_body": True},
        {"type": "http.response.body", "body": b"c"},
    ]
    snapshots = [dict(m) for m in messages]

    async def app(scope, receive, send):
        for message in messages:
            await send(message)

    channel = Channel(spans)
    run(app, http_scope(), channel)
    assert len(channel.sent) == len(messages)
    assert all(a is b for a, b in zip(channel.sent, messages))
    assert messages == snapshots


def test_asgi_receive_messages_passed_unchanged(spans):
    incoming = [{"type": "http.request", "body": b"x", "more_body": True}, {"type": "http.request", "body": b"y"}]
    got = []

    async def app(scope, receive, send):
        got.append(await receive())
        got.append(await receive())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    expected = list(incoming)
    run(app, http_scope(method="POST"), Channel(spans, incoming))
    assert all(a is b for a, b in zip(got, expected)) and len(got) == 2


def test_asgi_traceparent_and_duplicates(spans):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run(app, http_scope(headers=[(b"traceparent", TRACEPARENT.encode())]), Channel(spans))
    run(app, http_scope(headers=[(b"traceparent", TRACEPARENT.encode()), (b"traceparent", TRACEPARENT.encode())]), Channel(spans))
    run(app, http_scope(headers=[(b"traceparent", b"\xff" * 9000)]), Channel(spans))
    first, duplicated, oversized = spans.get_finished_spans()
    assert f"{first.parent.span_id:016x}" == SPAN_ID
    assert duplicated.parent is None and oversized.parent is None


def test_asgi_non_ascii_raw_path(spans):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = http_scope(path="/caf\u00e9")
    run(app, scope, Channel(spans))
    scope = http_scope(path="/x", raw_path=b"/\xff\xfe")
    run(app, scope, Channel(spans))
    paths = [s.attributes["url.path"] for s in spans.get_finished_spans()]
    assert paths[0] == "/caf\u00e9"
    assert paths[1] == "/\u00ff\u00fe"


def test_asgi_raw_path_with_query_never_leaks_it(spans):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    scope = http_scope(path="/login", query=b"token=s3cret", raw_path=b"/login?token=s3cret")
    run(app, scope, Channel(spans))
    attributes = only(spans).attributes
    assert attributes["url.path"] == "/login"
    assert "s3cret" not in repr(dict(attributes))


def test_asgi_two_layers_give_one_span(spans):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    layered = asgi.TracedASGIApp(asgi.TracedASGIApp(app))
    channel = Channel(spans)
    asyncio.run(layered(http_scope(), channel.receive, channel.send))
    assert len(spans.get_finished_spans()) == 1
    assert asgi.wrap(layered) is layered
    assert copy.copy(layered).__wrapped__ is layered.__wrapped__


def test_asgi_excluded_and_suppressed(spans, monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/healthz")
    ran = []

    async def app(scope, receive, send):
        ran.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run(app, http_scope(path="/healthz"), Channel(spans))

    async def suppressed():
        token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            channel = Channel(spans)
            await asgi.wrap(app)(http_scope(path="/other"), channel.receive, channel.send)
        finally:
            context.detach(token)

    asyncio.run(suppressed())
    assert ran == ["/healthz", "/other"]
    assert spans.get_finished_spans() == ()


def test_asgi_set_route(spans):
    async def app(scope, receive, send):
        server_span.set_route("/items/{item_id}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    run(app, http_scope(method="PUT", path="/items/5"), Channel(spans))
    recorded = only(spans)
    assert recorded.name == "PUT /items/{item_id}"
    assert recorded.attributes["http.route"] == "/items/{item_id}"


def test_asgi_concurrent_requests_keep_their_own_spans(spans):
    async def app(scope, receive, send):
        mine = server_span.current()
        await asyncio.sleep(0.01)
        assert server_span.current() is mine
        server_span.set_route(scope["path"] + "/{x}")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        traced = asgi.wrap(app)
        channels = [Channel(spans) for _ in range(5)]
        await asyncio.gather(*(traced(http_scope(path=f"/p{i}"), c.receive, c.send) for i, c in enumerate(channels)))

    asyncio.run(main())
    names = sorted(s.name for s in spans.get_finished_spans())
    assert names == [f"GET /p{i}/{{x}}" for i in range(5)]


def test_asgi_headers_in_any_case_and_form_read_in_one_pass(spans):
    """Header names as servers may give them (upper case, a bytearray, repeated): the
    parent, the tracestate, the host, the user agent read as a case-insensitive lookup would."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    headers = [
        (b"TraceParent", TRACEPARENT.encode()),
        (bytearray(b"tracestate"), b"a=1"),
        (b"TRACESTATE", b"b=2"),
        (b"User-Agent", b"ua/1"),
        (b"user-agent", b"ua/2"),
    ]
    run(app, http_scope(headers=headers, scheme="https"), Channel(spans))
    recorded = only(spans)
    assert f"{recorded.parent.span_id:016x}" == SPAN_ID
    assert dict(recorded.parent.trace_state) == {"a": "1", "b": "2"}
    assert recorded.attributes["user_agent.original"] == "ua/1"
    assert (recorded.attributes["server.address"], recorded.attributes["server.port"]) == ("api.example", 8443)


def test_wsgi_propagation_fields_found_in_the_environ_without_reading_others(spans):
    from autotrace.wsgi import EnvironLookup

    lookup = EnvironLookup(environ(HTTP_TRACEPARENT=TRACEPARENT, CONTENT_TYPE="text/plain", HTTP_X_A_B="1"))
    assert lookup.absent(frozenset({"traceparent"})) is False
    assert lookup.absent(frozenset({"tracestate", "baggage"})) is True
    assert lookup.absent(frozenset({"content-type"})) is False
    assert lookup("content-type") == ["text/plain"] and lookup("x-a-b") == ["1"] and lookup("baggage") == []
    assert sorted(lookup.names()) == ["host", "traceparent", "x-a-b"]
    wsgi.wrap(list_app())(environ(HTTP_TRACEPARENT=TRACEPARENT, HTTP_USER_AGENT="ua/3"), StartResponse())
    recorded = only(spans)
    assert f"{recorded.parent.span_id:016x}" == SPAN_ID and recorded.attributes["user_agent.original"] == "ua/3"
