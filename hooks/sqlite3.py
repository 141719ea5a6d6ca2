"""sqlite3 (the standard library's): each ``execute``, ``executemany``, ``executescript`` is one CLIENT span.

Waits for ``sqlite3`` (its package imports ``sqlite3.dbapi2`` first, so both are there).
``sqlite3.Connection`` and ``sqlite3.Cursor`` are C types whose methods cannot be
replaced, so ``connect`` (``sqlite3.connect`` and ``sqlite3.dbapi2.connect``) is
wrapped instead: it passes ``factory=`` a subclass of the Connection class the app asked
for (``sqlite3.Connection``, or its own ``factory=``), made once per class, which

- hands out cursors of a subclass of the cursor class asked for (``cursor()``,
  ``cursor(MyCursor)``), made once per class, whose ``execute``, ``executemany`` and
  ``executescript`` each run in a span;
- runs its own ``execute``, ``executemany`` and ``executescript`` the way CPython does
  (a cursor of the base class, then the cursor's method), with such a cursor, so the
  cursor they return traces the queries run on it later too. Where the app's class
  overrides one of them, its method runs, in one span.

What the app gets are instances of the classes it asked for (subclasses of them).
Connections made without ``connect`` (``sqlite3.Connection(path)``), and cursors a
Connection class of the app's own makes in a ``cursor()`` override that ignores the
factory, are not traced.

Span content: ``db.system.name`` ``sqlite``; ``db.namespace``: the database as given to
``connect`` (a file path, ``:memory:``; a ``file:`` URI without its query), the database
being the file; ``db.query.text`` sanitized (:func:`autotrace.db.sanitize`);
``db.operation.batch.size`` for an ``executemany`` given a list or tuple of 2 or more
parameter sets (an iterator is never consumed to count it). With
``AUTOTRACE_SQL_COMMENT=true`` ``execute`` and ``executescript`` send the statement with
the span's ``traceparent`` appended (:func:`autotrace.db.with_comment`); ``executemany``
never does. An exception (bad SQL) is recorded with ``db.response.status_code`` (SQLite's
error name, Python 3.11+) and re-raised untouched.
"""

from __future__ import annotations

import os
import threading

from autotrace import db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable

LIBRARY = "sqlite3"
SYSTEM = "sqlite"
TARGET = "autotrace_target"  # the slot of a traced connection holding its db.Target

_DEFAULT_TARGET = db.Target(SYSTEM)
_FACTORY_POSITION = 5  # connect(database, timeout, detect_types, isolation_level, check_same_thread, factory, ...)


def patch(module: ModuleType) -> None:
    classes = _Classes(module.Connection, module.Cursor)
    wrap_function(module, "connect", lambda original: _wrap_connect(original, classes))
    dbapi2 = getattr(module, "dbapi2", None)
    if dbapi2 is not None and dbapi2 is not module and getattr(dbapi2, "connect", None) is getattr(module.connect, "__wrapped__", None):
        wrap_function(dbapi2, "connect", lambda original: _wrap_connect(original, classes))


def _wrap_connect(original: Callable[..., Any], classes: _Classes) -> Callable[..., Any]:
    def connect(*args, **kwargs):
        traced = None
        try:
            positional = len(args) > _FACTORY_POSITION
            requested = args[_FACTORY_POSITION] if positional else kwargs.get("factory", classes.connection)
            traced = classes.connection_class(requested)
            if traced is not None and traced is not requested:
                if positional:
                    args = (*args[:_FACTORY_POSITION], traced, *args[_FACTORY_POSITION + 1 :])
                else:
                    kwargs["factory"] = traced
        except Exception:  # noqa: BLE001 - connect as the app asked
            traced = None
        connection = original(*args, **kwargs)
        if traced is not None and isinstance(connection, traced):
            try:
                database = args[0] if args else kwargs.get("database")
                setattr(connection, TARGET, target(database, bool(kwargs.get("uri", len(args) > 7 and args[7]))))
            except Exception:  # noqa: BLE001 - the connection is traced with the default target
                pass
        return connection

    return connect


def target(database: object, uri: bool = False) -> db.Target:
    """The :class:`~autotrace.db.Target` of a connection to ``database`` (as given to ``connect``)."""
    try:
        name = os.fsdecode(database) if database is not None else ""
    except (TypeError, ValueError):
        name = ""
    if uri and name.startswith("file:"):
        name = name.partition("?")[0].partition("#")[0]
    return db.Target(SYSTEM, name or None)


class _Classes:
    """The traced subclasses, made once per class the app asks for.

    Plain dicts (class -> its traced subclass; a traced class -> itself), looked up at
    each ``connect`` and ``cursor()``; at most :data:`MAX_CLASSES` each, so an app
    that makes a class per connection does not grow them without bound (past that, its
    classes get a traced subclass each time, not cached).
    """

    MAX_CLASSES = 256

    def __init__(self, connection: type, cursor: type) -> None:
        self.connection = connection  # sqlite3.Connection
        self.cursor = cursor  # sqlite3.Cursor
        self._connections: dict[type, type] = {}
        self._cursors: dict[type, type] = {}
        self._lock = threading.RLock()  # one traced class per class; re-entered: a connection class makes a cursor class

    def connection_class(self, requested: object) -> type | None:
        """The traced subclass of ``requested`` (itself if it is one); None if it is no Connection class."""
        found = self._connections.get(requested)  # type: ignore[call-overload]
        if found is not None:
            return found
        if not isinstance(requested, type) or not issubclass(requested, self.connection):
            return None  # sqlite3 says what is wrong with it
        return self._make(self._connections, requested, lambda: _connection_class(requested, self))

    def cursor_class(self, requested: object) -> type | None:
        """The traced subclass of ``requested`` (itself if it is one); None if it is no Cursor class."""
        found = self._cursors.get(requested)  # type: ignore[call-overload]
        if found is not None:
            return found
        if not isinstance(requested, type) or not issubclass(requested, self.cursor):
            return None  # a factory function: its cursor is not traced
        return self._make(self._cursors, requested, lambda: _cursor_class(requested))

    def _make(self, made: dict[type, type], requested: type, make: Callable[[], type]) -> type:
        with self._lock:
            found = made.get(requested)
            if found is None:
                found = make()
                if len(made) < 2 * self.MAX_CLASSES:
                    made[requested] = made[found] = found
        return found


def _connection_class(cls: type, classes: _Classes) -> type:
    base = classes.connection
    base_cursor = base.cursor  # the C method, as CPython's Connection.execute uses it
    plain_cursor = classes.cursor_class(classes.cursor)
    namespace: dict[str, Any] = {"__slots__": (TARGET,), "__module__": cls.__module__, "__doc__": cls.__doc__}

    cursor_method = cls.cursor

    def cursor(self, *args, **kwargs):
        try:
            requested = args[0] if args else kwargs.get("factory", classes.cursor)
            traced = classes.cursor_class(requested)
            if traced is not None:
                if args:
                    args = (traced, *args[1:])
                else:
                    kwargs["factory"] = traced
        except Exception:  # noqa: BLE001
            pass
        return cursor_method(self, *args, **kwargs)

    namespace["cursor"] = cursor
    for name in ("execute", "executemany", "executescript"):
        own = getattr(cls, name)
        if own is getattr(base, name):
            namespace[name] = _through_cursor(name, base_cursor, plain_cursor)
        else:  # the app's override runs in the span
            namespace[name] = _spanned(name, own, _connection_target)
    return type(cls.__name__, (cls,), namespace)


def _through_cursor(name: str, base_cursor: Callable[..., Any], cursor_class: type) -> Callable[..., Any]:
    """Connection.execute... as CPython runs it: a new cursor of the base class, then its method."""

    def method(self, *args, **kwargs):
        return getattr(base_cursor(self, cursor_class), name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


def _cursor_class(cls: type) -> type:
    namespace: dict[str, Any] = {"__slots__": (), "__module__": cls.__module__, "__doc__": cls.__doc__}
    for name in ("execute", "executemany", "executescript"):
        namespace[name] = _spanned(name, getattr(cls, name), _cursor_target)
    return type(cls.__name__, (cls,), namespace)


def _connection_target(connection) -> db.Target:
    return getattr(connection, TARGET, None) or _DEFAULT_TARGET


def _cursor_target(cursor) -> db.Target:
    return getattr(cursor.connection, TARGET, None) or _DEFAULT_TARGET


def _spanned(name: str, original: Callable[..., Any], target_of: Callable[[Any], db.Target]) -> Callable[..., Any]:
    """``original`` (a cursor's or connection's method) run in a span; its result or exception untouched."""
    many = name == "executemany"
    commented = not many

    def method(self, *args, **kwargs):
        call = None
        try:
            parent = db.call_parent()  # asked first: a statement that gets no span is not read
            if parent is not None:
                sql = args[0] if args else kwargs.get("sql", kwargs.get("sql_script"))
                if many:
                    batch = db.batch_size(args[1] if len(args) > 1 else kwargs.get("parameters", kwargs.get("seq_of_parameters")))
                    call = db.start(LIBRARY, target_of(self), db.statement(sql), batch_size=batch, parent=parent)
                else:  # its span's name and attributes kept by the connection's Target
                    call = db.start_cached(LIBRARY, target_of(self), sql, db.query_span)
                if call is not None and commented and args and call.comment:
                    args = (db.with_comment(sql, call), *args[1:])
        except Exception:  # noqa: BLE001 - run the query as the app asked
            pass
        if call is None:
            return original(self, *args, **kwargs)
        # db.run, inline (every query passes here): the result or exception untouched.
        try:
            return original(self, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            call.close()

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(original, "__doc__", None)
    return method
