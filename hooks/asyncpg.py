"""asyncpg: each query the app awaits is one CLIENT span, in the task that awaits it.

Waits for ``asyncpg`` (which imports its ``connection``, ``pool``, ``prepared_stmt`` and
``cursor`` modules). Only the methods the app calls are patched, never the protocol under
them: asyncpg's own statements (type introspection, a cursor's fetches, the statement
cache's housekeeping) go through private methods and make no span, so a request makes one
span per query it awaits, not thousands.

- ``Connection``: ``execute``, ``executemany``, ``fetch``, ``fetchval``, ``fetchrow``,
  ``fetchmany`` (asyncpg 0.30+), ``copy_from_table``, ``copy_from_query``,
  ``copy_to_table``, ``copy_records_to_table``: a span each. ``Transaction`` sends
  ``BEGIN``/``COMMIT``/``ROLLBACK``/savepoints with ``execute``: a span each, as they go to
  the server.
- ``prepare``: asyncpg sends Parse/Describe to the server and waits (introspecting unknown
  types too): a span ``PREPARE ...``. Then each use of the ``PreparedStatement``
  (``fetch``, ``fetchval``, ``fetchrow``, ``fetchmany``, ``executemany``, ``explain``) is
  a span of its own; ``explain(analyze=True)``'s transaction is inside its span.
- Cursors: ``await conn.cursor(...)`` (prepare and bind) is a span; ``async for`` over a
  cursor is one span for its first fetch (prepare, bind, the first rows); the fetches
  after it (``Cursor.fetch``, iteration) are not spans.
- Pools: ``Pool.fetch`` and the like call the connection's methods (through the
  connection proxy, which calls ``Connection``'s at call time): one span per query;
  ``acquire`` is none. What a pool runs when a connection goes back to it (asyncpg's
  reset query, a ``reset=`` callback) runs with instrumentation suppressed: no span.
- ``asyncpg.connect``: a span ``connect``, only under a current span (see
  :func:`autotrace.db.start`); so a pool opening a connection for a request makes one,
  a checkout of an open one none.

The connection's :class:`autotrace.db.Target` is made at its first traced call and kept
(weakly, by connection): ``server.address``/``server.port`` the address it connected to
(a Unix socket's path), ``db.namespace`` its database, ``network.peer.address`` the
socket's peer. They are read from asyncpg's private attributes, each guarded: one that
cannot be read is left out. Status code: the error's ``sqlstate``.

``AUTOTRACE_SQL_COMMENT=true`` adds its comment only to ``execute`` without arguments
(sent as a simple query); every other call uses asyncpg's statement cache, keyed by the
exact text, and stays byte-identical.
"""

from __future__ import annotations

import weakref

from autotrace import db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

LIBRARY = "asyncpg"
SYSTEM = "postgresql"

_targets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Connection methods whose first argument is the statement.
QUERY_METHODS = ("fetch", "fetchval", "fetchrow")
# Prepared statements' methods; those taking a sequence of argument tuples have a batch size.
PREPARED_METHODS = ("fetch", "fetchval", "fetchrow")
PREPARED_BATCH_METHODS = ("fetchmany", "executemany")


def patch(module: ModuleType) -> None:
    connection = module.connection.Connection
    wrap_function(connection, "execute", _wrap_execute)
    for name in QUERY_METHODS:
        wrap_function(connection, name, _wrap_query)
    for name in ("executemany", "fetchmany"):
        if name in connection.__dict__:
            wrap_function(connection, name, _wrap_query_batch)
    wrap_function(connection, "prepare", _wrap_prepare)
    wrap_function(connection, "copy_from_table", lambda original: _wrap_copy_table(original, "TO STDOUT"))
    wrap_function(connection, "copy_to_table", lambda original: _wrap_copy_table(original, "FROM STDIN"))
    wrap_function(connection, "copy_records_to_table", lambda original: _wrap_copy_table(original, "FROM STDIN"))
    wrap_function(connection, "copy_from_query", _wrap_copy_from_query)

    prepared = module.prepared_stmt.PreparedStatement
    for name in PREPARED_METHODS:
        wrap_function(prepared, name, _wrap_prepared)
    for name in PREPARED_BATCH_METHODS:
        if name in prepared.__dict__:
            wrap_function(prepared, name, _wrap_prepared_batch)
    wrap_function(prepared, "explain", _wrap_explain)

    cursor = module.cursor
    wrap_function(cursor.Cursor, "_init", _wrap_cursor_init)
    wrap_function(cursor.CursorIterator, "__anext__", _wrap_anext)

    holder = getattr(module.pool, "PoolConnectionHolder", None)
    if holder is not None:
        wrap_function(holder, "release", db.wrap_suppressed_async)  # a pool's reset: no span

    wrap_function(module.connection, "connect", _wrap_connect)
    if module.__dict__.get("connect") is getattr(module.connection.connect, "__wrapped__", None):
        wrap_function(module, "connect", _wrap_connect)  # asyncpg.connect, the same function


def target(connection) -> db.Target | None:
    """The connection's Target, made at its first traced call."""
    try:
        return _targets[connection]
    except KeyError:
        pass
    except Exception:  # noqa: BLE001 - not a connection a weak reference can name
        return None
    made = _make_target(connection)
    try:
        _targets[connection] = made
    except Exception:  # noqa: BLE001
        pass
    return made


def _make_target(connection) -> db.Target:
    address = port = database = peer = None
    try:
        addr = connection._addr
        if isinstance(addr, tuple) and len(addr) >= 2:
            address, port = str(addr[0]), int(addr[1])
        elif isinstance(addr, str):
            address = addr  # a Unix socket's path
    except Exception:  # noqa: BLE001 - left out
        pass
    try:
        database = connection._params.database
    except Exception:  # noqa: BLE001
        pass
    try:
        peername = connection._transport.get_extra_info("peername")
        if isinstance(peername, tuple) and peername:
            peer = peername[0]
    except Exception:  # noqa: BLE001
        pass
    return db.Target(SYSTEM, database if isinstance(database, str) and database else None, address, port, peer)


def _argument(args: tuple, kwargs: dict, name: str, index: int = 0) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _start(connection, statement_text: object, **start_kwargs: Any) -> db.DbCall | None:
    """The call's span; None inside a call in progress (asyncpg's own calls under it), or
    untraced (asked first: the statement of a call that gets no span is not even read)."""
    parent = db.call_parent()
    if parent is None:
        return None
    found = target(connection)
    if found is None:
        return None
    if not start_kwargs:  # its span's name and attributes kept by the connection's Target
        return db.start_cached(LIBRARY, found, statement_text, db.query_span)
    return db.start(LIBRARY, found, db.statement(statement_text), parent=parent, **start_kwargs)


def _wrap_execute(original):
    async def execute(self, *args, **kwargs):
        query = _argument(args, kwargs, "query")
        call = _start(self, query)
        if call is None:
            return await original(self, *args, **kwargs)
        if call.comment and len(args) == 1 and isinstance(query, str):
            # No arguments: a simple query, not in the statement cache; it may carry the comment.
            args = (db.with_comment(query, call),)
        return await db.run_async(call, original, self, *args, **kwargs)

    return execute


def _wrap_query(original):
    async def query_method(self, *args, **kwargs):
        call = _start(self, args[0] if args else kwargs.get("query"))
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return query_method


def _wrap_query_batch(original):
    """``executemany(command, args)``, ``fetchmany(query, args)``: one span with the batch size."""

    async def batch_method(self, *args, **kwargs):
        query = args[0] if args else kwargs.get("command", kwargs.get("query"))
        call = _start(self, query, batch_size=db.batch_size(_argument(args, kwargs, "args", 1)))
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return batch_method


def _wrap_prepare(original):
    async def prepare(self, *args, **kwargs):
        found = None if db.current() is not None else target(self)
        statement = db.statement(_argument(args, kwargs, "query")) if found is not None else None
        call = None
        if found is not None:
            summary = statement.summary if statement is not None else None
            call = db.start(
                LIBRARY,
                found,
                statement,
                name=f"PREPARE {summary}" if summary else "PREPARE",
                operation="PREPARE",
            )
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return prepare


def _prepared_start(statement, **start_kwargs: Any) -> db.DbCall | None:
    try:
        connection = statement._connection
        text = statement.get_query()
    except Exception:  # noqa: BLE001 - untraced
        return None
    return _start(connection, text, **start_kwargs)


def _wrap_prepared(original):
    async def prepared_method(self, *args, **kwargs):
        call = _prepared_start(self)
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return prepared_method


def _wrap_prepared_batch(original):
    async def prepared_batch_method(self, *args, **kwargs):
        call = _prepared_start(self, batch_size=db.batch_size(_argument(args, kwargs, "args")))
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return prepared_batch_method


def _wrap_explain(original):
    async def explain(self, *args, **kwargs):
        try:
            connection = self._connection
            text = "EXPLAIN " + self.get_query()
        except Exception:  # noqa: BLE001
            return await original(self, *args, **kwargs)
        call = _start(connection, text)
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return explain


def _table(args: tuple, kwargs: dict) -> str | None:
    table = _argument(args, kwargs, "table_name")
    schema = kwargs.get("schema_name")
    if not isinstance(table, str):
        return None
    return f"{schema}.{table}" if isinstance(schema, str) and schema else table


def _wrap_copy_table(original, direction: str):
    """``copy_from_table``, ``copy_to_table``, ``copy_records_to_table``: ``COPY table TO/FROM ...``."""

    async def copy_table(self, *args, **kwargs):
        table = _table(args, kwargs)
        call = None
        if table is not None:
            # The statement asyncpg builds, in short (the core names it COPY <table>);
            # the table as the app named it, whatever characters it holds.
            call = _start(self, f"COPY {table} {direction}", collection=table)
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return copy_table


def _wrap_copy_from_query(original):
    async def copy_from_query(self, *args, **kwargs):
        query = _argument(args, kwargs, "query")
        call = _start(self, f"COPY ({query}) TO STDOUT") if isinstance(query, str) else None
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return copy_from_query


def _wrap_cursor_init(original):
    """``await conn.cursor(...)``: the cursor's prepare and bind, one span."""

    async def _init(self, *args, **kwargs):
        try:
            call = _start(self._connection, self._query)
        except Exception:  # noqa: BLE001
            call = None
        if call is None:
            return await original(self, *args, **kwargs)
        return await db.run_async(call, original, self, *args, **kwargs)

    return _init


def _wrap_anext(original):
    """``async for`` over a cursor: its first fetch (prepare, bind, first rows) is a span; the others not."""

    def __anext__(self):
        try:
            first = not self._portal_name and not self._exhausted
        except Exception:  # noqa: BLE001
            first = False
        return _first_fetch(original, self) if first else original(self)

    return __anext__


async def _first_fetch(original, cursor):
    try:
        call = _start(cursor._connection, cursor._query)
    except Exception:  # noqa: BLE001
        call = None
    if call is None:
        return await original(cursor)
    with db.recording(call, ok=(StopAsyncIteration,)):  # StopAsyncIteration: no rows, the query succeeded
        return await original(cursor)


def _wrap_connect(original):
    async def connect(*args, **kwargs):
        try:
            host, port, database = kwargs.get("host"), kwargs.get("port"), kwargs.get("database")
            provisional = db.Target(
                SYSTEM,
                database if isinstance(database, str) and database else None,
                host if isinstance(host, str) and host else None,
                port if isinstance(port, int) and port else None,
            )
        except Exception:  # noqa: BLE001
            provisional = db.Target(SYSTEM)
        # Once connected: the address it connected to, its database.
        return await db.connect_async(LIBRARY, provisional, original, args, kwargs, target)

    return connect
