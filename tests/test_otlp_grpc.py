"""autotrace's OTLP/gRPC exporter over h2 (autotrace.otlp_grpc), against a real grpcio server
in this process: the framing and metadata, the status from trailers, the deadline, retries
with back-off, the kept connection, TLS with ALPN h2, a port that speaks HTTP/1, fork."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.sdk.trace.export import SpanExportResult

from autotrace import export_report, otlp_grpc, otlp_http
from autotrace.otlp_grpc import OtlpGrpcExporter, StatusCode
from autotrace.span_queue import EncodedBatch

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
BATCH = EncodedBatch(b"\x0a\x03abc" * 50, 1)
OK = ("ok",)


class _Collector:
    """A grpcio server whose Export answers, one call after another, as ``answers`` say:
    ("ok",), ("code", grpc.StatusCode, message[, retry delay s]), ("sleep", seconds)."""

    def __init__(self, answers, port: int = 0, credentials=None) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[bytes, dict, str]] = []
        self.time_remaining: list[float | None] = []  # the deadline the call carried (grpc-timeout)
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # raw bytes in and out
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService",
                                                  {"Export": handler}),)
        )
        address = f"127.0.0.1:{port}"
        self.port = (self.server.add_secure_port(address, credentials) if credentials
                     else self.server.add_insecure_port(address))
        self.server.start()

    def _export(self, request: bytes, context) -> bytes:
        self.calls.append((request, dict(context.invocation_metadata()), context.peer()))
        self.time_remaining.append(context.time_remaining())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer[0] == "sleep":
            time.sleep(answer[1])
        elif answer[0] == "code":
            if len(answer) > 3:
                detail = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=int(answer[3] * 1e9)))
                status = status_pb2.Status(code=answer[1].value[0], message=answer[2])
                status.details.add().Pack(detail)
                context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            context.abort(answer[1], answer[2])
        return b""

    def stop(self, grace=None) -> None:
        self.server.stop(grace).wait(5)


@pytest.fixture
def collector():
    made = []

    def make(*answers, **kwargs):
        made.append(_Collector(answers or (OK,), **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def causes():
    found = export_report.start_capture()
    yield found
    export_report.stop_capture()


@pytest.fixture
def fast_backoff(monkeypatch):
    real = otlp_http.backoff_s  # the exporters' shared retry wait (otlp_http.RetryingExporter)
    monkeypatch.setattr(otlp_http, "backoff_s", lambda attempt, retry_after=None: real(attempt, retry_after) / 20)


def _exporter(port: int, **kwargs) -> OtlpGrpcExporter:
    kwargs.setdefault("timeout_s", 5)
    return OtlpGrpcExporter(f"http://127.0.0.1:{port}", **kwargs)


# -- framing --------------------------------------------------------------------------------


def test_frame_timeout_and_retry_info_encodings():
    assert otlp_grpc.grpc_frame(b"abc", False) == b"\x00\x00\x00\x00\x03abc"
    assert otlp_grpc.grpc_frame(b"", True) == b"\x01\x00\x00\x00\x00"
    assert otlp_grpc.grpc_timeout(10) == "10000m"
    assert otlp_grpc.grpc_timeout(0.0001) == "1m"
    assert otlp_grpc.grpc_timeout(200_000) == "200000S"
    status = status_pb2.Status(code=8, message="slow down")
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000)))
    import base64

    assert otlp_grpc.retry_delay(base64.b64encode(status.SerializeToString()).decode().rstrip("=")) == 2.5
    assert otlp_grpc.retry_delay(base64.b64encode(status_pb2.Status(code=8).SerializeToString()).decode()) is None
    assert otlp_grpc.retry_delay("not base64 !") is None


def test_sends_the_bytes_and_metadata_over_one_kept_connection(collector):
    server = collector()
    exporter = _exporter(server.port, headers={"Authorization": "Bearer t", "x-tenant": "a"})
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    (body, metadata, peer), (_, _, peer2) = server.calls
    assert body == BATCH.data
    assert metadata["authorization"] == "Bearer t" and metadata["x-tenant"] == "a"
    assert metadata["user-agent"].startswith("OTel-OTLP-Exporter-Python/autotrace-")
    assert peer == peer2  # the same connection
    exporter.shutdown()


def test_gzip(collector):
    server = collector()
    exporter = _exporter(server.port, compression="gzip")
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert server.calls[0][0] == BATCH.data
    exporter.shutdown()


def test_a_batch_larger_than_the_flow_control_window(collector):
    server = collector()
    big = EncodedBatch(os.urandom(3_000_000), 1)
    exporter = _exporter(server.port)
    assert exporter.export(big) is SpanExportResult.SUCCESS
    assert server.calls[0][0] == big.data
    exporter.shutdown()


# -- status, retries, deadline ----------------------------------------------------------------


def test_a_code_that_is_not_retryable_is_tried_once_with_its_message(collector, causes):
    server = collector(("code", grpc.StatusCode.UNAUTHENTICATED, "bad token"))
    exporter = _exporter(server.port)
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert causes == [(StatusCode.UNAUTHENTICATED, "bad token")]
    assert len(server.calls) == 1
    assert export_report.classify_failure([StatusCode.UNAUTHENTICATED, "bad token"])[0] == "gRPC UNAUTHENTICATED"
    exporter.shutdown()


def test_unavailable_is_retried_with_backoff(collector, causes, fast_backoff):
    server = collector(("code", grpc.StatusCode.UNAVAILABLE, "busy"), ("code", grpc.StatusCode.UNAVAILABLE, "busy"), OK)
    exporter = _exporter(server.port)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert causes == [(StatusCode.UNAVAILABLE, "busy")] * 2
    assert len(server.calls) == 3
    exporter.shutdown()


def test_resource_exhausted_is_retried_only_with_retry_info(collector, causes):
    server = collector(("code", grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    exporter = _exporter(server.port)
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert len(server.calls) == 1
    server.answers = [("code", grpc.StatusCode.RESOURCE_EXHAUSTED, "full", 0.3), OK]
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert 0.25 <= time.monotonic() - started < 0.9  # RetryInfo's delay, not the 1 s back-off
    assert len(server.calls) == 3
    exporter.shutdown()


def test_a_collector_slower_than_the_deadline_fails_once_within_it(collector, causes):
    server = collector(("sleep", 3))
    exporter = _exporter(server.port, timeout_s=1)
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 2
    assert export_report.classify_failure([a for args in causes for a in args])[0] == "timeout"
    assert server.time_remaining[0] is not None and 0 < server.time_remaining[0] <= 1.0
    exporter.shutdown()


def test_a_refused_connection_is_retried_until_the_deadline(causes, fast_backoff):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = _exporter(port, timeout_s=1)
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert len(causes) >= 2 and all(isinstance(c[0], ConnectionRefusedError) for c in causes)
    assert export_report.classify_failure([causes[0][0]])[0] == "connection refused"


def test_at_exit_nothing_is_retried(collector, causes):
    server = collector(("code", grpc.StatusCode.UNAVAILABLE, "busy"))
    exporter = _exporter(server.port)
    exporter.closing()
    started = time.monotonic()
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 0.5 and len(server.calls) == 1
    exporter.shutdown()


def test_a_kept_connection_the_collector_closed_is_reopened_at_once(collector, causes):
    server = collector()
    exporter = _exporter(server.port)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    port = server.port
    server.stop(0)  # GOAWAY, then the connection closes
    again = collector(port=port)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    assert len(again.calls) == 1
    assert causes == []
    exporter.shutdown()


# -- another protocol, TLS, fork, imports -------------------------------------------------------------


def test_an_http1_port_is_not_retried_and_says_so(causes):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    exporter = _exporter(port)
    try:
        assert exporter.export(BATCH) is SpanExportResult.FAILURE
        ((error,),) = causes
        assert isinstance(error, otlp_grpc.NotHttp2)
    finally:
        thread.join(5)
        listener.close()


def _credentials(pki, require_client: bool):
    return grpc.ssl_server_credentials(
        [(pki["server.key"].read_bytes(), pki["server.pem"].read_bytes())],
        root_certificates=pki["ca.pem"].read_bytes() if require_client else None,
        require_client_auth=require_client,
    )


def test_tls_with_alpn_the_ca_file_and_a_client_certificate(collector, pki, causes):
    server = collector(credentials=_credentials(pki, require_client=True))
    exporter = OtlpGrpcExporter(
        f"https://127.0.0.1:{server.port}", timeout_s=5, certificate=str(pki["ca.pem"]),
        client_certificate=str(pki["client.pem"]), client_key=str(pki["client.key"]),
    )
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS, causes
    assert server.calls[0][0] == BATCH.data
    exporter.shutdown()


def test_insecure_false_means_tls_without_a_scheme_saying_so(collector, pki, causes):
    server = collector(credentials=_credentials(pki, require_client=False))
    exporter = OtlpGrpcExporter(f"http://127.0.0.1:{server.port}", insecure=False, timeout_s=5,
                                certificate=str(pki["ca.pem"]))
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS, causes
    exporter.shutdown()


def test_an_untrusted_certificate_is_not_retried_and_classified(collector, pki, causes, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = collector(credentials=_credentials(pki, require_client=False))
    exporter = OtlpGrpcExporter(f"https://127.0.0.1:{server.port}", timeout_s=5)
    assert exporter.export(BATCH) is SpanExportResult.FAILURE
    ((error,),) = causes
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert server.calls == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_makes_its_own_connection(collector):
    server = collector()
    exporter = _exporter(server.port)
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS
    pid = os.fork()
    if pid == 0:
        code = 0 if exporter.export(BATCH) is SpanExportResult.SUCCESS else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert exporter.export(BATCH) is SpanExportResult.SUCCESS  # the parent's connection still works
    peers = [peer for _, _, peer in server.calls]
    assert len(server.calls) == 3 and peers[0] == peers[2] != peers[1]
    exporter.shutdown()


def test_exporting_over_grpc_imports_neither_grpc_nor_protobuf(collector):
    server = collector()
    code = f"""
import sys
from opentelemetry.sdk.trace import TracerProvider
from autotrace import exporters, otlp_grpc
from autotrace.config import Configuration
from autotrace.span_queue import EncodingBatchProcessor
settings = Configuration(protocol="grpc", endpoint="http://127.0.0.1:{server.port}", insecure=True)
handle = exporters.ExporterHandle("otlp", exporters.otlp_factory(settings), settings=settings)
provider = TracerProvider()
processor = EncodingBatchProcessor(handle)
provider.add_span_processor(processor)
provider.get_tracer("t").start_span("s").end()
processor.force_flush()
assert isinstance(handle._exporter, otlp_grpc.OtlpGrpcExporter), handle._exporter  # made at the first export
processor.shutdown()
heavy = sorted(m for m in sys.modules if m.startswith(("grpc", "google.protobuf", "opentelemetry.proto", "opentelemetry.exporter")))
print(heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len(server.calls) == 1


def test_an_app_that_imported_grpc_keeps_grpcios_exporter():
    from autotrace import exporters
    from autotrace.config import Configuration

    assert "grpc" in sys.modules  # this test module imported it
    settings = Configuration(protocol="grpc", endpoint="http://127.0.0.1:4317", insecure=True)
    exporter = exporters.otlp_factory(settings)()
    try:
        assert not isinstance(exporter, OtlpGrpcExporter)
        assert type(exporter).__name__ == "GrpcSpanExporter"
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("variable", ["grpc_proxy", "HTTPS_PROXY", "http_proxy"])
def test_a_proxy_for_grpc_keeps_grpcios_exporter(variable):
    """The h2 exporter has no proxy support: with a variable grpcio reads for one, grpcio's exporter."""
    code = """
from autotrace import exporters
from autotrace.config import Configuration
settings = Configuration(protocol="grpc", endpoint="http://127.0.0.1:4317", insecure=True)
exporter = exporters.otlp_factory(settings)()
print(type(exporter).__name__)
exporter.shutdown()
"""
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    env[variable] = "http://127.0.0.1:3128"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "GrpcSpanExporter"
