"""The start-up report: one block under OTEL_LOG_LEVEL=debug, nothing of it otherwise."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(tmp_path, **env: str) -> str:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "AUTOTRACE_")) and k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")
    }
    clean.update(AUTOTRACE_ENABLED="true", PYTHONUNBUFFERED="1", **env)
    result = subprocess.run(
        [sys.executable, "-c", "pass"], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_debug_prints_one_report_block(tmp_path):
    err = _run(
        tmp_path,
        OTEL_LOG_LEVEL="debug",
        OTEL_SERVICE_NAME="shop",
        OTEL_EXPORTER_OTLP_HEADERS="api-key=secret123",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="flask",
    )
    lines = err.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("autotrace DEBUG: autotrace ")]
    assert len(heads) == 1, err
    start = heads[0]
    head = lines[start]
    assert f"(Python {sys.version_info[0]}.{sys.version_info[1]}." in head
    assert "opentelemetry-sdk 1." in head and " pid " in head and head.endswith(" in python -c")
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    text = "\n".join(lines[start : start + 1 + len(block)])
    assert "  service.name " in text and "shop (from OTEL_SERVICE_NAME)" in text
    assert "otlp http/protobuf -> http://localhost:4318/v1/traces" in text
    assert "parentbased_always_on" in text and "propagators tracecontext,baggage" in text
    hooks = next(line for line in text.splitlines() if line.startswith("  hooks armed"))
    assert "http_server" in hooks and "logging" in hooks and "disabled: flask" in hooks
    assert "flask," not in hooks.split("disabled:")[0]
    assert "api-key=<redacted>" in text and "secret123" not in err
    # The per-setting and per-hook-armed lines are gone; hooks applied keep their line, after.
    assert not any(line.startswith("autotrace DEBUG: config ") for line in lines)
    assert not any(" armed (waits for " in line or "skipped: disabled" in line for line in lines)
    applied = [i for i, line in enumerate(lines) if line.startswith("autotrace DEBUG: hook threading applied")]
    assert applied and applied[0] > start


def test_without_debug_no_report(tmp_path):
    """Only the start-up line (see integration/test_startup_lines.py)."""
    err = _run(tmp_path, OTEL_SERVICE_NAME="shop")
    assert "autotrace DEBUG" not in err
    assert "opentelemetry-sdk" not in err and "hooks armed" not in err
    assert err.startswith("autotrace INFO: service.name=shop, spans to ") and err.count("\n") == 1, err


def test_without_debug_no_metadata_lookup(tmp_path):
    """Nothing new is loaded at start-up when not debugging (importlib.metadata costs time)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    clean.update(AUTOTRACE_ENABLED="true", OTEL_SERVICE_NAME="shop")
    code = "import sys; print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr
