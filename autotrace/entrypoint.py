"""What program this process is: its name for the deny list and the service name it implies.

Works from ``sys.orig_argv`` (Python 3.10+) or ``sys.argv``, which ``sitecustomize``
already sees, the working directory and two variables (``DJANGO_SETTINGS_MODULE``,
``FLASK_APP``). :func:`parse` is a pure function of those, so it is cheap and easy to
test; the rule is documented as a table in ``docs/service-names.md``:

- Django (``manage.py``, ``django-admin``): the project package of
  ``DJANGO_SETTINGS_MODULE``, else the folder of ``manage.py``;
- ``flask --app X`` / ``FLASK_APP=X``, ``celery -A X``, the app servers' ``X:app`` (and
  ``python -m aiohttp.web X:make_app``): the top package of ``X``, unless it is a
  generic name (:data:`GENERIC`): then the folder that holds it;
- ``fastapi run|dev path.py``: the file's stem, or its folder for a generic stem;
- a console script: the distribution that owns it (looked up only when the name is
  needed, see :func:`console_script_owner`).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from typing import Mapping

# Servers whose service is named by the application argument ("module:attr").
_APP_SERVERS = frozenset({"gunicorn", "uvicorn", "hypercorn", "waitress-serve", "waitress", "daphne", "granian"})
APP_SERVERS = _APP_SERVERS  # the programs that serve an app named on their command line
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
# Servers' options naming the directory the application is imported from.
_APP_DIR_OPTIONS = ("--chdir", "--app-dir")  # gunicorn, uvicorn
# Names that say nothing about the service (modules, files, folders): the folder that
# holds them names it instead, and the doctor warns when the name it would use is one.
GENERIC = frozenset(
    {"wsgi", "asgi", "app", "application", "main", "server", "__main__", "api", "web", "config", "src"}
)
# Options of ``fastapi run|dev`` that take no value.
_FASTAPI_FLAGS = frozenset({"--reload", "--no-reload", "--proxy-headers", "--no-proxy-headers", "--help"})
# The source of multiprocessing's own helper processes (its resource tracker and fork
# server), which run no code of the app's.
HELPER_SOURCE = "multiprocessing helper"
# Programs named by their own rule (below), never looked up as a console script.
_TOOLS = frozenset({"flask", "fastapi", "celery", "django-admin", "django", "manage"})


class Entrypoint:
    __slots__ = ("program", "service_name", "source", "weak", "console_script")

    def __init__(self, program: str, service_name: str, source: str, weak: bool, console_script: str = "") -> None:
        self.program = program  # what ran: script stem or -m module ("pip", "gunicorn", "hello")
        self.service_name = service_name  # the service name it implies
        self.source = source  # how that name was found, for the log line
        self.weak = weak  # True when the name says nothing (python -c, a multiprocessing child)
        # A script without a .py suffix that may be a console script: the distribution
        # owning it names the service (see resolved_service_name); "" otherwise.
        self.console_script = console_script

    def __repr__(self) -> str:
        extra = f", {self.console_script!r}" if self.console_script else ""
        return f"Entrypoint({self.program!r}, {self.service_name!r}, {self.source!r}, {self.weak!r}{extra})"

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
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was removed
        cwd = ""
    return parse(list(argv), cwd, os.environ)


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


class _Where:
    """Where the command runs: its working directory ("" when unknown: no folder is
    named) and its environment."""

    __slots__ = ("cwd", "environ")

    def __init__(self, cwd: str, environ: Mapping[str, str]) -> None:
        self.cwd, self.environ = cwd, environ


def parse(argv: list[str], cwd: str = "", environ: Mapping[str, str] | None = None) -> Entrypoint:
    """Classify an interpreter command line (argv[0] is the interpreter), run in ``cwd``
    with ``environ`` (default: none of the variables set, no folder known)."""
    where = _Where(cwd, {} if environ is None else environ)
    first = os.path.basename(argv[0]) if argv and argv[0] else ""
    if first and not first.lower().startswith(("python", "pypy")):
        # Not an interpreter: the program itself (a script's own command line, a frozen
        # or embedding executable), e.g. ["/venv/bin/pip3.11", "install"].
        return _from_script(argv[0], argv[1:], where)
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":  # end of the interpreter's options: a script follows
            if i < len(args):
                return _from_script(args[i], args[i + 1 :], where)
            break
        if arg == "-" or not arg.startswith("-"):
            if arg == "-":  # the program is read from stdin
                break
            return _from_script(arg, args[i:], where)
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
                return _from_module(value, args[i:], where)
            if option == "c":
                if "resource_tracker" in value or "forkserver" in value:
                    return Entrypoint("multiprocessing", _interpreter(argv), HELPER_SOURCE, True)
                if "multiprocessing" in value or "--multiprocessing-fork" in args[i:]:
                    return Entrypoint("multiprocessing", _interpreter(argv), "multiprocessing child", True)
                return Entrypoint("-c", _interpreter(argv), "python -c", True)
            break  # -W or -X: the rest was its value
    return Entrypoint("python", _interpreter(argv), "interactive interpreter", True)


def _interpreter(argv: list[str]) -> str:
    name = os.path.basename(argv[0]) if argv and argv[0] else "python"
    return _strip_version(name) or "python"


def _from_module(module: str, rest: list[str], where: _Where) -> Entrypoint:
    top = module.split(".", 1)[0]
    if module == "aiohttp.web":  # python -m aiohttp.web [-H host] [-P port] module:function
        return _from_server("aiohttp", rest, where)
    named = _from_program(top, rest, where, "")
    if named is not None:
        return named
    return Entrypoint(top, _module_service(module), f"python -m {module}", False)


def _from_script(path: str, rest: list[str], where: _Where) -> Entrypoint:
    stem, suffix = os.path.splitext(os.path.basename(path))
    if stem == "__main__":
        # python path/to/package (a directory or zip): the directory names the service.
        stem = os.path.basename(os.path.dirname(os.path.abspath(path))) or stem
    program = stem
    if _strip_version(stem) == "pip":
        program = "pip"
    named = _from_program(stem, rest, where, path)
    if named is not None:
        return named
    # A script without a .py suffix may be a console script (bin/serve of a distribution).
    console = stem if not suffix and program != "pip" else ""
    return Entrypoint(program, stem, f"script {os.path.basename(path)}", False, console)


def _from_program(program: str, rest: list[str], where: _Where, path: str) -> Entrypoint | None:
    """A program with a rule of its own (servers, Flask, FastAPI, Celery, Django), or None."""
    if program in _APP_SERVERS:
        return _from_server(program, rest, where)
    if program not in _TOOLS:
        return None
    if program == "flask":
        app = _option(rest, ("--app", "-A"))
        if app:
            return Entrypoint(program, _app_service(app, where.cwd), f"flask --app {app}", False)
        app = where.environ.get("FLASK_APP", "").strip()
        if app:
            return Entrypoint(program, _app_service(app, where.cwd), f"FLASK_APP={app}", False)
        # Flask then imports wsgi.py or app.py from the working directory.
        return Entrypoint(program, _folder(where.cwd) or program, "flask (app.py or wsgi.py in the working directory)", False)
    if program == "celery":
        app = _option(rest, ("--app", "-A"))
        if app:
            return Entrypoint(program, _app_service(app, where.cwd), f"celery -A {app}", False)
        return Entrypoint(program, program, "celery (no -A option found)", False)
    if program == "fastapi":
        return _from_fastapi(rest, where)
    # Django: manage.py, django-admin, python -m django.
    settings = where.environ.get("DJANGO_SETTINGS_MODULE", "").strip()
    if settings:
        return Entrypoint(program, settings.split(".", 1)[0], f"DJANGO_SETTINGS_MODULE={settings}", False)
    if program == "manage" and path:
        folder = _folder(os.path.join(where.cwd, os.path.dirname(path)) if where.cwd else os.path.dirname(path))
        if folder:
            return Entrypoint(program, folder, f"folder of {os.path.basename(path)}", False)
    return None


def _from_fastapi(rest: list[str], where: _Where) -> Entrypoint:
    """``fastapi run|dev [path]``: the path's stem, its folder when that stem is generic."""
    entrypoint = _option(rest, ("--entrypoint", "-e"))  # module:attr (recent FastAPI CLIs)
    if entrypoint:
        return Entrypoint("fastapi", _app_service(entrypoint, where.cwd), f"fastapi --entrypoint {entrypoint}", False)
    args = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        i += 1
        if not arg.startswith("-"):
            args.append(arg)
        elif "=" not in arg and arg not in _FASTAPI_FLAGS:
            i += 1  # the option's value
    target = args[1] if len(args) > 1 and args[0] in ("run", "dev") else ""
    if not target:
        # FastAPI then imports main.py, app.py or api.py (or app/main.py ...) from here.
        return Entrypoint("fastapi", _folder(where.cwd) or "fastapi", "fastapi (main.py or app.py in the working directory)", False)
    return Entrypoint("fastapi", _path_service(target, where.cwd), f"fastapi {args[0]} {target}", False)


def _from_server(server: str, rest: list[str], where: _Where) -> Entrypoint:
    app = _application_argument(rest)
    if app is None:
        return Entrypoint(server, server, f"{server} (no application argument found)", False)
    base = where.cwd
    directory = _option(rest, _APP_DIR_OPTIONS)
    if directory and base:
        base = os.path.join(base, directory)
    return Entrypoint(server, _app_service(app, base), f"{server} application {app}", False)


def _option(args: list[str], names: tuple[str, ...]) -> str:
    """The value of the first of the options ``names`` in ``args`` ("--app x", "--app=x",
    "-Ax"), or ""."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                return args[i + 1] if i + 1 < len(args) else ""
            if arg.startswith(name + "="):
                return arg[len(name) + 1 :]
            if len(name) == 2 and arg.startswith(name) and len(arg) > 2:  # -Aproj
                return arg[2:]
    return ""


def _app_service(app: str, base: str) -> str:
    """The service an application reference names: "pkg.mod:attr", "pkg", "path/app.py".

    The top package, unless it is generic: then the folder it is imported from (``base``).
    """
    target = app.split(":", 1)[0].strip()
    if target.endswith(".py") or "/" in target or os.sep in target:
        return _path_service(target, base)
    top = target.split(".", 1)[0] or target
    if top in GENERIC:
        return _folder(base) or top
    return top


def _path_service(target: str, base: str) -> str:
    """A file's stem ("shop.py" -> shop), or the folder holding it when the stem is generic."""
    path = target.rstrip("/" + os.sep) or target
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem and stem not in GENERIC:
        return stem
    folder = os.path.dirname(path)
    if base or os.path.isabs(folder):
        return _folder(os.path.join(base, folder)) or stem or target
    return os.path.basename(folder) or stem or target


def _folder(directory: str) -> str:
    """The name of a folder ("" when it is unknown or the root)."""
    if not directory:
        return ""
    return os.path.basename(os.path.normpath(directory))


def is_generic(name: str) -> bool:
    """Whether a service name says nothing about the service (``app``, ``main``, ``python``)."""
    return name in GENERIC or _strip_version(name) in ("python", "pypy", "")


def resolved_service_name(entry: Entrypoint) -> tuple[str, str]:
    """The service name ``entry`` implies and where it came from; for a console script,
    the distribution that owns it (one metadata look-up, only for such a script)."""
    if entry.console_script:
        from .distributions import console_script_owner

        owner = console_script_owner(entry.console_script)
        if owner:
            return owner, f"distribution {owner}, which owns the console script {entry.console_script}"
    return entry.service_name, entry.source


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
    while len(parts) > 1 and parts[-1] in GENERIC:
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
