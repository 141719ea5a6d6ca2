"""Celery under ``autotrace run``: from a web request to every task it causes, one trace; nothing lost.

Real processes, a real Redis broker (the session's server, each test on its own queue) and
a real OTLP receiver; the services carry no tracing code:

- a Flask app under gunicorn whose request enqueues a chain (2 tasks) and a group (2
  tasks), and a prefork worker, each under ``autotrace run``: one trace at the receiver
  holding exactly the SERVER span, 4 PRODUCER and 4 CONSUMER spans, with their parents
  (the chain's second task is sent by the worker, from the first task's span);
- ``max_tasks_per_child=1`` and 200 tasks sent by a producer *without* the agent: every
  task's CONSUMER span arrives, each a root span (no headers: a new trace, never an
  error). The worker's batch delay is 30 s, so only the children's flush at exit brings
  them;
- SIGTERM (warm shutdown) and SIGQUIT (cold shutdown: the pool's children get SIGTERM) to
  a prefork worker during a batch: every task the worker logged as succeeded has its span
  at the receiver; again only the children's flush at exit can have sent them;
- a threads pool and the solo pool started with ``AUTOTRACE_ENABLED=true`` (no launcher):
  each task's span is a child of its producer's.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from agent import AUTOTRACE, PYTHON, Watched, clean_env, run, wait_until_answers, write
from otlp_receiver import OTLPReceiver, ReceivedSpan
from ports import free_port

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # proto SpanKind
STATUS_ERROR = 2

TASKS = """
import os
import time
import urllib.error
import urllib.request

from celery import Celery

app = Celery("tasks", broker=os.environ["BROKER_URL"])
app.conf.task_default_queue = os.environ["QUEUE"]
app.conf.worker_prefetch_multiplier = 1
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False
DONE = os.environ.get("DONE_DIR")

if os.environ.get("SHUTDOWN_SPAN"):
    from celery.signals import worker_process_shutdown
    from opentelemetry import trace

    @worker_process_shutdown.connect
    def closing(pid=None, exitcode=None, **ignored):
        with trace.get_tracer("tasks").start_as_current_span("worker process shutdown"):
            pass


@app.task
def add(x, y):
    return x + y


@app.task
def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@app.task
def work(n, seconds=0.0):
    time.sleep(seconds)
    if DONE:
        with open(os.path.join(DONE, str(n)), "w") as done:
            done.write("done")
    return n
"""

WEB = """
from celery import chain, group
from flask import Flask

import tasks

app = Flask(__name__)


@app.route("/enqueue")
def enqueue():
    chain(tasks.add.s(1, 2), tasks.add.s(3)).apply_async()
    group(tasks.add.s(i, i) for i in range(2)).apply_async()
    return "queued"
"""

# Sends N work tasks, as an app without the agent would (plain python).
SEND = """
import sys

import tasks

for n in range(int(sys.argv[1])):
    tasks.work.delay(n, float(sys.argv[2]))
print("sent", flush=True)
"""

# Sends an add and a fetch of the URL given (under the agent: their producer spans).
SEND_FETCH = """
import sys

import tasks

tasks.add.delay(2, 3)
tasks.fetch.delay(sys.argv[1])
print("sent", flush=True)
"""


@pytest.fixture
def project(tmp_path, redis_server):
    """The task module, the web app and the sender, with a broker URL and a queue of the test's own."""
    write(tmp_path, "tasks.py", TASKS)
    write(tmp_path, "web.py", WEB)
    write(tmp_path, "send.py", SEND)
    write(tmp_path, "send_fetch.py", SEND_FETCH)
    done = tmp_path / "done"
    done.mkdir()
    os.chmod(tmp_path, 0o755)
    env = {"BROKER_URL": redis_server.url(), "QUEUE": "q-" + uuid.uuid4().hex[:12], "DONE_DIR": str(done)}
    return tmp_path, env


def _worker(directory: Path, env: dict, *options: str, launcher: bool = True) -> Watched:
    command = ["celery", "-A", "tasks", "worker", "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat", *options]
    args = [AUTOTRACE, "run", *command] if launcher else command
    worker = Watched(args, directory, env)
    worker.wait_for_line("ready.", timeout=60, name="stderr")
    return worker


def _stop(worker: Watched) -> None:
    worker.send(signal.SIGTERM)
    assert worker.finish(timeout=60) == 0, worker.text("stderr")


def _by_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def test_a_request_that_enqueues_a_chain_and_a_group_is_one_trace(project, otlp_receiver: OTLPReceiver):
    directory, extra = project
    env = clean_env(**otlp_receiver.env("http"), **extra, HOME=str(directory))
    worker = _worker(directory, env, "-P", "prefork", "-c", "2")
    port = free_port()
    web = Watched([AUTOTRACE, "run", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "web:app"], directory, env)
    try:
        url = f"http://127.0.0.1:{port}/enqueue"
        wait_until_answers(f"http://127.0.0.1:{port}/nothing", process=web)
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"queued"
        (server,) = otlp_receiver.wait_for_spans(1, timeout=30, predicate=lambda s: s.kind == SERVER and s.name == "GET /enqueue")
        in_trace = lambda s: s.trace_id == server.trace_id  # noqa: E731
        otlp_receiver.wait_for_spans(4, timeout=30, predicate=lambda s: in_trace(s) and s.kind == CONSUMER)
        time.sleep(1.0)  # anything more would arrive now (batch delay 100 ms)
    finally:
        web.stop()
        _stop(worker)
    trace = [s for s in otlp_receiver.spans() if s.trace_id == server.trace_id]
    ids = _by_id(trace)
    producers = [s for s in trace if s.kind == PRODUCER]
    consumers = [s for s in trace if s.kind == CONSUMER]
    assert len(trace) == 9, [(s.name, s.kind) for s in trace]
    assert len(producers) == 4 and len(consumers) == 4
    assert {s.name for s in producers} == {"send tasks.add"} and {s.name for s in consumers} == {"process tasks.add"}
    # Three sent by the request, one by the chain's first task (from the worker).
    from_request = [s for s in producers if s.parent_span_id == server.span_id]
    from_task = [s for s in producers if s.parent_span_id != server.span_id]
    assert len(from_request) == 3 and len(from_task) == 1
    assert ids[from_task[0].parent_span_id].kind == CONSUMER
    # Each task run: a child of the send of its message, with the message's id.
    for consumer in consumers:
        producer = ids[consumer.parent_span_id]
        assert producer.kind == PRODUCER
        assert consumer.attributes["messaging.message.id"] == producer.attributes["messaging.message.id"]
        assert consumer.attributes["messaging.system"] == "celery"
        assert consumer.attributes["messaging.destination.name"] == extra["QUEUE"]
        assert consumer.attributes["autotrace.messaging.retry_count"] == 0
        assert consumer.attributes["autotrace.messaging.queue_time_ms"] >= 0
        assert consumer.resource["service.name"] == "tasks"
    for producer in producers:
        assert producer.attributes["messaging.operation.type"] == "send"
        assert producer.attributes["messaging.destination.name"] == extra["QUEUE"]
    assert len({s.attributes["messaging.message.id"] for s in consumers}) == 4


def test_max_tasks_per_child_one_every_tasks_span_arrives_as_a_root(project, otlp_receiver: OTLPReceiver):
    directory, extra = project
    count = 200
    env = clean_env(**otlp_receiver.env("http"), **extra, HOME=str(directory))
    env["OTEL_BSP_SCHEDULE_DELAY"] = "30000"  # only the flush at the child's exit sends them in time
    worker = _worker(directory, env, "-P", "prefork", "-c", "2", "--max-tasks-per-child", "1")
    try:
        sent = run([PYTHON, "send.py", str(count), "0"], directory, clean_env(**extra), timeout=60)
        assert sent.returncode == 0, sent.stderr
        consumers = otlp_receiver.wait_for_spans(count, timeout=180, predicate=lambda s: s.kind == CONSUMER)
    finally:
        _stop(worker)
    consumers = [s for s in otlp_receiver.spans() if s.kind == CONSUMER]
    assert len(consumers) == count
    assert sorted(s.attributes["messaging.message.id"] for s in consumers) == sorted({s.attributes["messaging.message.id"] for s in consumers})
    assert all(s.parent_span_id == "" and s.status_code != STATUS_ERROR for s in consumers)
    assert len({s.trace_id for s in consumers}) == count
    assert len({s.resource["process.pid"] for s in consumers}) == count  # a child per task


def test_spans_made_by_worker_process_shutdown_handlers_arrive(project, otlp_receiver: OTLPReceiver):
    """A child ends (recycled after its task, or at the pool's close) after Celery's
    ``worker_process_shutdown`` handlers ran in it: what they record is exported too."""
    directory, extra = project
    env = clean_env(**otlp_receiver.env("http"), **extra, HOME=str(directory), SHUTDOWN_SPAN="1")
    env["OTEL_BSP_SCHEDULE_DELAY"] = "30000"  # only the flushes at the children's exit send them in time
    worker = _worker(directory, env, "-P", "prefork", "-c", "1", "--max-tasks-per-child", "1")
    try:
        sent = run([PYTHON, "send.py", "3", "0"], directory, clean_env(**extra), timeout=60)
        assert sent.returncode == 0, sent.stderr
        otlp_receiver.wait_for_spans(3, timeout=60, predicate=lambda s: s.kind == CONSUMER)
    finally:
        _stop(worker)
    time.sleep(0.5)
    spans = otlp_receiver.spans()
    task_pids = {s.resource["process.pid"] for s in spans if s.kind == CONSUMER}
    shutdown_pids = [s.resource["process.pid"] for s in spans if s.name == "worker process shutdown"]
    assert len(task_pids) == 3 and len(shutdown_pids) == len(set(shutdown_pids))
    # Each recycled child's, and the last child's at the pool's close (it ran no task, or the last one).
    assert task_pids <= set(shutdown_pids) and len(shutdown_pids) in (3, 4), (task_pids, shutdown_pids)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT], ids=["warm-shutdown", "cold-shutdown"])
def test_a_signal_during_a_batch_every_finished_tasks_span_arrives(project, otlp_receiver: OTLPReceiver, signum):
    """SIGTERM: a warm shutdown (the running tasks finish, the pool closes); SIGQUIT: a cold
    one (the pool's children get SIGTERM at once). A task the worker logged as succeeded had
    its span ended in the child before the child sent its result: it must arrive."""
    directory, extra = project
    done = Path(extra["DONE_DIR"])
    env = clean_env(**otlp_receiver.env("http"), **extra, HOME=str(directory))
    env["OTEL_BSP_SCHEDULE_DELAY"] = "30000"
    worker = _worker(directory, env, "-P", "prefork", "-c", "2")
    try:
        sent = run([PYTHON, "send.py", "40", "0.2"], directory, clean_env(**extra), timeout=60)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 60
        while len(os.listdir(done)) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(os.listdir(done)) >= 6
        worker.send(signum)
        worker.finish(timeout=60)
    finally:
        worker.stop()
    succeeded = set(re.findall(r"Task tasks\.work\[([0-9a-f-]+)\] succeeded", worker.text("stderr")))
    assert 6 <= len(succeeded) < 40
    otlp_receiver.wait_for_spans(len(succeeded), timeout=10, predicate=lambda s: s.name == "process tasks.work")
    time.sleep(0.5)
    arrived = {s.attributes["messaging.message.id"] for s in otlp_receiver.spans() if s.name == "process tasks.work"}
    assert succeeded <= arrived
    if signum == signal.SIGTERM:  # warm: every task that started, finished
        assert arrived == succeeded


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_threads_and_solo_pools_with_autotrace_enabled(project, otlp_receiver: OTLPReceiver, pool):
    directory, extra = project
    env = clean_env(**otlp_receiver.env("http"), **extra, HOME=str(directory), AUTOTRACE_ENABLED="true")
    worker = _worker(directory, env, "-P", pool, "-c", "2", launcher=False)
    try:
        sent = run([AUTOTRACE, "run", "python", "send.py", "4", "0"], directory, clean_env(**otlp_receiver.env("http"), **extra), timeout=60)
        assert sent.returncode == 0, sent.stderr
        consumers = otlp_receiver.wait_for_spans(4, timeout=30, predicate=lambda s: s.kind == CONSUMER)
        otlp_receiver.wait_for_spans(4, timeout=30, predicate=lambda s: s.kind == PRODUCER)
    finally:
        _stop(worker)
    ids = _by_id(otlp_receiver.spans())
    for consumer in consumers:
        producer = ids[consumer.parent_span_id]
        assert producer.kind == PRODUCER and producer.trace_id == consumer.trace_id
        assert producer.resource["service.name"] == "send" and consumer.resource["service.name"] == "tasks"


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_gevent_and_eventlet_pools_export_while_running(project, otlp_receiver: OTLPReceiver, pool):
    """The pool monkey-patches the worker as it starts: the agent's export thread and its
    waits must still work (spans arrive while the worker runs, not only at its exit), each
    task's span is its producer's child and an HTTP call in a task is the task span's child."""
    directory, extra = project
    env = clean_env(**otlp_receiver.env("http"), **extra, HOME=str(directory))
    worker = _worker(directory, env, "-P", pool, "-c", "4")
    try:
        url = otlp_receiver.http_endpoint + "/v1/traces"  # a GET: 405, a CLIENT span all the same
        sent = run([AUTOTRACE, "run", "python", "send_fetch.py", url], directory, clean_env(**otlp_receiver.env("http"), **extra), timeout=60)
        assert sent.returncode == 0, sent.stderr
        consumers = otlp_receiver.wait_for_spans(2, timeout=30, predicate=lambda s: s.kind == CONSUMER)
        (client,) = otlp_receiver.wait_for_spans(1, timeout=30, predicate=lambda s: s.kind == CLIENT)
        worker_pid = worker.pid
    finally:
        _stop(worker)
    spans = otlp_receiver.spans()
    ids = _by_id(spans)
    assert sorted(s.name for s in consumers) == ["process tasks.add", "process tasks.fetch"]
    for consumer in consumers:
        producer = ids[consumer.parent_span_id]
        assert producer.kind == PRODUCER and producer.name == consumer.name.replace("process", "send")
        assert producer.trace_id == consumer.trace_id and producer.resource["service.name"] == "send_fetch"
        assert consumer.resource["process.pid"] == worker_pid
        assert consumer.attributes["messaging.message.id"] == producer.attributes["messaging.message.id"]
    (fetch,) = [s for s in consumers if s.name == "process tasks.fetch"]
    assert client.parent_span_id == fetch.span_id and client.trace_id == fetch.trace_id
    assert client.attributes["http.response.status_code"] == 405
    assert "Traceback" not in worker.text("stderr"), worker.text("stderr")
