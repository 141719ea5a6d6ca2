"""PyMySQL: each cursor ``execute``/``executemany``/``callproc`` is one CLIENT span; so are connect, commit, rollback.

Waits for ``pymysql`` (which imports its ``connections`` and ``cursors``). Patched:

- ``pymysql.cursors.Cursor``'s ``execute``, ``executemany``, ``callproc`` (see
  :mod:`autotrace.dbapi`): every cursor class (``SSCursor``, ``DictCursor`` ...) inherits
  them. ``executemany`` is one span with ``db.operation.batch.size``, whether PyMySQL
  sends multi-row INSERTs or one ``execute`` per row;
- ``pymysql.connections.Connection.connect``: a span ``connect`` (the server's handshake,
  authentication, ``SET NAMES``, ``init_command``: one span, the statements inside it
  none), started, like every database span, only under a current span (see
  :func:`autotrace.db.start`);
- ``Connection.begin``, ``commit`` and ``rollback``: each goes to the server, each a span.

The connection's :class:`autotrace.db.Target` is made at its first traced call and kept
on it (remade if ``select_db`` changes its database): ``db.system.name`` is ``mariadb``
when the version string of the server's handshake (``server_version``) says so, else
``mysql``; ``db.namespace`` its database; ``server.address``/``server.port`` what it was
given (the socket path for a Unix socket); ``network.peer.address`` the socket's peer.
"""

from __future__ import annotations

from autotrace import db, dbapi
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "pymysql"
KEPT = "_autotrace_db_target"  # on the connection: (its db when made, the Target)


def patch(module: ModuleType) -> None:
    driver = dbapi.Driver(LIBRARY, target)
    dbapi.patch_cursor(module.cursors.Cursor, driver)
    dbapi.patch_transactions(module.connections.Connection, driver)
    wrap_function(module.connections.Connection, "connect", _wrap_connect)


def target(connection) -> db.Target | None:
    """The connection's Target: kept on it once the server's version is known."""
    try:
        kept = connection.__dict__.get(KEPT)
        database = connection.db
        if kept is not None and kept[0] is database:
            return kept[1]
        made = _make_target(connection)
        if getattr(connection, "server_version", None):
            connection.__dict__[KEPT] = (database, made)
        return made
    except Exception:  # noqa: BLE001 - untraced, the driver does what it does
        return None


def _make_target(connection) -> db.Target:
    version = getattr(connection, "server_version", None) or ""
    system = "mariadb" if "MariaDB" in version else "mysql"
    address, port = connection.host, connection.port
    if getattr(connection, "unix_socket", None):
        address, port = connection.unix_socket, None
    return db.Target(system, dbapi.text(connection.db), address, port, _peer(connection))


def _peer(connection) -> str | None:
    try:
        peer = connection._sock.getpeername()
    except Exception:  # noqa: BLE001 - not connected, or not a socket PyMySQL made
        return None
    return peer[0] if isinstance(peer, tuple) and peer else None


def _wrap_connect(original):
    def connect(self, *args, **kwargs):
        try:
            provisional = _make_target(self)  # the server's version is not known yet
        except Exception:  # noqa: BLE001
            provisional = None
        if provisional is None:
            return original(self, *args, **kwargs)
        # Once connected: mariadb or mysql, the peer.
        return db.connect(LIBRARY, provisional, original, (self, *args), kwargs, lambda _result: target(self))

    return connect
