"""The shared messaging core: PRODUCER and CONSUMER spans, the context in message headers."""

from __future__ import annotations

import time

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import config, messaging


def _sent(headers: dict) -> trace.Span:
    call = messaging.send("celery", "shop.bill", destination="celery", message_id="t-1")
    assert call is not None
    call.inject(headers)
    call.close()
    return call.span


def test_send_is_a_producer_child_of_the_current_span_and_injects_its_context(spans, parent, messaging_parent):
    headers: dict = {}
    span = _sent(headers)
    (done,) = spans.get_finished_spans()
    assert done.name == "send shop.bill" and done.kind == SpanKind.PRODUCER
    assert done.parent.span_id == parent.get_span_context().span_id
    assert dict(done.attributes) == {
        "messaging.system": "celery",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "celery",
        "messaging.message.id": "t-1",
    }
    ids = span.get_span_context()
    assert headers["traceparent"] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"
    assert abs(float(headers[messaging.SENT_AT]) - time.time() * 1000) < 5000
    assert trace.get_current_span() is parent  # close() left the send's context


def test_a_send_inside_a_send_is_a_lower_layer_and_gets_no_span(spans, messaging_parent):
    outer = messaging.send("celery", "a")
    assert messaging.current_send() is outer
    assert messaging.send("redis", "celery") is None
    outer.close()
    assert messaging.current_send() is None
    assert [s.name for s in spans.get_finished_spans()] == ["send a"]


def test_process_continues_the_producers_trace_by_default(spans, parent, messaging_parent):
    headers: dict = {}
    sent = _sent(headers)
    call = messaging.process("celery", "shop.bill", headers, destination="celery", message_id="t-1", retry_count=0)
    assert trace.get_current_span() is call.span
    call.close()
    done = spans.get_finished_spans()[-1]
    assert done.name == "process shop.bill" and done.kind == SpanKind.CONSUMER
    assert done.parent.span_id == sent.get_span_context().span_id and done.parent.is_remote
    assert done.attributes[messaging.TASK_NAME] == "shop.bill"
    assert done.attributes[messaging.RETRY_COUNT] == 0
    assert done.attributes["messaging.operation.type"] == "process"
    assert 0 <= done.attributes[messaging.QUEUE_TIME] < 5000
    assert not done.links


def test_link_mode_starts_a_new_trace_linked_to_the_producer(spans, parent, messaging_parent, warnings):
    headers: dict = {}
    sent = _sent(headers)
    messaging_parent("LINK")
    call = messaging.process("celery", "shop.bill", headers)
    call.close()
    done = spans.get_finished_spans()[-1]
    assert done.parent is None
    assert done.context.trace_id != sent.get_span_context().trace_id
    assert [link.context.span_id for link in done.links] == [sent.get_span_context().span_id]
    assert warnings() == []


def test_a_bad_messaging_parent_value_warns_once_and_uses_parent(spans, messaging_parent, warnings):
    messaging_parent("sideways")
    assert config.messaging_parent() == "parent"
    assert config.messaging_parent() == "parent"
    lines = warnings()
    assert len(lines) == 1 and "AUTOTRACE_MESSAGING_PARENT='sideways'" in lines[0]
    s = config.read({"AUTOTRACE_MESSAGING_PARENT": "sideways"})
    assert [w.variable for w in s.warnings] == ["AUTOTRACE_MESSAGING_PARENT"] and s.messaging_parent == "parent"
    assert dict(s.describe())["messaging parent"] == "parent"


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 9000},  # oversized
        {"traceparent": "garbage"},
        {"traceparent": 42},
        {"traceparent": ["00-" + "a" * 32 + "-" + "b" * 16 + "-01"] * 2},  # given twice
    ],
)
def test_no_or_bad_headers_give_a_root_span_even_under_a_current_span(spans, parent, messaging_parent, headers):
    call = messaging.process("rq", "job", headers)
    assert call is not None
    call.close()
    done = spans.get_finished_spans()[-1]
    assert done.parent is None and done.context.trace_id != parent.get_span_context().trace_id
    assert messaging.QUEUE_TIME not in done.attributes


def test_baggage_of_the_message_is_kept_in_the_task_context(spans, messaging_parent):
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        headers: dict = {}
        _sent(headers)
    finally:
        context.detach(token)
    assert headers["baggage"] == "tenant=acme"
    call = messaging.process("celery", "t", headers)
    assert baggage.get_baggage("tenant") == "acme"
    call.close()
    assert baggage.get_baggage("tenant") is None


def test_fail_records_the_exception_and_retried_is_no_error(spans, messaging_parent):
    call = messaging.process("celery", "t", {})
    call.fail(ValueError("bad input"))
    call.close()
    retried = messaging.process("celery", "t", {}, retry_count=1)
    retried.retried(RuntimeError("again later"))
    retried.close()
    failed, retry = spans.get_finished_spans()
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["error.type"] == "ValueError"
    assert [e.name for e in failed.events] == ["exception"]
    assert retry.status.status_code == StatusCode.UNSET and "error.type" not in retry.attributes
    assert retry.attributes[messaging.RETRY_COUNT] == 1
    assert [e.name for e in retry.events] == ["retry"]


def test_suppressed_instrumentation_starts_no_messaging_span(spans, suppressed, messaging_parent):
    assert messaging.send("celery", "t") is None
    assert messaging.process("celery", "t", {}) is None


def test_export_now_without_the_agent_set_up_is_a_no_op():
    assert messaging.export_now() is True


def test_set_up_now_sets_the_sdk_up_only_where_the_agent_waits_for_it(monkeypatch):
    """A prefork pool's main process before its first fork: the SDK set up once, there."""
    from autotrace import api, provider

    api.load()
    calls: list[str] = []
    trace_module = type("Trace", (), {"get_tracer_provider": staticmethod(lambda: calls.append("set up"))})
    monkeypatch.setitem(__import__("sys").modules, "opentelemetry.trace", trace_module)
    for state, settings in (("set up", object()), ("declined", object()), ("waiting", None)):
        monkeypatch.setattr(provider, "state", lambda state=state: state)
        monkeypatch.setattr(provider, "settings", lambda settings=settings: settings)
        messaging.set_up_now()
    assert calls == []  # set up already, the app's provider, or the agent not armed here
    monkeypatch.setattr(provider, "state", lambda: "waiting")
    monkeypatch.setattr(provider, "settings", lambda: object())
    messaging.set_up_now()
    assert calls == ["set up"]


def test_the_brokers_commands_under_a_send_get_no_database_span(spans, parent, messaging_parent):
    from autotrace import db

    call = messaging.send("rq", "jobs")
    assert db.start("redis", db.Target("redis"), operation="LPUSH") is None  # how the message is sent
    call.close()
    query = db.start("redis", db.Target("redis"), operation="GET")  # after the send: a call of its own
    assert query is not None
    query.close()
    assert [s.name for s in spans.get_finished_spans()] == ["send jobs", "GET"]


_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": _TP},
        {"traceparent": _TP, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
        {"traceparent": _TP, "tracestate": "foo@=1,1a=2,k=first,k=second"},  # the current grammar; a repeated key
        {"traceparent": _TP, "tracestate": "Bad Key=1"},  # invalid: dropped, the traceparent kept
        {"traceparent": _TP, "tracestate": ",".join(f"k{n}=v" for n in range(33))},  # 33 members: dropped
        {"traceparent": _TP, "tracestate": "k=" + "v" * 20000},  # oversized: dropped
        {"traceparent": _TP, "tracestate": ""},
        {"traceparent": " \t" + _TP + " "},  # optional whitespace
        {"traceparent": "01" + _TP[2:] + "-what-comes-later"},  # a later version
        {"traceparent": "01" + _TP[2:] + "x"},
        {"traceparent": _TP.upper()},
        {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01"},
        {"traceparent": "ff" + _TP[2:]},
        {"traceparent": _TP + "," + _TP},
        {"traceparent": _TP + "x" * 600},
        {"traceparent": ""},
        {"traceparent": _TP[:-1] + "3"},  # flags kept as given
        {"traceparent": _TP[:-2] + "ff"},
        {"tracestate": "congo=t61rcWkgMzE"},  # no traceparent: nothing read
        {"Traceparent": _TP},  # names as the formats write them
        {"traceparent": None, "id": "t-1"},
        {"traceparent": _TP.encode()},  # the propagators' own way from here on
        {"traceparent": [_TP]},
        {"traceparent": _TP, "tracestate": ["congo=1", "rojo=2"]},
        {"traceparent": _TP, "tracestate": 7},
        {"traceparent": _TP, "baggage": "tenant=acme"},
    ],
)
@pytest.mark.parametrize("mode", ["parent", "link"])
@pytest.mark.parametrize("under_a_span", [False, True])
def test_the_direct_read_of_w3c_headers_extracts_what_the_propagators_extract(headers, mode, under_a_span, messaging_parent, monkeypatch):
    """A message's headers read straight from the dict (the default propagators) give the
    parent, links and baggage the propagators give."""
    from opentelemetry import propagate

    from autotrace import api

    api.load()
    assert messaging._w3c_only(propagate.get_global_textmap())  # the direct way is the one under test
    messaging_parent(mode)

    def extracted(direct: bool):
        monkeypatch.setattr(messaging, "_w3c_only", messaging._w3c_only if direct else (lambda propagator: False))
        base = context.get_current()
        if under_a_span:
            base = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(1, 2, False, trace.TraceFlags(1))), base)
        parent, links = messaging.incoming(dict(headers), base)
        remote = trace.get_current_span(parent).get_span_context()
        state = list(remote.trace_state.items()) if remote.trace_state is not None else None
        return (
            (remote.trace_id, remote.span_id, remote.is_remote, int(remote.trace_flags), state, remote.is_valid),
            [(link.context.trace_id, link.context.span_id) for link in links],
            dict(baggage.get_all(parent)),
        )

    assert extracted(direct=True) == extracted(direct=False)


def test_consumer_spans_of_many_tasks_and_queues_keep_their_own_names_and_attributes(spans, messaging_parent):
    """What a task and queue share is made once, in a bounded record; each span still gets its own."""
    for n in range(messaging._MAX_CONSUMERS + 10):
        call = messaging.process("kombu" if n % 2 else "celery", f"task-{n}", {}, destination=["odd", n] if n == 3 else f"q-{n % 7}", message_id=n)
        call.close()
    done = spans.get_finished_spans()
    assert len(messaging._consumers) <= messaging._MAX_CONSUMERS
    for n, span in enumerate(done):
        assert span.name == f"task-{n}".join(("process ", ""))
        assert span.attributes["messaging.system"] == ("kombu" if n % 2 else "celery")
        assert span.attributes["messaging.destination.name"] == ("['odd', 3]" if n == 3 else f"q-{n % 7}")
        assert span.attributes["messaging.message.id"] == str(n)
        assert span.attributes[messaging.TASK_NAME] == f"task-{n}"
