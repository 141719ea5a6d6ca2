"""Export failures: the first of each cause reported once, then summarised, recovery once."""

from __future__ import annotations

import logging
import re

import pytest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from ports import free_port

from autotrace import _log, export_report, exporters


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted(SpanExporter):
    """Raises or returns what ``outcome`` says; ``_endpoint`` as the OTLP exporters have it."""

    _endpoint = "http://user:pw@collector.example:4318/v1/traces"

    def __init__(self) -> None:
        self.outcome: object = SpanExportResult.SUCCESS

    def export(self, spans):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        if callable(self.outcome):
            return self.outcome()
        return self.outcome

    def shutdown(self) -> None:
        pass


@pytest.fixture
def handle():
    exporter = Scripted()
    handle = exporters.ExporterHandle("otlp", lambda: exporter)
    clock = Clock()
    handle.export([])  # makes the reporter (success: nothing said)
    handle.failures._clock = clock
    handle.failures.interval_s = 60.0
    return handle, exporter, clock


def _agent_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("autotrace ")]


def test_first_failure_once_then_summary_then_recovery(handle, capsys):
    handle, exporter, clock = handle
    exporter.outcome = ConnectionRefusedError(111, "Connection refused")
    assert handle.export([object()] * 3) is SpanExportResult.FAILURE
    lines = _agent_lines(capsys)
    assert lines == [
        "autotrace WARNING: spans could not be exported to http://<redacted>@collector.example:4318/v1/traces: "
        "connection refused (is a collector listening there?); 3 spans not exported; "
        "further failures are summarised every 60 s; run 'autotrace doctor' for details"
    ]
    for _ in range(5):  # within the interval: nothing
        clock.now += 10
        assert handle.export([object()] * 4) is SpanExportResult.FAILURE
    assert _agent_lines(capsys) == []
    clock.now += 10  # 60 s after the first: the summary, every failed batch counted (the first too)
    handle.export([object()] * 4)
    assert _agent_lines(capsys) == [
        "autotrace WARNING: in the last 60 s, 7 batches (27 spans) were not exported: connection refused x7; "
        "run 'autotrace doctor' for details"
    ]
    clock.now += 5
    handle.export([object()] * 2)
    assert _agent_lines(capsys) == []
    exporter.outcome = SpanExportResult.SUCCESS
    assert handle.export([object()]) is SpanExportResult.SUCCESS
    assert _agent_lines(capsys) == [
        "autotrace INFO: spans are exported to http://<redacted>@collector.example:4318/v1/traces again "
        "(1 batch (2 spans) was not exported: connection refused x1 since the last summary)"
    ]
    handle.export([object()])
    assert _agent_lines(capsys) == []


def test_each_cause_reported_once_and_failure_results_counted(handle, capsys):
    handle, exporter, clock = handle
    exporter.outcome = SpanExportResult.FAILURE  # nothing said why
    handle.export([object()])
    exporter.outcome = TimeoutError("timed out")
    handle.export([object()])
    handle.export([object()])
    exporter.outcome = RuntimeError("boom")
    handle.export([object()])
    lines = _agent_lines(capsys)
    assert len(lines) == 3, lines
    assert "the exporter reported a failure" in lines[0]
    assert ": timeout (" in lines[1]
    assert "RuntimeError (boom)" in lines[2]
    clock.now += 61
    exporter.outcome = SpanExportResult.FAILURE
    handle.export([object()])
    (summary,) = _agent_lines(capsys)
    assert summary.startswith("autotrace WARNING: in the last 61 s, 5 batches (5 spans) were not exported: ")
    assert "timeout x2" in summary and "the exporter reported a failure x2" in summary and "RuntimeError x1" in summary


def test_cause_from_the_sdk_log_is_kept_and_the_line_hidden(handle, capsys):
    """An exporter that logs why (as the SDK's do) and returns FAILURE: the cause is reported."""
    handle, exporter, clock = handle
    sdk_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")

    def fail_like_the_sdk():
        sdk_logger.error("Failed to export %s batch code: %s, reason: %s", "spans", 503, "Service Unavailable")
        return SpanExportResult.FAILURE

    exporter.outcome = fail_like_the_sdk
    handle.export([object()])
    err = capsys.readouterr().err
    assert "Failed to export" not in err
    assert ": HTTP 503; 1 span not exported; further failures" in err


def test_no_summary_at_shutdown_when_each_failed_batch_was_named(handle, capsys):
    handle, exporter, clock = handle
    exporter.outcome = ConnectionRefusedError(111, "Connection refused")
    handle.export([object()])
    exporter.outcome = TimeoutError("timed out")
    handle.export([object()])
    assert len(_agent_lines(capsys)) == 2
    handle.shutdown()
    assert _agent_lines(capsys) == []
    assert handle.failures.lost_spans == 2


def test_an_export_recovered_by_retries_gets_one_line(handle, capsys):
    handle, exporter, clock = handle
    sdk_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")

    def retried_then_delivered():
        # What the SDK's gRPC exporter logs for each retry (hidden, its cause kept).
        for _ in range(2):
            sdk_logger.warning("Transient error %s encountered while exporting %s to %s, retrying in %.2fs.",
                               "StatusCode.UNAVAILABLE", "traces", "127.0.0.1:4317", 1.0)
        export_report.add_cause(ConnectionRefusedError(111, "Connection refused"))
        return SpanExportResult.SUCCESS

    exporter.outcome = retried_then_delivered
    assert handle.export([object()] * 3) is SpanExportResult.SUCCESS
    (line,) = _agent_lines(capsys)
    assert re.fullmatch(
        r"autotrace INFO: the collector at http://<redacted>@collector\.example:4318/v1/traces was unreachable "
        r"for \d+ s \(connection refused\); all spans delivered after retry",
        line,
    ), line
    exporter.outcome = SpanExportResult.SUCCESS
    handle.export([object()])
    assert _agent_lines(capsys) == []

    def answered_503_then_delivered():
        export_report.add_cause(503, "busy")
        return SpanExportResult.SUCCESS

    exporter.outcome = answered_503_then_delivered
    handle.export([object()])
    (line,) = _agent_lines(capsys)
    assert " answered HTTP 503 for 0 s; all spans delivered after retry" in line


def test_summary_at_shutdown(handle, capsys):
    handle, exporter, clock = handle
    exporter.outcome = ConnectionRefusedError(111, "Connection refused")
    handle.export([object()])
    handle.export([object()])
    capsys.readouterr()
    clock.now += 3
    handle.shutdown()
    assert _agent_lines(capsys) == [
        "autotrace WARNING: in the last 3 s, 2 batches (2 spans) were not exported: connection refused x2; "
        "run 'autotrace doctor' for details"
    ]


def test_flapping_recovery_is_said_once_per_interval(handle, capsys):
    handle, exporter, clock = handle
    for _ in range(3):
        exporter.outcome = ConnectionRefusedError(111, "Connection refused")
        handle.export([object()])
        exporter.outcome = SpanExportResult.SUCCESS
        handle.export([object()])
        clock.now += 1
    lines = _agent_lines(capsys)
    assert len(lines) == 2 and "WARNING" in lines[0] and "again" in lines[1]


def test_real_otlp_http_exporter_against_a_closed_port(capfd, caplog):
    from autotrace.config import Configuration

    endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
    settings = Configuration(protocol="http/protobuf", endpoint=endpoint, timeout_s=0.3)
    handle = exporters.ExporterHandle("otlp", exporters.otlp_factory(settings))
    from opentelemetry.sdk.trace import TracerProvider

    span = TracerProvider().get_tracer("t").start_span("s")
    span.end()
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        assert handle.export([span]) is SpanExportResult.FAILURE
        assert handle.export([span]) is SpanExportResult.FAILURE
    handle.shutdown()
    err = capfd.readouterr().err
    sdk_records = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert sdk_records == [], [r.getMessage() for r in sdk_records]
    assert "Failed to export" not in err and "Transient error" not in err
    lines = [line for line in err.splitlines() if line.startswith("autotrace ")]
    assert lines[0] == (
        f"autotrace WARNING: spans could not be exported to {endpoint}: connection refused "
        "(is a collector listening there?); 1 span not exported; further failures are summarised every 60 s; "
        "run 'autotrace doctor' for details"
    ), err


@pytest.mark.parametrize("broken", ["classify", "failed", "succeeded"])
def test_reporting_never_raises_on_the_export_thread(handle, capsys, monkeypatch, broken):
    handle, exporter, clock = handle

    def boom(*args, **kwargs):
        raise RuntimeError("reporter bug")

    if broken == "classify":
        monkeypatch.setattr(export_report, "classify_failure", boom)
    else:
        monkeypatch.setattr(handle.failures, broken, boom)
    monkeypatch.setattr(_log, "_warned", set())
    outcome = SpanExportResult.SUCCESS if broken == "succeeded" else SpanExportResult.FAILURE
    exporter.outcome = outcome
    for _ in range(3):  # the exporter's own result, every time; one line in all
        assert handle.export([object()]) is outcome
    assert _agent_lines(capsys) == [
        "autotrace WARNING: cannot report export failures (RuntimeError: reporter bug)"
    ]


class Gated(SpanExporter):
    """Succeeds, but each export waits until ``gate`` is set: the batch queue fills meanwhile."""

    def __init__(self) -> None:
        import threading

        self.gate = threading.Event()
        self.entered = threading.Event()
        self.exported = 0

    def export(self, spans):
        self.entered.set()
        self.gate.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _drop_spans(tracer, n: int) -> None:
    for i in range(n):
        tracer.start_span(f"s{i}").end()


def test_queue_full_drops_are_reported_while_exports_succeed(monkeypatch, capsys, caplog):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    clock = Clock()
    drops = export_report.QueueDrops(interval_s=60.0, clock=clock)
    drops.queue_size = 2
    monkeypatch.setattr(export_report, "queue_drops", drops)
    exporter = Gated()
    processor = BatchSpanProcessor(
        exporters.ExporterHandle("otlp", lambda: exporter),
        max_queue_size=2, max_export_batch_size=2, schedule_delay_millis=60_000,
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    try:
        _drop_spans(tracer, 2)  # a full batch: the worker takes it and waits at the gate
        assert exporter.entered.wait(5)
        _drop_spans(tracer, 52)  # 2 fit in the queue, 50 are dropped
        assert drops.count == 50
        first = [
            "autotrace WARNING: a span was dropped: the batch queue is full (OTEL_BSP_MAX_QUEUE_SIZE=2); "
            "spans end faster than they are exported (raise OTEL_BSP_MAX_QUEUE_SIZE, or lower "
            "OTEL_BSP_SCHEDULE_DELAY); further drops are summarised every 60 s"
        ]
        assert _agent_lines(capsys) == first
        exporter.gate.set()
        processor.force_flush()  # exports succeed, within the interval: nothing more said
        assert exporter.exported == 4
        assert _agent_lines(capsys) == []
        clock.now += 61
        exporter.gate.clear()
        exporter.entered.clear()
        _drop_spans(tracer, 2)
        assert exporter.entered.wait(5)
        _drop_spans(tracer, 7)  # 5 more dropped
        exporter.gate.set()
        processor.force_flush()  # a successful export after the interval: one summary
        assert _agent_lines(capsys) == [
            "autotrace WARNING: in the last 61 s, 54 more spans were dropped: the batch queue was full "
            "(OTEL_BSP_MAX_QUEUE_SIZE=2)"
        ]
        clock.now += 10
        exporter.gate.clear()
        exporter.entered.clear()
        _drop_spans(tracer, 2)
        assert exporter.entered.wait(5)
        _drop_spans(tracer, 3)  # 1 dropped, within the interval: kept for the final summary
        exporter.gate.set()
        processor.force_flush()
        assert _agent_lines(capsys) == []
    finally:
        exporter.gate.set()
        provider.shutdown()
    assert _agent_lines(capsys) == [
        "autotrace WARNING: in the last 10 s, 1 more span was dropped: the batch queue was full "
        "(OTEL_BSP_MAX_QUEUE_SIZE=2)"
    ]
    assert not [r for r in caplog.records if "Queue full" in r.getMessage()]


def test_queue_drop_counting_never_raises(monkeypatch):
    """The SDK's line is counted inside span.end() on the app's thread: a broken counter shows the line."""
    import logging

    class Broken:
        def dropped(self):
            raise RuntimeError("counter bug")

    export_report.quiet_sdk_export_logs()
    monkeypatch.setattr(export_report, "queue_drops", Broken())
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    sdk_logger = logging.getLogger("opentelemetry.sdk._shared_internal")
    keep = Keep()
    sdk_logger.addHandler(keep)
    try:
        sdk_logger.warning(export_report.QUEUE_FULL, "span")  # no raise
    finally:
        sdk_logger.removeHandler(keep)
    assert [r.getMessage() for r in records] == ["Queue full, dropping span."]


def test_an_exporter_that_cannot_be_made_is_reported_once_with_the_doctor(capsys):
    def broken():
        raise ImportError("No module named 'grpc'")

    handle = exporters.ExporterHandle("otlp", broken)
    assert handle.export([object()]) is SpanExportResult.FAILURE
    assert _agent_lines(capsys) == [
        "autotrace WARNING: cannot create the otlp exporter (ImportError: No module named 'grpc'); "
        "spans are dropped; run 'autotrace doctor' for details"
    ]


def test_at_exit_a_failed_export_is_not_retried_and_the_line_says_so(capsys):
    """closing() stops the SDK exporter's retries: a collector answering 503 (which the SDK
    retries, with back-off, for the 30 s timeout) gets one request; the line says why."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.sdk.trace import TracerProvider

    from autotrace.config import Configuration

    requests_seen = []

    class Busy(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            requests_seen.append(self.path)
            body = b"try later"
            self.send_response(503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        settings = Configuration(protocol="http/protobuf", endpoint=endpoint, timeout_s=30.0)
        handle = exporters.ExporterHandle("otlp", exporters.otlp_factory(settings), settings=settings)
        span = TracerProvider().get_tracer("t").start_span("s")
        span.end()
        capsys.readouterr()
        exporters.closing()
        assert handle.export([span]) is SpanExportResult.FAILURE
        handle.shutdown()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert requests_seen == ["/v1/traces"]  # one attempt, no back-off
    (line,) = _agent_lines(capsys)
    assert line == (
        f"autotrace WARNING: spans could not be exported to {endpoint}: 127.0.0.1:{port} failed the export: "
        "HTTP 503: try later; fix: the collector is reachable but failing: check its logs and its health; "
        "not retried at exit (1 span dropped); run 'autotrace doctor' for details"
    )


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_failed_export_leaves_no_reference_cycle_holding_the_batch(protocol, capfd):
    """While the collector is down every export fails: a cycle through a failure's traceback
    would keep each batch (and, for gRPC, its parsed request) until a full collection."""
    import gc

    from autotrace.config import Configuration
    from autotrace.otlp_encode import encode_spans
    from autotrace.span_queue import EncodedBatch
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("t")
    spans = []
    for i in range(20):
        span = tracer.start_span(f"s{i}")
        span.end()
        spans.append(span)
    data = encode_spans(spans)
    settings = Configuration(protocol=protocol, endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", insecure=True, timeout_s=1.5)
    handle = exporters.ExporterHandle("otlp", exporters.otlp_factory(settings), settings=settings)
    assert handle.export(EncodedBatch(data, 20)) is SpanExportResult.FAILURE  # the first: set-up, diagnosis
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(2):
            assert handle.export(EncodedBatch(data, 20)) is SpanExportResult.FAILURE
        gc.collect()
        kept = [type(o).__name__ for o in gc.garbage if isinstance(o, (BaseException, EncodedBatch)) or type(o).__name__ == "ExportTraceServiceRequest"]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        handle.shutdown()
    assert kept == []


# -- gRPC UNAVAILABLE: answered by the collector, or made by grpc (no connection) ----------

# The SDK's log arguments for a failed gRPC export: (what, endpoint, code, details).
_REFUSED_DETAILS = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:4317: "
                    "Failed to connect to remote host: Connection refused")


def _grpc_failure(details: str) -> list:
    import grpc

    return ["traces", "127.0.0.1:4317", grpc.StatusCode.UNAVAILABLE, details]


@pytest.mark.parametrize(
    ("details", "answered"),
    [
        ("data refused due to high memory usage", True),  # the collector's memory limiter
        ("the collector is failing on purpose (test receiver)", True),
        ("UNAVAILABLE: server is shutting down", True),
        (_REFUSED_DETAILS, False),
        ("Socket closed", False),
        ("Connection reset by peer", False),
        ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:4318: Failed parsing HTTP/2", False),
        ("errors resolving c.invalid:4317: Domain name not found", False),
        ("Broken pipe", False),
        ("GOAWAY received", False),
        ("keepalive watchdog timeout", False),
        ("", False),
    ],
)
def test_an_unavailable_status_is_told_from_a_connection_failure(details, answered):
    from autotrace.doctor import endpoint

    assert endpoint.answered_unavailable(details) is answered
    evidence = _grpc_failure(details)
    kind = endpoint.failure_kind(endpoint.failure_probe(evidence, 10.0), evidence)
    if answered:
        assert kind == "gRPC UNAVAILABLE"
    else:
        assert kind in ("connection refused", "connection failed", "cannot resolve host"), kind


def test_an_unavailable_answer_is_described_as_the_collectors_not_as_nothing_listening():
    """Issue 18: a collector that is up and answers UNAVAILABLE (overloaded, shutting down)
    was described as an endpoint that does not accept OTLP ("check endpoint")."""
    from autotrace.config import Configuration

    settings = Configuration(protocol="grpc", endpoint="http://127.0.0.1:4317", insecure=True)
    kind, hint = export_report.classify_failure(_grpc_failure("data refused due to high memory usage"), settings)
    assert kind == "gRPC UNAVAILABLE"
    assert export_report.describe(kind, hint) == (
        "127.0.0.1:4317 is up but answered UNAVAILABLE (data refused due to high memory usage): it is not "
        "taking spans now (overloaded, or shutting down); fix: the collector is reachable but failing: "
        "check its logs, its health and its memory limits"
    )
    refused, _ = export_report.classify_failure(_grpc_failure(_REFUSED_DETAILS), settings, diagnose=False)
    assert refused == "connection refused"
    assert kind not in export_report.UNREACHABLE  # a recovery says "answered ... for N s"


def test_a_recovery_from_unavailable_answers_says_the_collector_answered(capsys):
    from autotrace.config import Configuration

    settings = Configuration(protocol="grpc", endpoint="http://127.0.0.1:4317", insecure=True)

    class Retried(SpanExporter):
        def export(self, spans):
            export_report.add_cause(*_grpc_failure("data refused due to high memory usage"))
            return SpanExportResult.SUCCESS

    handle = exporters.ExporterHandle("otlp", Retried, settings=settings)
    assert handle.export([object()] * 2) is SpanExportResult.SUCCESS
    (line,) = _agent_lines(capsys)
    assert re.fullmatch(
        r"autotrace INFO: the collector at http://127\.0\.0\.1:4317 answered gRPC UNAVAILABLE for \d+ s; "
        r"all spans delivered after retry",
        line,
    ), line
