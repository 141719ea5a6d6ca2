"""The libraries the hooks cover and the other agents that conflict, as the command's own
Python sees them: when the command runs another environment's Python, the checks run
there (a bounded subprocess, :func:`remote_main`).
"""

from __future__ import annotations

import json
import os
import sys

from ..distributions import names as distribution_names, normalize, version as distribution_version
from .check import FAIL, OK, WARN, Check

NO_CONFLICT = "no other tracing agent found"
REMOTE_TIMEOUT_S = 20.0  # the library and conflict checks in the command's interpreter


def library_checks(disabled=frozenset(), version_of=distribution_version) -> list[Check]:
    from ..registry import HOOKS, distribution_names, version_position

    checks = []
    stdlib = [h.name for h in HOOKS if h.distribution is None and h.name not in disabled]
    if stdlib:
        checks.append(Check(OK, "libraries", "standard library covered: " + ", ".join(stdlib)))
    by_distribution: dict[str, list] = {}
    for hook in HOOKS:
        names = distribution_names(hook)
        if names:  # the first installed, if several may provide the library
            name = next((n for n in names if version_of(n) is not None), names[0]) if len(names) > 1 else names[0]
            by_distribution.setdefault(name, []).append(hook)
    missing = []
    for distribution, hooks in by_distribution.items():
        version = version_of(distribution)
        if version is None:
            missing.append(distribution)
            continue
        names = ", ".join(h.name for h in hooks)
        hook = hooks[0]
        if all(h.name in disabled for h in hooks):
            checks.append(
                Check(
                    WARN,
                    "libraries",
                    f"{distribution} {version} installed, hook disabled ({names})",
                    "remove it from OTEL_PYTHON_DISABLED_INSTRUMENTATIONS to trace it",
                )
            )
            continue
        position = version_position(hook, version)
        low = ".".join(map(str, hook.min_version)) or "0"
        if position < 0:
            checks.append(
                Check(
                    WARN,
                    "libraries",
                    f"{distribution} {version} installed but not covered: the hook needs {low} or newer",
                    f"upgrade {distribution} to {low} or newer to trace it",
                )
            )
        elif position > 0:
            high = ".".join(map(str, hook.below_version or ()))
            checks.append(
                Check(
                    WARN,
                    "libraries",
                    f"{distribution} {version} installed but not covered: the hook supports below {high}",
                    f"use {distribution} below {high} to trace it",
                )
            )
        else:
            checks.append(Check(OK, "libraries", f"{distribution} {version} covered ({names})"))
    if missing:
        checks.append(Check(OK, "libraries", "not installed: " + ", ".join(missing)))
    return checks


def _own_site_dir() -> str:
    try:
        from ..launcher import sitecustomize_dir

        return sitecustomize_dir()
    except Exception:  # noqa: BLE001
        return ""


def search_path(environ) -> list[str]:
    """Where the app's ``site`` will look for ``sitecustomize``: PYTHONPATH, then ours."""
    entries = [p for p in (environ.get("PYTHONPATH") or "").split(os.pathsep) if p]
    return entries + [p for p in sys.path if p and p not in entries]


def conflict_checks(paths: list[str], distributions, own_dir: str | None = None) -> list[Check]:
    """Other agents on the path or installed. ``distributions``: installed names."""
    checks = []
    own = os.path.normcase(os.path.realpath(own_dir if own_dir is not None else _own_site_dir()))
    found = []
    for entry in paths:
        directory = os.path.normcase(os.path.realpath(entry or os.getcwd()))
        if directory == own:
            continue
        candidate = os.path.join(entry or os.getcwd(), "sitecustomize.py")
        if os.path.isfile(candidate) and candidate not in found:
            found.append(candidate)
    for index, path in enumerate(found):
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                text = file.read(65536)
        except OSError:
            text = ""
        where = os.path.realpath(path).replace(os.sep, "/") + "\n" + text
        agent = ""
        if "auto_instrumentation" in where:
            agent = "opentelemetry-instrument's sitecustomize"
        elif "ddtrace/bootstrap" in where or "ddtrace.bootstrap" in where:
            agent = "ddtrace's sitecustomize (ddtrace-run)"
        if agent and index == 0:  # autotrace chains the first one after its own: it runs
            checks.append(
                Check(
                    FAIL,
                    "conflicts",
                    f"{path} is {agent}: autotrace runs it after itself, so a second tracer "
                    "patches the same libraries (spans doubled or broken)",
                    "remove its directory from PYTHONPATH; run the app with autotrace only",
                )
            )
        elif agent:
            checks.append(
                Check(
                    WARN,
                    "conflicts",
                    f"{path} is {agent}, hidden behind {found[0]} (it does not run)",
                    "remove its directory from PYTHONPATH, so it cannot run if the other one goes",
                )
            )
        elif index == 0:
            checks.append(Check(OK, "conflicts", f"your sitecustomize {path} will run first (chained)"))
    names = {normalize(d) for d in distributions}
    for name, what in (("ddtrace", "ddtrace (Datadog)"), ("jaeger-client", "jaeger-client")):
        if name in names:
            checks.append(
                Check(
                    WARN,
                    "conflicts",
                    f"{what} is installed: if the app starts it too, requests are traced twice",
                    f"do not start {name} in the app, or uninstall it",
                )
            )
    instrumentations = sorted(
        n for n in names if n.startswith("opentelemetry-instrumentation-")
    )
    if instrumentations:
        checks.append(
            Check(
                WARN,
                "conflicts",
                "installed: " + ", ".join(instrumentations),
                "if the app calls these instrumentors itself, its spans double: remove those calls "
                "(or disable the matching autotrace hook with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)",
            )
        )
    if not checks:
        checks.append(Check(OK, "conflicts", NO_CONFLICT))
    return checks


def encoder_check() -> Check:
    """Whether the span encoder is the compiled one (``autotrace._speedups``) or pure Python."""
    try:
        from ..otlp_encode import COMPILED
    except Exception as exc:  # noqa: BLE001 - the SDK missing or broken: said, not raised
        return Check(OK, "encoder", f"span encoder not checked ({type(exc).__name__}: {exc})")
    if COMPILED:
        return Check(OK, "encoder", "span encoder: compiled (autotrace._speedups)")
    return Check(OK, "encoder", "span encoder: pure Python (the optional compiled one, autotrace._speedups, is not built in this install)")


def local_environment_checks(paths: list[str], disabled, own_dir: str | None = None) -> list[Check]:
    """The library, conflict and encoder checks for the Python running this function."""
    return library_checks(frozenset(disabled)) + conflict_checks(paths, distribution_names(), own_dir) + [encoder_check()]


def remote_main() -> None:
    """Entry point in the command's interpreter: its checks as JSON on stdout."""
    request = json.loads(sys.stdin.read() or "{}")
    checks = local_environment_checks(
        search_path({"PYTHONPATH": request.get("pythonpath", "")}), request.get("disabled", []), request.get("own")
    )
    sys.stdout.write(json.dumps([c.as_dict() for c in checks]))


def environment_checks(command: list[str], env, disabled) -> list[Check]:
    """Libraries and conflicts as the command's interpreter sees them (bounded subprocess)."""
    from ..launcher import foreign_python

    paths = search_path(env)
    interpreter = foreign_python(command, env)  # the command's, when another environment's
    if interpreter is None:
        return local_environment_checks(paths, disabled)
    import subprocess

    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "AUTOTRACE_ENABLED")}
    child_env["PYTHONPATH"] = package_root  # this autotrace, without arming the agent there
    child_env["PYTHONSAFEPATH"] = "1"  # nor the current directory's modules
    request = json.dumps(
        {"pythonpath": env.get("PYTHONPATH", ""), "disabled": sorted(disabled), "own": _own_site_dir()}
    )
    try:
        result = subprocess.run(
            [interpreter, "-c", "from autotrace.doctor.environment import remote_main; remote_main()"],
            input=request,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=REMOTE_TIMEOUT_S,
        )
        rows = json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        rows, result = None, exc
    if not isinstance(rows, list):
        why = getattr(result, "stderr", "") or str(result)
        why = (why.strip().splitlines() or ["no answer"])[-1]
        return [
            Check(
                WARN,
                "interpreter",
                f"cannot inspect the command's Python {interpreter} ({why}); "
                f"the library and conflict checks below are for {sys.executable}",
                "install autotrace into that environment and run its autotrace doctor",
            )
        ] + local_environment_checks(paths, disabled)
    header = Check(OK, "interpreter", f"libraries and conflicts checked in the command's Python {interpreter}")
    return [header] + [Check(r["status"], r["name"], r["message"], r.get("fix", "")) for r in rows]
