"""Outgoing requests under ``autotrace run``: every client propagates and records one CLIENT span.

A small service (stdlib http.server, no tracing code) answers ``GET /call?client=...&
target=...`` by calling ``target`` with that client and replying with what it got. It
runs twice at once: under ``autotrace run`` (exporting over OTLP/HTTP to a real
receiver) and plain. The test calls both the same way, with a ``traceparent`` on the
traced one, then checks, for each client and each sync/async form, once with each
export protocol (OTLP/HTTP, sent with requests or urllib3, and OTLP/gRPC):

- the peer (a recording server in this process) received a ``traceparent`` naming the
  CLIENT span, whose parent is the service's SERVER span, in the caller's trace;
- one CLIENT span per request sent (one per hop when a redirect is followed);
- errors (a status >= 400, connection refused) recorded, the same exception reaching the app;
- the service's replies are the same as the plain run's;
- the exporter's own requests (HTTP or gRPC) carry no ``traceparent`` and have no span.
"""

from __future__ import annotations

import json
import secrets
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import AUTOTRACE, PYTHON, SERVE_ON_ARGV_PORT, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver, ReceivedSpan
from ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import http_peer  # noqa: E402

SERVER, CLIENT = 2, 3  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"

SERVICE = """
import asyncio
import http.client
import json
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import requests
import urllib3

POOL = urllib3.PoolManager()


def with_requests(url):
    r = requests.get(url, timeout=5)
    return r.status_code, dict(r.headers), r.content


def with_httpx(url):
    with httpx.Client(follow_redirects=True, timeout=5) as client:
        r = client.get(url)
        return r.status_code, dict(r.headers), r.content


def with_httpx_async(url):
    async def call():
        async with httpx.AsyncClient(follow_redirects=True, timeout=5) as client:
            r = await client.get(url)
            return r.status_code, dict(r.headers), r.content

    return asyncio.run(call())


def with_urllib(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def with_urllib3(url):
    r = POOL.request("GET", url, timeout=5, retries=urllib3.Retry(total=5, connect=0, read=0))
    return r.status, dict(r.headers), r.data


def with_http_client(url):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", parts.path + "?" + parts.query)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


CLIENTS = {
    "requests": with_requests,
    "httpx": with_httpx,
    "httpx_async": with_httpx_async,
    "urllib": with_urllib,
    "urllib3": with_urllib3,
    "http_client": with_http_client,
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        if "client" not in query:
            self.send_error(404)
            return
        client, target = query["client"][0], query["target"][0]
        try:
            status, headers, body = CLIENTS[client](target)
            headers = {k.lower(): v for k, v in headers.items() if k.lower() not in ("date", "server")}
            result = {"status": status, "headers": headers, "body": body.decode()}
        except Exception as exc:
            result = {"error": type(exc).__module__ + "." + type(exc).__qualname__}
        payload = json.dumps(result, sort_keys=True).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


""" + SERVE_ON_ARGV_PORT

CLIENT_NAMES = ("requests", "httpx", "httpx_async", "urllib", "urllib3", "http_client")
# Targets on the peer: (path, hops sent by a client that follows redirects, status).
TARGETS = {"ok": ("/ok", 1, 200), "missing": ("/status/404", 1, 404), "redirect": ("/redirect/1", 3, 200)}


@dataclass
class Call:
    client: str
    target: str
    case: str
    traced: dict  # the traced service's reply
    plain: dict  # the plain service's reply


@dataclass
class Runs:
    protocol: str  # the traced service's OTLP export protocol
    peer: http_peer.Peer
    receiver: OTLPReceiver
    calls: list
    refused: dict  # client -> (traced reply, plain reply, case)
    stderr: str

    def call(self, client: str, target: str) -> Call:
        return next(c for c in self.calls if c.client == client and c.target == target)

    def spans(self, case: str) -> list[ReceivedSpan]:
        return [s for s in self.receiver.spans() if case in str(s.attributes.get("url.full", "")) or case in str(s.attributes.get("url.query", ""))]


def ask(port: int, client: str, target: str, traceparent: str | None = None) -> dict:
    url = f"http://127.0.0.1:{port}/call?client={client}&target={urllib.request.quote(target, safe='')}"
    request = urllib.request.Request(url, headers={"traceparent": traceparent} if traceparent else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module", params=["http/protobuf", "grpc"])
def runs(request, tmp_path_factory) -> Runs:
    protocol = request.param
    directory = tmp_path_factory.mktemp("clients")
    write(directory, "service.py", SERVICE)
    peer, peer_server, peer_thread = http_peer.start()
    with OTLPReceiver() as receiver:
        traced_port, plain_port = free_port(), free_port()
        traced_env = clean_env(**receiver.env(protocol), OTEL_SERVICE_NAME="caller")
        with Watched([AUTOTRACE, "run", "python", "service.py", str(traced_port)], directory, traced_env) as traced, Watched(
            [PYTHON, "service.py", str(plain_port)], directory, clean_env()
        ) as plain:
            traced.wait_for_line("serving")
            plain.wait_for_line("serving")
            wait_until_answers(f"http://127.0.0.1:{plain_port}/nothing", process=plain)
            wait_until_answers(f"http://127.0.0.1:{traced_port}/nothing", process=traced)
            calls = []
            for client in CLIENT_NAMES:
                for target, (path, _, _) in TARGETS.items():
                    case = f"{client}-{target}-{secrets.token_hex(3)}"
                    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
                    traced_reply = ask(traced_port, client, peer.url(path, case), traceparent)
                    plain_reply = ask(plain_port, client, peer.url(path, "plain-" + case))
                    plain_reply = json.loads(json.dumps(plain_reply).replace("plain-", ""))
                    calls.append(Call(client, target, case, traced_reply, plain_reply))
            refused = {}
            port = free_port()
            for client in CLIENT_NAMES:
                case = f"{client}-refused-{secrets.token_hex(3)}"
                target = f"http://127.0.0.1:{port}/down?case={case}"
                refused[client] = (ask(traced_port, client, target, f"00-{TRACE_ID}-{PARENT_ID}-01"), ask(plain_port, client, target), case)
            traced.stop()  # SIGTERM: the agent flushes before the process exits
            stderr = traced.text("stderr")
        http_peer.stop(peer_server, peer_thread)
        yield Runs(protocol, peer, receiver, calls, refused, stderr)


def server_span_of(runs: Runs, client_span: ReceivedSpan) -> ReceivedSpan:
    [server] = [s for s in runs.receiver.spans() if s.span_id == client_span.parent_span_id]
    return server


def hops_expected(client: str, target: str) -> int:
    path, hops, _ = TARGETS[target]
    return 1 if client == "http_client" else hops  # http.client does not follow redirects


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_replies_are_the_same_as_without_the_agent(runs, client):
    for target in TARGETS:
        call = runs.call(client, target)
        assert "error" not in call.traced, call.traced
        assert call.traced == call.plain
    traced, plain, _ = runs.refused[client]
    assert traced == plain and "error" in traced


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_one_client_span_per_request_sent_and_its_id_is_what_the_peer_received(runs, client):
    for target in TARGETS:
        call = runs.call(client, target)
        spans = [s for s in runs.spans(call.case) if s.kind == CLIENT]
        received = runs.peer.requests(call.case)
        assert len(received) == hops_expected(client, target)
        assert len(spans) == len(received), [(s.name, s.attributes) for s in spans]
        by_id = {s.span_id: s for s in spans}
        server = server_span_of(runs, spans[0])
        assert server.kind == SERVER and server.parent_span_id == PARENT_ID and server.trace_id == TRACE_ID
        for request in received:
            [traceparent] = request.headers["traceparent"]
            _, trace_id, span_id, _ = traceparent.split("-")
            assert trace_id == TRACE_ID
            span = by_id[span_id]  # each hop names its own span
            assert span.parent_span_id == server.span_id
            assert span.attributes["url.full"] == runs.peer.base + request.path + "?case=" + call.case
        for span in spans:
            assert span.name == "GET"
            assert span.attributes["http.request.method"] == "GET"
            assert span.attributes["server.address"] == "127.0.0.1"
            assert span.attributes["server.port"] == runs.peer.port
            assert span.attributes["network.protocol.version"] == "1.1"


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_status_and_errors_are_recorded(runs, client):
    [missing] = [s for s in runs.spans(runs.call(client, "missing").case) if s.kind == CLIENT]
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.attributes["error.type"] == "404"
    assert missing.status_code == STATUS_ERROR
    [ok] = [s for s in runs.spans(runs.call(client, "ok").case) if s.kind == CLIENT]
    assert ok.attributes["http.response.status_code"] == 200
    assert ok.status_code == STATUS_UNSET and "error.type" not in ok.attributes

    _, _, case = runs.refused[client]
    [refused] = [s for s in runs.spans(case) if s.kind == CLIENT]
    assert refused.status_code == STATUS_ERROR
    assert refused.attributes["error.type"]
    assert "http.response.status_code" not in refused.attributes
    assert "exception" in refused.events
    assert refused.trace_id == TRACE_ID


def test_the_exporters_own_requests_are_not_traced(runs):
    exported = runs.receiver.export_requests()
    assert exported and set(exported) == {"grpc" if runs.protocol == "grpc" else "http"}
    spans = runs.receiver.spans()
    for span in spans:
        assert "traceparent" not in span.headers, span.headers
    receiver_ports = {endpoint.rpartition(":")[2].strip("/") for endpoint in (runs.receiver.http_endpoint, runs.receiver.grpc_endpoint)}
    assert not [s for s in spans if s.kind == CLIENT and str(s.attributes.get("server.port")) in receiver_ports]
    assert not [s for s in spans if "rpc.system" in s.attributes]  # no gRPC span of the export
    # Every CLIENT span is one of the service's calls to the peer (or to the closed port).
    assert all("case=" in s.attributes["url.full"] for s in spans if s.kind == CLIENT)


def test_no_warning_from_the_agent(runs):
    assert "autotrace WARNING" not in runs.stderr, runs.stderr
