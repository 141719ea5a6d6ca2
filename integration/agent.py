"""Run real processes under the launcher, as a user would: ``autotrace run python script.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

BIN = Path(sys.executable).parent
AUTOTRACE = str(BIN / "autotrace")
PYTHON = sys.executable


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any agent or OpenTelemetry setting.

    The interpreter's own bin directory comes first on PATH, so ``python`` is the
    interpreter autotrace is installed for.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "AUTOTRACE_")) and k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def run(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run a command to completion (bounded), capturing text output."""
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def autotrace_run(
    script: Path,
    env: dict[str, str],
    *script_args: str,
    options: tuple[str, ...] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """``autotrace run [options] python script [args]`` in the script's directory."""
    return run(
        [AUTOTRACE, "run", *options, "python", script.name, *script_args],
        cwd=script.parent,
        env=env,
        timeout=timeout,
    )


def start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a long-running process; the caller stops it (see :func:`stop`)."""
    return subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(process: subprocess.Popen, timeout: float = 15) -> tuple[str, str]:
    """Make sure a started process is gone; returns its output."""
    if process.poll() is None:
        process.terminate()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=timeout)
    return out, err
