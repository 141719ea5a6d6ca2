"""spans: the generic start of a span kind with no checks of its own (databases, messaging)."""

from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import api
from autotrace import spans as core  # "spans" is the fixture of the finished spans


def test_a_span_started_current_enriched_and_ended(spans):
    before = context.get_current()
    with trace.get_tracer("test").start_as_current_span("parent") as parent:
        call = start("SELECT shop", "CLIENT", {"db.system.name": "sqlite"})
        assert call is not None
        assert trace.get_current_span() is call.span  # attached
        call.set_attributes({"db.response.returned_rows": 3})
        call.close()
        assert trace.get_current_span() is parent  # left
    assert context.get_current() is before
    [span] = [s for s in spans.get_finished_spans() if s.name == "SELECT shop"]
    assert span.kind is SpanKind.CLIENT
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.instrumentation_scope.name == "autotrace.db.test"
    assert dict(span.attributes) == {"db.system.name": "sqlite", "db.response.returned_rows": 3}


def test_a_failure_is_an_error_with_the_exception(spans):
    call = start("INSERT shop", api.SpanKind.PRODUCER, attach=False)
    call.fail(KeyError("k"), core.error_type(KeyError("k")))
    call.end()
    call.end()  # idempotent
    [span] = spans.get_finished_spans()
    assert span.kind is SpanKind.PRODUCER
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "KeyError"
    assert [event.name for event in span.events] == ["exception"]


def test_suppressed_gives_none(spans):
    token = context.attach(context.set_value(api.SUPPRESS_INSTRUMENTATION, True))
    try:
        assert start("SELECT shop", "CLIENT") is None
    finally:
        context.detach(token)
    assert spans.get_finished_spans() == ()


def test_a_start_that_fails_gives_none_and_one_warning(spans, warnings):
    assert start("SELECT shop", "NO_SUCH_KIND") is None
    assert start("SELECT shop", "NO_SUCH_KIND") is None
    [line] = warnings()
    assert "a span could not be recorded" in line and "KeyError" in line
    assert spans.get_finished_spans() == ()


def start(name, kind, attributes=None, **kwargs):
    return core.start("autotrace.db.test", name, kind, attributes, **kwargs)
