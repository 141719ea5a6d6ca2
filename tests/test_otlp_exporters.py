"""The SDK's OTLP exporters with autotrace's encoder plugged in: what reaches the wire."""

from __future__ import annotations

import importlib
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_module
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from autotrace import otlp_exporters


@pytest.fixture(autouse=True)
def fresh_state():
    saved = dict(otlp_exporters._state)
    otlp_exporters._state.update(verified=False, disabled=False)
    yield
    otlp_exporters._state.clear()
    otlp_exporters._state.update(saved)


def _spans(n=5):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "svc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope", "1.0")
    for i in range(n):
        with tracer.start_as_current_span(f"op{i}", kind=SpanKind.SERVER, attributes={"i": i, "s": "x"}) as span:
            span.add_event("e", {"k": -1})
    return exporter.get_finished_spans()


class _Sink:
    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink():
    s = _Sink()
    yield s
    s.close()


def _http_exporter(url):
    cls = otlp_exporters.http_exporter_class()
    assert cls is not http_module.OTLPSpanExporter
    return cls(endpoint=url, timeout=5)


def test_http_export_sends_our_encoding(sink, monkeypatch):
    calls = []
    real = otlp_exporters.encode_spans
    monkeypatch.setattr(otlp_exporters, "encode_spans", lambda spans, **kw: calls.append(len(spans)) or real(spans, **kw))
    spans = _spans()
    exporter = _http_exporter(sink.url)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert ExportTraceServiceRequest.FromString(sink.bodies[0]) == sdk_encode_spans(spans)
    assert calls == [5, 5]  # the first-batch check, then the batch
    # Installing twice keeps one dispatcher, wrapping the SDK's encoder.
    otlp_exporters.http_exporter_class()
    assert http_module.encode_spans.__wrapped__ is sdk_encode_spans
    exporter.shutdown()


def test_http_other_exporters_keep_the_sdk_encoder(sink, monkeypatch):
    otlp_exporters.http_exporter_class()
    monkeypatch.setattr(otlp_exporters, "encode_spans", lambda spans: pytest.fail("ours used"))
    spans = _spans()
    # An app's own exporter (the SDK's class) goes through the dispatcher untouched.
    plain = http_module.OTLPSpanExporter(endpoint=sink.url, timeout=5)
    assert plain.export(spans) is SpanExportResult.SUCCESS
    assert ExportTraceServiceRequest.FromString(sink.bodies[0]) == sdk_encode_spans(spans)
    assert isinstance(http_module.encode_spans(spans), ExportTraceServiceRequest)
    plain.shutdown()


def test_http_falls_back_to_the_sdk_encoder_on_error(sink, monkeypatch, capsys):
    exporter = _http_exporter(sink.url)
    spans = _spans()
    assert exporter.export(spans) is SpanExportResult.SUCCESS  # verified with the real encoder

    def broken(spans):
        raise RuntimeError("nope")

    monkeypatch.setattr(otlp_exporters, "encode_spans", broken)
    for _ in range(3):
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    for body in sink.bodies:
        assert ExportTraceServiceRequest.FromString(body) == sdk_encode_spans(spans)
    assert capsys.readouterr().err.count("span encoder failed") == 1
    exporter.shutdown()


def test_a_mismatch_switches_ours_off(sink, monkeypatch, capsys):
    monkeypatch.setattr(otlp_exporters, "encode_spans", lambda spans: b"")
    exporter = _http_exporter(sink.url)
    spans = _spans()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert otlp_exporters._state["disabled"]
    for body in sink.bodies:
        assert ExportTraceServiceRequest.FromString(body) == sdk_encode_spans(spans)
    assert capsys.readouterr().err.count("disagrees") == 1
    exporter.shutdown()


def test_grpc_export_sends_our_encoding(monkeypatch):
    grpc = importlib.import_module("grpc")
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = []

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        calls = []
        real = otlp_exporters.encode_spans
        monkeypatch.setattr(otlp_exporters, "encode_spans", lambda spans, **kw: calls.append(len(spans)) or real(spans, **kw))
        cls = otlp_exporters.grpc_exporter_class()
        exporter = cls(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=5)
        spans = _spans()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert received == [sdk_encode_spans(spans)]
        assert calls == [5, 5]

        def broken(spans):
            raise RuntimeError("nope")

        monkeypatch.setattr(otlp_exporters, "encode_spans", broken)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert received[1] == sdk_encode_spans(spans)
        exporter.shutdown()
    finally:
        server.stop(None)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_agent_factory_makes_the_exporters_with_our_encoder(protocol):
    from autotrace import exporters
    from autotrace.config import Configuration

    endpoint = "127.0.0.1:4317" if protocol == "grpc" else "http://127.0.0.1:4318/v1/traces"
    exporter = exporters.otlp_factory(Configuration(protocol=protocol, endpoint=endpoint, insecure=True))()
    try:
        if protocol == "grpc":
            assert type(exporter).__name__ == "GrpcSpanExporter"
            assert type(exporter).__module__ == "autotrace.otlp_exporters"
        else:  # bytes over http.client (tests/test_otlp_http.py)
            assert type(exporter).__name__ == "OtlpHttpExporter"
            assert type(exporter).__module__ == "autotrace.otlp_http"
    finally:
        exporter.shutdown()


def test_with_a_credential_provider_the_sdks_http_exporter_is_used():
    """The provider's requests.Session is loaded by the SDK's exporter, with our encoder."""
    from autotrace import exporters
    from autotrace.config import Configuration

    settings = Configuration(protocol="http/protobuf", endpoint="http://127.0.0.1:4318/v1/traces", credential_provider="x")
    exporter = exporters.otlp_factory(settings)()
    try:
        assert type(exporter).__name__ == "HttpSpanExporter"
    finally:
        exporter.shutdown()


def test_the_grpc_exporters_channel_bypasses_the_agents_grpc_hook():
    """The export is never traced; a channel made through the hook would still carry its
    interceptor, and grpc's interceptor machinery keeps each failed call's exception and
    request in a reference cycle (RSS grew while a collector was down)."""
    import grpc

    from autotrace import patching
    from autotrace.hooks import grpc as hook

    mark = len(patching.history)
    hook.patch(grpc)
    try:
        assert type(grpc.insecure_channel("127.0.0.1:1")).__module__ == "grpc._interceptor"  # the hook is on
        cls = otlp_exporters.grpc_exporter_class()
        exporter = cls(endpoint="127.0.0.1:1", insecure=True, timeout=1)
        assert type(exporter._channel.channel).__module__ == "grpc._channel"
        exporter._initialize_channel_and_stub()  # as the SDK does after an UNAVAILABLE export
        assert type(exporter._channel.channel).__module__ == "grpc._channel"
        exporter.shutdown()
    finally:
        patching.undo(mark)


def _grpc_collector(port: int, received: list):
    """A gRPC TraceService on ``port`` that records each request; started."""
    grpc = importlib.import_module("grpc")
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    return server


def test_grpc_the_first_export_after_an_outage_connects_at_once():
    """Issue 18: a channel whose call failed UNAVAILABLE sits in grpc's reconnect back-off
    (1 s at first), in which a call fails at once without connecting; the SDK's first retry
    comes 1 s (+-20 %) later, past a short export timeout: the first batch after the
    collector came back was lost. The channel is replaced before the next call: it arrives."""
    import time

    from ports import free_port

    port = free_port()
    exporter = otlp_exporters.grpc_exporter_class()(endpoint=f"127.0.0.1:{port}", insecure=True, timeout=1.5)
    spans = _spans()
    try:
        # Nothing listens: refused, retried once (on a new channel, refused too), given up.
        started = time.monotonic()
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 1.5 + 0.5
        exporter._timeout = 0.6  # the SDK's deadline: from now on no time for its retry
        received: list = []
        server = _grpc_collector(port, received)
        try:
            for _ in range(3):  # back: each export arrives, the first one included
                assert exporter.export(spans) is SpanExportResult.SUCCESS
            assert received == [sdk_encode_spans(spans)] * 3
        finally:
            server.stop(None)
    finally:
        exporter.shutdown()


def test_grpc_channels_have_subchannels_of_their_own():
    """A new channel connects at once, whatever the channel it replaces (or the app's
    channels to the same address) went through."""
    options = otlp_exporters._channel_options((("grpc.primary_user_agent", "x"),))
    assert options == (("grpc.primary_user_agent", "x"), ("grpc.use_local_subchannel_pool", 1))
    assert otlp_exporters._channel_options(options) == options
