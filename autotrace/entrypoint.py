"""What program this process is: its name for the deny list and the service name it implies.

Works from ``sys.orig_argv`` (Python 3.10+) or ``sys.argv``, which ``sitecustomize``
already sees. Pure functions of the argument list, so they are cheap and easy to test.
"""

from __future__ import annotations

import os
import sys

# Servers whose service is named by the application argument ("module:attr").
_APP_SERVERS = frozenset({"gunicorn", "uvicorn", "hypercorn", "waitress-serve", "waitress", "daphne", "granian"})
# Options of those servers that take no value, so the argument after them may be the app.
_FLAGS = frozenset(
    {
        "--reload",
        "--factory",
        "--preload",
        "--daemon",
        "-D",
        "--proxy-headers",
        "--no-proxy-headers",
        "--access-log",
        "--no-access-log",
        "--use-colors",
        "--no-use-colors",
        "--reuse-port",
        "--check-config",
        "--print-config",
        "--capture-output",
        "--spew",
        "--call",
        "--debug",
        "--no-sendfile",
        "--enable-stdio-inheritance",
        "-R",
        "--no-server-header",
        "--no-date-header",
        "--no-ipv4",
        "--no-ipv6",
        "--expose-tracebacks",
        "--no-expose-tracebacks",
    }
)
_APP_PATTERN = r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*(\(.*\))?)?$"
# Module names that say nothing about the service: use the package above them.
_GENERIC = frozenset({"wsgi", "asgi", "app", "application", "main", "server", "__main__", "api", "web"})


class Entrypoint:
    __slots__ = ("program", "service_name", "source", "weak")

    def __init__(self, program: str, service_name: str, source: str, weak: bool) -> None:
        self.program = program  # what ran: script stem or -m module ("pip", "gunicorn", "hello")
        self.service_name = service_name  # the service name it implies
        self.source = source  # how that name was found, for the log line
        self.weak = weak  # True when the name says nothing (python -c, a multiprocessing child)

    def __repr__(self) -> str:
        return f"Entrypoint({self.program!r}, {self.service_name!r}, {self.source!r}, {self.weak!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entrypoint) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__
        )


def _strip_version(name: str) -> str:
    """"python3.11" -> "python", "pip3" -> "pip"."""
    return name.rstrip("0123456789.-")


def current() -> Entrypoint:
    if hasattr(sys, "orig_argv"):  # Python 3.10+
        argv = sys.orig_argv or [sys.executable] + list(sys.argv)
    else:
        argv = _os_argv() or [sys.executable] + list(sys.argv)
    return parse(list(argv))


def _os_argv() -> list[str] | None:
    """The command line as the OS holds it (Linux), for Python 3.9, which has no
    ``sys.orig_argv``: at start-up its ``sys.argv`` lacks what follows ``-m`` and ``-c``
    (``python -m pkg.mod a`` shows ``["-m", "a"]``)."""
    try:
        with open("/proc/self/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    args = [os.fsdecode(arg) for arg in raw.split(b"\0")]
    if args and args[-1] == "":
        args.pop()
    return args or None


def parse(argv: list[str]) -> Entrypoint:
    """Classify an interpreter command line (argv[0] is the interpreter)."""
    first = os.path.basename(argv[0]) if argv and argv[0] else ""
    if first and not first.lower().startswith(("python", "pypy")):
        # Not an interpreter: the program itself (a script's own command line, a frozen
        # or embedding executable), e.g. ["/venv/bin/pip3.11", "install"].
        return _from_script(argv[0], argv[1:])
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":  # end of the interpreter's options: a script follows
            if i < len(args):
                return _from_script(args[i], args[i + 1 :])
            break
        if arg == "-" or not arg.startswith("-"):
            if arg == "-":  # the program is read from stdin
                break
            return _from_script(arg, args[i:])
        if arg.startswith("--"):
            if arg == "--check-hash-based-pycs":  # the one long option with a value
                i += 1
            continue
        # A cluster of short options, as CPython reads them: "-u", "-OO", "-Wignore",
        # "-Xdev", "-um pkg", "-Im pkg", "-uc code". -c, -m, -W and -X take the rest of
        # the cluster as their value, else the next argument.
        for pos in range(1, len(arg)):
            option = arg[pos]
            if option not in "cmWX":
                continue
            value = arg[pos + 1 :]
            if not value and i < len(args):
                value = args[i]
                i += 1
            if option == "m":
                if not value:
                    break
                return _from_module(value, args[i:])
            if option == "c":
                if "multiprocessing" in value or "--multiprocessing-fork" in args[i:]:
                    return Entrypoint("multiprocessing", _interpreter(argv), "multiprocessing child", True)
                return Entrypoint("-c", _interpreter(argv), "python -c", True)
            break  # -W or -X: the rest was its value
    return Entrypoint("python", _interpreter(argv), "interactive interpreter", True)


def _interpreter(argv: list[str]) -> str:
    name = os.path.basename(argv[0]) if argv and argv[0] else "python"
    return _strip_version(name) or "python"


def _from_module(module: str, rest: list[str]) -> Entrypoint:
    top = module.split(".", 1)[0]
    if top in _APP_SERVERS:
        return _from_server(top, rest)
    return Entrypoint(top, _module_service(module), f"python -m {module}", False)


def _from_script(path: str, rest: list[str]) -> Entrypoint:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem == "__main__":
        # python path/to/package (a directory or zip): the directory names the service.
        stem = os.path.basename(os.path.dirname(os.path.abspath(path))) or stem
    program = stem
    if _strip_version(stem) == "pip":
        program = "pip"
    if stem in _APP_SERVERS:
        return _from_server(stem, rest)
    return Entrypoint(program, stem, f"script {os.path.basename(path)}", False)


def _from_server(server: str, rest: list[str]) -> Entrypoint:
    app = _application_argument(rest)
    if app is None:
        return Entrypoint(server, server, f"{server} (no application argument found)", False)
    module = app.split(":", 1)[0]
    return Entrypoint(server, _module_service(module), f"{server} application {app}", False)


def _application_argument(args: list[str]) -> str | None:
    import re

    app_re = re.compile(_APP_PATTERN)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.startswith("-") and arg != "-":
            attached = "=" in arg or (len(arg) > 2 and not arg.startswith("--"))  # --bind=x, -w4
            # An option's value may be "-" (gunicorn --access-logfile -), never another option.
            if not attached and arg not in _FLAGS and i < len(args):
                value = args[i]
                if value == "-" or not value.startswith("-"):
                    i += 1
            continue
        if app_re.match(arg):
            return arg
    return None


def _module_service(module: str) -> str:
    parts = [p for p in module.split(".") if p]
    while len(parts) > 1 and parts[-1] in _GENERIC:
        parts.pop()
    return ".".join(parts) or module


def is_python(path: str) -> bool:
    """Whether an executable's file name is a Python interpreter's."""
    name = os.path.basename(path)
    if name.endswith(".exe"):
        name = name[:-4]
    for prefix in ("python", "pypy"):
        if name.startswith(prefix):
            return all(c in "0123456789." for c in name[len(prefix) :].rstrip("mwt"))
    return False
