"""The http.server and WSGI server hooks, in process: real servers on loopback, spans in memory.

Each test patches the library itself (as the registry would) and puts it back after.
The end-to-end checks (under ``autotrace run``, responses compared with plain runs)
are in integration/test_wsgi_servers.py.
"""

from __future__ import annotations

import http.client
import http.server
import importlib
import threading
import time
import wsgiref.handlers
import wsgiref.simple_server

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from autotrace.hooks import gunicorn as gunicorn_hook
from autotrace.hooks import http_server as http_server_hook
from autotrace.hooks import waitress as waitress_hook
from autotrace.hooks import werkzeug as werkzeug_hook
from autotrace.hooks import wsgiref as wsgiref_hook
from autotrace.patching import unwrap_function

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def finished(spans, count: int, timeout: float = 5.0) -> list:
    """The finished spans once there are ``count`` (a server ends a span after it has answered)."""
    deadline = time.monotonic() + timeout
    while True:
        found = spans.get_finished_spans()
        if len(found) >= count or time.monotonic() > deadline:
            time.sleep(0.05)  # and nothing more arrives
            found = spans.get_finished_spans()
            assert len(found) == count, [(s.name, dict(s.attributes)) for s in found]
            return list(found)
        time.sleep(0.01)


@pytest.fixture
def patched_http_server():
    http_server_hook.patch(http.server)
    yield
    for name in ("handle_one_request", "parse_request", "send_response_only", "send_header"):
        unwrap_function(http.server.BaseHTTPRequestHandler, name)


@pytest.fixture
def serve():
    """``serve(server)``: serve_forever in a thread; shut down and closed after the test."""
    started = []

    def start(server):
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server.server_address[1]

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/fail"):
            raise RuntimeError("boom")
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_BREW(self):  # noqa: N802 - any do_* method
        self.send_response(418)
        self.send_header("Content-Length", "0")
        self.end_headers()


class RecordingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    errors: list

    def handle_error(self, request, client_address):
        import sys

        self.errors.append(sys.exc_info()[1])


def test_http_server_one_span_per_request_on_a_keep_alive_connection(spans, patched_http_server, serve):
    server = RecordingServer(("127.0.0.1", 0), Handler)
    server.errors = []
    port = serve(server)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for path in ("/ok?a=1", "/missing"):
            connection.request("GET", path, headers={"traceparent": TRACEPARENT})
            response = connection.getresponse()
            response.read()
        connection.request("BREW", "/pot")
        assert connection.getresponse().status == 418
        sock = connection.sock
    finally:
        connection.close()
    assert sock is not None  # one connection for all three

    ok, missing, brew = finished(spans, 3)
    assert ok.kind is SpanKind.SERVER and ok.name == "GET"
    assert f"{ok.parent.span_id:016x}" == SPAN_ID and f"{ok.context.trace_id:032x}" == TRACE_ID
    attributes = dict(ok.attributes)
    assert attributes.pop("user_agent.original", None) is None  # http.client sends none
    assert attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/ok",
        "url.query": "a=1",
        "server.address": "127.0.0.1",
        "server.port": port,
        "client.address": "127.0.0.1",
        "network.protocol.version": "1.1",
        "http.response.status_code": 200,
    }
    assert missing.attributes["http.response.status_code"] == 404  # from send_error
    assert missing.status.status_code is StatusCode.UNSET
    assert brew.name == "HTTP" and brew.attributes["http.request.method"] == "_OTHER"
    assert brew.attributes["http.response.status_code"] == 418
    assert brew.parent is None
    assert server.errors == []


def test_http_server_exception_recorded_and_reraised_untouched(spans, patched_http_server, serve):
    server = RecordingServer(("127.0.0.1", 0), Handler)
    server.errors = []
    port = serve(server)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/fail")
        with pytest.raises(http.client.RemoteDisconnected):
            connection.getresponse()
    finally:
        connection.close()
    (span,) = finished(spans, 1)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert "http.response.status_code" not in span.attributes  # the client got no response
    assert [e.name for e in span.events] == ["exception"]
    deadline = time.monotonic() + 5
    while not server.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [type(e) for e in server.errors] == [RuntimeError]  # the server saw the handler's own exception
    assert str(server.errors[0]) == "boom"


def test_http_server_rejected_request_gets_no_span(spans, patched_http_server, serve):
    port = serve(RecordingServer(("127.0.0.1", 0), Handler))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest("GET", "/ok")
        connection.putheader("X-Big", "x" * 70_000)  # longer than http.server reads: 431
        connection.endheaders()
        assert connection.getresponse().status == 431
    finally:
        connection.close()
    time.sleep(0.1)
    assert spans.get_finished_spans() == ()


def test_wsgiref_one_span_and_no_http_server_span(spans, patched_http_server, serve):
    """wsgiref's handler calls parse_request outside handle_one_request: only the WSGI span."""
    wsgiref_hook.patch(wsgiref.handlers)
    try:

        def app(environ, start_response):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"nope"]

        port = serve(wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=QuietWSGIHandler))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/x", headers={"traceparent": TRACEPARENT})
            response = connection.getresponse()
            assert (response.status, response.read()) == (404, b"nope")
        finally:
            connection.close()
    finally:
        unwrap_function(wsgiref.handlers.BaseHandler, "run")
    (span,) = finished(spans, 1)
    assert span.attributes["http.response.status_code"] == 404
    assert f"{span.parent.span_id:016x}" == SPAN_ID


class QuietWSGIHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("werkzeug_hooked", [True, False], ids=["werkzeug-hook", "http-server-hook-only"])
def test_werkzeug_one_span_either_way(spans, patched_http_server, serve, werkzeug_hooked):
    serving = importlib.import_module("werkzeug.serving")
    if werkzeug_hooked:
        werkzeug_hook.patch(serving)
    try:

        def app(environ, start_response):
            start_response("201 Created", [("Content-Length", "2")])
            return [b"ok"]

        port = serve(serving.make_server("127.0.0.1", 0, app, threaded=True))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/w?x=1", headers={"traceparent": TRACEPARENT})
            response = connection.getresponse()
            assert (response.status, response.read()) == (201, b"ok")
        finally:
            connection.close()
    finally:
        unwrap_function(serving.BaseWSGIServer, "__init__")
        if http_server_hook.SKIP in vars(serving.WSGIRequestHandler):
            delattr(serving.WSGIRequestHandler, http_server_hook.SKIP)
    (span,) = finished(spans, 1)
    assert span.name == "GET" and span.attributes["url.path"] == "/w"
    assert span.attributes["http.response.status_code"] == 201
    assert f"{span.parent.span_id:016x}" == SPAN_ID


def test_waitress_app_traced_inside_its_proxy_headers_layer(spans):
    server_module = importlib.import_module("waitress.server")
    waitress_hook.patch(server_module)
    try:

        def app(environ, start_response):
            start_response("200 OK", [])
            return [b"ok"]

        server = server_module.create_server(app, host="127.0.0.1", port=0)
        try:
            environ = {
                "REQUEST_METHOD": "GET",
                "PATH_INFO": "/p",
                "QUERY_STRING": "",
                "REMOTE_ADDR": "127.0.0.1",
                "SERVER_NAME": "127.0.0.1",
                "SERVER_PORT": "80",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "wsgi.url_scheme": "http",
                "HTTP_TRACEPARENT": TRACEPARENT,
            }
            assert server.application(environ, lambda status, headers: None) == [b"ok"]
        finally:
            server.close()
    finally:
        unwrap_function(server_module.BaseWSGIServer, "__init__")
    (span,) = finished(spans, 1)
    assert span.attributes["url.path"] == "/p"
    assert f"{span.parent.span_id:016x}" == SPAN_ID


def test_gunicorn_wraps_wsgi_workers_only():
    base = importlib.import_module("gunicorn.workers.base")
    from gunicorn.workers.sync import SyncWorker
    from gunicorn.workers.gthread import ThreadWorker

    assert gunicorn_hook.serves_wsgi(SyncWorker)
    assert gunicorn_hook.serves_wsgi(ThreadWorker)
    assert gunicorn_hook.serves_wsgi(type("MySync", (SyncWorker,), {}))
    assert not gunicorn_hook.serves_wsgi(base.Worker)
    uvicorn_workers = importlib.import_module("uvicorn.workers")
    assert not gunicorn_hook.serves_wsgi(uvicorn_workers.UvicornWorker)

    def app(environ, start_response):
        return []

    class App:
        def wsgi(self):
            return app

    gunicorn_hook.patch(base)
    try:
        for worker_class, traced in ((SyncWorker, True), (uvicorn_workers.UvicornWorker, False)):
            worker = object.__new__(worker_class)
            worker.app = App()
            worker.cfg = None
            worker.load_wsgi()
            assert getattr(worker.wsgi, "__autotrace_wsgi__", False) is traced, worker_class
    finally:
        unwrap_function(base.Worker, "load_wsgi")


# --- what the servers need of autotrace.wsgi ----------------------------------------------


def wsgi_environ(**extra):
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/caf\u00c3\u00a9",  # /café as a WSGI server decodes it
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    environ.update(extra)
    return environ


def test_wsgi_sized_response_keeps_its_length(spans):
    """wsgiref and waitress read len() of the response (Content-Length): the wrapper has it too."""
    from autotrace import wsgi

    class Sized:
        def __iter__(self):
            return iter([b"one block"])

        def __len__(self):
            return 1

    def app(environ, start_response):
        start_response("200 OK", [])
        return Sized()

    result = wsgi.wrap(app)(wsgi_environ(), lambda status, headers: None)
    assert len(result) == 1 and list(result) == [b"one block"]
    result.close()
    unsized = wsgi.wrap(lambda environ, start_response: iter([b"x"]))(wsgi_environ(), lambda status, headers: None)
    assert not hasattr(unsized, "__len__")
    unsized.close()
    assert len(spans.get_finished_spans()) == 2


def test_wsgi_file_wrapper_response_returned_as_is(spans):
    """Servers send their own file wrapper with sendfile when they get it back unchanged."""
    from autotrace import wsgi

    class FileWrapper:
        def __init__(self, filelike, block_size=8192):
            self.filelike = filelike

        def __iter__(self):
            return iter([b"file"])

    wrapped_file = FileWrapper(None)

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](None)

    result = wsgi.wrap(app)(wsgi_environ(**{"wsgi.file_wrapper": FileWrapper}), lambda s, h: None)
    assert type(result) is FileWrapper  # the very object the app returned
    assert len(spans.get_finished_spans()) == 1  # ended at return: the server sends the file
    # A file_wrapper that is a function (not a type) cannot be recognised: the usual wrapper.
    result = wsgi.wrap(app)(wsgi_environ(**{"wsgi.file_wrapper": lambda f: wrapped_file}), lambda s, h: None)
    assert list(result) == [b"file"]
    assert len(spans.get_finished_spans()) == 2


def test_wsgi_path_is_the_target_as_sent_when_the_server_gives_it(spans):
    from autotrace import wsgi

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    traced = wsgi.wrap(app)
    traced(wsgi_environ(RAW_URI="/caf%C3%A9?q=1"), lambda s, h: None)  # gunicorn, werkzeug
    traced(wsgi_environ(REQUEST_URI="/caf%C3%A9"), lambda s, h: None)  # waitress
    traced(wsgi_environ(), lambda s, h: None)  # wsgiref: only PATH_INFO
    traced(wsgi_environ(RAW_URI="http://proxy.example/x"), lambda s, h: None)  # absolute form
    paths = [s.attributes["url.path"] for s in spans.get_finished_spans()]
    assert paths == ["/caf%C3%A9", "/caf%C3%A9", "/caf\u00e9", "/caf\u00e9"]


def test_wsgi_exception_before_anything_sent_is_a_500(spans):
    from autotrace import wsgi

    def failing(environ, start_response):
        raise ValueError("no")

    def failing_stream(environ, start_response):
        start_response("200 OK", [])
        raise ValueError("no")
        yield b""

    with pytest.raises(ValueError):
        wsgi.wrap(failing)(wsgi_environ(), lambda s, h: None)
    result = wsgi.wrap(failing_stream)(wsgi_environ(), lambda s, h: None)
    with pytest.raises(ValueError):
        next(result)
    for span in spans.get_finished_spans():
        assert span.attributes["http.response.status_code"] == 500
        assert span.attributes["error.type"] == "ValueError"
