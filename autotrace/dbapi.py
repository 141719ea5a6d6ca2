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
- ``commit`` and ``rollback``: one span each (they go to the server).

Every wrapper returns what the driver returned and re-raises the driver's exception
untouched (recorded on the span with the server's error number).
"""

from __future__ import annotations

from autotrace import db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    TargetOf = Callable[[Any], "db.Target | None"]


def patch_cursor(cursor_class: type, library: str, target_of: TargetOf) -> None:
    """Wrap ``execute``, ``executemany`` and ``callproc`` where ``cursor_class`` defines them."""
    wrap_function(cursor_class, "execute", lambda original: _execute(original, library, target_of))
    wrap_function(cursor_class, "executemany", lambda original: _executemany(original, library, target_of))
    wrap_function(cursor_class, "callproc", lambda original: _callproc(original, library, target_of))


def patch_transactions(connection_class: type, library: str, target_of: TargetOf) -> None:
    """Wrap ``commit`` and ``rollback`` where ``connection_class`` defines them."""
    wrap_function(connection_class, "commit", lambda original: _end(original, library, target_of, "COMMIT"))
    wrap_function(connection_class, "rollback", lambda original: _end(original, library, target_of, "ROLLBACK"))


def cursor_target(cursor: Any, target_of: TargetOf) -> db.Target | None:
    """The Target of a cursor's connection; None for a closed cursor or one it cannot read."""
    try:
        connection = cursor.connection
        return None if connection is None else target_of(connection)
    except Exception:  # noqa: BLE001 - untraced, the driver does what it does
        return None


def text(value: object) -> str | None:
    """A name the driver holds as str or bytes (a database, a procedure), as str; None when empty."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def run(call: db.DbCall, original: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run the driver's method inside ``call``: the result untouched, an exception recorded and re-raised."""
    try:
        result = original(*args, **kwargs)
    except BaseException as exc:
        call.fail(exc)
        call.close()
        raise
    call.close()
    return result


def _execute(original: Callable, library: str, target_of: TargetOf) -> Callable:
    def execute(self, query, args=None):
        target = cursor_target(self, target_of)
        call = None if target is None else db.start(library, target, db.statement(query))
        if call is None:
            return original(self, query, args)
        return run(call, original, self, _commented(query, args, call), args)

    return execute


def _commented(query: object, args: object, call: db.DbCall) -> object:
    """The statement with the sqlcommenter comment when it is on (``str`` statements only)."""
    if not isinstance(query, str):
        return query
    commented = db.with_comment(query, call)
    if commented is query or args is None:
        return commented
    # The driver formats the statement with ``%`` when it has parameters: a ``%`` of the
    # comment (a URL-encoded tracestate) must reach the server as it is.
    return query + commented[len(query):].replace("%", "%%")


def _executemany(original: Callable, library: str, target_of: TargetOf) -> Callable:
    def executemany(self, query, args, *more, **kwargs):
        target = cursor_target(self, target_of)
        call = None
        if target is not None and args:
            call = db.start(library, target, db.statement(query), batch_size=_size(args))
        if call is None:
            return original(self, query, args, *more, **kwargs)
        return run(call, original, self, query, args, *more, **kwargs)

    return executemany


def _size(rows: object) -> int | None:
    """How many rows a parameter sequence has; None for an iterator (never consumed here)."""
    try:
        return len(rows)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        return None


def _callproc(original: Callable, library: str, target_of: TargetOf) -> Callable:
    def callproc(self, procname, *args, **kwargs):
        target = cursor_target(self, target_of)
        name = text(procname)
        call = None
        if target is not None and name is not None:
            call = db.start(
                library,
                target,
                db.statement(f"CALL {name}"),
                attributes={"db.stored_procedure.name": name},
            )
        if call is None:
            return original(self, procname, *args, **kwargs)
        return run(call, original, self, procname, *args, **kwargs)

    return callproc


def _end(original: Callable, library: str, target_of: TargetOf, sql: str) -> Callable:
    def end(self, *args, **kwargs):
        try:
            target = target_of(self)
        except Exception:  # noqa: BLE001
            target = None
        call = None if target is None else db.start(library, target, db.statement(sql))
        if call is None:
            return original(self, *args, **kwargs)
        return run(call, original, self, *args, **kwargs)

    return end
