"""Start-up cost: an app importing flask and requests, plain vs under the agent.

    python benchmarks/startup.py [--runs 20] [--compare LABEL=VENV_BIN_DIR ...]

``--compare`` adds ``autotrace run`` from another install (say, a venv holding an
earlier checkout of autotrace, for a before/after figure measured in the same run).

Runs each variant alternately in the same session and prints medians and the ratio to
plain Python measured in the same run. Variants whose tool is not installed are
skipped (opentelemetry-instrument, ddtrace-run). Bytecode caches are written first,
so every variant starts warm.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = "import flask, requests\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=VENV_BIN_DIR",
        help="also time `autotrace run` of the install in that venv's bin directory",
    )
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp, "app.py")
        app.write_text(APP)
        variants = {
            "plain": [sys.executable, str(app)],
            "autotrace run": [str(bin_dir / "autotrace"), "run", "python", str(app)],
            "AUTOTRACE_ENABLED": [sys.executable, str(app)],
        }
        extra_env = {"AUTOTRACE_ENABLED": {"AUTOTRACE_ENABLED": "true"}}
        for item in args.compare:
            label, sep, other_bin = item.partition("=")
            if not sep or not Path(other_bin, "autotrace").exists():
                parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
            name = f"autotrace run ({label})"
            variants[name] = [str(Path(other_bin, "autotrace")), "run", "python", str(app)]
            extra_env[name] = {"PATH": f"{other_bin}{os.pathsep}{env['PATH']}"}
        for name, tool in (("opentelemetry-instrument", "opentelemetry-instrument"), ("ddtrace-run", "ddtrace-run")):
            path = shutil.which(tool, path=env["PATH"])
            if path:
                variants[name] = [path, "python", str(app)]
        times: dict[str, list[float]] = {name: [] for name in variants}
        for name, command in variants.items():  # warm caches, check each runs
            subprocess.run(command, env={**env, **extra_env.get(name, {})}, check=True, capture_output=True)
        for _ in range(args.runs):
            for name, command in variants.items():
                start = time.perf_counter()
                subprocess.run(command, env={**env, **extra_env.get(name, {})}, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain"])
    print(f"start-up of `{APP.strip()}`, median of {args.runs} runs, {os.cpu_count()} cores")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:26s} {median * 1000:7.1f} ms  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
