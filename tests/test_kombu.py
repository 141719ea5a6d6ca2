"""kombu used directly, over the real Redis and RabbitMQ brokers: publish and consume in one trace."""

from __future__ import annotations

import uuid

import kombu
import kombu.exceptions
import kombu.messaging
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import config, patching
from autotrace.hooks import kombu as hook


@pytest.fixture
def hooked(spans):
    mark = len(patching.history)
    hook.patch(kombu.messaging)
    config.reset_messaging_settings()
    yield spans
    patching.undo(mark)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request):
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "rabbitmq_server")
    return request.param, server.url()


def _drain(connection, queue, callback, count: int = 1) -> None:
    with kombu.Consumer(connection, queues=[queue], callbacks=[callback], accept=["json"]):
        for _ in range(count):
            connection.drain_events(timeout=10)


def test_publish_and_consume_are_one_trace(hooked, broker, parent):
    system, url = broker
    queue = kombu.Queue("q-" + uuid.uuid4().hex[:12])
    received = []
    headers = {"app": "mine"}
    with kombu.Connection(url) as connection:
        connection.Producer().publish({"n": 1}, routing_key=queue.name, declare=[queue], serializer="json", headers=headers, message_id="m-1")
        _drain(connection, queue, lambda body, message: (received.append((body, dict(message.headers))), message.ack()))
    assert headers == {"app": "mine"}  # the caller's dict is left as it was
    (body, got), = received
    assert body == {"n": 1} and got["app"] == "mine" and got["traceparent"].startswith("00-")
    send, process = hooked.get_finished_spans()
    assert send.name == f"send {queue.name}" and send.kind == SpanKind.PRODUCER
    assert send.parent.span_id == parent.get_span_context().span_id
    assert send.attributes["messaging.system"] == system
    assert send.attributes["messaging.destination.name"] == queue.name
    assert process.name == f"process {queue.name}" and process.kind == SpanKind.CONSUMER
    assert process.parent.span_id == send.context.span_id
    assert process.attributes["messaging.system"] == system
    if system == "rabbitmq":
        assert process.attributes["messaging.message.id"] == "m-1"


def test_a_failing_callback_is_recorded_and_re_raised(hooked, redis_server):
    queue = kombu.Queue("q-" + uuid.uuid4().hex[:12])

    def callback(body, message):
        message.ack()
        raise KeyError("missing")

    with kombu.Connection(redis_server.url()) as connection:
        connection.Producer().publish({"n": 2}, routing_key=queue.name, declare=[queue], serializer="json")
        with pytest.raises(KeyError):
            _drain(connection, queue, callback)
    send, process = hooked.get_finished_spans()
    assert send.parent is None  # no span was current: the send starts a trace (a script, a cron job)
    assert process.parent.span_id == send.context.span_id
    assert process.status.status_code == StatusCode.ERROR and process.attributes["error.type"] == "KeyError"


def test_a_failed_publish_is_recorded_and_raised_unchanged(hooked, redis_server, parent):
    with kombu.Connection(redis_server.url()) as connection:
        with pytest.raises(kombu.exceptions.EncodeError) as raised:
            connection.Producer().publish({"n": object()}, routing_key="nowhere", serializer="json")
    (send,) = hooked.get_finished_spans()
    assert send.status.status_code == StatusCode.ERROR and send.attributes["error.type"] == "kombu.exceptions.EncodeError"
    assert raised.type is kombu.exceptions.EncodeError
