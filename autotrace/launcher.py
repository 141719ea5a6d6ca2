"""What ``autotrace run`` does before it hands over to the command, shared with the doctor.

The launcher puts the ``sitecustomize`` directory first on ``PYTHONPATH`` and turns its
options into the standard variables (:func:`build_environment`); before it replaces
itself with the command, it checks that the command's Python (:func:`python_of`) can
import the agent when it is another environment's (:func:`cannot_import`). It imports
nothing heavy.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # the launcher imports as little as it can
if TYPE_CHECKING:
    from argparse import Namespace
    from typing import Mapping

# Each option of ``autotrace run`` (its argparse name) and the variable it sets.
OPTION_VARIABLES = (
    ("service_name", "OTEL_SERVICE_NAME"),
    ("exporter", "OTEL_TRACES_EXPORTER"),
    ("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ("protocol", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ("debug", "OTEL_LOG_LEVEL"),
)
# An option beats the signal-specific variable of its setting, which is dropped.
_REPLACED = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
}

# Checked in a foreign interpreter before handing over to it.
_CHECK = """
import importlib.util, sys
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False
missing = [m for m in ("autotrace", "opentelemetry.sdk") if not found(m)]
print(" ".join(missing))
sys.exit(3 if missing else 0)
"""


def sitecustomize_dir() -> str:
    """The directory of the agent's ``sitecustomize``, which the launcher puts first on PYTHONPATH."""
    from . import _sitecustomize

    return os.path.dirname(os.path.abspath(_sitecustomize.__file__))


def flags(args: Namespace | None) -> dict[str, str]:
    """Variable -> the option given in ``args`` that sets it (``--endpoint``, ...)."""
    given = {}
    for option, variable in OPTION_VARIABLES:
        if args is not None and getattr(args, option, None):
            given[variable] = "--" + option.replace("_", "-")
    return given


def build_environment(args: Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """The command's environment: ``environ`` with the options applied and the agent's
    ``sitecustomize`` first on PYTHONPATH."""
    env = dict(environ)
    directory = sitecustomize_dir()
    # Keep the user's entries as they are, empty ones too: Python reads an empty entry as
    # the current directory. An empty or unset PYTHONPATH has no entries.
    existing = env.get("PYTHONPATH", "")
    entries = [p for p in existing.split(os.pathsep) if p != directory] if existing else []
    env["PYTHONPATH"] = os.pathsep.join([directory] + entries)
    for option, variable in OPTION_VARIABLES:
        value = getattr(args, option, None)
        if value:
            env[variable] = "debug" if option == "debug" else value
            if variable in _REPLACED:
                env.pop(_REPLACED[variable], None)
    return env


def which(command: str, env: Mapping[str, str]) -> str | None:
    """The executable ``command`` names: a path as given, else the first match on env's PATH."""
    import shutil

    return shutil.which(command, path=env.get("PATH", os.defpath))


def python_of(executable: str, env: Mapping[str, str]) -> str | None:
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
        return which(names[0], env)
    return words[0] if is_python(words[0]) else None


def same_environment(interpreter: str) -> bool:
    """Whether ``interpreter`` sits beside the one running the launcher (same venv).

    Not realpath: a venv's python is a link to its base interpreter, with other packages.
    """
    ours = os.path.dirname(os.path.abspath(sys.executable))
    return os.path.dirname(os.path.abspath(interpreter)) == ours


def foreign_python(command: list[str], env: Mapping[str, str]) -> str | None:
    """The Python the command runs when it is another environment's than this one's."""
    executable = which(command[0], env) if command else None
    interpreter = python_of(executable, env) if executable else None
    if interpreter is None or same_environment(interpreter):
        return None
    return interpreter


def cannot_import(interpreter: str, environ: Mapping[str, str]) -> str:
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


def install_hint(interpreter: str) -> str:
    """How to install this autotrace into ``interpreter``'s environment, as a command.

    The package is not published on PyPI: it installs from a clone (this one, when the
    running copy is an editable install of it) or from a wheel built there.
    """
    package_dir = os.path.dirname(os.path.abspath(__file__))
    clone = os.path.dirname(package_dir)
    if os.path.isfile(os.path.join(clone, "pyproject.toml")):
        return f"{interpreter} -m pip install {clone}"
    from ._version import __version__

    return (
        f"{interpreter} -m pip install autotrace_agent-{__version__}-py3-none-any.whl, "
        "a wheel built in a clone of autotrace with `python -m build` (see docs/deploy.md)"
    )
