"""The doctor's run: every check in order, the text and JSON reports, the exit status."""

from __future__ import annotations

import json
import math
import os
import sys

from .. import config
from .check import FAIL, OK, WARN, Check, scrub, secrets_of
from .command import command_checks
from .endpoint import classify, probe_endpoint
from .environment import NO_CONFLICT, environment_checks
from .settings import (
    configuration_checks,
    headers_check,
    load_settings,
    service_name_check,
    source_of,
    unsendable_headers,
)
from .span import test_span_check

MAX_TIMEOUT_S = 60.0


def parse_timeout(text: object) -> float:
    """``--timeout``: a finite number of seconds above 0, capped at 60."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"--timeout {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--timeout {text!r} must be a finite number of seconds above 0")
    return min(value, MAX_TIMEOUT_S)


def run_checks(args, environ) -> list[Check]:
    """Every check, in the report's order. ``environ``: the environment before the options."""
    from ..launcher import build_environment

    timeout = parse_timeout(getattr(args, "timeout", 3.0) or 3.0)
    command = list(getattr(args, "command", None) or [])
    if command and command[0] == "--":
        command = command[1:]
    env = build_environment(args, environ)
    settings, warnings = load_settings(env)
    checks = configuration_checks(settings, warnings, args, environ)
    name_check = service_name_check(settings, command, args)
    checks.append(name_check)
    checks.extend(command_checks(command, env))
    derived = name_check.message.split(" (", 1)[0] if command and name_check.status != FAIL else ""
    unsendable = unsendable_headers(settings.headers, settings.protocol)
    if settings.sdk_disabled:
        pass
    elif not settings.exporters:
        checks.append(
            Check(
                FAIL,
                "exporter",
                "no exporter: spans are dropped (OTEL_TRACES_EXPORTER=none)",
                "use --exporter otlp (OTEL_TRACES_EXPORTER=otlp) to send spans to a collector",
            )
        )
    elif "otlp" not in settings.exporters:
        shown = ", ".join(settings.exporters)
        checks.append(
            Check(
                WARN,
                "exporter",
                f"exporter {shown}: no span leaves the process",
                "use --exporter otlp (OTEL_TRACES_EXPORTER=otlp) to send spans to a collector",
            )
        )
    else:
        if unsendable:
            checks.append(headers_check(unsendable, source_of("headers", args, environ)))
        sendable = {k: v for k, v in settings.headers.items() if k not in unsendable}
        target, probe = probe_endpoint(settings, timeout, sendable)
        endpoint = classify(settings.protocol, target, probe, source_of("endpoint", args, environ))
        checks.append(endpoint)
        if endpoint.status == FAIL or unsendable:
            failed = "endpoint" if endpoint.status == FAIL else "headers"
            checks.append(
                Check(FAIL, "test span", f"not sent: the {failed} check failed", f"fix the {failed} problem above")
            )
        else:
            service = (
                settings.service_name
                or settings.resource_attributes.get("service.name")
                or derived
                or "autotrace-doctor"
            )
            checks.append(test_span_check(settings, service, timeout))
    checks.extend(environment_checks(command, env, settings.disabled_hooks))
    if any(c.name == "conflicts" and c.status != OK for c in checks):  # the command's own, above
        checks = [c for c in checks if not (c.name == "conflicts" and c.message == NO_CONFLICT)]
    # Header values are secrets (tokens): an exception's text must not show one either.
    header_values = [v for v in settings.headers.values() if len(v) >= 6]
    return scrub(checks, secrets_of(settings.endpoint) + _raw_endpoint_secrets(env) + header_values)


def _raw_endpoint_secrets(env) -> list[str]:
    found: list[str] = []
    for variable in config.VARIABLES["endpoint"]:  # as given, a refused one included
        found += secrets_of(env.get(variable) or "")
    return found


def exit_code(checks: list[Check]) -> int:
    if any(c.status == FAIL for c in checks):
        return 1
    if any(c.name == "test span" for c in checks):
        return 0  # accepted (a failure is a FAIL above)
    return 0 if any(c.name == "exporter" for c in checks) else 1


def render_text(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        fix = f"; fix: {check.fix}" if check.fix and check.status != OK else ""
        lines.append(f"{check.status:<4} {check.name}: {check.message}{fix}")
    code = exit_code(checks)
    if code:
        lines.append("spans cannot be delivered")
    elif any(c.name == "test span" for c in checks):
        lines.append("spans can be delivered")
    else:
        lines.append("no exporter sends spans out of the process (nothing to deliver)")
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    code = exit_code(checks)
    return json.dumps(
        {"ok": code == 0, "exit_code": code, "checks": [c.as_dict() for c in checks]}, indent=2
    ) + "\n"


def main(args) -> int:
    environ = dict(os.environ)
    # gRPC's C core would print "Handshake failed" lines for the TLS probes: the report says it.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        checks = run_checks(args, environ)
    except ValueError as exc:  # a bad --timeout given programmatically
        sys.stderr.write(f"autotrace doctor: {exc}\n")
        return 2
    _write(render_json(checks) if getattr(args, "json", False) else render_text(checks))
    return exit_code(checks)


def _write(text: str) -> None:
    """The report on stdout, whatever the stream: characters it cannot encode are escaped,
    and a stdout that cannot be written (closed pipe, full disk) costs one line on stderr."""
    out = sys.stdout
    try:
        if out is None:
            return
        encoding = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))
        out.flush()
    except (OSError, ValueError, LookupError) as exc:
        try:
            # What is still buffered goes nowhere: Python's own flush at exit cannot fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        try:
            sys.stderr.write(f"autotrace doctor: cannot write the report: {exc}\n")
        except (OSError, ValueError, AttributeError):
            pass
