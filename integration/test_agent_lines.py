"""The agent's own lines, as a user reads them: one start-up line in the main process,
configuration warnings once per tree of processes, a worker's lines with its pid, and a
value of ``AUTOTRACE_ENABLED`` that is neither true nor false named once.

Real processes: scripts under ``autotrace run`` or activated by environment only (as in a
Dockerfile: ``AUTOTRACE_ENABLED=true``, or the agent's directory on ``PYTHONPATH`` as the
OpenTelemetry Operator sets it), and gunicorn with two workers under ``autotrace run``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import autotrace._sitecustomize
import pytest
from agent import AUTOTRACE, Watched, clean_env, wait_until_answers, write
from ports import free_port

SITECUSTOMIZE_DIR = os.path.dirname(os.path.abspath(autotrace._sitecustomize.__file__))

# The main process starts a child Python process, which is traced too (and says nothing).
PARENT_AND_CHILD = """
import subprocess, sys

subprocess.run([sys.executable, "-c", "print('child ran')"], check=True)
print("parent ran", flush=True)
"""


def agent_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("autotrace")]


def run_script(tmp_path: Path, activation: str, **extra: str) -> subprocess.CompletedProcess:
    """PARENT_AND_CHILD, activated by ``autotrace run``, AUTOTRACE_ENABLED or PYTHONPATH."""
    script = write(tmp_path, "shop.py", PARENT_AND_CHILD)
    env = clean_env(**{"OTEL_TRACES_EXPORTER": "none", **extra})
    command = [sys.executable, script.name]
    if activation == "autotrace run":
        command = [AUTOTRACE, "run", "python", script.name]
    elif activation == "AUTOTRACE_ENABLED":
        env.setdefault("AUTOTRACE_ENABLED", "true")
    else:
        env["PYTHONPATH"] = SITECUSTOMIZE_DIR
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "child ran\nparent ran\n"
    return result


@pytest.mark.parametrize("activation", ["AUTOTRACE_ENABLED", "PYTHONPATH", "autotrace run"])
def test_one_startup_line_in_the_main_process(tmp_path: Path, activation: str) -> None:
    result = run_script(
        tmp_path, activation,
        OTEL_SERVICE_NAME="shop", OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://collector.invalid:4317",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.25",
    )
    assert agent_lines(result.stderr) == [
        "autotrace INFO: service.name=shop, spans to http://collector.invalid:4317 (OTLP grpc), "
        "sampler parentbased_traceidratio (ratio 0.25)"
    ]


def test_the_startup_line_says_where_a_derived_name_comes_from(tmp_path: Path) -> None:
    result = run_script(tmp_path, "AUTOTRACE_ENABLED")
    assert agent_lines(result.stderr) == [
        "autotrace INFO: service.name=shop (from the script shop.py; set OTEL_SERVICE_NAME to choose another), "
        "spans are not exported (OTEL_TRACES_EXPORTER=none), sampler parentbased_always_on"
    ]


@pytest.mark.parametrize("activation", ["AUTOTRACE_ENABLED", "autotrace run"])
def test_log_level_warning_silences_the_startup_line(tmp_path: Path, activation: str) -> None:
    result = run_script(tmp_path, activation, OTEL_LOG_LEVEL="warning", OTEL_SERVICE_NAME="shop")
    assert agent_lines(result.stderr) == []


@pytest.mark.parametrize("value", ["enabled", "ture"])
def test_an_enabled_value_neither_true_nor_false_is_named_once(tmp_path: Path, value: str) -> None:
    script = write(tmp_path, "shop.py", PARENT_AND_CHILD)
    env = clean_env(AUTOTRACE_ENABLED=value, OTEL_TRACES_EXPORTER="none")
    result = subprocess.run(
        [sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout == "child ran\nparent ran\n", result.stderr
    assert agent_lines(result.stderr) == [  # once for the parent and its child; nothing traced
        f"autotrace WARNING: AUTOTRACE_ENABLED={value!r} is not valid (expected true or false); "
        "ignoring it: the agent starts when it is 1, true, yes or on"
    ]


@pytest.mark.parametrize("value", ["false", "0", ""])
def test_a_false_enabled_value_says_nothing(tmp_path: Path, value: str) -> None:
    script = write(tmp_path, "shop.py", PARENT_AND_CHILD)
    env = clean_env(AUTOTRACE_ENABLED=value)
    result = subprocess.run(
        [sys.executable, script.name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and agent_lines(result.stderr) == [], result.stderr


def test_a_configuration_warning_once_for_a_child_started_anew(tmp_path: Path) -> None:
    result = run_script(tmp_path, "autotrace run", OTEL_SERVICE_NAME="shop", OTEL_BSP_SCHEDULE_DELAY="soon")
    warnings = [line for line in agent_lines(result.stderr) if "WARNING" in line]
    assert warnings == [
        "autotrace WARNING: OTEL_BSP_SCHEDULE_DELAY='soon' is not valid (expected milliseconds); using the default 5000"
    ]


# -- gunicorn: two forked workers ------------------------------------------------------

PID_APP = """
import os


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


def test_gunicorn_workers_warn_once_and_name_their_pid(tmp_path: Path) -> None:
    """A configuration warning once (the master's); each worker's export warning with its pid."""
    write(tmp_path, "app.py", PID_APP)
    port, closed = free_port(), free_port()
    env = clean_env(
        HOME=str(tmp_path),  # gunicorn's control socket
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}",  # nothing listens
        OTEL_BSP_SCHEDULE_DELAY="soon",
        OTEL_PROPAGATORS="tracecontext,nosuchformat",
    )
    args = [AUTOTRACE, "run", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "app:app"]
    with Watched(args, tmp_path, env) as server:
        wait_until_answers(f"http://127.0.0.1:{port}/", timeout=30, process=server)
        workers: set[int] = set()
        for _ in range(200):  # until both workers answered (the kernel picks the worker)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                workers.add(int(response.read()))
            if len(workers) == 2:
                break
        assert len(workers) == 2
        server.send(signal.SIGTERM)  # the launcher exec'd: this is the master
        assert server.finish(timeout=30) == 0, server.text("stderr")
    lines = agent_lines(server.text("stderr"))
    assert [line for line in lines if "OTEL_BSP_SCHEDULE_DELAY" in line] == [
        "autotrace WARNING: OTEL_BSP_SCHEDULE_DELAY='soon' is not valid (expected milliseconds); using the default 5000"
    ]
    assert len([line for line in lines if "nosuchformat" in line]) == 1, lines
    assert len([line for line in lines if line.startswith(f"autotrace INFO: service.name={tmp_path.name}")]) == 1, lines
    exports = [line for line in lines if "spans could not be exported" in line]
    pids = {int(re.match(r"autotrace\[pid (\d+)\] WARNING: ", line).group(1)) for line in exports}
    assert pids == workers, lines  # one line per worker, each with its own pid
    assert all(line.endswith("run 'autotrace doctor' for details") for line in exports)
