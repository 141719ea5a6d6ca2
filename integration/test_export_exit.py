"""Exit and loss reporting under ``autotrace run`` (issue 18, items 2 and 3).

- A refused connection or another protocol on the port gives up at once at exit (the flush
  bound is 30 s here): one line naming the cause and the spans dropped.
- Every failed batch is counted: the lines' counts add up to the spans made.
- An outage that retries recovered gets one line when it ends, and every span arrives.
- A span open in the parent when the process forks is exported once, by the parent.
(A collector that accepts and hangs: integration/test_export_diagnoses.py.)
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from ports import free_port

from agent import autotrace_run, clean_env, write
from otlp_receiver import OTLPReceiver, _HTTPHandler, _HTTPServer, _TraceServicer

SPANS_AT_EXIT = """
from opentelemetry import trace
tracer = trace.get_tracer("app")
for i in range({n}):
    tracer.start_span(f"s{{i}}").end()
print("done", flush=True)
"""


def run_app(tmp_path: Path, source: str, protocol: str, endpoint: str, timeout: float = 60, **extra: str):
    env = clean_env(
        OTEL_SERVICE_NAME="exiting",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc" if protocol == "grpc" else "http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        GRPC_VERBOSITY="NONE",
        **extra,
    )
    started = time.monotonic()
    result = autotrace_run(write(tmp_path, "app.py", source), env, timeout=timeout)
    elapsed = time.monotonic() - started
    assert result.returncode == 0 and "done" in result.stdout, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result, elapsed


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("autotrace WARNING")]


@pytest.fixture
def other_protocol_port():
    """A receiver of the other protocol: gRPC's port for an HTTP exporter, HTTP's for gRPC."""
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("collector", ["refused", "other protocol"])
def test_a_collector_that_cannot_take_the_spans_gives_up_at_once(tmp_path, protocol, collector, other_protocol_port):
    if collector == "refused":
        endpoint = f"http://127.0.0.1:{free_port()}"
    else:
        receiver = other_protocol_port
        endpoint = receiver.http_endpoint if protocol == "grpc" else receiver.grpc_endpoint
    result, elapsed = run_app(
        tmp_path, SPANS_AT_EXIT.format(n=3), protocol, endpoint,
        OTEL_EXPORTER_OTLP_TIMEOUT="30000", AUTOTRACE_SHUTDOWN_TIMEOUT="30000", OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    assert elapsed < 10, result.stderr  # neither the export timeout nor the flush bound
    (line,) = warnings_of(result.stderr)
    assert line.startswith("autotrace WARNING: spans could not be exported to "), line
    assert line.endswith("; not retried at exit (3 spans dropped); run 'autotrace doctor' for details"), line
    if collector == "refused":
        assert "nothing listens on 127.0.0.1:" in line
    elif protocol == "http":
        assert "speaks HTTP/2 (gRPC)" in line, line
    else:
        assert "answers HTTP/1.1" in line or "OTLP/HTTP" in line or "HTTP/1" in line, line
    assert "not flushed" not in result.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_failed_batch_is_counted(tmp_path, protocol):
    """1,200 spans at exit, batches of 500, nothing listening: the lines account for all of them."""
    result, _ = run_app(
        tmp_path, SPANS_AT_EXIT.format(n=1200), protocol, f"http://127.0.0.1:{free_port()}",
        OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="500",
    )
    first, summary = warnings_of(result.stderr)
    assert "; not retried at exit (500 spans dropped); " in first, first
    counted = re.fullmatch(
        r"autotrace WARNING: in the last \d+ s, 3 batches \((\d+) spans\) were not exported: connection refused x3; "
        r"run 'autotrace doctor' for details",
        summary,
    )
    assert counted and int(counted.group(1)) == 1200, summary


RECOVERING = """
import time
from opentelemetry import trace
tracer = trace.get_tracer("app")
for i in range(20):
    tracer.start_span(f"s{i}").end()
    time.sleep(0.05)
open("spans-made", "w").close()  # the first export (after 0.1 s) has failed by now
time.sleep(8)  # the export thread retries meanwhile
print("done", flush=True)
"""


class Restartable:
    """An OTLP receiver of one protocol on a fixed port, started on demand."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.port = free_port()
        self.receiver = OTLPReceiver()  # not started: it records what the server below receives
        self.http = self.thread = self.grpc = self.pool = None

    def start(self) -> None:
        if self.protocol == "http":
            self.http = _HTTPServer(("127.0.0.1", self.port), _HTTPHandler)
            self.http.receiver = self.receiver
            self.thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            self.thread.start()
        else:
            self.pool = ThreadPoolExecutor(max_workers=2)
            self.grpc = grpc.server(self.pool)
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self.receiver), self.grpc)
            assert self.grpc.add_insecure_port(f"127.0.0.1:{self.port}")
            self.grpc.start()

    def stop(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.thread.join(5)
        if self.grpc is not None:
            self.grpc.stop(1).wait(3)
            self.pool.shutdown(wait=True)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_an_outage_recovered_by_retries_gets_one_line_and_loses_nothing(tmp_path, protocol):
    collector = Restartable(protocol)
    marker = tmp_path / "spans-made"

    def start_when_the_spans_are_made() -> None:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        collector.start()  # the collector comes up while the export retries

    timer = threading.Thread(target=start_when_the_spans_are_made, daemon=True)
    timer.start()
    try:
        result, _ = run_app(
            tmp_path, RECOVERING, protocol, f"http://127.0.0.1:{collector.port}",
            OTEL_BSP_SCHEDULE_DELAY="100", OTEL_EXPORTER_OTLP_TIMEOUT="20000",
        )
        spans = collector.receiver.wait_for_spans(20, timeout=10)
    finally:
        timer.join(35)
        collector.stop()
    assert sorted(s.name for s in spans) == sorted(f"s{i}" for i in range(20))  # each once
    assert warnings_of(result.stderr) == [], result.stderr
    lines = [line for line in result.stderr.splitlines() if "delivered after retry" in line]
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(
        rf"autotrace INFO: the collector at http://127\.0\.0\.1:{collector.port}(/v1/traces)? was unreachable for "
        r"\d+ s \((connection refused|connection failed)\); all spans delivered after retry",
        lines[0],
    ), lines[0]


FORKING = """
import os, sys
from opentelemetry import trace
tracer = trace.get_tracer("app")
with tracer.start_as_current_span("open at fork"):
    pid = os.fork()
    if pid == 0:
        with tracer.start_as_current_span("the child's own"):
            pass
with tracer.start_as_current_span("after, pid %d" % os.getpid()):
    pass
if pid == 0:
    sys.exit(0)
os.waitpid(pid, 0)
print("done", flush=True)
"""


def test_a_span_open_at_a_fork_is_exported_once(tmp_path, otlp_receiver):
    env = otlp_receiver.env("http")
    result, _ = run_app(tmp_path, FORKING, "http", env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    spans = otlp_receiver.wait_for_spans(4, timeout=15)
    time.sleep(1)  # a duplicate would come with the same batch or the next
    names = sorted(s.name for s in otlp_receiver.spans())
    assert names.count("open at fork") == 1, names
    assert names.count("the child's own") == 1 and len([n for n in names if n.startswith("after, pid")]) == 2, names
    (opened,) = [s for s in spans if s.name == "open at fork"]
    (child,) = [s for s in spans if s.name == "the child's own"]
    assert child.parent_span_id == opened.span_id  # the child's spans still belong to the trace
    assert opened.resource["process.pid"] != child.resource["process.pid"]
