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


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_queue_full_reported_once_then_summarised_with_a_healthy_collector(otlp_receiver, tmp_path, protocol):
    script = write(tmp_path, "app.py", APP)
    env = clean_env(
        **otlp_receiver.env(protocol),
        OTEL_SERVICE_NAME="flood",
        OTEL_BSP_MAX_QUEUE_SIZE="4",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4",
    )
    result = autotrace_run(script, env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, result.stderr  # no line per drop, no SDK line, no failure
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
