"""What the database hook tests check, written once (tests/test_db*.py): the settings
fixture, the database spans, their parent, the server's attributes, a failed call."""

from __future__ import annotations

import importlib
import uuid

from opentelemetry.trace import SpanKind, StatusCode

import pytest


def db_spans(exporter, library: str | None = None) -> list:
    """The database CLIENT spans that ended, in the order they ended (only ``library``'s if given)."""
    scope = "autotrace.db." + (library or "")
    return [
        s
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.CLIENT and (s.instrumentation_scope.name == scope if library else s.instrumentation_scope.name.startswith(scope))
    ]


def request_span(name: str = "request"):
    """The request's span, current in the thread or task that enters it."""
    from opentelemetry import trace

    return trace.get_tracer("test").start_as_current_span(name)


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def server_attributes(server) -> dict:
    return {
        "db.system.name": "postgresql",
        "db.namespace": server.database,
        "server.address": server.host,
        "server.port": server.port,
    }


def assert_child(span, parent, library: str | None = None) -> None:
    """A CLIENT span (of ``library``'s hook if given), child of span ``parent``."""
    assert span.kind == SpanKind.CLIENT
    if library is not None:
        assert span.instrumentation_scope.name == f"autotrace.db.{library}"
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id


def assert_statement(span, server, text: str, operation: str, collection: str | None, summary: str, peer: bool = False) -> None:
    """The span of one statement: its name and exactly these attributes."""
    expected = server_attributes(server)
    if peer:
        expected["network.peer.address"] = server.host
    expected["db.query.text"] = text
    expected["db.operation.name"] = operation
    if collection is not None:
        expected["db.collection.name"] = collection
    expected["db.query.summary"] = summary
    assert span.name == summary
    assert dict(span.attributes) == expected
    assert span.status.status_code == StatusCode.UNSET


def assert_failed(span, error_type: str, code: str) -> None:
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == error_type
    assert span.attributes["db.response.status_code"] == code
    assert [event.name for event in span.events] == ["exception"]


def apply_hook(hook_name: str, *targets: tuple[str, str]):
    """Apply ``patch``-like functions of hook ``hook_name`` to modules: ((module, function), ...)."""
    hook = importlib.import_module(hook_name)
    for module_name, function in targets:
        getattr(hook, function)(importlib.import_module(module_name))
    return hook


def hooked(spans, hook_name: str, *targets: tuple[str, str]):
    """For a fixture (``yield from``): the hook applied as under the agent (:func:`apply_hook`),
    the exporter yielded, the originals put back after."""
    from autotrace import patching

    mark = len(patching.history)
    apply_hook(hook_name, *targets)
    yield spans
    patching.undo(mark)


@pytest.fixture
def dsn(postgres_server) -> str:
    """The libpq connection string of the session's PostgreSQL."""
    s = postgres_server
    return f"host={s.host} port={s.port} dbname={s.database} user={s.user} password={s.password}"


DB_VARIABLES = ("AUTOTRACE_DB_STATEMENT", "AUTOTRACE_SQL_COMMENT", "AUTOTRACE_DB_ROOT_SPANS")


@pytest.fixture
def db_env(monkeypatch):
    """The database settings at their defaults; ``db_env(AUTOTRACE_DB_STATEMENT="raw")``
    sets some for the test. Read again after the test."""
    from autotrace import config

    for name in DB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    config.reset_db_settings()

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        config.reset_db_settings()

    yield set_env
    monkeypatch.undo()
    config.reset_db_settings()
