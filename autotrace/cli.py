"""The ``autotrace`` command: ``autotrace run [options] CMD [ARGS...]``, ``autotrace doctor``
and ``autotrace view`` (the local trace viewer, :mod:`autotrace.view.command`, imported only
when that sub-command runs).

``run`` puts the ``sitecustomize`` directory first on ``PYTHONPATH``, turns its options
into the standard environment variables (:mod:`autotrace.launcher`), and replaces itself
with CMD (same PID, so a container runtime's signals reach the app). It imports nothing
heavy.
"""

from __future__ import annotations

import argparse
import os
import sys

from ._version import __version__

TYPE_CHECKING = False  # the launcher imports as little as it can
if TYPE_CHECKING:
    from typing import Sequence


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
    _add_run_options(run)
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
    _add_run_options(doctor)  # the same options as run, applied the same way
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
    # Listed here for the help; its options are parsed by autotrace.view.command.
    commands.add_parser("view", help="a local trace viewer: OTLP receiver, store and web UI", add_help=False)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``run`` (each sets a variable, see :data:`autotrace.launcher.OPTION_VARIABLES`)."""
    parser.add_argument("--service-name", metavar="NAME", help="service.name (OTEL_SERVICE_NAME)")
    parser.add_argument(
        "--exporter",
        choices=("otlp", "console", "console-json", "none"),
        help="where spans go (OTEL_TRACES_EXPORTER; default otlp)",
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="OTLP collector URL (OTEL_EXPORTER_OTLP_ENDPOINT), e.g. http://localhost:4318",
    )
    parser.add_argument(
        "--protocol",
        choices=("grpc", "http/protobuf"),
        help="OTLP protocol (OTEL_EXPORTER_OTLP_PROTOCOL; default http/protobuf)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log the effective configuration and every hook (OTEL_LOG_LEVEL=debug)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["view"]:
        from .view import command

        return command.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.subcommand == "doctor":
        from .doctor import report

        return report.main(args)
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
    from .doctor.report import parse_timeout

    try:
        return parse_timeout(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace, command: list[str]) -> int:
    from . import launcher

    env = launcher.build_environment(args, os.environ)
    executable = launcher.which(command[0], env)
    if executable is None:
        sys.stderr.write(f"autotrace: command not found: {command[0]}\n")
        return 127
    interpreter = launcher.python_of(executable, env)
    if interpreter is not None and not launcher.same_environment(interpreter):
        problem = launcher.cannot_import(interpreter, os.environ)
        if problem:
            sys.stderr.write(
                f"autotrace: {interpreter} cannot import {problem}, so {command[0]} would run "
                "untraced.\n"
                f"autotrace is installed for {sys.executable}. Install it into that "
                f"environment too ({launcher.install_hint(interpreter)}) and use "
                "that environment's autotrace, or run the command with this one's Python.\n"
            )
            return 1
    _announce_viewer(env)
    try:
        os.execve(executable, command, env)
    except OSError as exc:
        sys.stderr.write(f"autotrace: cannot run {executable}: {exc}\n")
        return 126
    return 0  # not reached


def _announce_viewer(env: dict[str, str]) -> None:
    """One INFO line when the command's spans go to a running ``autotrace view`` (asked
    once here, not in every traced process; bounded, see :mod:`autotrace.viewer_probe`)."""
    try:
        from .viewer_probe import startup_line

        line = startup_line(env)
        if line:
            from ._log import logger

            logger.info(line)
    except Exception:  # noqa: BLE001 - a courtesy: it never stops the command
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
