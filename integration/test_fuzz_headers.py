"""Fuzzed trace-context headers at real servers under ``autotrace run`` (issue 18): a stdlib
``http.server`` and gunicorn + Flask, each sent a few hundred requests whose traceparent,
tracestate, baggage, b3 (single and multi), uber-trace-id and uberctx- headers are random
bytes, non-ASCII text, near-valid values, 100 KB values, repeated, in any case.

Every propagator is on and the headers are captured as attributes, so each is parsed and
recorded; the sampler is always_on, so a valid parent flagged not sampled has its span too. What must hold: no 5xx (the apps never fail: any 5xx is the agent's), no
traceback, no warning, and one SERVER span for each request the app answered (at most one
for a request the server itself refused, such as a 100 KB header line). Hypothesis runs
derandomized with no example database, so CI sends the same requests every time.
"""

from __future__ import annotations

import signal
import socket
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import AUTOTRACE, SERVE_ON_ARGV_PORT, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

EXAMPLES = 250
SERVER = 2  # proto SpanKind
FUZZED = ("traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
          "x-b3-sampled", "x-b3-flags", "uber-trace-id", "uberctx-user")

HTTP_SERVER_APP = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("fuzz " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

""" + SERVE_ON_ARGV_PORT

FLASK_APP = """
from flask import Flask

app = Flask(__name__)


@app.route("/fuzz/<int:n>")
def fuzz(n):
    return f"fuzz /fuzz/{n}"


@app.route("/ready")
def ready():
    return "ready"
"""

GUNICORN_CONF = """
def post_worker_init(worker):
    print("worker ready", flush=True)
"""


@dataclass
class Server:
    port: int
    process: Watched
    receiver: OTLPReceiver
    # (n, status, whether the app answered, the headers' names and lengths)
    sent: list[tuple[int, int | None, bool, list[tuple[str, int]]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as started:
        yield started


@pytest.fixture(params=["http.server", "gunicorn-flask"])
def server(request, receiver, tmp_path) -> Iterator[Server]:
    port = free_port()
    env = clean_env(
        **receiver.env("http"),
        OTEL_SERVICE_NAME="fuzzed",
        OTEL_PROPAGATORS="tracecontext,baggage,b3,b3multi,jaeger",
        OTEL_TRACES_SAMPLER="always_on",  # a valid parent flagged not sampled still gets its span
        OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST=",".join(FUZZED),
        HOME=str(tmp_path),
    )
    if request.param == "http.server":
        write(tmp_path, "app.py", HTTP_SERVER_APP)
        args = [AUTOTRACE, "run", "python", "app.py", str(port)]
    else:
        write(tmp_path, "app.py", FLASK_APP)
        write(tmp_path, "ready.conf.py", GUNICORN_CONF)
        args = [AUTOTRACE, "run", "gunicorn", "-c", "ready.conf.py", "-w", "1", "-b", f"127.0.0.1:{port}", "app:app"]
    receiver.clear()
    with Watched(args, tmp_path, env) as process:
        wait_until_answers(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
        if request.param != "http.server":
            process.wait_for_line("worker ready", timeout=30)  # its SIGTERM handler is set
        yield Server(port, process, receiver)


# -- the headers -----------------------------------------------------------------------------

HEX = "0123456789abcdef"


def no_line_break(value: bytes) -> bytes:
    """A header value stays one header: CR and LF would end it (a different request)."""
    return value.replace(b"\r", b"").replace(b"\n", b"")


near_valid = st.one_of(
    st.builds(lambda v, t, s, f: f"{v}-{t}-{s}-{f}", st.text(HEX, min_size=0, max_size=3),
              st.text(HEX + "X", min_size=30, max_size=34), st.text(HEX, min_size=14, max_size=18),
              st.text(HEX + "-", min_size=0, max_size=4)),
    st.builds(lambda t, s, p, f: f"{t}:{s}:{p}:{f}", st.text(HEX, max_size=34), st.text(HEX, max_size=18),
              st.text(HEX, max_size=2), st.text(HEX + "x", max_size=3)),
    st.lists(st.tuples(st.text(string.printable.strip(), max_size=12), st.text(max_size=12)), max_size=6).map(
        lambda pairs: ",".join(f"{k}={v}" for k, v in pairs)),
).map(lambda text: text.encode("utf-8"))

values = st.one_of(
    near_valid,
    st.binary(max_size=300),
    st.text(max_size=80).map(lambda text: text.encode("utf-8")),  # non-ASCII
    st.tuples(st.sampled_from([b"a", b"0", b"-", b",", b"=", b"k=v,", b"\xff", "é".encode()]),
              st.integers(min_value=1_000, max_value=100_000)).map(lambda t: t[0] * t[1]),  # long
).map(no_line_break)

names = st.sampled_from(FUZZED).flatmap(lambda name: st.sampled_from([name, name.upper(), name.title()]))
header_sets = st.lists(st.tuples(names, values), min_size=1, max_size=8)  # a name may repeat


def send(port: int, n: int, headers: list[tuple[str, bytes]]) -> tuple[int | None, bytes]:
    """One GET /fuzz/n with ``headers`` as raw bytes; the status (None: closed without one) and body."""
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    request = f"GET /fuzz/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode() + head + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # refused mid-request: what it answered is read below
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return status, rest.partition(b"\r\n\r\n")[2]


def test_fuzzed_trace_headers(server: Server) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(headers=header_sets)
    def one_request(headers: list[tuple[str, bytes]]) -> None:
        n = len(server.sent)
        status, body = send(server.port, n, headers)
        answered = body == f"fuzz /fuzz/{n}".encode()
        server.sent.append((n, status, answered, [(name, len(value), value[:60]) for name, value in headers]))
        assert status is not None and status < 500, (status, body[:200], [(k, v[:100]) for k, v in headers])
        assert answered or 400 <= status < 500, (status, body[:200])

    one_request()
    process = server.process
    process.send(signal.SIGTERM)
    process.finish(timeout=30)

    answered = [n for n, _status, ok, _headers in server.sent if ok]
    # gunicorn refuses a header field over 8190 bytes, http.server a line over 64 KiB (a 4xx).
    assert len(answered) >= len(server.sent) // 3, "a third of the requests must reach the app, or this tests little"
    stderr = process.text("stderr")
    assert "Traceback" not in stderr and "autotrace WARNING" not in stderr and "autotrace ERROR" not in stderr, stderr
    # The server has exited, having flushed: what has not arrived once the receiver has it all never will.
    per_path: dict[str, int] = {}
    for span in server.receiver.spans():
        if span.kind == SERVER:
            per_path[span.attributes.get("url.path")] = per_path.get(span.attributes.get("url.path"), 0) + 1
    doubled = {path: count for path, count in per_path.items() if count > 1}
    assert not doubled, f"more than one SERVER span for a request: {doubled}"
    missing = [(n, status, headers) for n, status, ok, headers in server.sent if ok and f"/fuzz/{n}" not in per_path]
    assert not missing, f"answered by the app, no SERVER span: {missing}\n{stderr}"
