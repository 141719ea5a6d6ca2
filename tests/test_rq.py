"""RQ: a PRODUCER span per enqueue, a CONSUMER span per job run, in one trace, against a real Redis.

In process, with the in-memory exporter: the rq hook (and the redis hook, whose spans
show what rq's own traffic would add) applied as the registry would, jobs run by a
``SimpleWorker`` in burst mode. The forking ``Worker``, under ``autotrace run``, is in
integration/test_rq_agent.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis
import redis.client
import rq
import rq.worker
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode
from rq import Queue, Retry, SimpleWorker
from rq.job import Job

import rq_jobs
from autotrace import messaging, patching
from autotrace.hooks import redis as redis_hook, rq as rq_hook
from db_checks import db_env  # noqa: F401 (a fixture)


@pytest.fixture
def traced(spans, db_env, messaging_parent):
    """The rq and redis hooks applied (as under the agent), the originals put back after."""
    mark = len(patching.history)
    redis_hook.patch(redis.client)
    rq_hook.patch(rq.worker)
    yield spans
    patching.undo(mark)


@pytest.fixture
def connection(redis_server):
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def queue(connection):
    """A queue of its own per test (emptied after)."""
    found = Queue("q-" + uuid.uuid4().hex[:8], connection=connection)
    yield found
    found.empty()


def work(queue: Queue, exporter) -> tuple:
    """Run every job of ``queue`` in a SimpleWorker (this process), outside any span, as a
    worker does: the spans that ended meanwhile (the exporter is emptied first)."""
    exporter.clear()
    token = context.attach(context.Context())
    try:
        rq_jobs.QuietSimpleWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")
    finally:
        context.detach(token)
    return exporter.get_finished_spans()


def kind_spans(done, kind: SpanKind) -> list:
    return [s for s in done if s.kind == kind]


def redis_spans(done) -> list:
    return [s for s in done if s.instrumentation_scope.name == "autotrace.db.redis"]


def is_child(span, parent) -> bool:
    parent_context = parent.get_span_context() if hasattr(parent, "get_span_context") else parent.context
    return span.parent is not None and span.parent.span_id == parent_context.span_id and span.context.trace_id == parent_context.trace_id


def return_value(job_id: str, connection) -> object:
    """The job's return value (rq 1.x: a property; later: a method)."""
    value = Job.fetch(job_id, connection=connection).return_value
    return value() if callable(value) else value


def stored_field(job: Job):
    return job.connection.hget(job.key, rq_hook.FIELD)


def test_enqueue_is_one_producer_span_and_the_job_carries_its_context(traced, queue, parent):
    job = queue.enqueue(rq_jobs.noop)

    (send,) = traced.get_finished_spans()  # rq's own Redis commands: no span
    assert send.name == "send rq_jobs.noop" and send.kind == SpanKind.PRODUCER
    assert is_child(send, parent)
    assert dict(send.attributes) == {
        "messaging.system": "rq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue.name,
        "messaging.message.id": job.id,
    }
    carried = json.loads(stored_field(job))
    ids = send.context
    assert carried["traceparent"] == f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{int(ids.trace_flags):02x}"
    assert set(carried) == {"traceparent", messaging.SENT_AT}
    assert Job.fetch(job.id, connection=queue.connection).meta == {}  # the app's meta untouched
    assert trace.get_current_span() is parent


def test_the_job_runs_in_a_consumer_span_child_of_the_send_with_its_own_work_under_it(traced, queue, parent, redis_server):
    key = "rq-test:" + uuid.uuid4().hex
    job = queue.enqueue(rq_jobs.touch, redis_server.port, key)
    (send,) = traced.get_finished_spans()

    done = work(queue, traced)

    # Only the job's own command is a Redis span: the worker's loop and bookkeeping are not.
    process, incr = sorted(done, key=lambda s: s.kind != SpanKind.CONSUMER)
    assert incr.name == "INCRBY" and is_child(incr, process)
    assert return_value(job.id, queue.connection) == 1
    assert process.name == "process rq_jobs.touch"
    assert is_child(process, send)
    attributes = dict(process.attributes)
    queue_time = attributes.pop(messaging.QUEUE_TIME)
    assert 0 <= queue_time < 60_000
    assert attributes == {
        "messaging.system": "rq",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue.name,
        "messaging.message.id": job.id,
        messaging.TASK_NAME: "rq_jobs.touch",
        messaging.RETRY_COUNT: 0,
    }
    assert process.status.status_code == StatusCode.UNSET


def test_a_failed_job_records_its_exception_and_rq_sees_it_unchanged(traced, queue, parent):
    job = queue.enqueue(rq_jobs.fail, "no stock")

    done = work(queue, traced)

    job = Job.fetch(job.id, connection=queue.connection)
    assert job.get_status() == "failed"
    latest = getattr(job, "latest_result", None)  # rq 1.12 and later; exc_info before
    assert "ValueError: no stock" in (latest().exc_string if latest else job.exc_info)
    (process,) = done
    assert process.status.status_code == StatusCode.ERROR
    assert process.status.description == "ValueError: no stock"
    assert process.attributes["error.type"] == "ValueError"
    (event,) = process.events
    assert event.name == "exception" and event.attributes["exception.message"] == "no stock"


def test_a_retried_job_is_a_consumer_span_per_run_with_its_retry_count(traced, queue, parent, redis_server):
    key = "rq-test:" + uuid.uuid4().hex
    job = queue.enqueue(rq_jobs.fail_once, redis_server.port, key, retry=Retry(max=2))
    (send,) = traced.get_finished_spans()

    done = work(queue, traced)

    assert return_value(job.id, queue.connection) == "second run"
    first, second = kind_spans(done, SpanKind.CONSUMER)
    assert [first.attributes[messaging.RETRY_COUNT], second.attributes[messaging.RETRY_COUNT]] == [0, 1]
    assert first.status.status_code == StatusCode.ERROR and second.status.status_code == StatusCode.UNSET
    assert is_child(first, send) and is_child(second, send)
    assert first.attributes["messaging.message.id"] == second.attributes["messaging.message.id"] == job.id


@pytest.mark.skipif(not hasattr(Job, "_handle_retry_result"), reason="this rq does not retry a job that returns Retry")
def test_a_job_that_returns_retry_is_not_an_error(traced, queue, parent, redis_server):
    key = "rq-test:" + uuid.uuid4().hex
    job = queue.enqueue(rq_jobs.ask_retry_once, redis_server.port, key)

    done = work(queue, traced)

    assert return_value(job.id, queue.connection) == "retried"
    first, second = kind_spans(done, SpanKind.CONSUMER)
    assert first.status.status_code == StatusCode.UNSET and second.status.status_code == StatusCode.UNSET
    assert [first.attributes[messaging.RETRY_COUNT], second.attributes[messaging.RETRY_COUNT]] == [0, 1]


def test_link_mode_starts_a_new_trace_linked_to_the_send(traced, queue, parent, messaging_parent):
    messaging_parent("link")
    queue.enqueue(rq_jobs.noop)
    (send,) = traced.get_finished_spans()

    done = work(queue, traced)

    (process,) = done
    assert process.parent is None
    assert process.context.trace_id != send.context.trace_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]


@pytest.mark.parametrize(
    "field",
    [
        None,  # a producer without the agent
        b"not json",
        b"[1, 2]",
        json.dumps({"traceparent": "00-zzzz-bad-01"}).encode(),
        json.dumps({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "pad": "x" * rq_hook.MAX_FIELD}).encode(),
    ],
    ids=["absent", "garbled", "not-an-object", "bad-traceparent", "oversized"],
)
def test_a_job_without_a_valid_context_is_a_root_span_and_runs(traced, queue, parent, field):
    job = queue.enqueue(rq_jobs.noop)
    if field is None:
        queue.connection.hdel(job.key, rq_hook.FIELD)
    else:
        queue.connection.hset(job.key, rq_hook.FIELD, field)

    done = work(queue, traced)

    assert Job.fetch(job.id, connection=queue.connection).get_status() == "finished"
    (process,) = done
    assert process.parent is None and not process.links
    assert process.status.status_code == StatusCode.UNSET


def test_a_job_enqueued_by_a_job_continues_the_trace(traced, queue, parent, redis_server):
    queue.enqueue(rq_jobs.enqueue_child, redis_server.port, queue.name)
    (send,) = traced.get_finished_spans()

    done = work(queue, traced)

    outer, inner = kind_spans(done, SpanKind.CONSUMER)
    (child_send,) = kind_spans(done, SpanKind.PRODUCER)
    assert outer.name == "process rq_jobs.enqueue_child" and inner.name == "process rq_jobs.noop"
    assert is_child(outer, send) and is_child(child_send, outer) and is_child(inner, child_send)
    assert redis_spans(done) == []  # the child's enqueue is its send, not Redis commands


def test_a_dependent_job_keeps_the_context_of_its_own_send(traced, queue, parent):
    first = queue.enqueue(rq_jobs.noop)
    second = queue.enqueue(rq_jobs.noop, depends_on=first)
    send_first, send_second = traced.get_finished_spans()
    assert send_second.attributes["messaging.message.id"] == second.id

    done = work(queue, traced)

    run_first, run_second = done
    assert run_first.attributes["messaging.message.id"] == first.id and is_child(run_first, send_first)
    assert run_second.attributes["messaging.message.id"] == second.id and is_child(run_second, send_second)


def test_enqueue_many_is_one_send_whose_context_every_job_carries(traced, queue, parent):
    jobs = queue.enqueue_many([Queue.prepare_data(rq_jobs.noop), Queue.prepare_data(rq_jobs.pid)])
    (send,) = traced.get_finished_spans()
    assert send.name == f"send {queue.name}" and send.kind == SpanKind.PRODUCER
    assert send.attributes["messaging.batch.message_count"] == 2
    assert "messaging.message.id" not in send.attributes

    done = work(queue, traced)

    runs = done
    assert sorted(s.attributes["messaging.message.id"] for s in runs) == sorted(j.id for j in jobs)
    assert all(is_child(s, send) for s in runs)


def test_a_job_the_app_created_is_sent_by_enqueue_job(traced, queue, parent):
    job = Job.create(rq_jobs.noop, connection=queue.connection)
    queue.enqueue_job(job)
    (send,) = traced.get_finished_spans()
    assert send.name == "send rq_jobs.noop" and send.attributes["messaging.message.id"] == job.id

    done = work(queue, traced)

    (process,) = done
    assert is_child(process, send)


def test_enqueue_at_and_in_are_sends_and_the_scheduled_jobs_keep_their_context(traced, queue, parent):
    from rq.scheduler import RQScheduler

    at = queue.enqueue_at(datetime.now(timezone.utc) - timedelta(seconds=1), rq_jobs.noop)
    later = queue.enqueue_in(timedelta(0), rq_jobs.pid)
    send_at, send_in = traced.get_finished_spans()
    assert (send_at.name, send_in.name) == ("send rq_jobs.noop", "send rq_jobs.pid")
    assert send_at.attributes["messaging.message.id"] == at.id and send_in.attributes["messaging.message.id"] == later.id
    scheduler = RQScheduler([queue], connection=queue.connection)
    assert scheduler.acquire_locks()
    try:
        scheduler.enqueue_scheduled_jobs()  # both are due: moved to the queue, as rq's scheduler does
    finally:
        scheduler.release_locks()

    done = work(queue, traced)

    run_at, run_in = sorted(done, key=lambda s: s.name)
    assert run_at.attributes["messaging.message.id"] == at.id and is_child(run_at, send_at)
    assert run_in.attributes["messaging.message.id"] == later.id and is_child(run_in, send_in)


def test_nothing_is_traced_when_suppressed(traced, queue, suppressed):
    job = queue.enqueue(rq_jobs.noop)
    assert traced.get_finished_spans() == ()
    assert stored_field(job) is None


def test_a_queue_without_the_worker_loop_still_gets_spans(traced, queue, parent):
    """perform_job called by the app directly (tests, custom loops): the job's span still starts."""
    job = queue.enqueue(rq_jobs.noop)
    (send,) = traced.get_finished_spans()
    traced.clear()
    worker = SimpleWorker([queue], connection=queue.connection)
    worker.execute_job(Job.fetch(job.id, connection=queue.connection), queue)
    assert Job.fetch(job.id, connection=queue.connection).get_status() == "finished"
    (process,) = kind_spans(traced.get_finished_spans(), SpanKind.CONSUMER)
    assert is_child(process, send)


def test_the_export_before_a_horse_exits_is_not_made_in_the_workers_own_process(traced, queue, monkeypatch):
    """rq 1.x's SimpleWorker sets the horse flag in the worker's process: no flush per job there."""
    exports = []
    monkeypatch.setattr(messaging, "export_now", lambda *a, **k: exports.append(1) or True)

    class FlaggedWorker(rq_jobs.QuietSimpleWorker):
        def execute_job(self, job, queue):
            self._is_horse = True
            try:
                return super().execute_job(job, queue)
            finally:
                self._is_horse = False

    queue.enqueue(rq_jobs.noop)
    token = context.attach(context.Context())
    try:
        FlaggedWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")
    finally:
        context.detach(token)
    assert len(kind_spans(traced.get_finished_spans(), SpanKind.CONSUMER)) == 1
    assert exports == []


def test_a_job_enqueued_again_keeps_the_context_of_its_send(traced, queue, parent):
    """rq 1.x's scheduler and dependents call enqueue_job with jobs that were sent already."""
    job = queue.enqueue(rq_jobs.noop)
    (send,) = traced.get_finished_spans()
    stored = stored_field(job)
    queue.enqueue_job(Job.fetch(job.id, connection=queue.connection))
    assert kind_spans(traced.get_finished_spans(), SpanKind.PRODUCER) == [send]
    assert stored_field(job) == stored


def test_a_failure_of_the_hook_never_reaches_the_app(traced, queue, parent, monkeypatch, warnings):
    def broken(*args, **kwargs):
        raise RuntimeError("hook bug")

    monkeypatch.setattr(rq_hook, "_dumps", broken)
    job = queue.enqueue(rq_jobs.noop)
    (send,) = traced.get_finished_spans()  # one span, ended; rq's commands still none
    assert send.kind == SpanKind.PRODUCER and send.end_time is not None
    assert stored_field(job) is None  # the job goes as it is
    assert any("hook bug" in line for line in warnings())

    done = work(queue, traced)

    assert Job.fetch(job.id, connection=queue.connection).get_status() == "finished"
    (process,) = done
    assert process.parent is None
