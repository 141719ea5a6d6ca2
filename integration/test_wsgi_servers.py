"""http.server and WSGI servers under ``autotrace run``: one SERVER span per request, no change.

Each server (http.server, wsgiref, gunicorn sync and gthread, waitress, werkzeug) runs
twice at once: plain, and under ``autotrace run``. The same requests, sent as raw
bytes, go to both; the responses must be the same byte for byte (apart from the Date
and Server headers), and the traced server's spans, flushed when it exits, must be
exactly one SERVER span per request, a child of the ``traceparent`` the request
carried, with the stable HTTP semantic conventions' attributes. The servers serve a
bare WSGI app (for http.server, a handler with the same routes): no framework.

Every request carries a unique ``case=...`` query: that is how a span is matched to
the request it records.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from agent import AUTOTRACE, BIN, PYTHON, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

STREAM_CHUNKS = 5
STREAM_PAUSE = 0.1  # between chunks: the stream takes at least 0.4 s

HTTP_SERVER_APP = f"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.partition("?")[0]
        if path in ("/ok", "/health"):
            self.reply(200, b"ok\\n")
        elif path == "/fail":
            raise RuntimeError("boom")
        elif path == "/stream":
            chunks = [b"chunk %d\\n" % i for i in range({STREAM_CHUNKS})]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(sum(map(len, chunks))))
            self.end_headers()
            for i, chunk in enumerate(chunks):
                if i:
                    time.sleep({STREAM_PAUSE})
                self.wfile.write(chunk)
        else:
            self.send_error(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.reply(200, b"echo:" + body)

    def do_PURGE(self):
        self.reply(200, b"purged\\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

WSGI_APP = f"""
import time


def reply(start_response, status, body):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def stream():
    for i in range({STREAM_CHUNKS}):
        if i:
            time.sleep({STREAM_PAUSE})
        yield b"chunk %d\\n" % i


class Sized:
    def __init__(self, blocks):
        self.blocks = blocks

    def __iter__(self):
        return iter(self.blocks)

    def __len__(self):
        return len(self.blocks)


def app(environ, start_response):
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    if method == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        return reply(start_response, "200 OK", b"echo:" + body)
    if method == "PURGE":
        return reply(start_response, "200 OK", b"purged\\n")
    if path in ("/ok", "/health"):
        return reply(start_response, "200 OK", b"ok\\n")
    if path == "/fail":
        raise RuntimeError("boom")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream()
    if path == "/file":  # the server's file wrapper, as Django's FileResponse uses it
        start_response("200 OK", [("Content-Type", "text/plain")])
        wrapper = environ.get("wsgi.file_wrapper")
        data = open(__file__, "rb")
        return wrapper(data, 4096) if wrapper else iter(lambda: data.read(4096), b"")
    if path == "/sized":  # an iterable that knows its length (one block): not a list
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Sized([b"sized body\\n"])
    return reply(start_response, "404 Not Found", b"not found\\n")
"""

WSGIREF_MAIN = """
import sys
from wsgiref.simple_server import make_server

from app import app

make_server("127.0.0.1", int(sys.argv[1]), app).serve_forever()
"""

WERKZEUG_MAIN = """
import sys

from werkzeug.serving import run_simple

from app import app

run_simple("127.0.0.1", int(sys.argv[1]), app, threaded=True)
"""


@dataclass(frozen=True)
class Server:
    name: str
    hooks: tuple  # hook names the agent must report as applied
    command: Callable[[int], list]  # the command that serves on a port (no agent)
    keepalive: bool  # keeps a connection open between requests
    raw_target: bool = True  # gives the app the request target as sent (url.path undecoded)
    reads_big_headers: bool = True  # accepts a 60 000-byte header (gunicorn answers 400)


SERVERS = [
    Server("http.server", ("http_server",), lambda p: [PYTHON, "http_server_app.py", str(p)], keepalive=True),
    Server("wsgiref", ("wsgiref",), lambda p: [PYTHON, "wsgiref_main.py", str(p)], keepalive=False, raw_target=False),
    Server(
        "gunicorn-sync",
        ("gunicorn",),
        lambda p: [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{p}", "app:app"],
        keepalive=False,
        reads_big_headers=False,
    ),
    Server(
        "gunicorn-gthread",
        ("gunicorn",),
        lambda p: [str(BIN / "gunicorn"), "-k", "gthread", "--threads", "2", "-b", f"127.0.0.1:{p}", "app:app"],
        keepalive=True,
        reads_big_headers=False,
    ),
    Server("waitress", ("waitress",), lambda p: [str(BIN / "waitress-serve"), f"--listen=127.0.0.1:{p}", "app:app"], keepalive=True),
    Server("werkzeug", ("werkzeug", "http_server"), lambda p: [PYTHON, "werkzeug_main.py", str(p)], keepalive=False),
]


def new_ids() -> tuple[str, str]:
    return os.urandom(16).hex(), os.urandom(8).hex()


@dataclass
class Call:
    """One request, sent the same to the plain and the traced server."""

    case: str
    method: str = "GET"
    path: str = "/ok"
    extra_query: str = ""
    body: bytes = b""
    parent: Optional[tuple] = None  # (trace id, span id) sent in a valid traceparent
    headers: list = field(default_factory=list)  # other headers, in order
    sent_ids: tuple = ()  # trace ids sent that must not be continued

    @property
    def target(self) -> str:
        return f"{self.path}?case={self.case}{self.extra_query}"

    def header_lines(self) -> list:
        lines = list(self.headers)
        if self.parent is not None:
            lines.insert(0, ("traceparent", f"00-{self.parent[0]}-{self.parent[1]}-01"))
        return lines


def calls() -> list[Call]:
    dup = [new_ids(), new_ids()]
    big_trace, big_span = new_ids()
    return [
        Call("ok", parent=new_ids(), extra_query="&password=hunter2"),
        Call("post", method="POST", path="/echo", body=b"hello", parent=new_ids()),
        Call("purge", method="PURGE", parent=new_ids()),
        Call("missing", path="/missing", parent=new_ids()),
        Call("fail", path="/fail", parent=new_ids()),
        Call("stream", path="/stream", parent=new_ids()),
        Call("health", path="/health", parent=new_ids()),  # excluded: no span
        Call("file", path="/file", parent=new_ids()),
        Call("sized", path="/sized", parent=new_ids()),
        # Bad input: never a changed response, never a server error; a new trace.
        Call(
            "dup",
            headers=[("traceparent", f"00-{t}-{s}-01") for t, s in dup],
            sent_ids=tuple(t for t, _ in dup),
        ),
        Call("malformed", headers=[("traceparent", "00-not-a-trace-context-01")]),
        Call(
            "big",  # a valid prefix (of a future version) and 60 000 bytes: too long to be read at all
            headers=[("traceparent", f"cc-{big_trace}-{big_span}-01-" + "x" * 60_000)],
            sent_ids=(big_trace,),
        ),
        Call("utf8", path="/caf%C3%A9"),
    ]


KEEPALIVE_CASES = ("ka1", "ka2")


def exchange(port: int, call: Call) -> tuple[bytes, float]:
    """Send the call as raw bytes on a new connection; read the response until the server closes."""
    lines = [f"{call.method} {call.target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in call.header_lines()]
    if call.body or call.method == "POST":
        lines.append(f"Content-Length: {len(call.body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + call.body
    started = time.monotonic()
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(request)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def normalized(response: bytes) -> bytes:
    """The response without its Date and Server headers (they differ between runs)."""
    head, separator, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = lines[:1] + [line for line in lines[1:] if not line.lower().startswith((b"date:", b"server:"))]
    return b"\r\n".join(kept) + separator + body


def status_of(response: bytes) -> Optional[int]:
    if not response:
        return None
    return int(response.split(b" ", 2)[1])


def keepalive_exchange(port: int, parents: list) -> tuple[list, bool]:
    """Two GETs on one http.client connection; the responses and whether the socket was kept."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    results = []
    sockets = []
    try:
        for case, (trace_id, span_id) in zip(KEEPALIVE_CASES, parents):
            connection.request("GET", f"/ok?case={case}", headers={"traceparent": f"00-{trace_id}-{span_id}-01"})
            response = connection.getresponse()
            results.append((response.status, response.read()))
            sockets.append(connection.sock)
    finally:
        connection.close()
    return results, sockets[0] is not None and sockets[0] is sockets[1]


@dataclass
class Run:
    """What one server did, plain and traced."""

    server: Server
    port: int
    calls: list
    plain: dict  # case -> (raw response, seconds)
    traced: dict
    keepalive_parents: list
    keepalive_plain: tuple
    keepalive_traced: tuple
    spans: list  # every span the traced server exported
    plain_stderr: str
    traced_stderr: str

    def span_for(self, case: str) -> list:
        return [s for s in self.spans if s.attributes.get("url.query", "").split("&")[0] == f"case={case}"]


@pytest.fixture(scope="module")
def receiver():
    with OTLPReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wsgi-servers")
    write(path, "http_server_app.py", HTTP_SERVER_APP)
    write(path, "app.py", WSGI_APP)
    write(path, "wsgiref_main.py", WSGIREF_MAIN)
    write(path, "werkzeug_main.py", WERKZEUG_MAIN)
    return path


def _stop(process: Watched) -> None:
    process.send(signal.SIGTERM)  # the launcher exec'd: this is the server (gunicorn's master)
    process.finish(timeout=30)


@pytest.fixture(scope="module", params=SERVERS, ids=[s.name for s in SERVERS])
def run(request, receiver, directory) -> Run:
    server: Server = request.param
    service = f"wsgi-{server.name}"
    plain_port, traced_port = free_port(), free_port()
    env = clean_env(HOME=str(directory))  # gunicorn's control socket
    traced_env = clean_env(
        HOME=str(directory),
        OTEL_SERVICE_NAME=service,
        OTEL_PYTHON_EXCLUDED_URLS=".*/health",
        OTEL_LOG_LEVEL="debug",
        **receiver.env("http"),
    )
    traced_env["OTEL_BSP_SCHEDULE_DELAY"] = "60000"  # nothing exported before the exit flush
    with Watched(server.command(plain_port), directory, env) as plain, Watched(
        [AUTOTRACE, "run", *server.command(traced_port)], directory, traced_env
    ) as traced:
        wait_until_answers(f"http://127.0.0.1:{plain_port}/health", timeout=30, process=plain)
        wait_until_answers(f"http://127.0.0.1:{traced_port}/health", timeout=30, process=traced)
        scenario = calls()
        plain_responses: dict = {}
        traced_responses: dict = {}

        def send_all(port: int, into: dict) -> None:
            for call in scenario:
                into[call.case] = exchange(port, call)

        # Both servers at once: half the wall time.
        other = threading.Thread(target=send_all, args=(plain_port, plain_responses))
        other.start()
        send_all(traced_port, traced_responses)
        other.join(60)
        parents = [new_ids() for _ in KEEPALIVE_CASES]
        keepalive_plain = keepalive_exchange(plain_port, parents)
        keepalive_traced = keepalive_exchange(traced_port, parents)
        _stop(traced)
        _stop(plain)
    # The traced server has exited: whatever it recorded has arrived.
    spans = [s for s in receiver.spans() if s.resource.get("service.name") == service]
    return Run(
        server=server,
        port=traced_port,
        calls=scenario,
        plain=plain_responses,
        traced=traced_responses,
        keepalive_parents=parents,
        keepalive_plain=keepalive_plain,
        keepalive_traced=keepalive_traced,
        spans=spans,
        plain_stderr=plain.text("stderr"),
        traced_stderr=traced.text("stderr"),
    )


def describe(spans: list) -> str:
    return "\n".join(
        f"  {s.name!r} kind={s.kind} trace={s.trace_id} parent={s.parent_span_id or '-'} status={s.status_code} {s.attributes}"
        for s in spans
    )


# --- the tests --------------------------------------------------------------------------


def test_hooks_applied_without_warnings(run: Run):
    for hook in run.server.hooks:
        assert f"hook {hook} applied" in run.traced_stderr, run.traced_stderr
    agent_problems = [line for line in run.traced_stderr.splitlines() if line.startswith(("autotrace WARNING", "autotrace ERROR"))]
    assert agent_problems == []


def test_responses_identical_to_the_plain_server(run: Run):
    for call in run.calls:
        plain, traced = run.plain[call.case][0], run.traced[call.case][0]
        assert normalized(traced) == normalized(plain), call.case
        if call.case != "fail":  # no server error, whatever the input
            assert (status_of(plain) or 500) < 500, (call.case, plain[:200])
    assert run.keepalive_traced == run.keepalive_plain


def test_app_exception_reaches_the_server_as_without_the_agent(run: Run):
    """The handler's exception is re-raised untouched: the server logs it the same way."""
    assert run.plain_stderr.count("RuntimeError: boom") >= 1, run.plain_stderr
    assert run.traced_stderr.count("RuntimeError: boom") == run.plain_stderr.count("RuntimeError: boom"), run.traced_stderr
    assert run.traced_stderr.count("Traceback (most recent call last)") == run.plain_stderr.count(
        "Traceback (most recent call last)"
    )


def test_exactly_one_server_span_per_request(run: Run):
    expected = 0
    for call in run.calls:
        found = run.span_for(call.case)
        if call.case == "health":
            assert found == [], describe(found)
            continue
        if call.case == "big" and not run.server.reads_big_headers:
            assert found == [], describe(found)  # rejected before the app, plain as traced
        else:
            assert len(found) == 1, f"{call.case}:\n{describe(run.spans)}"
        expected += len(found)
    for case in KEEPALIVE_CASES:
        assert len(run.span_for(case)) == 1, f"{case}:\n{describe(run.spans)}"
        expected += 1
    # Nothing else: no span for the readiness checks on the excluded /health, no duplicates.
    assert len(run.spans) == expected, describe(run.spans)
    assert {s.kind for s in run.spans} == {2}  # SERVER
    assert all(s.attributes.get("url.path") != "/health" for s in run.spans)


def test_parent_is_the_callers_context(run: Run):
    for call in run.calls:
        if call.parent is None:
            continue
        for span in run.span_for(call.case):
            assert (span.trace_id, span.parent_span_id) == call.parent, call.case
    for case, parent in zip(KEEPALIVE_CASES, run.keepalive_parents):
        (span,) = run.span_for(case)
        assert (span.trace_id, span.parent_span_id) == parent, case
    # Every request its own span, in its own trace.
    assert len({s.span_id for s in run.spans}) == len(run.spans)


def test_bad_propagation_input_starts_a_new_trace(run: Run):
    for case in ("dup", "malformed", "big", "utf8"):
        call = next(c for c in run.calls if c.case == case)
        for span in run.span_for(case):
            assert span.parent_span_id == "", (case, span)
            assert span.trace_id not in call.sent_ids, case
            assert span.trace_id != "0" * 32


def test_span_attributes(run: Run):
    for call in run.calls:
        for span in run.span_for(call.case):
            attributes = span.attributes
            method = call.method if call.method in ("GET", "POST") else "_OTHER"
            assert span.name == (call.method if method != "_OTHER" else "HTTP"), (call.case, span.name)
            assert attributes["http.request.method"] == method
            if method == "_OTHER":
                assert attributes["http.request.method_original"] == call.method
            assert attributes["url.scheme"] == "http"
            assert attributes["server.address"] == "127.0.0.1"
            assert attributes["server.port"] == run.port
            assert attributes["client.address"] == "127.0.0.1"
            assert attributes["network.protocol.version"] == "1.1"
            assert "http.route" not in attributes  # a bare app has no route
            expected_path = call.path
            if call.case == "utf8" and not run.server.raw_target:
                expected_path = "/caf\u00e9"
            assert attributes["url.path"] == expected_path, call.case
    (ok,) = run.span_for("ok")
    assert ok.attributes["url.query"] == "case=ok&password=REDACTED"


def test_status_code_is_the_one_the_client_got(run: Run):
    for call in run.calls:
        status = status_of(run.traced[call.case][0])
        for span in run.span_for(call.case):
            assert span.attributes.get("http.response.status_code") == status, (call.case, span.attributes)
            failed = call.case == "fail"
            assert (span.status_code == 2) == (failed or (status or 0) >= 500), (call.case, span.status_code)
            if failed:
                assert span.attributes["error.type"] == "RuntimeError", span.attributes
                assert "exception" in span.events
            else:
                assert "error.type" not in span.attributes, (call.case, span.attributes)
                assert span.events == ()


def test_streamed_response_measured_whole(run: Run):
    (span,) = run.span_for("stream")
    duration = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
    minimum = (STREAM_CHUNKS - 1) * STREAM_PAUSE
    assert run.traced["stream"][1] >= minimum
    assert duration >= minimum * 0.9, f"the span lasted {duration:.3f}s, the stream at least {minimum}s"
    assert b"chunk %d\n" % (STREAM_CHUNKS - 1) in run.traced["stream"][0]


def test_keep_alive_requests_get_a_span_each(run: Run):
    results, kept = run.keepalive_traced
    assert results == [(200, b"ok\n"), (200, b"ok\n")]
    assert kept == run.server.keepalive  # the connection really was reused where the server keeps it
    spans = [run.span_for(case)[0] for case in KEEPALIVE_CASES]
    assert spans[0].span_id != spans[1].span_id
    assert [s.attributes["http.response.status_code"] for s in spans] == [200, 200]
