"""The OTLP/HTTP exporter (autotrace/otlp_http.py) against real servers on loopback.

Bytes over one kept-alive connection; headers, gzip, TLS with a CA file and a client
certificate, a proxy; retries with back-off on 429/502/503/504 and connection errors,
Retry-After honoured within the deadline, nothing retried at exit; what cannot get better
by waiting (another status, another protocol, no answer) is not retried; each failed
attempt leaves its evidence for the failure report. No protobuf, no requests imported.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from ports import free_port

from autotrace import export_report, otlp_http
from autotrace.otlp_http import OtlpHttpExporter
from autotrace.span_queue import EncodedBatch

BATCH = EncodedBatch(b"\x0a\x03abc", 1)


class Scripted:
    """An HTTP/1.1 server answering each POST with the next of ``answers``:
    (status, headers, body), "hang" (no answer) or "close" (close without an answer);
    the last answer repeats. Records (client port, path, headers, body, time) per POST."""

    def __init__(self, answers, tls_context=None) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[int, str, dict, bytes, float]] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.client_address[1], self.path, dict(self.headers), body, time.monotonic()))
                answer = outer.answers[min(len(outer.requests), len(outer.answers)) - 1]
                if answer == "hang":
                    outer.release.wait(10)
                    self.close_connection = True
                    return
                if answer == "close":
                    self.close_connection = True
                    return
                status, headers, content = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls_context is not None:
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        scheme = "https" if tls_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


OK = (200, {"Content-Type": "application/x-protobuf"}, b"")


@pytest.fixture
def serve():
    servers = []

    def make(*answers, tls_context=None):
        server = Scripted(answers, tls_context)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def causes():
    found = export_report.start_capture()
    yield found
    export_report.stop_capture()


@pytest.fixture
def fast_backoff(monkeypatch):
    """Back-off of 0.05 s x 2**attempt (the jitter and the rule unchanged, the unit smaller)."""
    real = otlp_http.backoff_s
    monkeypatch.setattr(otlp_http, "backoff_s", lambda attempt, retry_after=None: real(attempt, retry_after) / 20)


def test_posts_the_bytes_with_the_headers_over_one_kept_alive_connection(serve):
    server = serve(OK)
    exporter = OtlpHttpExporter(server.url, headers={"authorization": "Bearer x"}, timeout_s=5)
    for _ in range(3):
        assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    ports = {port for port, *_ in server.requests}
    assert len(server.requests) == 3 and len(ports) == 1  # one connection
    _, path, headers, body, _ = server.requests[0]
    assert path == "/v1/traces" and body == BATCH.data
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["authorization"] == "Bearer x"
    assert headers["User-Agent"].startswith("OTel-OTLP-Exporter-Python/")
    exporter.shutdown()


def test_gzip(serve):
    server = serve(OK)
    exporter = OtlpHttpExporter(server.url, compression="gzip", timeout_s=5)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    _, _, headers, body, _ = server.requests[0]
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == BATCH.data
    exporter.shutdown()


def test_a_kept_alive_connection_the_collector_closed_is_reopened_at_once(serve, causes):
    server = serve(OK)
    exporter = OtlpHttpExporter(server.url, timeout_s=5)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    server.server.shutdown()  # the collector restarts: its connections are gone
    server.server.server_close()
    server2 = serve(OK)
    exporter._port = server2.port  # noqa: SLF001 - the same collector, restarted on a new port
    exporter._connection.sock.shutdown(socket.SHUT_RDWR)  # noqa: SLF001 - the old connection, closed by its peer
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert len(server2.requests) == 1 and causes == []
    exporter.shutdown()


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_are_retried_with_backoff(serve, causes, fast_backoff, status):
    server = serve((status, {"Content-Type": "text/plain"}, b"busy"), (status, {}, b"busy"), OK)
    exporter = OtlpHttpExporter(server.url, timeout_s=5)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    times = [t for *_, t in server.requests]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.04 <= gaps[0] < 0.5 and 0.08 <= gaps[1] < 0.8, gaps  # 0.05 s then 0.1 s, +/-20%
    assert causes == [(status, "busy"), (status, "busy")]
    exporter.shutdown()


def test_retry_after_is_honoured_and_bounded_by_the_deadline(serve, causes):
    server = serve((503, {"Retry-After": "0.3"}, b""), OK)
    exporter = OtlpHttpExporter(server.url, timeout_s=5)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    (_, *_, first), (_, *_, second) = server.requests
    assert 0.28 <= second - first < 2
    server = serve((429, {"Retry-After": "120"}, b"slow down"))
    exporter = OtlpHttpExporter(server.url, timeout_s=1)
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.FAILURE  # waiting would pass the deadline
    assert time.monotonic() - started < 0.5 and len(server.requests) == 1
    exporter.shutdown()


def test_other_statuses_are_not_retried_and_the_collectors_message_is_kept(serve, causes):
    server = serve((400, {"Content-Type": "application/json"}, b'{"code": 3, "message": "bad span"}'))
    exporter = OtlpHttpExporter(server.url, timeout_s=5)
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert len(server.requests) == 1
    assert causes == [(400, "bad span")]
    exporter.shutdown()


def test_a_refused_connection_is_retried_until_the_deadline(causes, fast_backoff):
    exporter = OtlpHttpExporter(f"http://127.0.0.1:{free_port()}/v1/traces", timeout_s=0.5)
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 0.6
    assert len(causes) >= 3 and all(isinstance(c[0], ConnectionRefusedError) for c in causes)
    kind, _ = export_report.classify_failure([c for cause in causes for c in cause])
    assert kind == "connection refused"


def test_at_exit_nothing_is_retried(serve, causes):
    server = serve((503, {}, b""))
    exporter = OtlpHttpExporter(server.url, timeout_s=30)
    exporter.closing()
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 0.5 and len(server.requests) == 1


def test_closing_ends_a_backoff_under_way(serve, causes):
    server = serve((503, {"Retry-After": "20"}, b""))
    exporter = OtlpHttpExporter(server.url, timeout_s=30)
    threading.Timer(0.3, exporter.closing).start()
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 2


def test_a_collector_that_does_not_answer_times_out_once(serve, causes):
    server = serve("hang")
    exporter = OtlpHttpExporter(server.url, timeout_s=0.5)
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert 0.45 <= time.monotonic() - started < 1.5 and len(server.requests) == 1
    ((error,),) = causes
    assert isinstance(error, otlp_http.ReadTimeout)
    assert export_report.classify_failure([error])[0] == "timeout"
    exporter.shutdown()


def _read_request(conn: socket.socket) -> bytes:
    """An HTTP/1.1 request read whole (headers, then Content-Length bytes), bounded by a timeout."""
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_another_protocol_on_the_port_is_not_retried(causes):
    """A port that answers with bytes that are not HTTP/1.x (an HTTP/2-only gRPC port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen = []

    def answer():
        for _ in range(3):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            seen.append(_read_request(conn))  # all of it: closing with bytes unread would reset the connection
            conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + b"\x00" * 8)
            conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        exporter = OtlpHttpExporter(f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces", timeout_s=30)
        assert exporter.export(BATCH) is SpanExportResult.FAILURE
        assert len(seen) == 1  # one attempt: a retry would connect again
        ((error,),) = causes
        assert isinstance(error, otlp_http.NotHttp)
    finally:
        listener.close()
        thread.join(5)


def test_an_unknown_host_is_classified(causes, fast_backoff):
    exporter = OtlpHttpExporter("http://no-such-host.invalid:4318/v1/traces", timeout_s=0.2)
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert export_report.classify_failure([c for cause in causes for c in cause])[0] != "connection refused"
    assert isinstance(causes[0][0], socket.gaierror)


# -- TLS ------------------------------------------------------------------------------------


def _server_context(pki, require_client: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server.pem"], pki["server.key"])
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca.pem"])
    return context


def test_tls_with_the_ca_file_and_a_client_certificate(serve, pki, causes):
    server = serve(OK, tls_context=_server_context(pki, require_client=True))
    exporter = OtlpHttpExporter(
        server.url, timeout_s=5, certificate=str(pki["ca.pem"]),
        client_certificate=str(pki["client.pem"]), client_key=str(pki["client.key"]),
    )
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert server.requests[0][3] == BATCH.data
    exporter.shutdown()


def test_an_untrusted_certificate_is_not_retried_and_classified(serve, pki, causes, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = serve(OK, tls_context=_server_context(pki, require_client=False))
    exporter = OtlpHttpExporter(server.url, timeout_s=5)  # the system's CAs: not the test CA
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    ((error,),) = causes
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert server.requests == []
    exporter.shutdown()


# -- proxy, imports ---------------------------------------------------------------------------


def test_an_http_proxy_from_the_environment_gets_the_absolute_url(serve):
    proxy = serve(OK)
    target = "http://collector.example:4318/v1/traces"
    exporter = OtlpHttpExporter(target, timeout_s=5, environ={"HTTP_PROXY": f"http://127.0.0.1:{proxy.port}"})
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert proxy.requests[0][1] == target
    bypass = OtlpHttpExporter(target, timeout_s=5, environ={"HTTP_PROXY": "http://127.0.0.1:1", "NO_PROXY": "example"})
    assert bypass._proxy is None  # noqa: SLF001
    exporter.shutdown()


def test_exporting_over_http_imports_neither_protobuf_nor_requests(serve):
    server = serve(OK)
    code = f"""
import sys
from opentelemetry.sdk.trace import TracerProvider
from autotrace import exporters
from autotrace.config import Configuration
from autotrace.span_queue import EncodingBatchProcessor
settings = Configuration(protocol="http/protobuf", endpoint={server.url!r})
handle = exporters.ExporterHandle("otlp", exporters.otlp_factory(settings), settings=settings)
provider = TracerProvider()
processor = EncodingBatchProcessor(handle)
provider.add_span_processor(processor)
provider.get_tracer("t").start_span("s").end()
processor.shutdown()
heavy = sorted(m for m in sys.modules if m.startswith(("google.protobuf", "requests", "urllib3", "opentelemetry.proto", "opentelemetry.exporter")))
print(heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(server.requests) == 1
