"""The hook registry: which hook waits for which module, armed with post-import hooks.

Nothing here imports an instrumented library. A hook module is imported only when the
module it waits for has been imported by the app; a module already imported when the
registry is armed is patched at once (see :mod:`autotrace.importer`, which has the
contract of wrapt's post-import hooks without the cost of importing wrapt).

Each hook runs inside :func:`_guarded`: an exception logs one line and leaves that
library unpatched; the app's ``import`` never fails because of a hook.
"""

from __future__ import annotations

import sys
import threading

from . import _log, importer

TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Iterable

logger = _log.logger


class Hook:
    """One row of the table."""

    __slots__ = ("name", "module", "hook", "distribution", "min_version", "below_version")

    def __init__(
        self,
        name: str,
        module: str,
        hook: str,
        distribution: str | tuple[str, ...] | None = None,
        min_version: tuple[int, ...] = (),
        below_version: tuple[int, ...] | None = None,
    ) -> None:
        self.name = name  # what OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names
        self.module = module  # the module whose import fires the hook
        self.hook = hook  # "package.module[:function]"; the function defaults to ``patch``
        # distribution whose version is gated; a tuple: the first one installed (psycopg2's
        # module comes from "psycopg2" or "psycopg2-binary")
        self.distribution = distribution
        self.min_version = min_version  # inclusive
        self.below_version = below_version  # exclusive

    def __repr__(self) -> str:
        return f"Hook({self.name!r}, {self.module!r}, {self.hook!r})"


# One row per instrumented library: its name (for OTEL_PYTHON_DISABLED_INSTRUMENTATIONS),
# the module whose import fires it, its hook module, and the versions it supports.
HOOKS: tuple[Hook, ...] = (
    # Incoming requests: servers start the SERVER span ...
    Hook("http_server", "http.server", "autotrace.hooks.http_server"),
    Hook("wsgiref", "wsgiref.handlers", "autotrace.hooks.wsgiref"),
    Hook("werkzeug", "werkzeug.serving", "autotrace.hooks.werkzeug", "werkzeug", (2,)),
    Hook("gunicorn", "gunicorn.workers.base", "autotrace.hooks.gunicorn", "gunicorn", (20,)),
    Hook("waitress", "waitress.server", "autotrace.hooks.waitress", "waitress", (2,)),
    Hook("uvicorn", "uvicorn.config", "autotrace.hooks.uvicorn", "uvicorn", (0, 20)),
    Hook("hypercorn", "hypercorn.utils", "autotrace.hooks.hypercorn", "hypercorn", (0, 14)),
    # Tornado serves its own apps: server and framework in one (route-named by the URL spec).
    Hook("tornado", "tornado.web", "autotrace.hooks.tornado", "tornado", (6,)),
    Hook("tornado_websocket", "tornado.websocket", "autotrace.hooks.tornado:patch_websocket", "tornado", (6,)),
    Hook("tornado_wsgi", "tornado.wsgi", "autotrace.hooks.tornado:patch_wsgi", "tornado", (6,)),
    Hook("aiohttp_server", "aiohttp.web_protocol", "autotrace.hooks.aiohttp_server", "aiohttp", (3, 8)),
    # ... frameworks name it by route (and start it under a server no hook knows).
    Hook("flask", "flask.app", "autotrace.hooks.flask", "flask", (2,)),
    Hook("django", "django.core.handlers.base", "autotrace.hooks.django", "django", (3, 2)),
    Hook("django_wsgi", "django.core.handlers.wsgi", "autotrace.hooks.django:patch_wsgi", "django", (3, 2)),
    Hook("django_asgi", "django.core.handlers.asgi", "autotrace.hooks.django:patch_asgi", "django", (3, 2)),
    Hook("starlette", "starlette.routing", "autotrace.hooks.starlette", "starlette", (0, 20)),
    Hook("starlette_app", "starlette.applications", "autotrace.hooks.starlette:patch_app", "starlette", (0, 20)),
    Hook("fastapi", "fastapi.applications", "autotrace.hooks.starlette:patch_fastapi", "fastapi", (0, 87)),
    # Outgoing requests: the outermost library of a call starts its CLIENT span; the
    # layers under it (urllib3 and http.client under requests) see the call and start none.
    Hook("requests", "requests.sessions", "autotrace.hooks.requests", "requests", (2, 25)),
    Hook("httpx", "httpx._client", "autotrace.hooks.httpx", "httpx", (0, 23)),
    Hook("tornado_client", "tornado.httpclient", "autotrace.hooks.tornado:patch_client", "tornado", (6,)),
    Hook("tornado_simple_client", "tornado.simple_httpclient", "autotrace.hooks.tornado:patch_simple_client", "tornado", (6,)),
    Hook("aiohttp_client", "aiohttp.client", "autotrace.hooks.aiohttp_client", "aiohttp", (3, 8)),
    Hook("urllib", "urllib.request", "autotrace.hooks.urllib_request"),
    Hook("urllib3", "urllib3.connectionpool", "autotrace.hooks.urllib3", "urllib3", (1, 26)),
    Hook("http_client", "http.client", "autotrace.hooks.http_client"),
    # gRPC: servers get interceptors that start SERVER spans, channels ones that start
    # CLIENT spans (sync, and asyncio in grpc.aio).
    Hook("grpc", "grpc", "autotrace.hooks.grpc", "grpcio", (1, 50)),
    Hook("grpc_aio", "grpc.aio", "autotrace.hooks.grpc_aio", "grpcio", (1, 50)),
    # Databases and caches: one CLIENT span per query the app runs; a driver under an
    # outer layer (an ORM, executemany) sees the call in progress and starts none.
    Hook("sqlite3", "sqlite3", "autotrace.hooks.sqlite3"),
    Hook("psycopg2", "psycopg2", "autotrace.hooks.psycopg2", ("psycopg2", "psycopg2-binary"), (2, 8)),
    Hook("psycopg2_extras", "psycopg2.extras", "autotrace.hooks.psycopg2:patch_extras", ("psycopg2", "psycopg2-binary"), (2, 8)),
    Hook("psycopg", "psycopg", "autotrace.hooks.psycopg", "psycopg", (3, 1)),
    Hook("psycopg_pool", "psycopg_pool", "autotrace.hooks.psycopg:patch_pool", "psycopg-pool", (3, 1)),
    Hook("redis", "redis.client", "autotrace.hooks.redis", "redis", (4, 2)),
    Hook("redis_asyncio", "redis.asyncio.client", "autotrace.hooks.redis:patch_asyncio", "redis", (4, 2)),
    Hook("redis_cluster", "redis.cluster", "autotrace.hooks.redis:patch_cluster", "redis", (4, 2)),
    Hook("redis_asyncio_cluster", "redis.asyncio.cluster", "autotrace.hooks.redis:patch_asyncio_cluster", "redis", (4, 3)),
    Hook("pymysql", "pymysql", "autotrace.hooks.pymysql", "PyMySQL", (1, 0)),
    Hook("mysqlclient", "MySQLdb.connections", "autotrace.hooks.mysqlclient", "mysqlclient", (2, 1)),
    Hook("asyncpg", "asyncpg", "autotrace.hooks.asyncpg", "asyncpg", (0, 27)),
    Hook("sqlalchemy", "sqlalchemy.engine", "autotrace.hooks.sqlalchemy", "sqlalchemy", (1, 4)),
    Hook("django_db", "django.db.backends.utils", "autotrace.hooks.django_db", "django", (3, 2)),
    Hook("django_db_connect", "django.db.backends.base.base", "autotrace.hooks.django_db:patch_connect", "django", (3, 2)),
    # Task queues: the PRODUCER span of each message sent, the CONSUMER span of each task run.
    Hook("celery", "celery.app.amqp", "autotrace.hooks.celery", "celery", (5,)),
    Hook("celery_worker", "celery.app.trace", "autotrace.hooks.celery:patch_worker", "celery", (5,)),
    Hook("billiard", "billiard.pool", "autotrace.hooks.celery:patch_pool", "billiard", (4,)),
    Hook("kombu", "kombu.messaging", "autotrace.hooks.kombu", "kombu", (5,)),
    # Task queues: a job sent is a PRODUCER span, its run in a worker a CONSUMER span in the same trace.
    Hook("rq", "rq.worker", "autotrace.hooks.rq", "rq", (1, 10)),
    # The context, carried to where work runs (no spans of their own) ...
    Hook("threading", "threading", "autotrace.hooks.threading"),
    Hook("thread_pool", "concurrent.futures.thread", "autotrace.hooks.thread_pool"),
    Hook("multiprocessing", "multiprocessing.process", "autotrace.hooks.multiprocessing"),
    Hook("multiprocessing_pool", "multiprocessing.pool", "autotrace.hooks.multiprocessing:patch_pool"),
    Hook("process_pool", "concurrent.futures.process", "autotrace.hooks.process_pool"),
    # ... and into log records.
    Hook("logging", "logging", "autotrace.hooks.logging"),
)

_lock = threading.Lock()
_armed: dict[str, Hook] = {}
_applied: set[tuple[str, int]] = set()
_status: dict[str, str] = {}
_held: list | None = None  # see arm()


def status() -> dict[str, str]:
    """Hook name -> "armed", "applied ..." or "skipped ..." (for diagnostics)."""
    with _lock:
        return dict(_status)


def _set_status(hook: Hook, text: str, level: int = 10, listed: bool = False) -> None:
    """Record and log a hook's status. ``listed``: the start-up report lists it (see arm())."""
    with _lock:
        _status[hook.name] = text
    held = _held
    if held is None:
        logger.log(level, "hook %s %s", hook.name, text)
    elif not listed:
        held.append((level, "hook %s %s", (hook.name, text)))


def known_names() -> frozenset[str]:
    return frozenset(h.name for h in HOOKS)


def arm(hooks: Iterable[Hook], disabled: frozenset = frozenset(), held: list | None = None) -> None:
    """Register every hook not disabled; idempotent per hook name.

    ``held`` (for the start-up report, which lists the hooks armed and disabled): their
    lines are left out, and the lines of hooks applied meanwhile (to modules already
    imported) go into this list as (level, message, args), to be logged after the report.
    """
    global _held
    _held = held
    try:
        for hook in hooks:
            if hook.name in disabled:
                _set_status(hook, "skipped: disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", listed=True)
                continue
            with _lock:
                if hook.name in _armed:
                    continue
                _armed[hook.name] = hook
            _set_status(hook, f"armed (waits for {hook.module})", listed=True)
            importer.register(hook.module, _guarded(hook))
    finally:
        _held = None


def _guarded(hook: Hook):
    def fire(module: ModuleType) -> None:
        try:
            key = (hook.name, id(module))
            with _lock:
                if key in _applied:
                    return
                _applied.add(key)
            version = _version_gate(hook, module)
            if version is False:
                return
            module_name, _, function_name = hook.hook.partition(":")
            patch = getattr(_import_hook_module(module_name), function_name or "patch")
            patch(module)
            _set_status(hook, f"applied to {hook.module}" + (f" ({version})" if version else ""))
        except Exception as exc:  # noqa: BLE001 - the app's import must never fail
            _set_status(
                hook,
                f"failed: {type(exc).__name__}: {exc}; {hook.module} left unpatched",
                level=30,
            )

    return fire


def _import_hook_module(name: str) -> ModuleType:
    """Import a hook module; at start-up, also from where the app's own modules will be.

    A hook for a module imported before the bootstrap runs at once, before Python has
    put the script's directory (or, for -m and -c, the working directory) on sys.path;
    a hook module of the user's beside the app is found there all the same.
    """
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.partition(".")[0]
        directory = main_directory()
        if exc.name != top or directory is None or directory in sys.path:
            raise
    sys.path.insert(0, directory)
    try:
        return importlib.import_module(name)
    finally:
        try:
            sys.path.remove(directory)
        except ValueError:
            pass


def main_directory() -> str | None:
    """The directory Python will put first on sys.path for the main module, if not yet there."""
    import os

    main = sys.modules.get("__main__")
    if main is not None and (getattr(main, "__file__", None) or getattr(main, "__spec__", None)):
        return None  # the main module runs already: sys.path is complete
    argv = getattr(sys, "argv", None) or [""]
    if argv[0] in ("", "-c", "-m"):
        return os.getcwd()
    return os.path.dirname(os.path.abspath(argv[0]))


def distribution_names(hook: Hook) -> tuple[str, ...]:
    """The distributions a hook's library may come from (none for the standard library)."""
    found = hook.distribution
    if found is None:
        return ()
    return (found,) if isinstance(found, str) else tuple(found)


def _version_gate(hook: Hook, module: ModuleType) -> str | bool | None:
    """``"distribution version"`` when supported, None when not gated, False when skipped."""
    names = distribution_names(hook)
    if not names:
        return None
    found = next(((name, v) for name in names if (v := _dist_info_version(name, module)) is not None), None)
    if found is None:
        from .distributions import version as installed_version

        found = next(((name, v) for name in names if (v := installed_version(name)) is not None), None)
        if found is None:
            _set_status(hook, f"skipped: distribution {' or '.join(names)} not found")
            return False
    name, version = found
    if version_position(hook, version):
        _set_status(
            hook,
            f"skipped: {name} {version} is not supported "
            f"(supported: {_range(hook)})",
            level=20,
        )
        return False
    return f"{name} {version}"


def _dist_info_version(distribution: str, module: ModuleType) -> str | None:
    """The version from a ``name-version.dist-info`` folder beside the module's package.

    The common layout (site-packages), read without importing ``importlib_metadata``,
    which costs start-up time when a library is imported; anything else returns None
    and the caller asks :mod:`autotrace.distributions`.
    """
    import os

    path = getattr(module, "__file__", None)
    if not path:
        return None
    top = module.__name__.partition(".")[0]
    directory = os.path.dirname(path)
    for _ in range(module.__name__.count(".") + (1 if os.path.basename(path).startswith("__init__.") else 0)):
        directory = os.path.dirname(directory)
    if not top or not directory:
        return None
    from .distributions import normalize

    wanted = normalize(distribution)
    try:
        entries = os.listdir(directory)
    except OSError:
        return None
    for entry in entries:
        if entry.endswith(".dist-info"):
            name, _, version = entry[: -len(".dist-info")].rpartition("-")
            if name and normalize(name) == wanted:
                return version
    return None


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release parts of a version ("2.31.0rc1" -> (2, 31, 0))."""
    parts = []
    for piece in text.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def version_position(hook: Hook, version: str) -> int:
    """Where ``version`` is against the hook's range: -1 below it, 0 in it, 1 above it."""
    # Compared padded with zeros: "5.1" is (5, 1, 0), not below a minimum of (5, 1, 0).
    below = hook.below_version
    parsed = parse_version(version)
    width = max(len(parsed), len(hook.min_version), len(below or ()))
    parsed = _pad(parsed, width)
    if parsed < _pad(hook.min_version, width):
        return -1
    if below is not None and parsed >= _pad(below, width):
        return 1
    return 0


def _pad(parts: tuple[int, ...], width: int) -> tuple[int, ...]:
    return parts + (0,) * (width - len(parts))


def _range(hook: Hook) -> str:
    low = ".".join(map(str, hook.min_version)) or "any"
    if hook.below_version is None:
        return f">={low}"
    return f">={low},<{'.'.join(map(str, hook.below_version))}"


def extra_hooks(pairs: Iterable[tuple[str, str]]) -> list[Hook]:
    """Hooks named by AUTOTRACE_EXTRA_HOOKS (``target.module=hook.module[:function]``)."""
    hooks: list[Hook] = []
    names: set[str] = set()
    for target, hook in pairs:
        # Named by the hook module; the same module hooking a second target gets the whole
        # entry as its name, or arm() (idempotent per name) would drop it.
        name = hook.partition(":")[0]
        if name in names:
            name = f"{target}={hook}"
        names.add(name)
        hooks.append(Hook(name=name, module=target, hook=hook))
    return hooks
