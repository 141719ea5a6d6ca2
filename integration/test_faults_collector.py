"""A collector that misbehaves, seen from an app under ``autotrace run`` (issue 18): absent
(nothing listens on its port), accepting and hanging, failing every export (HTTP 503,
gRPC UNAVAILABLE), down then back, slow. The collector is the test receiver in a fault
mode (integration/otlp_receiver.py).

What holds in every case: the app's output and exit status are its own, nothing is
printed per batch and no traceback, the exit is bounded; spans made once the collector
is back all arrive, once each. The wording of the agent's lines is checked where it is settled
(integration/test_export_diagnoses.py, test_export_reporting.py); here only what they
must name. Timing is only bounded, never measured (benchmarks/exit.py measures the exit).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from agent import AUTOTRACE, Watched, clean_env, write
from otlp_receiver import Fault, OTLPReceiver

PROTOCOLS = ["grpc", "http"]

FEW_SPANS = """
import time
from opentelemetry import trace

tracer = trace.get_tracer("app")
for i in range(5):
    tracer.start_span(f"s{i}").end()
    time.sleep(0.2)  # a batch each (OTEL_BSP_SCHEDULE_DELAY=100)
print("done", flush=True)
"""


def run_app(tmp_path: Path, source: str, env: dict[str, str], timeout: float = 60) -> Watched:
    """``source`` as app.py under ``autotrace run``, to its exit (bounded); the finished process."""
    write(tmp_path, "app.py", source)
    with Watched([AUTOTRACE, "run", "python", "app.py"], tmp_path, env) as app:
        app.finish(timeout=timeout)
    return app


def agent_lines(app: Watched) -> list[str]:
    """The agent's lines after its start-up line; nothing else may be on stderr."""
    stderr = app.text("stderr")
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("autotrace INFO: service.name="), stderr
    assert all(line.startswith("autotrace ") for line in lines), stderr
    return lines[1:]


def exit_delay(app: Watched) -> float:
    """Seconds from the app's "done" to its exit."""
    return app.exited_at - app.wait_for_line("done", timeout=1)


# -- accepting and hanging ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_hanging_collector_holds_the_exit_only_to_the_bound(tmp_path, protocol):
    """The export during the run and the one at exit hang (the export timeout is 30 s): the
    exit waits for AUTOTRACE_SHUTDOWN_TIMEOUT (1 s) only, then goes on."""
    with OTLPReceiver(fault=Fault("hang")) as receiver:
        env = clean_env(**receiver.env(protocol), OTEL_SERVICE_NAME="hung",
                        OTEL_EXPORTER_OTLP_TIMEOUT="30000", AUTOTRACE_SHUTDOWN_TIMEOUT="1000")
        app = run_app(tmp_path, FEW_SPANS, env)
        assert receiver.faulted_requests(), "the collector was never reached: the test proves nothing"
        assert receiver.spans() == []
    assert app.process.returncode == 0 and app.text() == "done\n"
    lines = agent_lines(app)
    assert len(lines) == 1 and "not flushed within 1s (AUTOTRACE_SHUTDOWN_TIMEOUT)" in lines[0], lines
    assert exit_delay(app) < 6  # the 1 s bound, with room for a loaded machine (not the 30 s timeout)


# -- absent (nothing listens), or failing every export: HTTP 503, gRPC UNAVAILABLE ---------


@pytest.mark.parametrize(
    ("fault", "protocol", "named", "counted"),
    [("refuse", "http", "nothing listens on 127.0.0.1:", "connection refused x"),
     ("refuse", "grpc", "nothing listens on 127.0.0.1:", "connection refused x"),
     ("error", "http", "failed the export: HTTP 503", "HTTP 503 x"),
     ("error", "grpc", "is up but answered UNAVAILABLE (the collector is failing on purpose (test receiver)): "
      "it is not taking spans now (overloaded, or shutting down)", "gRPC UNAVAILABLE x")],
    ids=["absent-http", "absent-grpc", "503-http", "unavailable-grpc"],
)
def test_an_absent_or_failing_collector_is_named_and_the_exit_not_held(tmp_path, fault, protocol, named, counted):
    """The line names the cause: nothing listening is not a collector that answers an error
    (for gRPC both are UNAVAILABLE); the 30 s bounds (flush, export timeout) are not waited
    for. (test_export_diagnoses.py has each cause's exact line, test_processes.py the exit at SIGTERM.)"""
    with OTLPReceiver(fault=Fault(fault)) as receiver:
        env = clean_env(**receiver.env(protocol), OTEL_SERVICE_NAME="failing",
                        OTEL_EXPORTER_OTLP_TIMEOUT="30000", AUTOTRACE_SHUTDOWN_TIMEOUT="30000")
        app = run_app(tmp_path, FEW_SPANS, env)
        if fault == "error":
            assert len(receiver.faulted_requests()) >= 2  # during the run and at exit
        assert receiver.spans() == []
    assert app.process.returncode == 0 and app.text() == "done\n"
    lines = agent_lines(app)
    assert 1 <= len(lines) <= 3, lines  # reported once, then summarised: never a line per batch
    assert named in lines[0], lines
    assert all(line.startswith("autotrace WARNING: ") for line in lines), lines
    assert all(counted in line for line in lines[1:] if "were not exported" in line or "was not exported" in line), lines
    other = "nothing listens" if fault == "error" else "answered"
    assert not any(other in line or "did not accept" in line for line in lines), lines
    # Not retried at exit: neither the 30 s flush bound nor the export timeout is waited for.
    assert exit_delay(app) < 8


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_collector_that_answered_unavailable_for_a_while_gets_one_line(tmp_path, protocol):
    """The collector answers every export with UNAVAILABLE (gRPC) or 503 (HTTP) for about a
    second, then takes them: the retries deliver everything, and one line says the collector
    answered with an error for a while (not that it was unreachable)."""
    with OTLPReceiver(fault=Fault("error")) as receiver:
        env = clean_env(**receiver.env(protocol), OTEL_SERVICE_NAME="busy")  # default timeout: 10 s
        write(tmp_path, "app.py", FEW_SPANS.replace("print(", "import os\nwhile not os.path.exists('end'): time.sleep(0.02)\nprint("))
        with Watched([AUTOTRACE, "run", "python", "app.py"], tmp_path, env) as app:
            receiver.wait_for_faulted(1, timeout=20)
            time.sleep(1.0)
            receiver.up()
            receiver.wait_for_spans(5, timeout=30, predicate=lambda s: s.name.startswith("s"))
            (tmp_path / "end").write_text("")
            assert app.finish(timeout=30) == 0, app.text("stderr")
        spans = receiver.spans()
    assert sorted(s.name for s in spans) == [f"s{i}" for i in range(5)]  # each once
    lines = agent_lines(app)
    answered = "gRPC UNAVAILABLE" if protocol == "grpc" else "HTTP 503"
    assert lines and all(re.fullmatch(
        rf"autotrace INFO: the collector at http://127\.0\.0\.1:\d+(/v1/traces)? answered {answered} for \d+ s; "
        r"all spans delivered after retry", line) for line in lines), lines


# -- down, then back ----------------------------------------------------------------------

TICKS_AFTER = 30

TICKING = f"""
import os, time
from opentelemetry import trace

tracer = trace.get_tracer("app")
i, back = 0, None
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if back is None and os.path.exists("back"):
        back = i
        print(f"back at {{i}}", flush=True)
    if back is not None and i >= back + {TICKS_AFTER}:
        break
    tracer.start_span(f"tick-{{i}}").end()
    if i == 20:
        print("ticking", flush=True)  # a second of spans made while the collector is down
    i += 1
    time.sleep(0.05)
print(f"done {{i}}", flush=True)
"""


@pytest.mark.parametrize("timeout_ms", [None, "1000"], ids=["default-timeout", "timeout-1s"])
@pytest.mark.parametrize("fault", ["refuse", "error"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_spans_made_after_the_collector_came_back_all_arrive(tmp_path, protocol, fault, timeout_ms):
    """Nothing listens (or every export fails) while the app makes a span every 50 ms; the
    collector comes back on the same port; each span made from then on arrives, once; with
    the default export timeout and with a short one (1 s: the first exports after the
    collector returns must not spend it waiting out the channel's reconnect back-off)."""
    with OTLPReceiver(fault=Fault(fault)) as receiver:
        env = clean_env(**receiver.env(protocol), OTEL_SERVICE_NAME="flaky")  # default batches
        if timeout_ms is not None:
            env["OTEL_EXPORTER_OTLP_TIMEOUT"] = timeout_ms
        write(tmp_path, "app.py", TICKING)
        with Watched([AUTOTRACE, "run", "python", "app.py"], tmp_path, env) as app:
            app.wait_for_line("ticking", timeout=20)
            receiver.up()
            (tmp_path / "back").write_text("")
            app.wait_for_line("back at ", timeout=10)
            back = int(re.search(r"back at (\d+)", app.text()).group(1))
            assert app.finish(timeout=30) == 0, app.text("stderr")
        last = int(re.search(r"done (\d+)", app.text()).group(1))
        wanted = {f"tick-{i}" for i in range(back, last)}
        assert len(wanted) == TICKS_AFTER
        receiver.wait_for_spans(len(wanted), timeout=20, predicate=lambda s: s.name in wanted)
        spans = receiver.spans()
    assert len({s.span_id for s in spans}) == len(spans), "a span arrived twice"
    assert len({s.name for s in spans}) == len(spans)
    agent_lines(app)  # no traceback, nothing but the agent's lines


# -- slow: the batch queue fills; drops are reported once, then summarised -----------------

FLOOD = """
from opentelemetry import trace

tracer = trace.get_tracer("app")
for i in range(2000):
    tracer.start_span(f"s{i}").end()
print("done", flush=True)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_slow_collector_drops_are_reported_once_then_summarised(tmp_path, protocol):
    """Each export answered 0.3 s late, a queue of 64: most spans are dropped. One line when
    the first is, one summary (at exit here); every span the queue kept arrives, once."""
    with OTLPReceiver(fault=Fault("slow", seconds=0.3)) as receiver:
        env = clean_env(**receiver.env(protocol), OTEL_SERVICE_NAME="slowed",
                        OTEL_BSP_MAX_QUEUE_SIZE="64", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="64")
        app = run_app(tmp_path, FLOOD, env)
        spans = receiver.spans()  # the exit flushed them: all that will arrive have
    assert app.process.returncode == 0 and app.text() == "done\n"
    lines = agent_lines(app)
    assert len(lines) == 2, lines  # no line per drop, no failure: the collector answers, late
    assert lines[0].startswith("autotrace WARNING: a span was dropped: the batch queue is full "
                               "(OTEL_BSP_MAX_QUEUE_SIZE=64)"), lines
    summary = re.search(r"(\d+) more spans? (?:was|were) dropped", lines[1])
    assert summary, lines
    dropped = 1 + int(summary.group(1))
    assert len({s.span_id for s in spans}) == len(spans), "a span arrived twice"
    # The SDK warns of a full queue before it appends: an export taking a batch in between
    # makes a counted drop that dropped nothing, so a few more may arrive than the count says.
    assert 2000 - dropped <= len(spans) <= 2000 - dropped + 64, (len(spans), dropped)
    assert len(spans) < 2000
