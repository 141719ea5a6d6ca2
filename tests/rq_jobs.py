"""Jobs the RQ tests enqueue (a worker imports them by name: tests/test_rq.py, integration/test_rq_agent.py)."""

from __future__ import annotations

import os

import redis
from rq import Queue, Retry, SimpleWorker


def noop() -> None:
    return None


def touch(port: int, key: str) -> int:
    """One Redis command of the job's own (a span under the job's)."""
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return client.incr(key)
    finally:
        client.close()


def fail(message: str) -> None:
    raise ValueError(message)


def fail_once(port: int, key: str) -> str:
    """Fails on its first run, succeeds on the next (a retried job)."""
    if touch(port, key) == 1:
        raise RuntimeError("first run fails")
    return "second run"


def ask_retry_once(port: int, key: str):
    """Returns ``Retry`` on its first run (rq 2+: retried, not failed)."""
    if touch(port, key) == 1:
        return Retry(max=1)
    return "retried"


def enqueue_child(port: int, queue: str) -> str:
    """A job that enqueues another (task -> task in one trace)."""
    child = Queue(queue, connection=redis.Redis(host="127.0.0.1", port=port)).enqueue(noop)
    return child.id


def pid() -> int:
    return os.getpid()


class QuietSimpleWorker(SimpleWorker):
    """A SimpleWorker without its pub/sub channel (rq's stop/kill commands, unused here).

    With rq 3 and redis-py 8, a burst worker that ends right after it subscribed can wait
    60 s for its pub/sub thread (which waits for the subscription's reply that long), with
    or without the agent: the tests would be slow at random.
    """

    def subscribe(self) -> None:
        pass
