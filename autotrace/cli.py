"""The ``autotrace`` command: ``autotrace run [options] CMD [ARGS...]``.

The launcher puts the ``sitecustomize`` directory first on ``PYTHONPATH``, turns its
options into the standard environment variables, and replaces itself with CMD (same
PID, so a container runtime's signals reach the app). It imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._version import __version__

TYPE_CHECKING = False  # the launcher imports as little as it can
if TYPE_CHECKING:
    from typing import Sequence

# Checked in a foreign interpreter before handing over to it.
_CHECK = """
import importlib.util, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False
missing = [m for m in ("autotrace", "wrapt", "opentelemetry.sdk") if not found(m)]
print(" ".join(missing))
sys.exit(3 if missing else 0)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotrace",
        description="Zero-code distributed tracing for Python services.",
    )
    parser.add_argument("--version", action="version", version=f"autotrace {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a command with tracing",
        description=(
            "Run CMD with the agent: any Python process it starts (the command itself, "
            "its workers and children) is traced. Options set the standard OTEL_* "
            "variables; every other setting is read from the environment."
        ),
        epilog="example: autotrace run --service-name shop gunicorn app:app",
    )
    run.add_argument("--service-name", metavar="NAME", help="service.name (OTEL_SERVICE_NAME)")
    run.add_argument(
        "--exporter",
        choices=("otlp", "console", "console-json", "none"),
        help="where spans go (OTEL_TRACES_EXPORTER; default otlp)",
    )
    run.add_argument(
        "--endpoint",
        metavar="URL",
        help="OTLP collector URL (OTEL_EXPORTER_OTLP_ENDPOINT), e.g. http://localhost:4318",
    )
    run.add_argument(
        "--protocol",
        choices=("grpc", "http/protobuf"),
        help="OTLP protocol (OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf)",
    )
    run.add_argument(
        "--debug",
        action="store_true",
        help="log the effective configuration and every hook (OTEL_LOG_LEVEL=debug)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]", help="the command to run")
    doctor = commands.add_parser(
        "doctor",
        help="check the configuration, the collector and the environment",
        description=(
            "Check what `autotrace run` with the same options would do: the effective "
            "configuration, whether the collector accepts spans (one test span is sent), "
            "which libraries are covered and whether another agent conflicts. Exit status "
            "0 when spans can be delivered, 1 otherwise."
        ),
        epilog="example: autotrace doctor --endpoint http://collector:4318",
    )
    for action in run._actions:  # the same options as run, applied the same way
        if action.dest in ("help", "command"):
            continue
        doctor._add_action(action)
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON object")
    doctor.add_argument(
        "--timeout",
        type=_doctor_timeout,
        default=3.0,
        metavar="S",
        help="bound of each network check, in seconds above 0 (default 3, at most 60)",
    )
    doctor.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="optional: the app's command, to derive the service name from",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.subcommand == "doctor":
        from . import doctor

        return doctor.main(args)
    if args.subcommand != "run":
        parser.print_help()
        return 2
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("run: a command is required, e.g. autotrace run python app.py")
    return run(args, command)


def _doctor_timeout(text: str) -> float:
    from .doctor import parse_timeout

    try:
        return parse_timeout(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def sitecustomize_dir() -> str:
    from . import _sitecustomize

    return os.path.dirname(os.path.abspath(_sitecustomize.__file__))


def build_environment(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, str]:
    env = dict(environ)
    directory = sitecustomize_dir()
    # Keep the user's entries as they are, empty ones too: Python reads an empty entry as
    # the current directory. An empty or unset PYTHONPATH has no entries.
    existing = env.get("PYTHONPATH", "")
    entries = [p for p in existing.split(os.pathsep) if p != directory] if existing else []
    env["PYTHONPATH"] = os.pathsep.join([directory] + entries)
    if args.service_name:
        env["OTEL_SERVICE_NAME"] = args.service_name
    if args.exporter:
        env["OTEL_TRACES_EXPORTER"] = args.exporter
    # An option on the command line beats a signal-specific variable in the environment.
    if args.endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.endpoint
        env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    if args.protocol:
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = args.protocol
        env.pop("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", None)
    if args.debug:
        env["OTEL_LOG_LEVEL"] = "debug"
    return env


def run(args: argparse.Namespace, command: list[str]) -> int:
    env = build_environment(args, dict(os.environ))
    executable = which(command[0], env.get("PATH"))
    if executable is None:
        sys.stderr.write(f"autotrace: command not found: {command[0]}\n")
        return 127
    interpreter = python_of(executable, env)
    if interpreter is not None and not _same_environment(interpreter):
        problem = _cannot_import(interpreter, environ=os.environ)
        if problem:
            sys.stderr.write(
                f"autotrace: {interpreter} cannot import {problem}, so {command[0]} would run "
                "untraced.\n"
                f"autotrace is installed for {sys.executable}. Install it into that "
                f"environment too ({interpreter} -m pip install autotrace-agent) and use "
                "that environment's autotrace, or run the command with this one's Python.\n"
            )
            return 1
    try:
        os.execve(executable, command, env)
    except OSError as exc:
        sys.stderr.write(f"autotrace: cannot run {executable}: {exc}\n")
        return 126
    return 0  # not reached


def python_of(executable: str, env: dict[str, str]) -> str | None:
    """The Python interpreter that ``executable`` is or runs (by its ``#!`` line), if any."""
    from .entrypoint import is_python

    if is_python(executable):
        return executable
    try:
        with open(executable, "rb") as file:
            first = file.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-")]
        if not names or not is_python(names[0]):
            return None
        return which(names[0], env.get("PATH"))
    return words[0] if is_python(words[0]) else None


def which(command: str, path: str | None) -> str | None:
    """The executable ``command`` names: a path as given, else the first match on PATH."""
    if os.sep in command or (os.altsep and os.altsep in command):
        return command if os.access(command, os.X_OK) and not os.path.isdir(command) else None
    for directory in (path if path is not None else os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or os.curdir, command)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _same_environment(interpreter: str) -> bool:
    """Whether ``interpreter`` sits beside the one running the launcher (same venv)."""
    ours = os.path.dirname(os.path.abspath(sys.executable))
    return os.path.dirname(os.path.abspath(interpreter)) == ours


def _cannot_import(interpreter: str, environ) -> str:
    """What the interpreter misses of the agent ("" when it has everything)."""
    import subprocess

    env = {k: v for k, v in environ.items() if k != "AUTOTRACE_ENABLED"}
    try:
        result = subprocess.run(
            [interpreter, "-c", _CHECK],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"anything ({exc})"
    if result.returncode == 0:
        return ""
    return result.stdout.strip() or f"the agent (exit {result.returncode})"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
