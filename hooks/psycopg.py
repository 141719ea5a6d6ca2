"""psycopg (3): each statement a cursor sends is one CLIENT span (PostgreSQL), sync and async.

Waits for ``psycopg`` (and ``psycopg_pool``: :func:`patch_pool`). Its cursors and
connections are Python classes: the methods are patched where they are defined, so
every cursor class (``Cursor``, ``ClientCursor``, ``RawCursor``, ``ServerCursor``, and
the ``Async`` ones), every connection however it was made, and so the connections of
``psycopg_pool`` pools (sync and async, which make them with
``connection_class.connect``) are traced alike. Taking a connection from a pool is not
a span, nor are the queries the pool runs for it on the way (:func:`patch_pool`).

- ``Cursor.execute``/``AsyncCursor.execute`` (and ``ServerCursor``'s, where the span is
  the ``DECLARE``: the fetches are not spans): one span. ``Connection.execute`` makes a
  cursor and calls its ``execute``: that one span.
- ``executemany``: one span, with ``db.operation.batch.size`` (psycopg pipelines the
  statements itself).
- ``stream(...)``: the span covers sending the query and getting its first row (when
  the driver first returns control); the rows after it are fetches, not spans.
- ``copy(...)``: a context manager; the span covers the COPY until the ``with`` block
  ends, when psycopg finishes it and the server answers (the data the block writes or
  reads is the operation). An exception leaving the block ends the COPY and is recorded.
- Pipelines (``conn.pipeline()``): one span per statement, ending when ``execute``
  returns, that is when the statement is queued. A server error is raised by psycopg
  when the pipeline syncs (at the end of the block, or a fetch): the statement spans
  do not have it.
- ``Connection.connect``/``AsyncConnection.connect`` (``psycopg.connect``, a pool adding
  a connection): a span named ``connect`` when a span is current, as every database span
  (a pool's own workers connect with none current: no span).
- ``commit``/``rollback``: a span only when a transaction is open (the server is told);
  so is the end of an outermost ``with conn.transaction():`` block (``COMMIT``, or
  ``ROLLBACK`` when the block raised). Its ``BEGIN``, and savepoints, are not spans.
- ``sql.SQL``/``sql.Composed`` statements: the text is ``as_string(connection)``, sanitized.
- ``AUTOTRACE_SQL_COMMENT=true``: the span's context is appended to the text ``execute``
  sends when it is a str and not to be prepared (``prepare=True``); a commented text
  differs at each call, so psycopg never prepares it by itself either.

``db.response.status_code`` is the error's ``sqlstate``. The Target (database, server
address and port, peer address) is read once per connection from ``conn.info``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

from autotrace import _log, db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "psycopg"
NOT_HANDLED = db.NOT_HANDLED
SYSTEM = "postgresql"
# Where a connection keeps its Target (its own instance attribute).
TARGET = "_autotrace_target"
IDLE = 0  # pq.TransactionStatus.IDLE: no transaction open, commit and rollback send nothing

_system_target: db.Target | None = None


def patch(module: ModuleType) -> None:
    global _system_target
    _system_target = db.Target(SYSTEM)
    for cursor in (module.Cursor, module.ServerCursor):
        wrap_function(cursor, "execute", _wrap_execute)
    wrap_function(module.Cursor, "executemany", _wrap_executemany)
    wrap_function(module.Cursor, "copy", _wrap_copy)
    wrap_function(module.Cursor, "stream", _wrap_stream)
    for cursor in (module.AsyncCursor, module.AsyncServerCursor):
        wrap_function(cursor, "execute", _wrap_async_execute)
    wrap_function(module.AsyncCursor, "executemany", _wrap_async_executemany)
    wrap_function(module.AsyncCursor, "copy", _wrap_async_copy)
    wrap_function(module.AsyncCursor, "stream", _wrap_async_stream)
    wrap_function(module.Connection, "connect", _wrap_connect)
    # ``psycopg.connect`` is ``Connection.connect`` as bound when psycopg was imported.
    wrap_function(module, "connect", lambda original: _wrap_module_connect(module.Connection))
    wrap_function(module.AsyncConnection, "connect", _wrap_async_connect)
    for name in ("commit", "rollback"):
        wrap_function(module.Connection, name, _wrap_end_transaction)
        wrap_function(module.AsyncConnection, name, _wrap_async_end_transaction)
    wrap_function(module.Transaction, "__exit__", _wrap_transaction_exit)
    wrap_function(module.AsyncTransaction, "__aexit__", _wrap_async_transaction_exit)


def patch_pool(module: ModuleType) -> None:
    """``psycopg_pool``: taking a connection (``getconn``, ``connection()``) is never a span.

    Its connections are psycopg's, traced as any (see :func:`patch`). The queries a
    checkout runs on the way (the ``check`` callback's) are not spans either; a connect
    it makes (a ``NullConnectionPool`` connects at each checkout) is one, as any connect
    the app waits for. ``open`` runs with instrumentation suppressed: the pool's workers
    (threads, or asyncio tasks, which take the context they are made in) would otherwise
    keep the context of the request that happened to open the pool, and make their
    connects and ``configure`` queries spans of it long after it ended.
    """
    wrap_function(module.ConnectionPool, "getconn", _wrap_getconn)
    wrap_function(module.AsyncConnectionPool, "getconn", _wrap_async_getconn)
    wrap_function(module.ConnectionPool, "open", db.wrap_suppressed)
    wrap_function(module.AsyncConnectionPool, "open", db.wrap_suppressed_async)


def connection_target(conn) -> db.Target:
    """The connection's Target, read from ``conn.info`` at its first statement and kept on
    it (``conn.__dict__[TARGET]``, which a query reads first)."""
    try:
        return conn.__dict__[TARGET]
    except KeyError:
        pass
    except Exception:  # noqa: BLE001 - no __dict__: an odd subclass
        return _system_target
    try:
        info = conn.info
        target = db.Target(SYSTEM, info.dbname or None, info.host or None, info.port or None, info.hostaddr or None)
    except Exception as exc:  # noqa: BLE001 - a closed or broken connection: psycopg says so
        _log.warn_once("psycopg-target", "psycopg: the server of a connection could not be read (%s: %s)", type(exc).__name__, exc)
        return _system_target
    conn.__dict__[TARGET] = target
    return target


# True while a pool hands out a connection (psycopg_pool's getconn): its queries are no spans.
_in_checkout: ContextVar[bool] = ContextVar("autotrace-psycopg-checkout", default=False)


def _start(cursor, query, batch_size: int | None = None) -> db.DbCall | None:
    """The span of a statement ``cursor`` sends; None when it gets none (asked first: a
    statement under another call, SQLAlchemy's or a pool's, is not even read)."""
    if _in_checkout.get():
        return None
    try:
        target = cursor._conn.__dict__[TARGET]
    except (AttributeError, KeyError):  # the connection's first statement (or an odd cursor)
        target = None
    if batch_size is None and target is not None and query.__class__ is str:
        # The usual query: its span's name and attributes kept by the connection's Target.
        return db.start_cached(LIBRARY, target, query, db.query_span)
    parent = db.call_parent()
    if parent is None:
        return None
    conn = getattr(cursor, "_conn", None)
    if conn is None:
        return None
    if target is None:
        target = connection_target(conn)
    statement = db.statement_of(query, conn)
    if statement is not None and batch_size is None:
        return db.start_statement(LIBRARY, target, statement, parent)
    return db.start(LIBRARY, target, statement, batch_size=batch_size, parent=parent)


def _commented(args: tuple, kwargs: dict, call: db.DbCall) -> tuple:
    """``args`` with the query (``args[0]``, a str) carrying the sqlcommenter comment, when asked.

    Not for a statement to prepare (``prepare=True``: it must stay byte-identical). With
    parameters psycopg reads ``%`` in the text as a placeholder: the comment's is doubled.
    """
    query = args[0]
    if query.__class__ is not str or kwargs.get("prepare"):
        return args
    formatted = len(args) > 1 and args[1] is not None or kwargs.get("params") is not None
    return (db.with_comment(query, call, percent_format=formatted), *args[1:])


def _wrap_execute(original):
    def execute(self, *args, **kwargs):
        query = args[0] if args else kwargs.get("query")
        try:  # _start's usual query, inline: its span's name and attributes kept by the connection's Target
            target = None if _in_checkout.get() or query.__class__ is not str else self._conn.__dict__[TARGET]
        except (AttributeError, KeyError):  # the connection's first statement (or an odd cursor)
            target = None
        if target is None:
            call = _start(self, query)
        else:
            compiled = db.compiled_call  # the usual query, start to close in one C call
            if compiled is not None:
                result = compiled(LIBRARY, target, query, original, self, args, kwargs)
                if result is not NOT_HANDLED:
                    return result
            call = db.start_cached(LIBRARY, target, query, db.query_span)
        if call is None:
            return original(self, *args, **kwargs)
        if args and call.comment:
            args = _commented(args, kwargs, call)
        return db.run(call, original, self, *args, **kwargs)

    return execute


def _wrap_async_execute(original):
    async def execute(self, *args, **kwargs):
        query = args[0] if args else kwargs.get("query")
        try:  # _start's usual query, inline: its span's name and attributes kept by the connection's Target
            target = None if _in_checkout.get() or query.__class__ is not str else self._conn.__dict__[TARGET]
        except (AttributeError, KeyError):  # the connection's first statement (or an odd cursor)
            target = None
        call = _start(self, query) if target is None else db.start_cached(LIBRARY, target, query, db.query_span)
        if call is None:
            return await original(self, *args, **kwargs)
        if args and call.comment:
            args = _commented(args, kwargs, call)
        return await db.run_async(call, original, self, *args, **kwargs)

    return execute


def _wrap_executemany(original):
    def executemany(self, *args, **kwargs):
        query = args[0] if args else kwargs.get("query")
        params = args[1] if len(args) > 1 else kwargs.get("params_seq")
        call = _start(self, query, batch_size=db.batch_size(params))
        if call is None:
            return original(self, *args, **kwargs)
        return db.run(call, original, self, *args, **kwargs)

    return executemany


def _wrap_async_executemany(original):
    async def executemany(self, *args, **kwargs):
        query = args[0] if args else kwargs.get("query")
        params = args[1] if len(args) > 1 else kwargs.get("params_seq")
        call = _start(self, query, batch_size=db.batch_size(params))
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return executemany


def _wrap_copy(original):
    @contextmanager
    def copy(self, *args, **kwargs):
        call = _start(self, args[0] if args else kwargs.get("statement"))
        with db.recording(call), original(self, *args, **kwargs) as copying:
            yield copying

    return copy


def _wrap_async_copy(original):
    @asynccontextmanager
    async def copy(self, *args, **kwargs):
        call = _start(self, args[0] if args else kwargs.get("statement"))
        with db.recording(call):
            async with original(self, *args, **kwargs) as copying:
                yield copying

    return copy


_NO_ROW = object()


def _wrap_stream(original):
    def stream(self, *args, **kwargs):
        rows = original(self, *args, **kwargs)  # a generator: nothing is sent before its first row is asked for
        call = _start(self, args[0] if args else kwargs.get("query"))
        if call is not None:
            with db.recording(call):
                first = next(rows, _NO_ROW)
            if first is _NO_ROW:
                return
            yield first
        yield from rows

    return stream


def _wrap_async_stream(original):
    async def stream(self, *args, **kwargs):
        rows = original(self, *args, **kwargs)
        try:  # the app leaving its loop early closes this generator: psycopg's is closed with it
            call = _start(self, args[0] if args else kwargs.get("query"))
            if call is not None:
                try:
                    with db.recording(call, ok=(StopAsyncIteration,)):
                        first = await rows.__anext__()
                except StopAsyncIteration:
                    return
                yield first
            async for row in rows:
                yield row
        finally:
            await rows.aclose()

    return stream


def _wrap_end_transaction(original):
    operation = original.__name__.upper()  # COMMIT, ROLLBACK

    def end_transaction(self):
        if _transaction_status(self) == IDLE:
            return original(self)  # nothing goes to the server
        return db.call(LIBRARY, connection_target(self), None, original, (self,), {}, operation=operation)

    return end_transaction


def _wrap_async_end_transaction(original):
    operation = original.__name__.upper()

    async def end_transaction(self):
        if _transaction_status(self) == IDLE:
            return await original(self)
        return await db.call_async(LIBRARY, connection_target(self), None, original, (self,), {}, operation=operation)

    return end_transaction


def _wrap_transaction_exit(original):
    def __exit__(self, exc_type, exc_val, exc_tb):
        operation = _transaction_end(self, exc_val)
        if operation is None:
            return original(self, exc_type, exc_val, exc_tb)
        args = (self, exc_type, exc_val, exc_tb)
        return db.call(LIBRARY, connection_target(self._conn), None, original, args, {}, operation=operation)

    return __exit__


def _wrap_async_transaction_exit(original):
    async def __aexit__(self, exc_type, exc_val, exc_tb):
        operation = _transaction_end(self, exc_val)
        if operation is None:
            return await original(self, exc_type, exc_val, exc_tb)
        args = (self, exc_type, exc_val, exc_tb)
        return await db.call_async(LIBRARY, connection_target(self._conn), None, original, args, {}, operation=operation)

    return __aexit__


def _transaction_end(transaction, exc_val) -> str | None:
    """What the end of a ``conn.transaction()`` block sends: COMMIT, ROLLBACK, or None.

    None for a nested block (a savepoint released or rolled back to) and a broken
    connection (psycopg sends nothing then).
    """
    try:
        if not transaction._outer_transaction or transaction.pgconn.status != 0:  # 0: CONNECTION_OK
            return None
        return "ROLLBACK" if exc_val is not None or transaction.force_rollback else "COMMIT"
    except Exception:  # noqa: BLE001 - a psycopg version without these: no span
        return None


def _wrap_getconn(original):
    def getconn(self, *args, **kwargs):
        token = _in_checkout.set(True)
        try:
            return original(self, *args, **kwargs)
        finally:
            _in_checkout.reset(token)

    return getconn


def _wrap_async_getconn(original):
    async def getconn(self, *args, **kwargs):
        token = _in_checkout.set(True)
        try:
            return await original(self, *args, **kwargs)
        finally:
            _in_checkout.reset(token)

    return getconn


def _transaction_status(conn) -> int:
    try:
        return conn.pgconn.transaction_status
    except Exception:  # noqa: BLE001 - psycopg itself says what is wrong
        return IDLE


def _wrap_connect(original):
    def connect(cls, *args, **kwargs):
        return db.connect(
            LIBRARY, _system_target, original, (cls, *args), kwargs, connection_target, lambda: _params_target(args, kwargs)
        )

    return connect


def _wrap_module_connect(connection: type):
    def connect(*args, **kwargs):
        return connection.connect(*args, **kwargs)

    return connect


def _wrap_async_connect(original):
    async def connect(cls, *args, **kwargs):
        return await db.connect_async(
            LIBRARY, _system_target, original, (cls, *args), kwargs, connection_target, lambda: _params_target(args, kwargs)
        )

    return connect


def _params_target(args, kwargs) -> db.Target:
    """The Target the connection parameters name (a connect that failed)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(args[0] if args else kwargs.get("conninfo", ""))
        params.update((key, kwargs[key]) for key in ("dbname", "host", "port") if kwargs.get(key) is not None)
        host = params.get("host")
        port = params.get("port")
        return db.Target(
            SYSTEM,
            str(params["dbname"]) if params.get("dbname") else None,
            str(host).split(",")[0] if host else None,
            int(str(port).split(",")[0]) if port else None,
        )
    except Exception:  # noqa: BLE001 - psycopg itself says what is wrong with them
        return _system_target
