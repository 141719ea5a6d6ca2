"""The Celery hook in process: an embedded worker (solo pool, in a thread) on the real Redis broker.

Each test makes its own app (the hook wraps an app's task sender when the app makes it)
on a queue of its own, sends from a span current in the test, and reads the spans from
the in-memory exporter: retries, failures, countdown, chord, canvas, beat's send, link
mode, a failed send, a message from a producer without the agent and one with a bad
``traceparent``, an eager call.
"""

from __future__ import annotations

import time
import uuid

import celery.app.amqp
import celery.app.trace
import celery.worker.consumer.consumer
import kombu
import kombu.messaging
import pytest
from celery import Celery, chord, group, signals
from celery.contrib.testing.worker import start_worker
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import config, messaging, patching
from autotrace.hooks import celery as hook
from autotrace.hooks import kombu as kombu_hook


@pytest.fixture
def hooked(spans):
    mark = len(patching.history)
    hook.patch(celery.app.amqp)
    hook.patch_worker(celery.app.trace)
    # Under the agent celery.app.trace is patched as it is imported, before the worker's
    # consumer takes the name; here it was imported first: its name is patched too.
    patching.wrap_function(celery.worker.consumer.consumer, "build_tracer", hook._wrap_build_tracer)
    kombu_hook.patch(kombu.messaging)  # as under the agent: Celery's publishes must not get a second span
    config.reset_messaging_settings()
    yield spans
    patching.undo(mark)
    signals.worker_before_create_process.disconnect(dispatch_uid=hook._DISPATCH_UID)
    config.reset_messaging_settings()


@pytest.fixture
def app(hooked, redis_server):
    app = Celery("shop", broker=redis_server.url(), backend=redis_server.url())
    app.conf.task_default_queue = "q-" + uuid.uuid4().hex[:12]
    app.conf.broker_connection_retry_on_startup = True
    state = {"attempts": 0}

    @app.task(name="shop.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="shop.tsum", shared=False)
    def tsum(numbers):
        return sum(numbers)

    @app.task(name="shop.boom", shared=False)
    def boom():
        raise ValueError("out of stock")

    @app.task(name="shop.flaky", bind=True, max_retries=3, shared=False)
    def flaky(self):
        state["attempts"] += 1
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return self.request.retries

    yield app
    app.close()


@pytest.fixture(autouse=True)
def logging_kept():
    """Celery's embedded worker sets the root logger up (its level: ERROR): put it back."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.fixture
def worker(app):
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as running:
        yield running


def _wait(spans, count: int, name: str, timeout: float = 20.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in spans.get_finished_spans() if s.name == name]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, [s.name for s in spans.get_finished_spans()]
            return found
        time.sleep(0.02)


def test_delay_is_a_producer_span_and_the_run_its_consumer_child(app, worker, hooked, parent):
    result = app.tasks["shop.add"].delay(2, 3)
    assert result.get(timeout=20) == 5
    (process,) = _wait(hooked, 1, "process shop.add")
    (send,) = [s for s in hooked.get_finished_spans() if s.name == "send shop.add"]
    assert send.kind == SpanKind.PRODUCER and send.parent.span_id == parent.get_span_context().span_id
    assert process.kind == SpanKind.CONSUMER and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == parent.get_span_context().trace_id
    queue = app.conf.task_default_queue
    assert dict(send.attributes) == {
        "messaging.system": "celery",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue,
        "messaging.message.id": result.id,
        messaging.TASK_NAME: "shop.add",
    }
    assert process.attributes["messaging.message.id"] == result.id
    assert process.attributes["messaging.destination.name"] == queue
    assert process.attributes[messaging.TASK_NAME] == "shop.add"
    assert process.attributes[messaging.RETRY_COUNT] == 0
    assert process.status.status_code == StatusCode.UNSET
    assert sorted(s.name for s in hooked.get_finished_spans()) == ["process shop.add", "send shop.add"]


def test_a_failed_task_records_its_exception(app, worker, hooked):
    result = app.tasks["shop.boom"].delay()
    with pytest.raises(ValueError):
        result.get(timeout=20)
    (process,) = _wait(hooked, 1, "process shop.boom")
    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes["error.type"] == "ValueError"
    assert [e.name for e in process.events] == ["exception"]


def test_each_retry_is_a_consumer_span_of_its_own_and_no_error(app, worker, hooked, parent):
    assert app.tasks["shop.flaky"].delay().get(timeout=20) == 2
    runs = _wait(hooked, 3, "process shop.flaky")
    sends = {s.context.span_id: s for s in hooked.get_finished_spans() if s.name == "send shop.flaky"}
    assert len(sends) == 3  # the first send, and one by each retry
    assert [r.attributes[messaging.RETRY_COUNT] for r in runs] == [0, 1, 2]
    assert all(r.status.status_code == StatusCode.UNSET for r in runs)
    assert [[e.name for e in r.events] for r in runs] == [["retry"], ["retry"], []]
    # Each retry: sent from the attempt before it, run as a child of that send.
    for before, after in zip(runs, runs[1:]):
        send = sends[after.parent.span_id]
        assert send.parent.span_id == before.context.span_id
    assert {r.context.trace_id for r in runs} == {parent.get_span_context().trace_id}


def test_countdown_is_part_of_the_time_in_queue(app, worker, hooked):
    app.tasks["shop.add"].apply_async((1, 1), countdown=1.0).get(timeout=20)
    (process,) = _wait(hooked, 1, "process shop.add")
    assert process.attributes[messaging.QUEUE_TIME] >= 900


def test_a_chord_body_is_sent_from_the_last_header_task(app, worker, hooked, parent):
    add = app.tasks["shop.add"]
    assert chord(group(add.s(i, i) for i in range(3)), app.tasks["shop.tsum"].s()).apply_async().get(timeout=30) == 6
    (body,) = _wait(hooked, 1, "process shop.tsum")
    headers = _wait(hooked, 3, "process shop.add")
    by_id = {s.context.span_id: s for s in hooked.get_finished_spans()}
    body_send = by_id[body.parent.span_id]
    assert body_send.name == "send shop.tsum" and body_send.parent.span_id in {h.context.span_id for h in headers}
    assert {s.context.trace_id for s in hooked.get_finished_spans()} == {parent.get_span_context().trace_id}


def test_send_task_by_name_and_beat(app, worker, hooked):
    from celery.beat import ScheduleEntry, Scheduler

    app.send_task("shop.add", (4, 4)).get(timeout=20)
    entry = ScheduleEntry(name="every-minute", task="shop.add", args=(5, 5), schedule=60, app=app)
    Scheduler(app, lazy=True).apply_async(entry).get(timeout=20)
    runs = _wait(hooked, 2, "process shop.add")
    sends = [s for s in hooked.get_finished_spans() if s.name == "send shop.add"]
    assert len(sends) == 2 and all(s.parent is None for s in sends)  # beat and this send: no span was current
    assert {r.parent.span_id for r in runs} == {s.context.span_id for s in sends}


def test_link_mode_starts_each_run_as_a_new_trace_linked_to_its_send(app, worker, hooked, parent, messaging_parent):
    messaging_parent("link")
    app.tasks["shop.add"].delay(1, 2).get(timeout=20)
    (process,) = _wait(hooked, 1, "process shop.add")
    (send,) = [s for s in hooked.get_finished_spans() if s.name == "send shop.add"]
    assert process.parent is None and process.context.trace_id != send.context.trace_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]


def _publish_raw(app, headers: dict) -> str:
    """A protocol-2 task message sent with kombu alone, as a producer without the agent does."""
    task_id = str(uuid.uuid4())
    queue = app.conf.task_default_queue
    with kombu.Connection(app.conf.broker_url) as connection:
        publish = patching.unwrapped(kombu.messaging.Producer.publish)  # kombu's own: no agent there
        publish(
            connection.Producer(),
            [[6, 7], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
            routing_key=queue,
            declare=[kombu.Queue(queue)],
            serializer="json",
            headers={"lang": "py", "task": "shop.add", "id": task_id, "root_id": task_id, "parent_id": None, "retries": 0, **headers},
        )
    return task_id


@pytest.mark.parametrize(
    "headers",
    [{}, {"traceparent": "00-zzzz-not-a-context-01"}, {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01" + " " * 9000}],
    ids=["no-headers", "bad", "oversized"],
)
def test_a_message_without_a_valid_context_runs_as_a_root_span(app, worker, hooked, headers):
    task_id = _publish_raw(app, headers)
    (process,) = _wait(hooked, 1, "process shop.add")
    assert process.parent is None and process.status.status_code == StatusCode.UNSET
    assert process.attributes["messaging.message.id"] == task_id
    assert app.AsyncResult(task_id).get(timeout=20) == 13


def test_a_failed_send_is_recorded_and_raised_unchanged(hooked, parent):
    app = Celery("down", broker="redis://127.0.0.1:1/0")  # nothing listens on port 1
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    app.conf.task_publish_retry = False

    @app.task(name="down.noop", shared=False)
    def noop():
        return None

    with pytest.raises(Exception) as raised:
        noop.delay()
    (send,) = hooked.get_finished_spans()
    assert send.name == "send down.noop" and send.status.status_code == StatusCode.ERROR
    assert send.attributes["error.type"] == messaging.error_type(raised.value)
    app.close()


def test_the_prefork_pools_main_process_sets_the_sdk_up_before_it_forks(hooked, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(messaging, "set_up_now", lambda: calls.append(1))
    signals.worker_before_create_process.send(sender=None)
    assert calls == [1]


def test_an_eager_call_is_a_function_call_no_messaging_span(app, hooked, parent):
    assert app.tasks["shop.add"].apply((1, 2)).get() == 3
    assert hooked.get_finished_spans() == ()
    assert trace.get_current_span() is parent


def test_over_rabbitmq_the_run_is_a_child_of_its_send(hooked, rabbitmq_server, parent):
    app = Celery("shop", broker=rabbitmq_server.url(), backend="rpc://")
    app.conf.task_default_queue = "q-" + uuid.uuid4().hex[:12]
    app.conf.broker_connection_retry_on_startup = True

    @app.task(name="shop.mul", shared=False)
    def mul(x, y):
        return x * y

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        result = mul.delay(6, 7)
        assert result.get(timeout=20) == 42
        (process,) = _wait(hooked, 1, "process shop.mul")
    (send,) = [s for s in hooked.get_finished_spans() if s.name == "send shop.mul"]
    assert send.parent.span_id == parent.get_span_context().span_id
    assert process.parent.span_id == send.context.span_id
    assert process.attributes["messaging.destination.name"] == app.conf.task_default_queue
    assert process.attributes["messaging.message.id"] == result.id
    # One span per logical operation: no kombu span for Celery's publish, none for the rpc
    # backend's result message (Celery's plumbing).
    assert sorted(s.name for s in hooked.get_finished_spans()) == ["process shop.mul", "send shop.mul"]
    app.close()
