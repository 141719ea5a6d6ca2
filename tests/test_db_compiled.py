"""A database hook's usual call in C (autotrace._speedups.db_call, ``db.compiled_call``)
against the Python way (``db.start_cached``, the call, ``DbCall.close``: the reference):
the same spans, the same context inside and after the call, the app's exception re-raised
untouched, and everything else left to Python (``db.NOT_HANDLED``, before the call).

The spans are started by a tracer whose processor has a light end (as the agent's), the
case the compiled start handles; the test's in-memory exporter's processor has none.
"""

from __future__ import annotations

import pytest
import redis
from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import api, db
from autotrace.light_span import LightSpan
from db_checks import db_env, dsn  # noqa: F401 (fixtures)
from test_db_redis import client, key, traced  # noqa: F401 (fixtures)


class LightRecorder(SpanProcessor):
    """A processor with a light end: the compiled start handles its tracer's spans."""

    def __init__(self) -> None:
        self.light: list[LightSpan] = []

    def on_start(self, span, parent_context=None) -> None:
        pass

    def on_end(self, span) -> None:
        self.light.append(span)

    def light_end(self, span) -> None:
        self.light.append(span)


@pytest.fixture
def recorder(traced, monkeypatch):
    """The redis hook applied; its tracer one with a light end (what the compiled path starts)."""
    provider = TracerProvider(resource=Resource({"service.name": "svc"}), shutdown_on_exit=False)
    found = LightRecorder()
    provider.add_span_processor(found)
    monkeypatch.setitem(api.tracers, db.TRACER_PREFIX + "redis", provider.get_tracer(db.TRACER_PREFIX + "redis"))
    return found


def _counting_start_cached(monkeypatch) -> list[object]:
    started: list[object] = []
    python_way = db.start_cached

    def start_cached(*args):
        call = python_way(*args)
        started.append(call)
        return call

    monkeypatch.setattr(db, "start_cached", start_cached)
    return started


def _commands(client, name: str) -> None:
    client.set(name, "value")  # three arguments: never kept, always the Python way
    for _ in range(3):
        client.get(name)
    client.lpush(name + ":list", "x")
    with pytest.raises(redis.ResponseError):
        client.incr(name + ":list")  # WRONGTYPE


def _seen(spans: list[LightSpan]) -> list[tuple]:
    return [
        (
            span.name,
            span.kind,
            dict(span.attributes),
            span.parent.span_id,
            span.status.status_code,
            [(event.name, event.attributes.get("exception.type")) for event in span.events],
            span.end_time is not None,
        )
        for span in spans
    ]


def test_the_compiled_call_makes_the_python_ways_spans(recorder, client, parent, monkeypatch):
    name = key()
    started = _counting_start_cached(monkeypatch)
    before = context.get_current()
    _commands(client, name)
    assert context.get_current() is before
    compiled, python_calls = list(recorder.light), len(started)
    # The compiled way left to Python only what it does not know yet: each key's first
    # command (its span then kept), and SET (three arguments: its text is not kept).
    assert db.compiled_call is not None
    assert python_calls == 4  # SET, the first GET, LPUSH, INCR; the other two GETs in C

    recorder.light.clear()
    monkeypatch.setattr(db, "compiled_call", None)
    _commands(client, name)
    assert context.get_current() is before
    assert len(started) == python_calls + 6
    assert len(compiled) == 6
    assert _seen(compiled) == _seen(recorder.light)
    assert all(type(span) is LightSpan for span in compiled)
    error = compiled[-1]
    assert error.status.status_code is StatusCode.ERROR
    assert error.attributes["db.response.status_code"] == "WRONGTYPE"
    assert error.attributes["error.type"] == "redis.exceptions.ResponseError"


def _target_and_key(client, name: str) -> tuple[db.Target, tuple]:
    client.get(name)  # the Python way: the target made, the span's name and attributes kept
    target = client.connection_pool.__dict__["_autotrace_db_target"]
    args = ("GET", name)
    assert target.kept(args) is not None
    return target, args


def test_inside_the_call_its_span_and_mark_are_current_and_left_after(recorder, client, parent):
    target, args = _target_and_key(client, key())
    recorder.light.clear()
    seen = []

    def original(self, *call_args, **options):
        seen.append((self, call_args, options, trace.get_current_span(), db.current()))
        return "result"

    before = context.get_current()
    result = db.compiled_call("redis", target, args, original, "self", args, {"option": 1})
    assert result == "result"
    assert context.get_current() is before
    [(self, call_args, options, span, call)] = seen
    assert (self, call_args, options) == ("self", args, {"option": 1})
    assert recorder.light == [span] and span.end_time is not None
    assert span.parent.span_id == parent.get_span_context().span_id
    assert type(call) is db.DbCall and call.span is span and call.ended and call.library == "redis"
    assert call.context is None and call._token is None and call.comment is False


def test_the_apps_exception_is_recorded_and_reraised_untouched(recorder, client, parent):
    target, args = _target_and_key(client, key())
    recorder.light.clear()
    raised = KeyError("the app's")

    def original(self, *call_args, **options):
        raise raised

    before = context.get_current()
    with pytest.raises(KeyError) as caught:
        db.compiled_call("redis", target, args, original, None, args, None)
    assert caught.value is raised
    assert caught.value.__traceback__ is not None and caught.value.__traceback__.tb_next.tb_frame.f_code is original.__code__
    assert context.get_current() is before
    [span] = recorder.light
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "KeyError"
    assert [event.name for event in span.events] == ["exception"]


def test_what_it_does_not_know_is_left_to_python_before_the_call(recorder, client, parent, monkeypatch):
    target, args = _target_and_key(client, key())
    recorder.light.clear()
    called = []

    def original(self, *call_args, **options):
        called.append(1)

    assert db.compiled_call("redis", target, ("GET", "not kept"), original, None, ("GET", "not kept"), None) is db.NOT_HANDLED
    assert db.compiled_call("redis", target, ["unhashable"], original, None, (), None) is db.NOT_HANDLED
    assert db.compiled_call("redis", "not a Target", args, original, None, args, None) is db.NOT_HANDLED
    assert db.compiled_call("not traced yet", target, args, original, None, args, None) is db.NOT_HANDLED
    token = context.attach(context.set_value("another", "context"))  # not the one decided on
    try:
        assert db.compiled_call("redis", target, args, original, None, args, None) is db.NOT_HANDLED
    finally:
        context.detach(token)
    monkeypatch.setattr(db, "_decided", (db._decided[0], True, True))  # the sqlcommenter comment: Python's
    assert db.compiled_call("redis", target, args, original, None, args, None) is db.NOT_HANDLED
    assert called == [] and recorder.light == []


def test_a_context_decided_untraced_runs_the_call_alone(recorder, client, db_env):
    with trace.get_tracer("test").start_as_current_span("request"):
        target, args = _target_and_key(client, key())
    recorder.light.clear()
    client.get("other")  # no span current: no span, decided so (the last context asked about)
    assert db._decided[0] is context.get_current() and db._decided[1] is False
    assert db.compiled_call("redis", target, args, lambda self, *a: ("ran", self, a), "me", args, None) == ("ran", "me", args)
    assert recorder.light == []


def test_the_usual_command_passes_through_the_compiled_call(traced, client, parent, monkeypatch):
    """The hook calls it (the test's own tracer has no light end: Python starts its spans)."""
    calls = []
    compiled = db.compiled_call

    def spy(*args):
        calls.append(args[0])
        return compiled(*args)

    client.get(key())
    monkeypatch.setattr(db, "compiled_call", spy)
    client.get(key())
    assert calls == ["redis"] and len([s for s in traced.get_finished_spans() if s.name == "GET"]) == 2


def test_no_reference_is_leaked_or_lost(recorder, client, parent):
    """What db_call reads and passes keeps its reference count, the call returning or raising."""
    import sys

    target, args = _target_and_key(client, key())
    found = target.kept(args)
    tracer = api.tracers[db.TRACER_PREFIX + "redis"]
    result = object()
    raised = ValueError("again")

    def returning(self, *call_args, **options):
        return result

    def raising(self, *call_args, **options):
        raise raised

    recorder.light.clear()
    watched = (found, found[1], tracer, target, args, returning, raising, result, context.get_current(), db._decided)
    counts = [sys.getrefcount(item) for item in watched]
    for _ in range(100):
        assert db.compiled_call("redis", target, args, returning, None, args, {"k": 1}) is result
        with pytest.raises(ValueError):
            db.compiled_call("redis", target, args, raising, None, args, None)
    raised.__traceback__ = None
    recorder.light.clear()
    assert [sys.getrefcount(item) for item in watched] == counts


@pytest.mark.parametrize("library", ["psycopg", "psycopg2"])
def test_psycopg_queries_through_the_compiled_call_match_the_python_way(library, spans, db_env, dsn, parent, monkeypatch):
    """A cursor's usual ``execute`` (text, parameters, keywords; a failing one) in C, then
    the same in Python: the same spans, the same results and exceptions."""
    from db_checks import hooked

    hook = hooked(spans, f"autotrace.hooks.{library}", (library, "patch"))
    next(hook)
    try:
        provider = TracerProvider(resource=Resource({"service.name": "svc"}), shutdown_on_exit=False)
        recorder = LightRecorder()
        provider.add_span_processor(recorder)
        monkeypatch.setitem(api.tracers, db.TRACER_PREFIX + library, provider.get_tracer(db.TRACER_PREFIX + library))
        module = __import__(library)
        connection = module.connect(dsn)
        connection.autocommit = True
        cursor = connection.cursor()
        recorder.light.clear()  # the connect's span
        started = _counting_start_cached(monkeypatch)

        def queries() -> list[object]:
            out = []
            for _ in range(2):  # the first one kept by the Python way, the second one in C
                cursor.execute("SELECT 1")
                out.append(cursor.fetchone())
                cursor.execute("SELECT %s::int + 1", (41,))
                out.append(cursor.fetchone())
                cursor.execute(query="SELECT 2")
                out.append(cursor.fetchone())
                with pytest.raises(module.errors.UndefinedTable) as caught:
                    cursor.execute("SELECT * FROM no_such_table")
                out.append(type(caught.value))
            return out

        before = context.get_current()
        compiled_results = queries()
        compiled, python_calls = list(recorder.light), len(started)
        assert python_calls == 4  # each text's first query; the other four in C
        recorder.light.clear()
        monkeypatch.setattr(db, "compiled_call", None)
        assert queries() == compiled_results
        assert len(started) == python_calls + 8
        assert context.get_current() is before
        assert len(compiled) == 8 and _seen(compiled) == _seen(recorder.light)
        assert compiled[-1].attributes["db.response.status_code"] == "42P01"
        connection.close()
    finally:
        next(hook, None)
