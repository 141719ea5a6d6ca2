"""aiohttp end to end: unchanged aiohttp services under ``autotrace run``, spans at a real OTLP receiver.

A front service (``web.run_app`` from a script) answers ``/front/{name}`` by calling a
back service with its ``ClientSession``: ``/items/{id}`` (200, with work in a task, an
executor thread and ``to_thread``), then ``/boom`` (the handler raises: a 500). The
back service is served by gunicorn with aiohttp's ``GunicornWebWorker`` (two workers),
or by ``python -m aiohttp.web``. One request to the front, with a caller's
``traceparent``, must make one trace: the front's SERVER span (a child of the caller's),
its two CLIENT spans, and one SERVER span in the back under each of them, named by
route, with the error where it happened. Spans are held until the processes end
(SIGTERM), so the flush at exit is checked too.
"""

from __future__ import annotations

import http.client
import secrets
import signal

import pytest

from agent import AUTOTRACE, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

SERVER, CLIENT, INTERNAL = 2, 3, 1
ERROR = 2

BACK = """
import asyncio

from aiohttp import web
from opentelemetry import trace

tracer = trace.get_tracer("back")


def work(name):
    with tracer.start_as_current_span(name):
        pass


async def in_task():
    work("in-task")


async def item(request):
    await asyncio.create_task(in_task())
    await asyncio.get_running_loop().run_in_executor(None, work, "in-executor")
    await asyncio.to_thread(work, "in-to-thread")
    return web.json_response({"id": request.match_info["id"]})


async def boom(request):
    raise RuntimeError("the back failed")


async def health(request):
    return web.Response(text="healthy")


def make_app(argv=None):
    app = web.Application()
    app.router.add_get("/items/{id}", item)
    app.router.add_get("/boom", boom)
    app.router.add_get("/health", health)
    return app


app = make_app()
"""

FRONT = """
import sys

import aiohttp
from aiohttp import web

BACK = "http://127.0.0.1:" + sys.argv[2]


async def front(request):
    async with aiohttp.ClientSession() as session:
        async with session.get(BACK + "/items/7") as response:
            item = await response.json()
        async with session.get(BACK + "/boom") as response:
            failed = response.status
    return web.json_response({"name": request.match_info["name"], "item": item, "back_failed": failed})


async def health(request):
    return web.Response(text="healthy")


app = web.Application()
app.router.add_get("/front/{name}", front)
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *args: print("serving", flush=True))
"""

BACK_SERVERS = {
    "gunicorn": ["gunicorn", "-k", "aiohttp.GunicornWebWorker", "-w", "2", "-b", "127.0.0.1:{port}", "back:app"],
    "python-m": ["python", "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", "{port}", "back:make_app"],
}


def get(port: int, path: str, headers: dict) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("back_server", sorted(BACK_SERVERS))
def test_front_calling_back_is_one_trace(tmp_path, back_server):
    write(tmp_path, "back.py", BACK)
    write(tmp_path, "front.py", FRONT)
    front_port, back_port = free_port(), free_port()
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    with OTLPReceiver() as receiver:
        env = clean_env(**receiver.env("http"))
        env.update(HOME=str(tmp_path), OTEL_BSP_SCHEDULE_DELAY="60000")  # nothing exported before the processes end
        back_args = [arg.replace("{port}", str(back_port)) for arg in BACK_SERVERS[back_server]]
        with Watched([AUTOTRACE, "run", *back_args], tmp_path, env) as back, Watched(
            [AUTOTRACE, "run", "python", "front.py", str(front_port), str(back_port)], tmp_path, env
        ) as front:
            wait_until_answers(f"http://127.0.0.1:{back_port}/health", timeout=30, process=back)
            wait_until_answers(f"http://127.0.0.1:{front_port}/health", timeout=30, process=front)
            status, body = get(front_port, "/front/ann?case=1", {"traceparent": f"00-{trace_id}-{caller}-01"})
            assert status == 200, body
            assert b'"back_failed": 500' in body and b'"id": "7"' in body
            for process in (front, back):
                process.send(signal.SIGTERM)  # the launcher exec'd: this is the server itself
            codes = [process.finish(timeout=30) for process in (front, back)]
        stderr = front.text("stderr") + back.text("stderr")
        spans = [s for s in receiver.spans() if s.trace_id == trace_id]  # flushed at exit
    assert len(spans) == 8, [(s.name, s.kind, s.attributes) for s in spans]
    assert codes == [0, 0], (codes, stderr)
    assert not [line for line in stderr.splitlines() if line.startswith("autotrace WARNING")], stderr

    [front_span] = [s for s in spans if s.kind == SERVER and s.name == "GET /front/{name}"]
    assert front_span.parent_span_id == caller
    assert front_span.attributes["http.route"] == "/front/{name}"
    assert front_span.attributes["http.response.status_code"] == 200
    assert front_span.status_code != ERROR

    clients = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_time_unix_nano)
    assert [s.attributes["url.full"] for s in clients] == [f"http://127.0.0.1:{back_port}/items/7", f"http://127.0.0.1:{back_port}/boom"]
    assert all(s.parent_span_id == front_span.span_id and s.name == "GET" for s in clients)
    assert clients[0].attributes["http.response.status_code"] == 200 and clients[0].status_code != ERROR
    assert clients[1].attributes["http.response.status_code"] == 500 and clients[1].status_code == ERROR

    [item] = [s for s in spans if s.kind == SERVER and s.name == "GET /items/{id}"]
    [boom] = [s for s in spans if s.kind == SERVER and s.name == "GET /boom"]
    assert item.parent_span_id == clients[0].span_id
    assert boom.parent_span_id == clients[1].span_id
    assert item.status_code != ERROR and item.attributes["url.path"] == "/items/7"
    assert boom.status_code == ERROR
    assert boom.attributes["error.type"] == "RuntimeError"
    assert boom.attributes["http.response.status_code"] == 500
    assert boom.events == ("exception",)
    work = {s.name: s for s in spans if s.kind == INTERNAL}
    assert set(work) == {"in-task", "in-executor", "in-to-thread"}
    assert all(s.parent_span_id == item.span_id for s in work.values())
    assert front_span.resource["process.pid"] == front.pid
    assert front_span.resource["service.name"] == "front"
    assert item.resource["service.name"] == boom.resource["service.name"] == "back"  # gunicorn's or aiohttp.web's MODULE:APP
    if back_server == "gunicorn":  # served by a worker, not the arbiter
        assert item.resource["process.pid"] != back.pid
