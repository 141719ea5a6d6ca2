"""Export failures: the first of each cause reported once, then summarised, recovery once."""

from __future__ import annotations

import logging
import socket

import pytest
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from autotrace import sdk


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
    handle = sdk.ExporterHandle("otlp", lambda: exporter)
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
        "connection refused (is a collector listening there?); further failures are summarised every 60 s"
    ]
    for _ in range(5):  # within the interval: nothing
        clock.now += 10
        assert handle.export([object()] * 4) is SpanExportResult.FAILURE
    assert _agent_lines(capsys) == []
    clock.now += 10  # 60 s after the first: the summary, this batch included
    handle.export([object()] * 4)
    assert _agent_lines(capsys) == [
        "autotrace WARNING: in the last 60 s, 6 batches (24 spans) were not exported: connection refused x6"
    ]
    clock.now += 5
    handle.export([object()] * 2)
    assert _agent_lines(capsys) == []
    exporter.outcome = SpanExportResult.SUCCESS
    assert handle.export([object()]) is SpanExportResult.SUCCESS
    assert _agent_lines(capsys) == [
        "autotrace INFO: spans are exported to http://<redacted>@collector.example:4318/v1/traces again "
        "(1 batch (2 spans) was not exported: connection refused x1 since the last report)"
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
    assert summary.startswith("autotrace WARNING: in the last 61 s, 2 batches (2 spans) were not exported: ")
    assert "timeout x1" in summary and "the exporter reported a failure x1" in summary


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
    assert ": HTTP 503; further failures" in err


def test_summary_at_shutdown(handle, capsys):
    handle, exporter, clock = handle
    exporter.outcome = ConnectionRefusedError(111, "Connection refused")
    handle.export([object()])
    handle.export([object()])
    capsys.readouterr()
    clock.now += 3
    handle.shutdown()
    assert _agent_lines(capsys) == [
        "autotrace WARNING: in the last 3 s, 1 batch (1 span) was not exported: connection refused x1"
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


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_otlp_http_exporter_against_a_closed_port(capfd, caplog):
    from autotrace.config import Settings

    endpoint = f"http://127.0.0.1:{_closed_port()}/v1/traces"
    settings = Settings(protocol="http/protobuf", endpoint=endpoint, timeout_s=0.3)
    handle = sdk.ExporterHandle("otlp", sdk._otlp_factory(settings))
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
        "(is a collector listening there?); further failures are summarised every 60 s"
    ), err
