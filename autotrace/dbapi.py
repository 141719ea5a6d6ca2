"""DB-API 2.0 (PEP 249) drivers: the cursor and connection wrappers their hooks share.

A hook names its library and gives a function from a connection to its
:class:`autotrace.db.Target` (None: the call is left untraced, e.g. a connection it cannot
read). The wrappers:

- ``execute``: one span per call, the statement as written (placeholders, not values);
  with ``AUTOTRACE_SQL_COMMENT=true`` the sqlcommenter comment is appended to a ``str``
  statement (its ``%`` doubled when the driver formats the statement with parameters);
- ``executemany``: one span with ``db.operation.batch.size``; the driver's own
  ``execute`` calls under it (one per row, or one per multi-row INSERT chunk) start none
  (the core's nesting rule);
- ``callproc``: one span ``CALL name`` with ``db.stored_procedure.name``; the ``SET`` of
  the parameters the driver sends first is part of it;
- ``begin`` (PyMySQL and mysqlclient have one), ``commit`` and ``rollback``: one span
  each (they go to the server).

Every wrapper returns what the driver returned and re-raises the driver's exception
untouched, recorded on the span with its status code (:func:`autotrace.db.status_code_of`:
for the MySQL drivers the server's error number). A call made while a
database call is in progress (``executemany``'s own ``execute`` calls, statements a driver
runs while it connects) goes straight to the driver: its statement is not even read.
"""

from __future__ import annotations

from autotrace import db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    TargetOf = Callable[[Any], "db.Target | None"]


class Driver:
    """What the wrappers need to know of a driver."""

    __slots__ = ("library", "target_of")

    def __init__(self, library: str, target_of: TargetOf) -> None:
        self.library = library  # the tracer is autotrace.db.<library>
        self.target_of = target_of  # connection -> Target (None: untraced)


def patch_cursor(cursor_class: type, driver: Driver) -> None:
    """Wrap ``execute``, ``executemany`` and ``callproc`` where ``cursor_class`` defines them."""
    wrap_function(cursor_class, "execute", lambda original: _execute(original, driver))
    wrap_function(cursor_class, "executemany", lambda original: _executemany(original, driver))
    wrap_function(cursor_class, "callproc", lambda original: _callproc(original, driver))


def patch_transactions(connection_class: type, driver: Driver) -> None:
    """Wrap ``begin`` (a driver's own method, where it has one), ``commit`` and ``rollback``
    where ``connection_class`` defines them."""
    for name in ("begin", "commit", "rollback"):
        if name in connection_class.__dict__:
            wrap_function(connection_class, name, lambda original, sql=name.upper(): _end(original, driver, sql))


def cursor_target(cursor: Any, driver: Driver) -> db.Target | None:
    """The Target of a cursor's connection; None inside a database call, for a closed
    cursor, or one it cannot read."""
    if db.current() is not None:
        return None  # the outer call has the span
    try:
        connection = cursor.connection
        return None if connection is None else driver.target_of(connection)
    except Exception:  # noqa: BLE001 - untraced, the driver does what it does
        return None


def text(value: object) -> str | None:
    """A name the driver holds as str or bytes (a database, a procedure), as str; None when empty."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _execute(original: Callable, driver: Driver) -> Callable:
    library = driver.library
    target_of = driver.target_of

    def execute(self, query, args=None):
        # Asked first: a statement under another call (executemany's, SQLAlchemy's) is not even read.
        parent = db.call_parent()
        call = None
        if parent is not None:
            try:
                connection = self.connection
                target = None if connection is None else target_of(connection)
            except Exception:  # noqa: BLE001 - untraced, the driver does what it does
                target = None
            if target is not None:
                # Its span's name and attributes kept by the connection's Target.
                call = db.start_cached(library, target, query, db.query_span)
        if call is None:
            return original(self, query, args)
        if call.comment:
            query = _commented(query, args, call)
        return db.run(call, original, self, query, args)

    return execute


def _commented(query: object, args: object, call: db.DbCall) -> object:
    """The statement with the sqlcommenter comment when it is on (``str`` and ``bytes``
    statements); its ``%`` doubled when the driver %-formats the text (parameters given)."""
    return db.with_comment(query, call, percent_format=args is not None)  # type: ignore[arg-type]


def _executemany(original: Callable, driver: Driver) -> Callable:
    def executemany(self, query, args, *more, **kwargs):
        target = cursor_target(self, driver)
        call = None
        if target is not None and args:
            call = db.start(driver.library, target, db.statement(query, target.system), batch_size=db.batch_size(args))
        if call is None:
            return original(self, query, args, *more, **kwargs)
        return db.run(call, original, self, query, args, *more, **kwargs)

    return executemany


def _callproc(original: Callable, driver: Driver) -> Callable:
    def callproc(self, procname, *args, **kwargs):
        target = cursor_target(self, driver)
        name = text(procname)
        call = None
        if target is not None and name is not None:
            call = db.start(
                driver.library,
                target,
                db.statement(f"CALL {name}", target.system),
                name=f"CALL {name}",
                attributes={"db.stored_procedure.name": name, "db.query.summary": f"CALL {name}"},
            )
        if call is None:
            return original(self, procname, *args, **kwargs)
        return db.run(call, original, self, procname, *args, **kwargs)

    return callproc


def _end(original: Callable, driver: Driver, sql: str) -> Callable:
    def end(self, *args, **kwargs):
        try:
            target = None if db.current() is not None else driver.target_of(self)
        except Exception:  # noqa: BLE001
            target = None
        call = None if target is None else db.start(driver.library, target, db.statement(sql, target.system))
        if call is None:
            return original(self, *args, **kwargs)
        return db.run(call, original, self, *args, **kwargs)

    return end
