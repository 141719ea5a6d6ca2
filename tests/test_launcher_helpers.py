"""The launcher's helpers (autotrace.launcher): the command's environment and its Python."""

from __future__ import annotations

import os
import sys

from autotrace import cli, launcher


def test_options_become_variables_and_beat_the_traces_ones():
    args = cli._parser().parse_args(
        ["run", "--service-name", "shop", "--endpoint", "http://c:4318", "--protocol", "grpc", "--debug", "x"]
    )
    env = launcher.build_environment(
        args, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://a", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    )
    assert env["OTEL_SERVICE_NAME"] == "shop" and env["OTEL_LOG_LEVEL"] == "debug"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://c:4318" and env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in env and "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == launcher.sitecustomize_dir()
    assert launcher.flags(args) == {
        "OTEL_SERVICE_NAME": "--service-name",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "--endpoint",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "--protocol",
        "OTEL_LOG_LEVEL": "--debug",
    }


def test_which_and_python_of(tmp_path):
    script = tmp_path / "tool"
    script.write_text("#!/usr/bin/env python3\n")
    script.chmod(0o755)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.path.dirname(sys.executable)}"}
    assert launcher.which("tool", env) == str(script)
    assert launcher.which(str(script), {}) == str(script)  # a path as given
    assert launcher.which("no-such-tool-here", env) is None
    assert launcher.which(str(tmp_path), env) is None  # a directory is not a command
    assert launcher.python_of(str(script), env) == os.path.join(os.path.dirname(sys.executable), "python3")
    assert launcher.same_environment(sys.executable)
    assert launcher.foreign_python([sys.executable, "-c", "pass"], env) is None


def test_install_hint_names_the_clone_or_a_built_wheel(monkeypatch, tmp_path):
    from pathlib import Path

    import autotrace
    from autotrace import launcher

    clone = Path(autotrace.__file__).resolve().parent.parent
    assert launcher.install_hint("/other/python") == f"/other/python -m pip install {clone}"
    # Installed from a wheel: no clone around the package.
    monkeypatch.setattr(launcher, "__file__", str(tmp_path / "site-packages" / "autotrace" / "launcher.py"))
    hint = launcher.install_hint("/other/python")
    assert hint.startswith("/other/python -m pip install autotrace_agent-") and "python -m build" in hint
    assert "pip install autotrace-agent" not in hint
