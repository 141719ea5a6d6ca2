"""redis-py: each command the app sends is one CLIENT span; a pipeline is one span.

Waits for ``redis.client`` (:func:`patch`), ``redis.asyncio.client``
(:func:`patch_asyncio`), ``redis.cluster`` (:func:`patch_cluster`) and
``redis.asyncio.cluster`` (:func:`patch_asyncio_cluster`). It patches:

- ``Redis.execute_command`` (``StrictRedis`` is the same class), sync and asyncio: every
  command method (``get``, ``set``, ``publish`` ...) goes through it. A span per command,
  named by the command (``GET``);
- ``Pipeline.execute``: one span for the whole pipeline, named ``MULTI`` for a
  transaction (MULTI ... EXEC, the default) and ``PIPELINE`` for a plain one, with
  ``db.operation.batch.size`` (the commands the app queued) and the commands in
  ``db.query.text``, one a line. An empty pipeline sends nothing and gets no span;
- ``Pipeline.immediate_execute_command``: the commands a pipeline sends at once (``WATCH``
  and the reads after it, before ``multi()``), a span each;
- ``RedisCluster.execute_command`` and ``ClusterPipeline.execute`` (sync and asyncio):
  one span per command or pipeline as the app sees it, whatever nodes, redirections and
  retries it takes. The cluster's spans have no ``server.address`` (a command's node is
  chosen inside the call); their ``db.namespace`` is ``"0"``, a cluster's only database.

Commands the client sends on its own (``AUTH``, ``HELLO``, ``SELECT`` at connect, health
checks) do not go through these and get no span; nor do pub/sub subscriptions (a
``PubSub`` object's ``subscribe`` and the messages it reads: a long wait, not a call).

Span content follows the database semantic conventions for Redis: ``db.system.name`` =
``redis``, ``db.namespace`` = the database index (``"0"``), ``server.address`` and
``server.port`` (the socket path for a Unix socket), ``db.operation.name`` = the command
in upper case. ``db.query.text`` as ``AUTOTRACE_DB_STATEMENT`` says: ``sanitized`` (the
default) keeps the command and its first argument, the key, and replaces every other
argument by ``?`` (``SET user:42 ? ? ?``); ``raw`` keeps every argument; ``off`` records
none. Arguments that are secrets or data rather than a key (``AUTH``, ``HELLO``,
``MIGRATE``, ``ACL``, ``CONFIG``; ``ECHO``, ``EVAL``'s script) are ``?`` in every mode. A
Redis error reply sets ``db.response.status_code`` to its prefix (``WRONGTYPE``,
``ERR``, ``NOSCRIPT``: :func:`autotrace.db.status_code_of`); the app's exception is re-raised untouched.

Supported: redis-py 4.2 and later (the asyncio cluster from 4.3, where it appeared); the
tests pass with 4.2.0, 4.6.0, 5.0.8, 6.4.0, 7.0.1 and 8.2.0.

Per call the hook does little: the connection pool's :class:`autotrace.db.Target` is
built once and kept on the pool; the span's name and attributes are kept by the target,
per command name (the name, ``db.operation.name``) and, for a command whose text its
arguments alone make (one or two of str or bytes, not a hidden one: ``GET user:42``),
per arguments, so a repeated read starts its span from a dict look-up
(:func:`autotrace.db.start_cached`); other commands make their text from the arguments as
they are. A sync command whose span is kept so goes from start to close in one C call
(:data:`autotrace.db.compiled_call`, where the extension is built).
"""

from __future__ import annotations

from autotrace import db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable

LIBRARY = "redis"
NOT_HANDLED = db.NOT_HANDLED
SYSTEM = "redis"

# The attribute a connection pool keeps its Target in.
TARGET_ATTRIBUTE = "_autotrace_db_target"

# Commands whose arguments are never recorded: secrets (passwords), or data rather than a key.
HIDDEN_ARGUMENTS = frozenset(
    ("AUTH", "HELLO", "MIGRATE", "ACL", "CONFIG", "ECHO", "EVAL", "EVAL_RO", "SCRIPT", "FUNCTION")
)

# Each argument of a raw text is cut to this many characters before it is joined (the
# whole text is capped by autotrace.db at 2,048 characters anyway).
_ARGUMENT_CHARS = 2048


# -- patching ---------------------------------------------------------------------------


def patch(module: ModuleType) -> None:
    """``redis.client``: the sync client and pipeline."""
    wrap_function(module.Redis, "execute_command", lambda original: _wrap_command(original, _pool_target))
    wrap_function(module.Pipeline, "immediate_execute_command", lambda original: _wrap_command(original, _pool_target))
    wrap_function(module.Pipeline, "execute", lambda original: _wrap_pipeline(original, _pool_target))


def patch_asyncio(module: ModuleType) -> None:
    """``redis.asyncio.client``: the asyncio client and pipeline."""
    wrap_function(module.Redis, "execute_command", lambda original: _wrap_command_async(original, _pool_target))
    wrap_function(module.Pipeline, "immediate_execute_command", lambda original: _wrap_command_async(original, _pool_target))
    wrap_function(module.Pipeline, "execute", lambda original: _wrap_pipeline_async(original, _pool_target))


def patch_cluster(module: ModuleType) -> None:
    """``redis.cluster``: the sync cluster client and its pipeline."""
    wrap_function(module.RedisCluster, "execute_command", lambda original: _wrap_command(original, _cluster_target))
    wrap_function(module.ClusterPipeline, "execute", lambda original: _wrap_pipeline(original, _cluster_target))


def patch_asyncio_cluster(module: ModuleType) -> None:
    """``redis.asyncio.cluster``: the asyncio cluster client and its pipeline."""
    wrap_function(module.RedisCluster, "execute_command", lambda original: _wrap_command_async(original, _cluster_target))
    wrap_function(module.ClusterPipeline, "execute", lambda original: _wrap_pipeline_async(original, _cluster_target))


# -- wrappers ---------------------------------------------------------------------------


def _wrap_command(original: Callable, target_of: Callable[[Any], db.Target | None]):
    pooled = target_of is _pool_target

    def execute_command(self, *args, **options):
        try:  # the target (every command passes here)
            if pooled:  # _pool_target's kept Target, inline (a frame less a command)
                target = self.connection_pool.__dict__[TARGET_ATTRIBUTE] if args else None
            else:
                target = target_of(self) if args else None
        except (KeyError, AttributeError):  # the pool's first command (or an odd pool)
            try:
                target = target_of(self)
            except Exception:  # noqa: BLE001 - an odd client: sent untraced
                target = None
        except Exception:  # noqa: BLE001 - an odd client: sent untraced
            target = None
        if target is None:
            return original(self, *args, **options)
        compiled = db.compiled_call  # the usual command, start to close in one C call
        if compiled is not None:
            result = compiled(LIBRARY, target, args, original, self, args, options)
            if result is not NOT_HANDLED:
                return result
        call = db.start_cached(LIBRARY, target, args, command_span)
        if call is None:
            return original(self, *args, **options)
        return db.run(call, original, self, *args, **options)

    return execute_command


def _wrap_command_async(original: Callable, target_of: Callable[[Any], db.Target | None]):
    async def execute_command(self, *args, **options):
        try:
            target = target_of(self) if args else None
        except Exception:  # noqa: BLE001
            target = None
        call = None if target is None else db.start_cached(LIBRARY, target, args, command_span)
        if call is None:
            return await original(self, *args, **options)
        return await db.run_async(call, original, self, *args, **options)

    return execute_command


def _wrap_pipeline(original: Callable, target_of: Callable[[Any], db.Target | None]):
    def execute(self, *args, **kwargs):
        call = _start_pipeline(self, target_of)
        if call is None:
            return original(self, *args, **kwargs)
        return db.run(call, original, self, *args, **kwargs)

    return execute


def _wrap_pipeline_async(original: Callable, target_of: Callable[[Any], db.Target | None]):
    async def execute(self, *args, **kwargs):
        call = _start_pipeline(self, target_of)
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return execute


def command_span(target: db.Target, args: tuple) -> tuple[str, dict[str, object]]:
    """The name and attributes of the span of the command ``args`` on ``target`` (for
    :func:`autotrace.db.start_cached`).

    What each command name gives (the name, ``db.operation.name`` and the target's
    attributes) is kept by the target under the name; the whole under ``args`` when the
    text depends on nothing else: a command of one or two arguments (``GET user:42``), each
    a str or bytes (``1 == True``, whose texts differ), whose arguments are shown.
    """
    operation, hidden = command_name(args[0])
    fixed = target.kept(operation)
    if fixed is None:
        attributes = dict(target.attributes)
        attributes["db.operation.name"] = operation
        fixed = (operation, attributes)
        target.keep(operation, fixed)  # a str: no command's arguments (a tuple) are equal to it
    mode = db.settings().statement
    if mode == "off":
        return fixed
    text = command_text(operation, args, hidden, mode == "raw")
    attributes = dict(fixed[1])
    attributes["db.query.text"] = db.cap(text)
    found = (operation, attributes)
    if len(args) <= 2 and not hidden and all(arg.__class__ is str or arg.__class__ is bytes for arg in args):
        target.keep(args, found)
    return found


def _start_pipeline(pipeline: Any, target_of: Callable[[Any], db.Target | None]) -> db.DbCall | None:
    """The span of a pipeline's ``execute``, or None (nothing queued: nothing is sent). Never raises."""
    try:
        parent = db.call_parent()
        if parent is None:
            return None
        target = target_of(pipeline)
        if target is None:
            return None
        commands = queued_commands(pipeline)
        if commands is None:
            size = len(pipeline)
        else:
            size = len(commands)
        if size == 0 and not getattr(pipeline, "watching", False):
            return None
        operation = "MULTI" if is_transaction(pipeline) else "PIPELINE"
        mode = db.settings().statement
        text = None
        if mode != "off" and commands:
            raw = mode == "raw"
            lines = []
            length = 0
            for args in commands:
                if not args:
                    continue
                name, hidden = command_name(args[0])
                line = command_text(name, args, hidden, raw)
                lines.append(line)
                length += len(line) + 1
                if length > _ARGUMENT_CHARS:
                    break  # the rest would be cut off anyway
            text = "\n".join(lines)
        return db.start(LIBRARY, target, name=operation, operation=operation, query_text=text, batch_size=size, parent=parent)
    except Exception:  # noqa: BLE001 - a pipeline of a version we do not know: sent untraced
        return None


# -- targets ----------------------------------------------------------------------------


def _pool_target(client: Any) -> db.Target | None:
    """The Target of a client's connection pool, made at its first command and kept on the pool."""
    pool = client.connection_pool
    try:
        return pool.__dict__[TARGET_ATTRIBUTE]
    except (KeyError, AttributeError):
        pass
    target = pool_target(pool)
    try:
        setattr(pool, TARGET_ATTRIBUTE, target)
    except Exception:  # noqa: BLE001 - a pool with __slots__: made again at each command
        pass
    return target


def pool_target(pool: Any) -> db.Target:
    """What a connection pool's settings say: database index, host and port (or socket path)."""
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    database = kwargs.get("db", 0)
    path = kwargs.get("path")
    host = kwargs.get("host")
    port = kwargs.get("port")
    if path:
        return db.Target(SYSTEM, str(database), server_address=str(path), extra={"network.transport": "unix"})
    if host is None:  # Sentinel: the address is looked up at connect
        return db.Target(SYSTEM, str(database))
    return db.Target(SYSTEM, str(database), server_address=str(host), server_port=_port(port, 6379))


_CLUSTER_TARGET: list[db.Target] = []  # made at the first cluster command


def _cluster_target(client: Any) -> db.Target:
    """Every cluster client's Target: database 0, no address (each command picks its node)."""
    if not _CLUSTER_TARGET:
        _CLUSTER_TARGET.append(db.Target(SYSTEM, "0"))
    return _CLUSTER_TARGET[0]


def _port(port: object, default: int) -> int | None:
    if port is None:
        return default
    try:
        return int(port)
    except (TypeError, ValueError):
        return None


# -- commands ---------------------------------------------------------------------------

_names: dict[object, tuple[str, bool]] = {}
_NAMES_CACHED = 1024


def command_name(command: object) -> tuple[str, bool]:
    """The command in upper case (``db.operation.name``), and whether its arguments are hidden."""
    found = _names.get(command)
    if found is not None:
        return found
    text = _text(command).upper()
    found = (text, text.partition(" ")[0] in HIDDEN_ARGUMENTS)
    if len(_names) < _NAMES_CACHED and isinstance(command, (str, bytes)):
        _names[command] = found
    return found


def command_text(name: str, args: tuple, hidden: bool, raw: bool) -> str:
    """``db.query.text`` of one command: its name, then its key (or every argument when
    ``raw``), the other arguments as ``?``; all of them ``?`` when ``hidden``."""
    count = len(args)
    if count == 1:
        return name
    if hidden:
        return name + " ?" * (count - 1)
    if not raw:
        if count == 2:
            return f"{name} {_text(args[1])}"
        return f"{name} {_text(args[1])}" + " ?" * (count - 2)
    parts = [name]
    length = len(name)
    for argument in args[1:]:
        part = _text(argument)
        parts.append(part)
        length += len(part) + 1
        if length > _ARGUMENT_CHARS:
            break  # the rest would be cut off
    return " ".join(parts)


def _text(value: object) -> str:
    """An argument as text: str as it is, bytes decoded (bad bytes replaced), numbers written out."""
    if isinstance(value, str):
        return value if len(value) <= _ARGUMENT_CHARS else value[:_ARGUMENT_CHARS]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value[:_ARGUMENT_CHARS]).decode("utf-8", "replace")
    if isinstance(value, (int, float)):
        return str(value)
    return "?"  # an object redis-py would encode its own way


# -- pipelines --------------------------------------------------------------------------


def queued_commands(pipeline: Any) -> list[tuple] | None:
    """The argument tuples of a pipeline's queued commands; None if this version keeps them elsewhere.

    ``Pipeline``: ``command_stack`` of ``(args, options)``; ``ClusterPipeline``: its own
    ``command_stack`` (sync, up to 5.x), ``_command_stack`` (asyncio, up to 5.x), or its
    strategy's ``command_queue`` / ``_command_queue`` (6.x and later), of objects with ``args``.
    """
    stack = getattr(pipeline, "command_stack", None) or getattr(pipeline, "_command_stack", None)
    if not stack:
        strategy = getattr(pipeline, "_execution_strategy", None)
        if strategy is not None:
            stack = getattr(strategy, "command_queue", None)
            if stack is None:
                stack = getattr(strategy, "_command_queue", None)
    if stack is None:
        return None
    commands = []
    for item in stack:
        args = item[0] if isinstance(item, tuple) else getattr(item, "args", None)
        if isinstance(args, tuple):
            commands.append(args)
    return commands


def is_transaction(pipeline: Any) -> bool:
    """Whether ``execute`` wraps the commands in MULTI/EXEC."""
    if getattr(pipeline, "explicit_transaction", False):
        return True
    for attribute in ("is_transaction", "transaction", "_transaction"):
        value = getattr(pipeline, attribute, None)
        if isinstance(value, bool):
            return value
    strategy = getattr(pipeline, "_execution_strategy", None)
    return strategy is not None and type(strategy).__name__.startswith("Transaction")
