"""RQ under the agent: a Flask request's jobs, run by a worker, in the request's trace; nothing lost.

Real processes against the session's real Redis server and a real OTLP receiver:

- a Flask app under ``autotrace run`` enqueues three jobs in a request (one touches
  Redis, one fails, one enqueues another job); a worker (the forking ``Worker`` under
  ``autotrace run``, or a ``SimpleWorker`` started with ``AUTOTRACE_ENABLED=true``) runs
  them in burst mode. One trace holds exactly the request's SERVER span, its three sends,
  the four jobs' CONSUMER spans, the inner send and the jobs' two Redis commands, each
  with the right parent; a job enqueued by a producer without the agent is a root span;
  the worker records nothing else (its own Redis traffic is not traced);
- 200 jobs through the forking ``Worker`` (a work horse per job, ending in ``os._exit``):
  every job's span arrives, each a child of its send;
- SIGTERM to a worker in the middle of a batch (warm shutdown): every job it finished
  has its span at the receiver, for the forking ``Worker`` and the ``SimpleWorker``.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid

import pytest
import redis
from rq import Queue
from rq.registry import FinishedJobRegistry

from agent import AUTOTRACE, PYTHON, Watched, clean_env, run, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2

# The jobs, and workers without their pub/sub channel: with rq 3 and redis-py 8 a burst
# worker that ends right after it subscribed can wait 60 s for that thread (agent or not).
JOBS = """
import os
import sys
import time

import redis
from rq import Queue, SimpleWorker, Worker


def touch(port, key):
    return redis.Redis(host="127.0.0.1", port=port).incr(key)


def fail(message):
    raise ValueError(message)


def spawn(port, queue, key):
    return Queue(queue, connection=redis.Redis(host="127.0.0.1", port=port)).enqueue(touch, port, key).id


def nap(seconds):
    time.sleep(seconds)
    return os.getpid()


def noop():
    return None


class QuietWorker(Worker):
    def subscribe(self):
        pass


class QuietSimpleWorker(SimpleWorker):
    def subscribe(self):
        pass
"""

APP = """
import sys
import uuid

import redis
from flask import Flask, jsonify
from rq import Queue

import jobs

PORT = int(sys.argv[2])
app = Flask(__name__)
queue = Queue(sys.argv[3], connection=redis.Redis(host="127.0.0.1", port=PORT))


@app.get("/order")
def order():
    key = "rq-agent:" + uuid.uuid4().hex
    sent = [
        queue.enqueue(jobs.touch, PORT, key),
        queue.enqueue(jobs.fail, "no stock"),
        queue.enqueue(jobs.spawn, PORT, queue.name, key),
    ]
    return jsonify([job.id for job in sent])


if __name__ == "__main__":
    print("serving", flush=True)
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
"""

# Enqueues jobs (under autotrace run: each send a root span; plain: no context at all).
ENQUEUE = """
import sys

import redis
from rq import Queue

import jobs

queue = Queue(sys.argv[2], connection=redis.Redis(host="127.0.0.1", port=int(sys.argv[1])))
function = getattr(jobs, sys.argv[4])
args = [float(a) for a in sys.argv[5:]]
print(" ".join(queue.enqueue(function, *args).id for _ in range(int(sys.argv[3]))))
"""


def project(tmp_path):
    write(tmp_path, "jobs.py", JOBS)
    write(tmp_path, "app.py", APP)
    write(tmp_path, "enqueue.py", ENQUEUE)
    return tmp_path


def agent_env(receiver: OTLPReceiver, **extra: str) -> dict[str, str]:
    return clean_env(**receiver.env("http"), **extra)


def enqueue(tmp_path, env, port: int, queue: str, count: int, function: str, *args: str, agent: bool = True) -> list[str]:
    command = ([AUTOTRACE, "run"] if agent else []) + [PYTHON, "enqueue.py", str(port), queue, str(count), function, *args]
    done = run(command, tmp_path, env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def worker_command(kind: str, port: int, queue: str, burst: bool = True) -> list[str]:
    cls = {"fork": "jobs.QuietWorker", "simple": "jobs.QuietSimpleWorker"}[kind]
    return ["rq", "worker", "-w", cls, "--url", f"redis://127.0.0.1:{port}", "--logging_level", "WARNING",
            *(["--burst"] if burst else []), queue]


def by_id(spans) -> dict:
    return {s.span_id: s for s in spans}


@pytest.mark.parametrize("kind", ["fork", "simple"])
def test_a_requests_jobs_run_in_its_trace(tmp_path, otlp_receiver, redis_server, kind):
    project(tmp_path)
    queue = "web-" + uuid.uuid4().hex[:8]
    port = free_port()
    env = agent_env(otlp_receiver, OTEL_SERVICE_NAME="shop")
    with Watched([AUTOTRACE, "run", PYTHON, "app.py", str(port), str(redis_server.port), queue], tmp_path, env) as app:
        wait_until_answers(f"http://127.0.0.1:{port}/", process=app)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/order", timeout=10) as reply:
            touch_id, fail_id, spawn_id = json.loads(reply.read())
        # The span ends after the reply is sent: stopped before that, the app would not have it to export.
        (request,) = otlp_receiver.wait_for_spans(1, predicate=lambda s: s.kind == SERVER and s.name == "GET /order")
    (orphan_id,) = enqueue(tmp_path, clean_env(), redis_server.port, queue, 1, "noop", agent=False)
    if kind == "fork":  # under the launcher
        worker_env, command = agent_env(otlp_receiver, OTEL_SERVICE_NAME="worker"), [AUTOTRACE, "run"]
    else:  # the agent from the environment
        worker_env, command = agent_env(otlp_receiver, OTEL_SERVICE_NAME="worker", AUTOTRACE_ENABLED="true"), []
    done = run(command + worker_command(kind, redis_server.port, queue), tmp_path, worker_env, timeout=120)
    assert done.returncode == 0, done.stderr

    worker_spans = otlp_receiver.wait_for_spans(8, timeout=30, predicate=lambda s: s.resource.get("service.name") == "worker")
    time.sleep(0.5)  # anything more would have arrived with these
    trace = [s for s in otlp_receiver.spans() if s.trace_id == request.trace_id]
    assert len(trace) == 11, [(s.name, s.resource.get("service.name")) for s in trace]
    spans = by_id(trace)
    sends = sorted((s for s in trace if s.kind == PRODUCER and s.parent_span_id == request.span_id), key=lambda s: s.name)
    assert [s.name for s in sends] == ["send jobs.fail", "send jobs.spawn", "send jobs.touch"]
    processes = {s.attributes["messaging.message.id"]: s for s in trace if s.kind == CONSUMER}
    assert len(processes) == 4
    for send in sends:
        job_id = send.attributes["messaging.message.id"]
        assert processes[job_id].parent_span_id == send.span_id
        assert processes[job_id].name == send.name.replace("send", "process")
        assert send.attributes["messaging.system"] == "rq" and send.attributes["messaging.destination.name"] == queue
    assert {touch_id, fail_id, spawn_id} <= set(processes)
    failed = processes[fail_id]
    assert failed.status_code == STATUS_ERROR and failed.attributes["error.type"] == "ValueError" and "exception" in failed.events
    assert processes[touch_id].status_code == STATUS_UNSET
    (inner_send,) = [s for s in trace if s.kind == PRODUCER and s.parent_span_id == processes[spawn_id].span_id]
    inner = processes[inner_send.attributes["messaging.message.id"]]
    assert inner.parent_span_id == inner_send.span_id and inner.name == "process jobs.touch"
    commands = [s for s in trace if s.kind == CLIENT]
    assert sorted(spans[s.parent_span_id].span_id for s in commands) == sorted([processes[touch_id].span_id, inner.span_id])
    assert all(s.name == "INCRBY" for s in commands)
    # A job from a producer without the agent: a root span. Nothing else from the worker.
    (orphan,) = [s for s in worker_spans if s.attributes.get("messaging.message.id") == orphan_id]
    assert orphan.parent_span_id == "" and orphan.name == "process jobs.noop"
    worker_total = [s for s in otlp_receiver.spans() if s.resource.get("service.name") == "worker"]
    assert len(worker_total) == 4 + 1 + 2 + 1  # four jobs, the inner send, two commands, the orphan


def test_every_forked_jobs_span_arrives(tmp_path, otlp_receiver, redis_server):
    project(tmp_path)
    queue = "many-" + uuid.uuid4().hex[:8]
    env = agent_env(otlp_receiver, OTEL_SERVICE_NAME="worker")
    ids = enqueue(tmp_path, env, redis_server.port, queue, 200, "noop")
    assert len(ids) == 200
    sends = otlp_receiver.wait_for_spans(200, timeout=30, predicate=lambda s: s.kind == PRODUCER)

    done = run([AUTOTRACE, "run", *worker_command("fork", redis_server.port, queue)], tmp_path, env, timeout=300)
    assert done.returncode == 0, done.stderr

    processes = otlp_receiver.wait_for_spans(200, timeout=60, predicate=lambda s: s.kind == CONSUMER)
    time.sleep(0.5)
    processes = [s for s in otlp_receiver.spans() if s.kind == CONSUMER]
    assert sorted(s.attributes["messaging.message.id"] for s in processes) == sorted(ids)  # each once
    parents = {s.attributes["messaging.message.id"]: s.span_id for s in sends}
    assert all(s.parent_span_id == parents[s.attributes["messaging.message.id"]] for s in processes)
    assert len({s.resource.get("process.pid") for s in processes}) == 200  # a work horse each


@pytest.mark.parametrize("kind", ["fork", "simple"])
def test_sigterm_during_a_batch_loses_no_finished_jobs_span(tmp_path, otlp_receiver, redis_server, kind):
    project(tmp_path)
    queue = "term-" + uuid.uuid4().hex[:8]
    env = agent_env(otlp_receiver, OTEL_SERVICE_NAME="worker")
    ids = enqueue(tmp_path, env, redis_server.port, queue, 60, "nap", "0.05")
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    finished = FinishedJobRegistry(queue, connection=client)
    try:
        with Watched([AUTOTRACE, "run", *worker_command(kind, redis_server.port, queue, burst=False)], tmp_path, env) as worker:
            deadline = time.monotonic() + 60
            while finished.count < 5 and time.monotonic() < deadline:
                assert worker.process.poll() is None, worker.text("stderr")
                time.sleep(0.02)
            assert finished.count >= 5
            worker.send(signal.SIGTERM)  # warm shutdown: the job in progress ends, then the worker
            assert worker.finish(timeout=60) == 0, worker.text("stderr")
        done = set(finished.get_job_ids())
        assert 5 <= len(done) < len(ids)  # stopped in the middle of the batch
        otlp_receiver.wait_for_spans(len(done), timeout=30, predicate=lambda s: s.kind == CONSUMER)
        time.sleep(0.5)
        processed = {s.attributes["messaging.message.id"] for s in otlp_receiver.spans() if s.kind == CONSUMER}
        assert processed == done
    finally:
        Queue(queue, connection=client).empty()
        client.close()
