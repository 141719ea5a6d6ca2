"""SQLAlchemy (1.4 and 2.x, sync and asyncio): one CLIENT span per statement the engine executes, in place of the driver's.

Waits for ``sqlalchemy.engine``. Listens to the engine events on the ``Engine`` class,
so every engine has them, the sync engine under an ``AsyncEngine`` too:

- ``before_cursor_execute``: the span starts (:func:`autotrace.db.start`) and is current
  while the driver runs. The driver's own hook (psycopg, asyncpg, PyMySQL, sqlite3 ...)
  sees a database call in progress and starts none: one span per statement, never the
  driver's next to it. Each cursor execution is one: a statement, each batch of an
  "insertmanyvalues" INSERT, a default or sequence SQLAlchemy runs before a statement.
- ``after_cursor_execute``: the span ends (fetching rows is not part of it).
- ``handle_error``: the exception is recorded (``error.type`` is that of SQLAlchemy's
  exception, the one the app gets, unchanged; ``db.response.status_code`` comes from the
  DBAPI error's SQLSTATE/errno) and the span ends.
- ``DefaultExecutionContext.handle_dbapi_exception``, which SQLAlchemy calls for a DBAPI
  error after ``handle_error``: it ends a span still open, where SQLAlchemy dispatches
  no ``handle_error`` (the ``skip_user_error_events`` option its MySQL dialect uses to
  probe tables); a span left open by any other path is ended when the connection
  executes its next statement.

asyncio engines: SQLAlchemy runs the sync engine's code in a greenlet whose context is
the task's own (greenlet's ``gr_context``, shared, not copied), so the span current in
the greenlet is current where the async driver is awaited: asyncpg's hook starts none.

Attributes come from the engine's URL and dialect (built once per engine):
``db.system.name`` from the dialect (``mariadb`` once SQLAlchemy has seen the server say
so), ``db.namespace`` the URL's database, ``server.address``/``server.port`` the URL's
host and port (the dialect's default port when the URL has a host and no port);
``db.query.text`` is the statement SQLAlchemy sends (placeholders, not values),
sanitised by :mod:`autotrace.db`; ``db.operation.batch.size`` for an ``executemany``.

Opening a connection to a server (the pool's, when a checkout needs a new one or
replaces one invalidated or recycled) is one span named ``connect``: the driver's
connect and SQLAlchemy's set-up of the connection under it (the dialect's
``on_connect``, the first connection's ``initialize`` queries), none of their own.
SQLite has none (no server, as the sqlite3 hook has it): its set-up runs untraced. The
pool's private ``_ConnectionRecord.__connect`` is wrapped for it, the one place that
covers both; the engine is found from the pool's dialect (``Engine.__init__`` notes it
there). Checking out a pooled connection is not a span, nor is anything the pool runs
then (``pool_pre_ping``'s ping runs with instrumentation suppressed).

With ``AUTOTRACE_SQL_COMMENT=true`` the sqlcommenter comment is appended to the
statement (its ``%`` doubled where the driver interpolates ``%s``), not to an
``executemany``, nor for asyncpg, whose statement cache keys on the text.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

from autotrace import _log, api, db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "sqlalchemy"
CALL = "_autotrace_db_call"  # the span of the statement a Connection is executing
TARGET = "_autotrace_db_target"  # an Engine's Target, once its dialect knows the server
ENGINE = "_autotrace_db_engine"  # on a dialect: a weak reference to its Engine
# The pool's connection record: its (name-mangled) method that opens the DBAPI connection
# and runs the pool's connect events, and the attribute holding its pool.
CONNECT = "_ConnectionRecord__connect"
POOL = "_ConnectionRecord__pool"

# Dialect name -> db.system.name where the two differ.
SYSTEMS = {"mssql": "microsoft.sql_server", "oracle": "oracle.db"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "microsoft.sql_server": 1433, "oracle.db": 1521}
# Drivers whose statements must stay byte-identical (they cache prepared statements by text).
NO_COMMENT_DRIVERS = frozenset({"asyncpg"})
INTERPOLATING = frozenset({"format", "pyformat"})  # a "%" in the statement must be doubled


def patch(module: ModuleType) -> None:
    import importlib

    from sqlalchemy import event

    # sqlalchemy.engine imports both while it runs: complete by now.
    engine_class = importlib.import_module("sqlalchemy.engine.base").Engine
    default = importlib.import_module("sqlalchemy.engine.default")
    for name, listener in LISTENERS:
        if not event.contains(engine_class, name, listener):
            # retval: the listener returns the statement (the sqlcommenter comment appended).
            event.listen(engine_class, name, listener, retval=name == "before_cursor_execute")
    wrap_function(default.DefaultExecutionContext, "handle_dbapi_exception", _ending_on_dbapi_error)
    # pool_pre_ping: 2.x pings through DefaultDialect._do_ping_w_event (which calls the
    # dialect's do_ping); 1.4 calls do_ping, which dialects override: each dialect class's
    # is wrapped when its engine runs its first statement (see _target).
    if "_do_ping_w_event" in default.DefaultDialect.__dict__:
        wrap_function(default.DefaultDialect, "_do_ping_w_event", _quiet_ping)
    else:
        wrap_function(default.DefaultDialect, "do_ping", _quiet_ping)
    record = importlib.import_module("sqlalchemy.pool.base")._ConnectionRecord
    if CONNECT in record.__dict__:
        wrap_function(engine_class, "__init__", _noting_the_engine)
        wrap_function(record, CONNECT, _traced_connect)


def _before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
    try:
        state = conn.__dict__
        stale = state.pop(CALL, None)
        if stale is not None:  # a statement whose end SQLAlchemy did not tell (see the docstring)
            stale.close()
        engine = conn.engine
        target = engine.__dict__.get(TARGET) or _target(engine)  # (1.4: wraps the dialect's ping at once)
        parent = db.call_parent()  # asked before the statement is read
        if parent is None:
            return statement, parameters
        if executemany:
            batch = _batch_size(parameters, context)
            call = db.start(LIBRARY, target, db.statement(statement, target.system), batch_size=batch, parent=parent)
        else:  # its span's name and attributes kept by the engine's Target
            call = db.start_cached(LIBRARY, target, statement, db.query_span)
        if call is None:
            return statement, parameters
        state[CALL] = call
        if not executemany and call.comment:
            statement = _commented(statement, parameters, context, engine.dialect, call)
    except Exception as exc:  # noqa: BLE001 - the statement runs regardless
        _log.warn_once("sqlalchemy-start", "autotrace: a SQLAlchemy statement could not be traced (%s: %s)", type(exc).__name__, exc)
    return statement, parameters


def _after_cursor_execute(conn, cursor, statement, parameters, context, executemany):
    try:
        call = conn.__dict__.pop(CALL, None)
        if call is not None:
            call.close()
    except Exception:  # noqa: BLE001
        pass


def _handle_error(exception_context) -> None:
    try:
        conn = exception_context.connection
        call = conn.__dict__.pop(CALL, None) if conn is not None else None
        if call is not None:
            original = exception_context.original_exception
            raised = exception_context.sqlalchemy_exception or original
            call.fail(raised, db.status_code_of(original))
            call.close()
    except Exception:  # noqa: BLE001 - the app gets its exception regardless
        pass
    return None  # SQLAlchemy raises its own exception, unchanged


def _ending_on_dbapi_error(original):
    def handle_dbapi_exception(self, e):
        try:
            call = self.root_connection.__dict__.pop(CALL, None)
            if call is not None:
                call.fail(e)
                call.close()
        except Exception:  # noqa: BLE001
            pass
        return original(self, e)

    return handle_dbapi_exception


def _quiet_ping(original):
    """``pool_pre_ping``'s ``SELECT 1`` is part of the checkout: instrumentation suppressed, no span."""

    def ping(self, dbapi_connection):
        return _suppressed(original, self, dbapi_connection)

    return ping


def _suppressed(function, *args):
    """``function(*args)`` with instrumentation suppressed: no span in it, the drivers' neither."""
    token = db.suppress()
    try:
        return function(*args)
    finally:
        api.detach(token)


def _noting_the_engine(original):
    def __init__(self, pool, dialect, *args, **kwargs):
        original(self, pool, dialect, *args, **kwargs)
        try:
            dialect.__dict__[ENGINE] = weakref.ref(self)
        except Exception:  # noqa: BLE001 - its connects are the driver's then
            pass

    return __init__


def _traced_connect(original):
    def connect(self):  # a _ConnectionRecord opening its DBAPI connection
        target = engine = None
        try:
            dialect = getattr(self, POOL)._dialect
            note = dialect.__dict__.get(ENGINE)
            engine = note() if note is not None else None
            if engine is not None:
                target = _target(engine)
        except Exception:  # noqa: BLE001 - the pool connects regardless
            pass
        if target is None:
            return original(self)
        if target.system == "sqlite":  # no server, no span (as sqlite3's hook has it), none in it
            return _suppressed(original, self)
        # Once connected, a MySQL dialect knows whether the server is MariaDB.
        return db.connect(LIBRARY, target, original, (self,), {}, lambda _result: _target(engine))

    return connect


def _target(engine) -> db.Target:
    target = engine.__dict__.get(TARGET)
    if target is None:
        dialect = engine.dialect
        if not hasattr(dialect, "_do_ping_w_event"):  # 1.4: the dialect's own do_ping (wrapped once)
            for cls in type(dialect).__mro__:
                if "do_ping" in cls.__dict__:
                    wrap_function(cls, "do_ping", _quiet_ping)
        url = engine.url
        name = dialect.name
        if getattr(dialect, "is_mariadb", False):
            name = "mariadb"
        system = SYSTEMS.get(name, name)
        host = url.host or None
        port = url.port
        if host is not None and port is None:
            port = DEFAULT_PORTS.get(system)
        namespace = url.database or (":memory:" if system == "sqlite" else None)  # as sqlite3's hook says
        target = db.Target(system, namespace, host, port)
        # Kept once the dialect has met the server (a MySQL dialect learns it is MariaDB then).
        if getattr(dialect, "server_version_info", None) is not None:
            engine.__dict__[TARGET] = target
    return target


def _batch_size(parameters, context) -> int | None:
    """The number of parameter sets of an ``executemany``.

    None for an "insertmanyvalues" batch (2.x), which SQLAlchemy also reports as
    executemany: one INSERT of many rows, its parameters one flat set.
    """
    style = getattr(context, "execute_style", None)
    if style is not None and style.name == "INSERTMANYVALUES":
        return None
    if isinstance(parameters, (list, tuple)) and parameters and isinstance(parameters[0], (Mapping, list, tuple)):
        return len(parameters)
    return None


def _commented(statement, parameters, context, dialect, call):
    """The statement with the sqlcommenter comment when it is on (``statement`` itself else)."""
    if dialect.driver in NO_COMMENT_DRIVERS:
        return statement
    # The driver interpolates the text (unless the statement has no parameters at all):
    # the comment's "%" written "%%".
    formatted = dialect.paramstyle in INTERPOLATING and not (not parameters and context is not None and getattr(context, "no_parameters", False))
    return db.with_comment(statement, call, percent_format=formatted)


# The engine events listened to, for patch() (and tests, which remove them).
LISTENERS = (
    ("before_cursor_execute", _before_cursor_execute),
    ("after_cursor_execute", _after_cursor_execute),
    ("handle_error", _handle_error),
)
