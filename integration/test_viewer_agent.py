"""The agent side of ``autotrace view``, against a stand-in viewer (tests/viewer_stub.py):
the launcher's start-up line and the doctor's endpoint check, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from agent import AUTOTRACE, clean_env, run, write
from otlp_receiver import OTLPReceiver
from ports import free_port
from viewer_stub import UI, VERSION, StubViewer

APP = 'print("app ran")\n'


def viewer_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "autotrace view" in line]


def run_app(tmp_path: Path, *options: str, **extra: str):
    script = write(tmp_path, "app.py", APP)
    result = run([AUTOTRACE, "run", *options, "python", script.name], cwd=tmp_path, env=clean_env(**extra))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "app ran\n"
    return result


def test_the_start_up_line_names_the_viewer_once(tmp_path: Path) -> None:
    with StubViewer() as stub:
        result = run_app(tmp_path, "--endpoint", stub.url)
        assert viewer_lines(result.stderr) == [
            f"autotrace INFO: spans go to autotrace view at {stub.url}; open {UI}"
        ]
        assert stub.marker_requests == 1  # by the launcher, not again by the app's process
        # The same endpoint given by the standard variable, with localhost.
        localhost = f"http://localhost:{stub.port}"
        result = run_app(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=localhost)
        assert viewer_lines(result.stderr) == [f"autotrace INFO: spans go to autotrace view at {localhost}; open {UI}"]


def test_quiet_without_a_viewer(tmp_path: Path) -> None:
    result = run_app(tmp_path, "--endpoint", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert viewer_lines(result.stderr) == []
    with OTLPReceiver() as receiver:  # a collector: no marker
        result = run_app(tmp_path, "--endpoint", receiver.http_endpoint)
        assert viewer_lines(result.stderr) == []


def test_quiet_when_spans_do_not_go_to_the_viewer(tmp_path: Path) -> None:
    with StubViewer() as stub:
        for options in (("--exporter", "console"), ("--exporter", "none"), ("--protocol", "grpc")):
            result = run_app(tmp_path, "--endpoint", stub.url, *options)
            assert viewer_lines(result.stderr) == [], options
        result = run_app(tmp_path, "--endpoint", stub.url, OTEL_LOG_LEVEL="warn")
        assert viewer_lines(result.stderr) == []
        assert stub.marker_requests == 0


def doctor(*options: str, cwd: Path):
    return run([AUTOTRACE, "doctor", "--timeout", "2", *options], cwd=cwd, env=clean_env())


def test_doctor_recognises_the_viewer(tmp_path: Path) -> None:
    with StubViewer() as stub:
        text = doctor("--endpoint", stub.url, cwd=tmp_path)
        report = json.loads(doctor("--json", "--endpoint", stub.url, cwd=tmp_path).stdout)
    assert text.returncode == 0, text.stdout + text.stderr
    expected = f"autotrace view {VERSION} (UI {UI})"
    endpoint = [line for line in text.stdout.splitlines() if line.startswith("OK   endpoint: ")]
    assert endpoint == [f"OK   endpoint: {stub.url}/v1/traces is {expected}; an empty OTLP/HTTP export was accepted"]
    assert report["ok"] is True
    (check,) = [c for c in report["checks"] if c["name"] == "endpoint"]
    assert check["status"] == "OK" and expected in check["message"]


def test_doctor_does_not_call_a_collector_a_viewer(tmp_path: Path) -> None:
    with OTLPReceiver() as receiver:
        report = json.loads(doctor("--json", "--endpoint", receiver.http_endpoint, cwd=tmp_path).stdout)
    (check,) = [c for c in report["checks"] if c["name"] == "endpoint"]
    assert check["status"] == "OK" and "autotrace view" not in check["message"]
