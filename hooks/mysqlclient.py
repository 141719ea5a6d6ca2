"""mysqlclient (``MySQLdb``): each cursor ``execute``/``executemany``/``callproc`` is one CLIENT span; so are connect, commit, rollback.

Waits for ``MySQLdb.connections`` (``MySQLdb.connect`` imports it at the first connect;
it imports ``MySQLdb.cursors``). Patched:

- ``MySQLdb.cursors.BaseCursor``'s ``execute``, ``executemany``, ``callproc`` (Python
  methods, see :mod:`autotrace.dbapi`): every cursor class inherits them;
- ``MySQLdb.connections.Connection.__init__`` (``MySQLdb.connect`` makes one): a span
  ``connect``, only under a current span (see :func:`autotrace.db.start`);
- ``begin`` (Python) and ``commit``, ``rollback``: C methods of ``_mysql.connection``,
  which cannot be replaced there; ``Connection`` is a Python subclass, so the wrappers go
  on it (each call goes to the server: a span each).

The connection's :class:`autotrace.db.Target` is made when it connects (or at its first
call, for one made before the hook) and kept on it: ``db.system.name`` is ``mariadb`` when
``get_server_info()`` says so, else ``mysql``; ``db.namespace`` the database it was
opened with; ``server.address``/``server.port`` the ones it was given.
"""

from __future__ import annotations

from autotrace import db, dbapi
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "mysqlclient"
KEPT = "_autotrace_db_target"  # on the connection


def patch(module: ModuleType) -> None:
    connection_class = module.Connection
    driver = dbapi.Driver(LIBRARY, target)
    dbapi.patch_cursor(module.cursors.BaseCursor, driver)
    for name in ("commit", "rollback"):
        if name not in connection_class.__dict__:
            # The C base's method, defined on the subclass itself (the same callable), so
            # that it can be wrapped there.
            setattr(connection_class, name, getattr(connection_class, name))
    dbapi.patch_transactions(connection_class, driver)
    wrap_function(connection_class, "__init__", _wrap_init)


def target(connection) -> db.Target | None:
    """The connection's Target, kept on it."""
    try:
        kept = connection.__dict__.get(KEPT)
        if kept is None:
            kept = connection.__dict__[KEPT] = _make_target(connection)
        return kept
    except Exception:  # noqa: BLE001 - untraced, the driver does what it does
        return None


def _make_target(connection, given: db.Target | None = None) -> db.Target:
    """``given``: what ``connect`` was called with, for a mysqlclient that does not keep it (2.1.0)."""
    system = "mariadb" if "MariaDB" in (connection.get_server_info() or "") else "mysql"
    # host, db: kept by mysqlclient 2.1.1+; port: by its C type in newer versions.
    host = getattr(connection, "host", None)
    port = getattr(connection, "port", None)
    namespace = dbapi.text(getattr(connection, "db", None))
    return db.Target(
        system,
        namespace or (given.namespace if given is not None else None),
        host if isinstance(host, str) and host else (given.server_address if given is not None else None),
        port if isinstance(port, int) and port else (given.server_port if given is not None else None),
    )


def _given(kwargs: dict) -> db.Target:
    """The Target ``connect``'s keyword arguments name (before the server says what it is)."""
    host, port, socket = kwargs.get("host"), kwargs.get("port", 3306), kwargs.get("unix_socket")
    if isinstance(socket, str) and socket and not host:
        host, port = socket, None
    return db.Target(
        "mysql",
        dbapi.text(kwargs.get("database", kwargs.get("db"))),
        host if isinstance(host, str) and host else None,
        port if isinstance(port, int) and port else None,
    )


def _wrap_init(original):
    def __init__(self, *args, **kwargs):
        try:
            given = _given(kwargs)
            call = db.start(LIBRARY, given, name="connect")
        except Exception:  # noqa: BLE001
            given = call = None
        try:
            original(self, *args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.fail(exc)
                call.close()
            raise
        try:
            made = self.__dict__[KEPT] = _make_target(self, given)
        except Exception:  # noqa: BLE001 - made at the first call instead
            made = None
        if call is not None:
            if made is not None:
                call.set_attributes(made.attributes)  # mariadb or mysql, the address it used
            call.close()

    return __init__
