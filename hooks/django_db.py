"""Django ORM: one CLIENT span per query a Django cursor runs, with the database alias; one per connect.

Two rows of the hook table (``django.db.backends.base.base`` imports ``utils``, so one
cannot be patched from the other's hook):

``django.db.backends.utils`` (:func:`patch`): ``CursorWrapper.execute``,
``executemany`` and ``callproc``: every query Django runs goes through them (the ORM,
``connection.cursor()`` in the app's code, migrations), ``CursorDebugWrapper`` (with
``DEBUG``) too, whose methods call these. The span covers the connection's
``execute_wrappers`` and the driver's call, and is current while the driver runs: the
driver's hook (psycopg, psycopg2, mysqlclient, sqlite3 ...) sees a database call in
progress and starts none.

``django.db.backends.base.base`` (:func:`patch_connect`): ``BaseDatabaseWrapper.connect``,
where Django opens a connection (each request's first query with the default
``CONN_MAX_AGE=0``) and sets it up: a span named ``connect``, the driver's connect and
the set-up queries (a ``SET TIME ZONE``, a MySQL ``sql_mode`` check, what
``connection_created`` receivers run) under it, none of their own. Not with
``OPTIONS["pool"]``: a connection checked out of psycopg's pool is not a span (the pool's
hook traces the connections it opens). Django's health checks of a connection it keeps
(``close_if_unusable_or_obsolete`` at a request's end after a database error,
``close_if_health_check_failed`` with ``CONN_HEALTH_CHECKS``: a ``SELECT 1`` or a ping)
run with instrumentation suppressed: housekeeping, no span.

Attributes, built once per Django connection (``DatabaseWrapper``) from its
``settings_dict`` and ``vendor``: ``db.system.name`` (``mariadb`` when the server said
so in its handshake, as mysqlclient has it), ``db.namespace`` (``NAME``), ``server.address``/``server.port`` (``HOST``,
``PORT``, the default port when only the host is set) and ``django.db.alias``, the
connection's alias in ``DATABASES`` (the name ddtrace uses: OpenTelemetry has none).
``db.query.text`` is the SQL as Django hands it to the driver (``%s`` placeholders, not
values), sanitised by :mod:`autotrace.db`; ``db.operation.batch.size`` for
``executemany``. ``callproc`` is named ``CALL {procedure}``, with
``db.stored_procedure.name``.

An exception (Django's, wrapping the driver's) is recorded, with the driver's SQLSTATE
or errno as ``db.response.status_code``, and re-raised untouched. With
``AUTOTRACE_SQL_COMMENT=true`` the sqlcommenter comment is appended to ``execute``'s SQL.
"""

from __future__ import annotations

from autotrace import _log, db
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "django"
ALIAS = "django.db.alias"
TARGET = "_autotrace_db_target"  # a DatabaseWrapper's Target
# Django's vendor -> db.system.name where the two differ.
SYSTEMS = {"oracle": "oracle.db", "microsoft": "microsoft.sql_server"}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "oracle.db": 1521}


def patch(module: ModuleType) -> None:
    cursor = module.CursorWrapper
    wrap_function(cursor, "execute", _traced_execute)
    wrap_function(cursor, "executemany", _traced_executemany)
    wrap_function(cursor, "callproc", _traced_callproc)


def patch_connect(module: ModuleType) -> None:
    wrapper = module.BaseDatabaseWrapper
    wrap_function(wrapper, "connect", _traced_connect)
    # Django's health checks of a kept connection (at a request's end after a database
    # error, or before reusing one with CONN_HEALTH_CHECKS): a "SELECT 1" or a ping.
    for name in ("close_if_unusable_or_obsolete", "close_if_health_check_failed"):
        if name in wrapper.__dict__:
            wrap_function(wrapper, name, db.wrap_suppressed)


def _traced_execute(original):
    def execute(self, sql, params=None):
        call = _start(self, sql)
        if call is None:
            return original(self, sql, params)
        sent = _commented(sql, params, call)
        return db.run(call, original, self, sent, params)

    return execute


def _traced_executemany(original):
    def executemany(self, sql, param_list):
        call = _start(self, sql, batch_size=db.batch_size(param_list))
        if call is None:
            return original(self, sql, param_list)
        return db.run(call, original, self, sql, param_list)

    return executemany


def _traced_callproc(original):
    def callproc(self, procname, *args, **kwargs):
        call = _start(self, None, procedure=procname)
        if call is None:
            return original(self, procname, *args, **kwargs)
        return db.run(call, original, self, procname, *args, **kwargs)

    return callproc


def _traced_connect(original):
    def connect(self):
        target = None
        try:
            if not (self.settings_dict.get("OPTIONS") or {}).get("pool"):
                target = _target(self)
        except Exception as exc:  # noqa: BLE001 - Django connects regardless
            _log.warn_once("django-db-connect", "autotrace: a Django connect could not be traced (%s: %s)", type(exc).__name__, exc)
        if target is None:
            return original(self)
        # Once connected, a MySQL server has said whether it is MariaDB.
        return db.connect(LIBRARY, target, original, (self,), {}, lambda _result: _target(self) if self.vendor == "mysql" else None)

    return connect


def _start(cursor, sql, batch_size: int | None = None, procedure: object = None) -> db.DbCall | None:
    try:
        target = _target(cursor.db)
        if procedure is None:
            return db.start(LIBRARY, target, db.statement(sql, target.system), batch_size=batch_size)
        name = str(procedure)
        return db.start(LIBRARY, target, name=f"CALL {name}", operation="CALL", attributes={"db.stored_procedure.name": name})
    except Exception as exc:  # noqa: BLE001 - the query runs regardless
        _log.warn_once("django-db-start", "autotrace: a Django query could not be traced (%s: %s)", type(exc).__name__, exc)
        return None


def _target(wrapper) -> db.Target:
    state = wrapper.__dict__
    target = state.get(TARGET)
    if target is None:
        settings = wrapper.settings_dict
        vendor = wrapper.vendor
        known = True
        if vendor == "mysql":
            mariadb = state.get("mysql_is_mariadb")  # a cached_property, once Django asked the server
            if mariadb is None:
                mariadb = _says_mariadb(wrapper.connection)
            known = mariadb is not None
            system = "mariadb" if mariadb else "mysql"
        else:
            system = SYSTEMS.get(vendor, vendor)
        name = settings.get("NAME")
        host = (settings.get("HOST") or None) if vendor != "sqlite" else None
        port = _port(settings.get("PORT")) if host is not None else None
        if host is not None and port is None:
            port = DEFAULT_PORTS.get(system)
        target = db.Target(system, str(name) if name else None, host, port, extra={ALIAS: wrapper.alias})
        if known:
            state[TARGET] = target
    return target


def _says_mariadb(connection) -> bool | None:
    """Whether the server of an open mysqlclient connection is MariaDB (its handshake said; no query)."""
    if connection is None:
        return None
    try:
        info = connection.get_server_info()
    except Exception:  # noqa: BLE001 - a closed connection, another driver
        return None
    return "mariadb" in info.lower() if isinstance(info, str) else None


def _port(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _commented(sql, params, call: db.DbCall):
    """The SQL with the sqlcommenter comment when it is on (``sql`` itself else). Never raises."""
    # With parameters the driver interpolates "%s": the comment's "%" written "%%".
    return db.with_comment(sql, call, percent_format=params is not None)
