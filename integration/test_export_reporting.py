"""Export reporting end to end: spans dropped by a full batch queue while a healthy collector
accepts every export. A real process under ``autotrace run``, a real OTLP receiver."""

from __future__ import annotations

import re

import pytest

from agent import autotrace_run, clean_env, write

SPANS = 3000

APP = f"""
from opentelemetry import trace

tracer = trace.get_tracer("app")
for i in range({SPANS}):
    tracer.start_span(f"s{{i}}").end()
print("done", flush=True)
"""


def run_to_done(tmp_path, source: str, env: dict) -> list[str]:
    """Run ``source`` as app.py under ``autotrace run``; it must print ``done`` and exit 0. Its
    stderr lines after the start-up line."""
    result = autotrace_run(write(tmp_path, "app.py", source), env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    return after_startup(result.stderr)


def after_startup(stderr: str) -> list[str]:
    """The lines of ``stderr`` after the agent's start-up line (which must come first)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("autotrace INFO: service.name="), lines
    return lines[1:]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_queue_full_reported_once_then_summarised_with_a_healthy_collector(otlp_receiver, tmp_path, protocol):
    env = clean_env(
        **otlp_receiver.env(protocol),
        OTEL_SERVICE_NAME="flood",
        OTEL_BSP_MAX_QUEUE_SIZE="4",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4",
    )
    lines = run_to_done(tmp_path, APP, env)
    assert len(lines) == 2, lines  # no line per drop, no SDK line, no failure
    assert lines[0] == (
        "autotrace WARNING: a span was dropped: the batch queue is full (OTEL_BSP_MAX_QUEUE_SIZE=4); "
        "spans end faster than they are exported (raise OTEL_BSP_MAX_QUEUE_SIZE, or lower "
        "OTEL_BSP_SCHEDULE_DELAY); further drops are summarised every 60 s"
    )
    summary = re.fullmatch(
        r"autotrace WARNING: in the last \d+ s, (\d+) more spans? (?:was|were) dropped: "
        r"the batch queue was full \(OTEL_BSP_MAX_QUEUE_SIZE=4\)",
        lines[1],
    )
    assert summary, lines[1]
    dropped = 1 + int(summary.group(1))
    # Every span the queue kept was exported (the exit flush included). The SDK checks for a
    # full queue, warns, then appends: when its export thread takes a batch in between, a
    # warning (a counted drop) drops nothing, so a few more may arrive than the counts say.
    received = otlp_receiver.wait_for_spans(SPANS - dropped, timeout=15)
    assert SPANS - dropped <= len(received) <= SPANS - dropped + 50, (len(received), dropped)
    assert len(received) < SPANS


# -- a collector that is down: reported once with the cause, then summarised ------------

FAILING_APP = """
import time
from opentelemetry import trace

tracer = trace.get_tracer("app")
for i in range(8):
    tracer.start_span(f"s{i}").end()
    time.sleep(0.25)  # one batch each (OTEL_BSP_SCHEDULE_DELAY=100)
print("done", flush=True)
"""


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_closed_port_is_reported_once_then_summarised(tmp_path, protocol):
    from ports import free_port

    port = free_port()
    env = clean_env(
        OTEL_SERVICE_NAME="down",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc" if protocol == "grpc" else "http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="500",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    lines = run_to_done(tmp_path, FAILING_APP, env)
    # No line per batch, no SDK line ("Transient error", "Failed to export"): two lines in all.
    assert len(lines) == 2, lines
    shown = f"http://127.0.0.1:{port}" + ("" if protocol == "grpc" else "/v1/traces")
    assert lines[0] == (
        f"autotrace WARNING: spans could not be exported to {shown}: nothing listens on 127.0.0.1:{port}; "
        "fix: start the collector, or point --endpoint at where it listens; 1 span not exported; "
        "further failures are summarised every 60 s; run 'autotrace doctor' for details"
    )
    summary = re.fullmatch(
        r"autotrace WARNING: in the last \d+ s, (\d+) batch(?:es)? \((\d+) spans?\) (?:was|were) not exported: "
        r"connection refused x(\d+); run 'autotrace doctor' for details",
        lines[1],
    )
    assert summary, lines[1]
    batches, spans, refused = map(int, summary.groups())
    assert batches == refused >= 2 and 2 <= spans <= 8  # every failed batch, the first one included


RECOVERING_APP = """
import os, time
from opentelemetry import trace

tracer = trace.get_tracer("app")
deadline = time.monotonic() + 30
while not os.path.exists("stop") and time.monotonic() < deadline:
    tracer.start_span("tick").end()
    time.sleep(0.1)
print("done", flush=True)
"""


def test_recovery_is_said_once_when_the_collector_comes_up(tmp_path):
    """HTTP: the exporter's next request reaches a collector started on the refused port."""
    import threading

    from agent import AUTOTRACE, Watched
    from otlp_receiver import OTLPReceiver, _HTTPHandler, _HTTPServer
    from ports import free_port

    port = free_port()
    write(tmp_path, "app.py", RECOVERING_APP)
    env = clean_env(
        OTEL_SERVICE_NAME="flaky",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="500",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    receiver = OTLPReceiver()  # not started: it records what the server below receives
    server = thread = None
    with Watched([AUTOTRACE, "run", "python", "app.py"], cwd=tmp_path, env=env) as app:
        try:
            app.wait_for_line("spans could not be exported", name="stderr")
            server = _HTTPServer(("127.0.0.1", port), _HTTPHandler)
            server.receiver = receiver
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            app.wait_for_line("again", name="stderr", timeout=20)
            receiver.wait_for_spans(1, timeout=10)
            (tmp_path / "stop").write_text("")
            assert app.finish() == 0, app.text("stderr")
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()
            if thread is not None:
                thread.join(5)
    lines = after_startup(app.text("stderr"))
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"autotrace WARNING: spans could not be exported to http://127.0.0.1:{port}/v1/traces: ")
    assert re.fullmatch(
        rf"autotrace INFO: spans are exported to http://127\.0\.0\.1:{port}/v1/traces again"
        r"( \(\d+ batch(es)? \(\d+ spans?\) (was|were) not exported: connection refused x\d+ in all\))?",
        lines[1],
    ), lines[1]
