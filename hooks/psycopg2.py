"""psycopg2: each statement a cursor sends is one CLIENT span (PostgreSQL).

Waits for ``psycopg2`` (``connect``) and ``psycopg2.extras`` (``execute_batch``,
``execute_values``: see :func:`patch_extras`).

psycopg2's connection and cursor are C types whose methods cannot be replaced, so
``psycopg2.connect`` is patched to connect with a *subclass* of the connection class the
app asked for (``connection_factory``, psycopg2's own by default; one subclass per
class, made once). Its ``cursor()`` returns a subclass of the cursor class that would
have been used (the ``cursor_factory`` argument, else the connection's
``cursor_factory`` attribute, else what the app's connection class picks: ``DictCursor``
for ``DictConnection`` ...), whose ``execute``, ``executemany``, ``callproc``,
``copy_from``, ``copy_to`` and ``copy_expert`` start the spans. The objects the app
gets are instances of what it asked for. The traced classes sit *under* the app's in
the method resolution order (``Traced(AppCursor, CursorHook)``): an app class that
rewrites the query or logs it runs first, and the span covers what goes to the server.

- Named (server-side) cursors: the span is the ``execute`` (psycopg2 declares the
  cursor then); the fetches are not spans.
- ``connect``: a span named ``connect`` (when a span is current, as every database
  span: :func:`autotrace.db.start`), with the server's address once connected.
- ``commit``/``rollback``: a span only when a transaction is open (psycopg2 sends
  nothing otherwise, in autocommit mode among others).
- ``psycopg2.extras.execute_batch``/``execute_values``: one span for the whole call
  (one logical operation from the app's view, with ``db.operation.batch.size``), the
  cursor ``execute`` calls they make inside being part of it.
- ``sql.Composed`` statements: the text is ``as_string(connection)`` (what psycopg2
  itself sends; it quotes with the connection but talks to no server), sanitized.
- ``AUTOTRACE_SQL_COMMENT=true``: the span's context is appended to the text ``execute``
  sends when it is a str (not to ``executemany``, whose statement psycopg2 repeats).

Not traced: asynchronous connections (``async_=True``: ``execute`` only sends, the
result comes later through ``poll()``), a ``connection_factory`` or ``cursor_factory``
that is a function rather than a class, and connections made without
``psycopg2.connect`` (``extensions.connection(dsn)`` called directly).
"""

from __future__ import annotations

from autotrace import _log, db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "psycopg2"
NOT_HANDLED = db.NOT_HANDLED
SYSTEM = "postgresql"
# Where a traced connection and its cursors keep their Target (their own instance attribute).
TARGET = "_autotrace_target"

# Made by patch(): the subclasses of psycopg2's C types that carry the traced methods.
_connection_hook: type | None = None
_cursor_hook: type | None = None
_traced_connections: dict[type, type] = {}  # the app's connection class -> its traced subclass
_traced_cursors: dict[type, type] = {}  # the app's cursor class -> its traced subclass
_system_target: db.Target | None = None


def patch(module: ModuleType) -> None:
    global _connection_hook, _cursor_hook, _system_target
    extensions = module.extensions
    if _connection_hook is None or _connection_hook.__base__ is not extensions.connection:
        _system_target = db.Target(SYSTEM)
        _cursor_hook = _make_cursor_hook(extensions.cursor)
        _connection_hook = _make_connection_hook(extensions.connection, extensions.cursor, extensions.STATUS_BEGIN)
    wrap_function(module, "connect", _wrap_connect)


def patch_extras(module: ModuleType) -> None:
    """``execute_batch`` and ``execute_values``: one span each, the executes inside part of it."""
    wrap_function(module, "execute_batch", _wrap_batch)
    wrap_function(module, "execute_values", _wrap_batch)


def traced_connection_class(requested: object) -> type | None:
    """The traced subclass of connection class ``requested`` (made once), or None if it is not one."""
    return _traced_class(requested, _connection_hook, _traced_connections, "connections")


def traced_cursor_class(requested: object) -> type | None:
    """The traced subclass of cursor class ``requested`` (made once), or None if it is not one."""
    return _traced_class(requested, _cursor_hook, _traced_cursors, "cursors")


# Traced subclasses kept at most: an app that makes classes on the fly gets its first ones
# traced, then the rest untraced (one warning), rather than a cache that grows forever.
MAX_TRACED_CLASSES = 256


def _traced_class(requested: object, hook: type | None, cache: dict[type, type], what: str) -> type | None:
    if not isinstance(requested, type) or hook is None:
        return None  # a factory function: psycopg2 calls it, it is not traced
    try:
        found = cache.get(requested)
        if found is not None:
            return found
        if not issubclass(requested, hook.__base__):
            return None  # psycopg2 itself says what is wrong with it
        if issubclass(requested, hook):
            return requested  # traced already (an app subclassing a traced class)
        if len(cache) >= MAX_TRACED_CLASSES:
            _log.warn_once(f"psycopg2-classes-{what}", "psycopg2: more than %d %s classes; %s of the others are not traced", MAX_TRACED_CLASSES, what[:-1], what)
            return None
        return cache.setdefault(requested, _subclass(requested, hook))
    except Exception as exc:  # noqa: BLE001 - a class that cannot be subclassed so: untraced
        _log.warn_once(f"psycopg2-class:{what}:{type(exc).__name__}", "psycopg2: %s of %r are not traced (%s: %s)", what, requested, type(exc).__name__, exc)
        return None


def _subclass(requested: type, hook: type) -> type:
    """``class Traced(requested, hook)``, named as ``requested`` (what reprs and errors show)."""
    namespace = {"__module__": requested.__module__, "__qualname__": requested.__qualname__}
    bases = (hook,) if requested is hook.__base__ else (requested, hook)
    return type(requested.__name__, bases, namespace)


def _wrap_connect(original):
    def connect(dsn=None, connection_factory=None, cursor_factory=None, **kwargs):
        traced = None
        if not (kwargs.get("async") or kwargs.get("async_")):
            traced = traced_connection_class(connection_factory if connection_factory is not None else _connection_hook.__base__)
        if traced is None:
            return original(dsn, connection_factory, cursor_factory, **kwargs)
        return db.connect(
            LIBRARY,
            _system_target,
            original,
            (dsn, traced, cursor_factory),
            kwargs,
            lambda conn: getattr(conn, TARGET, None),
            lambda: _params_target(dsn, kwargs),
        )

    return connect


def connection_target(conn) -> db.Target:
    """The Target of a connected psycopg2 connection (made once per connection)."""
    try:
        info = conn.info
        return db.Target(SYSTEM, info.dbname or None, info.host or None, info.port or None)
    except Exception as exc:  # noqa: BLE001 - an odd connection: the system is still known
        _log.warn_once("psycopg2-target", "psycopg2: the server of a connection could not be read (%s: %s)", type(exc).__name__, exc)
        return db.Target(SYSTEM)


def _params_target(dsn, kwargs) -> db.Target:
    """The Target the connection parameters name (a connect that failed)."""
    try:
        from psycopg2 import extensions

        params = extensions.parse_dsn(extensions.make_dsn(dsn, **kwargs))
        port = params.get("port")
        host = params.get("host")
        return db.Target(
            SYSTEM,
            params.get("dbname") or None,
            host.split(",")[0] if host else None,
            int(port.split(",")[0]) if port else None,
        )
    except Exception:  # noqa: BLE001 - psycopg2 itself says what is wrong with them
        return _system_target


def _make_connection_hook(connection: type, cursor: type, status_begin: int) -> type:
    class ConnectionHook(connection):
        """Under the app's connection class: its Target, traced cursors, commit and rollback spans."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # connects
            _keep(self, connection_target(self))

        def cursor(self, *args, **kwargs):
            # What the app's classes above chose reaches here: the factory psycopg2 would use.
            if len(args) > 1:
                requested = args[1]
            else:
                requested = kwargs.get("cursor_factory")
            if requested is None:
                requested = self.cursor_factory or cursor
            traced = traced_cursor_class(requested)
            if traced is None:
                return super().cursor(*args, **kwargs)
            if len(args) > 1:
                args = (args[0], traced, *args[2:])
            else:
                kwargs["cursor_factory"] = traced
            made = super().cursor(*args, **kwargs)
            _keep(made, getattr(self, TARGET, None) or _system_target)
            return made

        def commit(self):
            if self.status != status_begin:
                return super().commit()  # nothing goes to the server
            return db.call(LIBRARY, getattr(self, TARGET, _system_target), None, super().commit, (), {}, operation="COMMIT")

        def rollback(self):
            if self.status != status_begin:
                return super().rollback()
            return db.call(LIBRARY, getattr(self, TARGET, _system_target), None, super().rollback, (), {}, operation="ROLLBACK")

    return ConnectionHook


def _keep(owner: object, target: db.Target) -> None:
    """Keep the Target on a traced connection or cursor (an app class refusing it: untraced)."""
    try:
        setattr(owner, TARGET, target)
    except Exception as exc:  # noqa: BLE001 - a __setattr__ or __slots__ of the app's class
        _log.warn_once("psycopg2-keep", "psycopg2: %s objects are not traced (%s: %s)", type(owner).__name__, type(exc).__name__, exc)


def _make_cursor_hook(cursor: type) -> type:
    class CursorHook(cursor):
        """Under the app's cursor class: a span for each call that sends a statement."""

        def execute(self, *args, **kwargs):
            query = args[0] if args else kwargs.get("query")
            target = getattr(self, TARGET, None)
            if target is not None and query.__class__ is str:  # _start's usual query, inline
                compiled = db.compiled_call  # start to close in one C call
                if compiled is not None:
                    result = compiled(LIBRARY, target, query, cursor.execute, self, args, kwargs)
                    if result is not NOT_HANDLED:
                        return result
                call = db.start_cached(LIBRARY, target, query, db.query_span)
            else:
                call = _start(self, query)
            if call is None:
                return cursor.execute(self, *args, **kwargs)
            if args and call.comment:
                args = _commented(args, kwargs.get("vars"), call)
            return db.run(call, cursor.execute, self, *args, **kwargs)

        def executemany(self, *args, **kwargs):
            query = args[0] if args else kwargs.get("query")
            params = args[1] if len(args) > 1 else kwargs.get("vars_list")
            call = _start(self, query, batch_size=db.batch_size(params))
            if call is None:
                return super().executemany(*args, **kwargs)
            return db.run(call, super().executemany, *args, **kwargs)

        def callproc(self, *args, **kwargs):
            name = args[0] if args else kwargs.get("procname")
            target = getattr(self, TARGET, None)
            if target is None or not isinstance(name, str):
                return super().callproc(*args, **kwargs)
            return db.call(
                LIBRARY,
                target,
                None,
                super().callproc,
                args,
                kwargs,
                name=f"CALL {name}",
                operation="CALL",
                attributes={"db.stored_procedure.name": name},
            )

        def copy_from(self, *args, **kwargs):
            return _copy_table(self, super().copy_from, args, kwargs)

        def copy_to(self, *args, **kwargs):
            return _copy_table(self, super().copy_to, args, kwargs)

        def copy_expert(self, *args, **kwargs):
            target = getattr(self, TARGET, None)
            if target is None:
                return super().copy_expert(*args, **kwargs)
            statement = db.statement_of(args[0] if args else kwargs.get("sql"), self.connection)
            return db.call(LIBRARY, target, statement, super().copy_expert, args, kwargs)

    return CursorHook


def _start(cursor, query, batch_size: int | None = None) -> db.DbCall | None:
    """The span of a statement ``cursor`` sends; None when it gets none (asked first: a
    statement under another call, SQLAlchemy's, is not even read)."""
    target = getattr(cursor, TARGET, None)
    if target is None:
        return None
    if batch_size is None and query.__class__ is str:
        # The usual query: its span's name and attributes kept by the connection's Target.
        return db.start_cached(LIBRARY, target, query, db.query_span)
    parent = db.call_parent()
    if parent is None:
        return None
    statement = db.statement(query) if query.__class__ is str else db.statement_of(query, cursor.connection)
    if statement is not None and batch_size is None:
        return db.start_statement(LIBRARY, target, statement, parent)
    return db.start(LIBRARY, target, statement, batch_size=batch_size, parent=parent)


def _commented(args: tuple, params: object, call: db.DbCall) -> tuple:
    """``args`` with the query (``args[0]``, a str) carrying the sqlcommenter comment, when asked.

    With parameters psycopg2 reads ``%`` in the text as a placeholder: the comment's is doubled.
    """
    query = args[0]
    if query.__class__ is not str:
        return args
    formatted = params is not None or len(args) > 1 and args[1] is not None
    return (db.with_comment(query, call, percent_format=formatted), *args[1:])


def _copy_table(cursor, original, args, kwargs):
    """``copy_from(file, table, ...)``/``copy_to(file, table, ...)``: a ``COPY {table}`` span."""
    target = getattr(cursor, TARGET, None)
    table = args[1] if len(args) > 1 else kwargs.get("table")
    if target is None or not isinstance(table, str):
        return original(*args, **kwargs)
    return db.call(LIBRARY, target, None, original, args, kwargs, operation="COPY", collection=table)


def _wrap_batch(original):
    def batch(*args, **kwargs):
        cursor = args[0] if args else kwargs.get("cur")
        target = getattr(cursor, TARGET, None)
        if target is None:
            return original(*args, **kwargs)
        query = args[1] if len(args) > 1 else kwargs.get("sql")
        params = args[2] if len(args) > 2 else kwargs.get("argslist")
        return db.call(LIBRARY, target, db.statement_of(query, cursor.connection), original, args, kwargs, batch_size=db.batch_size(params))

    return batch
