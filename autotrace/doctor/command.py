"""What ``autotrace run`` would make of the app's command (its arguments are never echoed):
another agent's launcher in front of it, a program on the deny list, OpenTelemetry
instrumentors the app's own files call.
"""

from __future__ import annotations

import os

from .check import FAIL, WARN, Check

# Launchers of other agents: in front of the app's command, they start a second tracer.
_OTHER_LAUNCHERS = {
    "opentelemetry-instrument": "opentelemetry-instrument (OpenTelemetry's zero-code agent)",
    "ddtrace-run": "ddtrace-run (Datadog's agent)",
}


def command_checks(command: list[str], env) -> list[Check]:
    """What ``autotrace run`` would make of the command itself (arguments never echoed)."""
    if not command:
        return []
    from .. import config, entrypoint

    checks = []
    launcher = os.path.basename(command[0])
    if launcher in _OTHER_LAUNCHERS:
        checks.append(
            Check(
                FAIL,
                "conflicts",
                f"the command starts {_OTHER_LAUNCHERS[launcher]}: a second tracer patches the same "
                "libraries (spans doubled or broken)",
                f"drop {launcher} from the command and run the app with autotrace only",
            )
        )
    program = entrypoint.parse(list(command)).program
    if program in config.deny_list(env):
        given = config.source_of("deny", env).kind != "default"
        where = "AUTOTRACE_DENY" if given else "the default AUTOTRACE_DENY list"
        checks.append(
            Check(
                FAIL,
                "command",
                f"{program} is on {where}: autotrace run does not trace it",
                "set AUTOTRACE_DENY to the programs not to trace, without this one (empty: trace everything)",
            )
        )
    return checks + instrumentor_checks(command)


# An OpenTelemetry instrumentor the app calls itself: FlaskInstrumentor().instrument(),
# FastAPIInstrumentor.instrument_app(app), GrpcInstrumentorClient().instrument(), ...
_INSTRUMENTOR_CALL = r"\b(\w*Instrumentor(?:Client|Server)?)\s*(?:\(\s*\))?\s*\.\s*instrument(?:_app)?\s*\("
_APP_FILE_LIMIT = 1 << 20  # bytes read of each of the app's files


def app_files(command: list[str], cwd: str) -> list[str]:
    """The app's own source files the command names: a script, a ``-m`` module, a server's
    ``module:attr`` application, when they exist under ``cwd``."""
    import re

    found: list[str] = []
    for index, arg in enumerate(command[1:], 1):
        if arg.endswith(".py"):
            path = arg
        elif command[index - 1] == "-m" or re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]", arg):
            path = arg.split(":", 1)[0].replace(".", os.sep) + ".py"
        else:
            continue
        full = os.path.join(cwd, path)
        if os.path.isfile(full) and full not in found:
            found.append(full)
    return found[:4]


def instrumentor_checks(command: list[str], cwd: str | None = None) -> list[Check]:
    """OpenTelemetry instrumentors the app's files call: with autotrace, spans double."""
    import re

    checks = []
    for path in app_files(command, cwd or os.getcwd()):
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                text = file.read(_APP_FILE_LIMIT)
        except OSError:
            continue
        names = sorted(set(re.findall(_INSTRUMENTOR_CALL, text)))
        if names:
            checks.append(
                Check(
                    WARN,
                    "conflicts",
                    f"{path} calls {', '.join(names)} itself: autotrace instruments the same libraries, "
                    "so their spans double",
                    "remove those calls (autotrace needs none), or disable the matching autotrace hooks "
                    "in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
                )
            )
    return checks
