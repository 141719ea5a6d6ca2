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
untouched, recorded on the span with the driver's status code (``status_code``; for the
MySQL drivers the server's error number, see :func:`error_number`). A call made while a
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
    StatusOf = Callable[[BaseException], "str | None"]


class Driver:
    """What the wrappers need to know of a driver."""

    __slots__ = ("library", "target_of", "status_code")

    def __init__(self, library: str, target_of: TargetOf, status_code: StatusOf | None = None) -> None:
        self.library = library  # the tracer is autotrace.db.<library>
        self.target_of = target_of  # connection -> Target (None: untraced)
        self.status_code = status_code  # exception -> db.response.status_code (None: db.status_code_of)


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


# The modules of the MySQL drivers' exceptions (pymysql.err, MySQLdb._exceptions).
MYSQL_ERROR_MODULES = frozenset(("pymysql", "MySQLdb"))


def error_number(exc: BaseException) -> str | None:
    """A MySQL driver error's number (``args[0]``), as MySQL's semantic conventions want it
    (not the SQLSTATE newer drivers also carry); None for any other exception."""
    try:
        if (type(exc).__module__ or "").partition(".")[0] in MYSQL_ERROR_MODULES:
            args = exc.args
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                return str(args[0])
    except Exception:  # noqa: BLE001
        pass
    return None


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


def run(call: db.DbCall, driver: Driver, original: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run the driver's method inside ``call``: the result untouched, an exception recorded and re-raised."""
    try:
        result = original(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc, driver.status_code(exc) if driver.status_code is not None else None)
        call.close()
        raise
    call.close()
    return result


def _execute(original: Callable, driver: Driver) -> Callable:
    def execute(self, query, args=None):
        target = cursor_target(self, driver)
        call = None if target is None else db.start(driver.library, target, db.statement(query, target.system))
        if call is None:
            return original(self, query, args)
        return run(call, driver, original, self, _commented(query, args, call), args)

    return execute


def _commented(query: object, args: object, call: db.DbCall) -> object:
    """The statement with the sqlcommenter comment when it is on (``str`` and ``bytes`` statements)."""
    if not isinstance(query, (str, bytes)):
        return query
    commented = db.with_comment(query, call)
    if commented is query or args is None:
        return commented
    # The driver formats the statement with ``%`` when it has parameters: a ``%`` of the
    # comment (a URL-encoded tracestate) must reach the server as it is.
    percent = "%" if isinstance(query, str) else b"%"
    if commented.count(percent) == query.count(percent):
        return commented  # no "%" in the comment
    if commented[: len(query)] != query:
        return query  # the comment went before a final ";": left out rather than parsed
    return query + commented[len(query):].replace(percent, percent * 2)


def _executemany(original: Callable, driver: Driver) -> Callable:
    def executemany(self, query, args, *more, **kwargs):
        target = cursor_target(self, driver)
        call = None
        if target is not None and args:
            call = db.start(driver.library, target, db.statement(query, target.system), batch_size=_size(args))
        if call is None:
            return original(self, query, args, *more, **kwargs)
        return run(call, driver, original, self, query, args, *more, **kwargs)

    return executemany


def _size(rows: object) -> int | None:
    """How many rows a parameter sequence has; None for an iterator (never consumed here)."""
    try:
        return len(rows)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        return None


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
        return run(call, driver, original, self, procname, *args, **kwargs)

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
        return run(call, driver, original, self, *args, **kwargs)

    return end
