"""redis-py under ``autotrace run``: one CLIENT span per command and per pipeline, under the request.

Two small services without tracing code, each run under ``autotrace run`` (exporting over
OTLP/HTTP to a real receiver) and plain: a stdlib ``http.server`` one using the sync client
and a raw ASGI app under uvicorn using the asyncio client. A request runs, against the
session's real Redis server, a SET, a GET, a plain pipeline of three commands, a
transaction (MULTI/EXEC) of two, a PUBLISH, an RPUSH, a GET of that list (the server
answers WRONGTYPE; the app catches it) and a DEL. At start-up, outside any request, each
service sends commands too. Two requests run at once, each with its own ``traceparent``.
The test checks:

- each request's trace holds its SERVER span and exactly eight Redis CLIENT spans, all
  children of that SERVER span (the request's, in its thread or asyncio task);
- names, operations, batch sizes, sanitised texts (keys kept, values dropped: no value
  the app wrote is in any span), the server's address, port and database;
- the failed GET: status ERROR, ``error.type``, ``db.response.status_code`` = ``WRONGTYPE``,
  the exception event; the app got the same exception as without the agent;
- the replies are the plain run's;
- the start-up commands have no span (no trace is current there).
"""

from __future__ import annotations

import json
import secrets
import threading
import urllib.request
from dataclasses import dataclass

import pytest

from agent import AUTOTRACE, BIN, PYTHON, SERVE_ON_ARGV_PORT, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver, ReceivedSpan
from ports import free_port

SERVER, CLIENT = 2, 3  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2
SECRET = "secret-value-do-not-export"

# What a request does, sync: the reply says what each call returned.
SYNC_SERVICE = (
    """
import json
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import redis

SECRET = "%s"
client = redis.Redis(host="127.0.0.1", port=int(sys.argv[2]))
client.ping()  # start-up: no trace is current, no span
client.set("startup:" + uuid.uuid4().hex, SECRET, ex=60)


def work(p):
    out = {"set": client.set(p + ":user", SECRET), "get": client.get(p + ":user").decode()}
    with client.pipeline(transaction=False) as pipe:
        pipe.set(p + ":a", SECRET).incr(p + ":n").get(p + ":a")
        out["pipeline"] = [v.decode() if isinstance(v, bytes) else v for v in pipe.execute()]
    with client.pipeline() as pipe:
        pipe.incr(p + ":n").expire(p + ":n", 60)
        out["transaction"] = pipe.execute()
    out["publish"] = client.publish(p + ":chan", SECRET)
    out["rpush"] = client.rpush(p + ":list", SECRET)
    try:
        client.get(p + ":list")
    except redis.exceptions.ResponseError as exc:
        out["error"] = [type(exc).__module__ + "." + type(exc).__qualname__, str(exc)]
    out["deleted"] = client.delete(p + ":user", p + ":a", p + ":n", p + ":list")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        query = parse_qs(urlsplit(self.path).query)
        if "prefix" not in query:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps(work(query["prefix"][0]), sort_keys=True).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

"""
    % SECRET
    + SERVE_ON_ARGV_PORT
)

# The same with the asyncio client, as a raw ASGI app (uvicorn's hook makes the SERVER span).
ASYNC_APP = """
import json
import os
import uuid
from urllib.parse import parse_qs

import redis.asyncio

SECRET = "%s"
client = redis.asyncio.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]))


async def work(p):
    out = {"set": await client.set(p + ":user", SECRET), "get": (await client.get(p + ":user")).decode()}
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(p + ":a", SECRET).incr(p + ":n").get(p + ":a")
        out["pipeline"] = [v.decode() if isinstance(v, bytes) else v for v in await pipe.execute()]
    async with client.pipeline() as pipe:
        pipe.incr(p + ":n").expire(p + ":n", 60)
        out["transaction"] = await pipe.execute()
    out["publish"] = await client.publish(p + ":chan", SECRET)
    out["rpush"] = await client.rpush(p + ":list", SECRET)
    try:
        await client.get(p + ":list")
    except redis.exceptions.ResponseError as exc:
        out["error"] = [type(exc).__module__ + "." + type(exc).__qualname__, str(exc)]
    out["deleted"] = await client.delete(p + ":user", p + ":a", p + ":n", p + ":list")
    return out


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await client.ping()  # start-up: no trace is current, no span
                await client.set("startup:" + uuid.uuid4().hex, SECRET, ex=60)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = parse_qs(scope["query_string"].decode())
    if "prefix" not in query:
        body, status = b"", 404
    else:
        body, status = json.dumps(await work(query["prefix"][0]), sort_keys=True).encode(), 200
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
""" % SECRET

REDIS_SPANS_PER_REQUEST = 8


@dataclass
class Request:
    prefix: str
    trace_id: str
    parent_id: str
    traced: dict  # the traced service's reply
    plain: dict  # the plain service's reply


@dataclass
class Run:
    kind: str  # "sync" or "asyncio"
    redis_port: int
    requests: list
    spans: list
    stderr: str


def ask(port: int, prefix: str, traceparent: str | None = None) -> dict:
    headers = {"traceparent": traceparent} if traceparent else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/work?prefix={prefix}", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def ask_at_once(port: int, prefixes: list[str], traceparents: list[str | None]) -> list[dict]:
    """The requests sent together, each from its own thread (they overlap in the service)."""
    replies: list = [None] * len(prefixes)

    def one(index: int) -> None:
        replies[index] = ask(port, prefixes[index], traceparents[index])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prefixes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(reply is not None for reply in replies), replies
    return replies


def command(kind: str, port: int, redis_port: int, traced: bool) -> list[str]:
    if kind == "sync":
        args = ["python", "service.py", str(port), str(redis_port)]
    else:
        args = ["uvicorn", "--host", "127.0.0.1", "--port", str(port), "--lifespan", "on", "app:app"]
    if traced:
        return [AUTOTRACE, "run", *args]
    return [PYTHON if args[0] == "python" else str(BIN / args[0]), *args[1:]]


@pytest.fixture(scope="module", params=["sync", "asyncio"])
def run(request, tmp_path_factory, redis_server) -> Run:
    kind = request.param
    directory = tmp_path_factory.mktemp(f"redis-{kind}")
    write(directory, "service.py", SYNC_SERVICE)
    write(directory, "app.py", ASYNC_APP)
    with OTLPReceiver() as receiver:
        traced_port, plain_port = free_port(), free_port()
        base = {"REDIS_PORT": str(redis_server.port), "HOME": str(directory)}
        traced_env = clean_env(**receiver.env("http/protobuf"), OTEL_SERVICE_NAME="redis-app", **base)
        with Watched(command(kind, traced_port, redis_server.port, True), directory, traced_env) as traced, Watched(
            command(kind, plain_port, redis_server.port, False), directory, clean_env(**base)
        ) as plain:
            wait_until_answers(f"http://127.0.0.1:{plain_port}/health", timeout=30, process=plain)
            wait_until_answers(f"http://127.0.0.1:{traced_port}/health", timeout=30, process=traced)
            requests = []
            for _ in range(2):  # two rounds of two requests at once
                prefixes = [f"req:{secrets.token_hex(6)}" for _ in range(2)]
                ids = [(secrets.token_hex(16), secrets.token_hex(8)) for _ in prefixes]
                traced_replies = ask_at_once(traced_port, prefixes, [f"00-{t}-{p}-01" for t, p in ids])
                plain_replies = ask_at_once(plain_port, ["plain" + p for p in prefixes], [None, None])
                for prefix, (trace_id, parent_id), traced_reply, plain_reply in zip(prefixes, ids, traced_replies, plain_replies):
                    requests.append(Request(prefix, trace_id, parent_id, traced_reply, plain_reply))
            # Each request's SERVER span and Redis spans, before the stop (a SERVER span ends
            # after the reply is sent); too many are caught by the tests, which count them.
            traces = {r.trace_id for r in requests}
            receiver.wait_for_spans(len(traces) * (1 + REDIS_SPANS_PER_REQUEST), timeout=30, predicate=lambda s: s.trace_id in traces)
            traced.stop()  # SIGTERM: the agent flushes what is left before the process exits
            stderr = traced.text("stderr")
        spans = receiver.spans()
    return Run(kind, redis_server.port, requests, spans, stderr)


def redis_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.attributes.get("db.system.name") == "redis"]


def in_order(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return sorted(spans, key=lambda s: s.start_time_unix_nano)


def test_replies_are_the_same_as_without_the_agent(run):
    for request in run.requests:
        assert request.traced == request.plain
        assert request.traced["error"][0] == "redis.exceptions.ResponseError"
        assert request.traced["error"][1].startswith("WRONGTYPE")
        assert request.traced["pipeline"] == [True, 1, SECRET]


def test_each_request_has_its_eight_redis_spans_under_its_server_span(run):
    for request in run.requests:
        trace = [s for s in run.spans if s.trace_id == request.trace_id]
        [server] = [s for s in trace if s.kind == SERVER]
        assert server.parent_span_id == request.parent_id
        commands = in_order([s for s in trace if s.kind == CLIENT])
        assert len(trace) == 1 + REDIS_SPANS_PER_REQUEST, [(s.name, s.kind) for s in trace]
        assert len(commands) == REDIS_SPANS_PER_REQUEST
        for span in commands:
            assert span.parent_span_id == server.span_id
            assert span.scope == "autotrace.db.redis"


def test_names_and_sanitised_texts(run):
    for request in run.requests:
        p = request.prefix
        commands = in_order([s for s in run.spans if s.trace_id == request.trace_id and s.kind == CLIENT])
        assert [s.name for s in commands] == ["SET", "GET", "PIPELINE", "MULTI", "PUBLISH", "RPUSH", "GET", "DEL"]
        assert [s.attributes["db.query.text"] for s in commands] == [
            f"SET {p}:user ?",
            f"GET {p}:user",
            f"SET {p}:a ?\nINCRBY {p}:n ?\nGET {p}:a",
            f"INCRBY {p}:n ?\nEXPIRE {p}:n ?",
            f"PUBLISH {p}:chan ?",
            f"RPUSH {p}:list ?",
            f"GET {p}:list",
            f"DEL {p}:user ? ? ?",
        ]
        pipeline, transaction = commands[2], commands[3]
        assert pipeline.attributes["db.operation.name"] == "PIPELINE"
        assert pipeline.attributes["db.operation.batch.size"] == 3
        assert transaction.attributes["db.operation.name"] == "MULTI"
        assert transaction.attributes["db.operation.batch.size"] == 2
        for span in commands:
            assert span.attributes["db.operation.name"] == span.name
            assert span.attributes["db.namespace"] == "0"
            assert span.attributes["server.address"] == "127.0.0.1"
            assert span.attributes["server.port"] == run.redis_port
    assert not [s for s in run.spans if SECRET in str(s.attributes)]


def test_error_reply_is_recorded(run):
    for request in run.requests:
        commands = in_order([s for s in run.spans if s.trace_id == request.trace_id and s.kind == CLIENT])
        failed = commands[6]
        assert failed.status_code == STATUS_ERROR
        assert failed.attributes["error.type"] == "redis.exceptions.ResponseError"
        assert failed.attributes["db.response.status_code"] == "WRONGTYPE"
        assert "exception" in failed.events
        assert all(s.status_code == STATUS_UNSET for s in commands if s is not failed)


def test_no_span_outside_a_request(run):
    spans = redis_spans(run.spans)
    assert len(spans) == REDIS_SPANS_PER_REQUEST * len(run.requests)  # none of the start-up commands
    assert not [s for s in spans if s.name == "PING" or not s.parent_span_id]


def test_no_warning_from_the_agent(run):
    assert "autotrace WARNING" not in run.stderr, run.stderr
