"""The database hooks applied in process as the agent applies them (tests/test_db_*.py).

Every row of the registry's table that waits for a database module is applied, in table
order, when its module can be imported: the ORM hooks (SQLAlchemy, Django) together with
the driver hooks under them, so a test sees what an app would: one span per statement.
"""

from __future__ import annotations

import importlib

from autotrace import config, patching, registry

# Top-level modules of the database libraries (the registry rows waiting for them are applied).
DATABASE_MODULES = ("sqlite3", "psycopg2", "psycopg", "psycopg_pool", "pymysql", "MySQLdb", "asyncpg", "sqlalchemy")
DJANGO_DB = ("django.db.backends.utils", "django.db.backends.base.base")


def rows() -> list[registry.Hook]:
    return [
        hook
        for hook in registry.HOOKS
        if hook.module.partition(".")[0] in DATABASE_MODULES or hook.module in DJANGO_DB
    ]


def apply() -> list[str]:
    """Apply every database hook whose module imports; the names applied."""
    applied = []
    for hook in rows():
        path, _, function = hook.hook.partition(":")
        try:
            module = importlib.import_module(hook.module)
        except ImportError:
            continue  # the library is not installed
        getattr(importlib.import_module(path), function or "patch")(module)
        applied.append(hook.name)
    return applied


def undo(mark: int) -> None:
    """Put every original back, and remove the SQLAlchemy hook's engine event listeners."""
    patching.undo(mark)
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        from autotrace.hooks import sqlalchemy as hook
    except ImportError:
        return
    for name, listener in hook.LISTENERS:
        if event.contains(Engine, name, listener):
            event.remove(Engine, name, listener)
    config.reset_db_settings()
