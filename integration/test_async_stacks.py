"""aiohttp -> Tornado -> Flask under ``autotrace run``: one trace through three services.

Three real processes, none with tracing code, each under ``autotrace run`` exporting to a
real OTLP receiver, each with its own ``OTEL_SERVICE_NAME``:

- ``front`` (aiohttp, ``web.run_app``): ``/orders/{id}`` asks ``shop`` for the item with
  a ``ClientSession``. When ``shop`` fails (5xx) it answers 200 with no stock, or, with
  ``?strict=1``, raises ``web.HTTPServiceUnavailable`` (a 503);
- ``shop`` (Tornado, ``Application.listen``): ``/items/(?P<item_id>[0-9]+)`` asks
  ``stock`` with ``AsyncHTTPClient``, answering 502 when ``stock`` fails;
- ``stock`` (Flask on werkzeug's server): ``/stock/<int:item_id>``, which raises for
  item 13 (Flask's 500).

Three requests reach ``front``: item 7 (all well), item 13 (``stock`` fails, ``front``
still answers 200) and item 13 strictly (``front`` answers 503 too). Each must be one
trace of five spans chained front SERVER -> front CLIENT -> shop SERVER -> shop CLIENT
-> stock SERVER, named by route, with the errors where the conventions put them: a CLIENT
span is an error when it receives a 5xx, a SERVER span only when it answers one.
The test waits (bounded) until all spans have arrived, then stops the services; what
they flush at exit must add nothing.
"""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent import AUTOTRACE, PYTHON, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

import aiohttp  # noqa: F401 - a test dependency: missing, the tests fail
import tornado  # noqa: F401 - a test dependency: missing, the tests fail
import flask  # noqa: F401 - a test dependency: missing, the tests fail

SERVER, CLIENT = 2, 3  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2

STOCK = """
import sys

from flask import Flask

app = Flask("stock")


@app.route("/ready")
def ready():
    return "ready"


@app.route("/stock/<int:item_id>")
def stock(item_id):
    if item_id == 13:
        raise LookupError("the stock of item 13 is lost")
    return {"item": item_id, "left": 3}


app.run("127.0.0.1", int(sys.argv[1]))
"""

SHOP = """
import asyncio
import json
import signal
import sys

import tornado.httpclient
import tornado.web

STOCK = "http://127.0.0.1:" + sys.argv[2]


class Ready(tornado.web.RequestHandler):
    def get(self):
        self.write("ready")


class Item(tornado.web.RequestHandler):
    async def get(self, item_id):
        client = tornado.httpclient.AsyncHTTPClient()
        response = await client.fetch(f"{STOCK}/stock/{item_id}", raise_error=False, request_timeout=10)
        if response.code >= 500:
            self.set_status(502)
            self.finish({"error": f"stock answered {response.code}"})
            return
        self.finish({"item": int(item_id), "stock": json.loads(response.body)})


async def main():
    app = tornado.web.Application([(r"/ready", Ready), (r"/items/(?P<item_id>[0-9]+)", Item)])
    app.listen(int(sys.argv[1]), "127.0.0.1")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("serving", flush=True)
    await stop.wait()


asyncio.run(main())
"""

FRONT = """
import sys

import aiohttp
from aiohttp import web

SHOP = "http://127.0.0.1:" + sys.argv[2]


async def order(request):
    async with aiohttp.ClientSession() as session:
        async with session.get(SHOP + "/items/" + request.match_info["id"]) as response:
            if response.status >= 500:
                if request.query.get("strict"):
                    raise web.HTTPServiceUnavailable(text="the shop failed")
                return web.json_response({"order": request.match_info["id"], "stock": None})
            item = await response.json()
    return web.json_response({"order": request.match_info["id"], "stock": item["stock"]})


async def ready(request):
    return web.Response(text="ready")


app = web.Application()
app.router.add_get("/orders/{id}", order)
app.router.add_get("/ready", ready)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *args: print("serving", flush=True))
"""

# name: (path at front, front's answer, shop's answer, stock's answer)
REQUESTS = {
    "ok": ("/orders/7", 200, 200, 200),
    "degraded": ("/orders/13", 200, 502, 500),
    "strict": ("/orders/13?strict=1", 503, 502, 500),
}
SPANS_PER_TRACE = 5  # front: SERVER + CLIENT, shop: SERVER + CLIENT, stock: SERVER


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def not_a_readiness_check(span) -> bool:
    return span.attributes.get("url.path") != "/ready"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """Start the three services, send the requests, wait for their spans, stop the services.

    Returns {"replies": {name: (status, body)}, "spans": [...], "stderr": str}.
    """
    directory: Path = tmp_path_factory.mktemp("async_stacks")
    for name, source in (("stock.py", STOCK), ("shop.py", SHOP), ("front.py", FRONT)):
        write(directory, name, source)
    stock_port, shop_port, front_port = free_port(), free_port(), free_port()
    with OTLPReceiver() as receiver:
        def env(service: str) -> dict[str, str]:
            return clean_env(**receiver.env("http"), HOME=str(directory), OTEL_SERVICE_NAME=service, OTEL_LOG_LEVEL="debug")

        def command(script: str, *ports: int) -> list[str]:
            return [AUTOTRACE, "run", PYTHON, str(directory / script), *map(str, ports)]

        with Watched(command("stock.py", stock_port), directory, env("stock")) as stock, Watched(
            command("shop.py", shop_port, stock_port), directory, env("shop")
        ) as shop, Watched(command("front.py", front_port, shop_port), directory, env("front")) as front:
            services = (front, shop, stock)
            for port, process in zip((front_port, shop_port, stock_port), services):
                wait_until_answers(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
            replies = {name: fetch(f"http://127.0.0.1:{front_port}{path}") for name, (path, *_) in REQUESTS.items()}
            expected = SPANS_PER_TRACE * len(REQUESTS)
            try:
                receiver.wait_for_spans(expected, timeout=30, predicate=not_a_readiness_check)
            except AssertionError as exc:
                stderr = "".join(process.text("stderr") for process in services)
                raise AssertionError(f"{exc}\nreplies: {replies}\nstderr:\n{stderr}") from None
            for process in services:  # front first: nothing is in flight down the chain
                process.send(signal.SIGTERM)
                process.finish(timeout=30)
        stderr = "".join(process.text("stderr") for process in services)
        spans = [s for s in receiver.spans() if not_a_readiness_check(s)]  # exited: flushed at exit too
    return {"replies": replies, "spans": spans, "stderr": stderr}


def chain(run: dict, name: str) -> dict:
    """The spans of request ``name``'s trace, by role: the trace starts at front's SERVER span."""
    path = REQUESTS[name][0]
    url_path, _, query = path.partition("?")
    [root] = [
        s for s in run["spans"]
        if s.kind == SERVER and s.resource.get("service.name") == "front"
        and s.attributes.get("url.path") == url_path and s.attributes.get("url.query", "") == query
    ]
    spans = [s for s in run["spans"] if s.trace_id == root.trace_id]
    roles = {}
    for span in spans:
        roles.setdefault((span.resource.get("service.name"), span.kind), []).append(span)
    described = [(s.resource.get("service.name"), s.kind, s.name) for s in spans]
    # One SERVER and one CLIENT span per service, one SERVER span in stock: nothing else.
    assert {role: len(found) for role, found in roles.items()} == {
        ("front", SERVER): 1, ("front", CLIENT): 1,
        ("shop", SERVER): 1, ("shop", CLIENT): 1,
        ("stock", SERVER): 1,
    }, described
    return {role: found for role, [found] in roles.items()}


def test_replies(run):
    replies = run["replies"]
    assert [replies[name][0] for name in REQUESTS] == [front for _, front, _, _ in REQUESTS.values()], replies
    assert replies["ok"][1] == b'{"order": "7", "stock": {"item": 7, "left": 3}}'
    assert replies["degraded"][1] == b'{"order": "13", "stock": null}'


def test_hooks_applied_and_nothing_to_warn(run):
    stderr = run["stderr"]
    for hook in ("aiohttp_server", "aiohttp_client", "tornado", "tornado_client", "tornado_simple_client", "flask"):
        assert f"hook {hook} applied" in stderr, stderr
    assert "autotrace WARNING" not in stderr, stderr


def test_each_request_is_one_trace_of_five_spans(run):
    traces = {s.trace_id for s in run["spans"]}
    assert len(traces) == len(REQUESTS), [(s.resource.get("service.name"), s.name, s.trace_id) for s in run["spans"]]
    assert len(run["spans"]) == SPANS_PER_TRACE * len(REQUESTS)
    for name in REQUESTS:
        chain(run, name)  # asserts the counts per service and kind


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_parents_are_chained_and_routes_named(run, name):
    spans = chain(run, name)
    front, front_call = spans["front", SERVER], spans["front", CLIENT]
    shop, shop_call = spans["shop", SERVER], spans["shop", CLIENT]
    stock = spans["stock", SERVER]
    assert front.parent_span_id == ""  # the caller sent no traceparent: the trace starts here
    assert front_call.parent_span_id == front.span_id
    assert shop.parent_span_id == front_call.span_id
    assert shop_call.parent_span_id == shop.span_id
    assert stock.parent_span_id == shop_call.span_id

    item = "7" if name == "ok" else "13"
    assert (front.name, front.attributes["http.route"]) == ("GET /orders/{id}", "/orders/{id}")  # aiohttp's canonical form
    assert (shop.name, shop.attributes["http.route"]) == ("GET /items/{item_id}", "/items/{item_id}")  # Tornado's URL spec
    assert (stock.name, stock.attributes["http.route"]) == ("GET /stock/<int:item_id>", "/stock/<int:item_id>")  # Flask's rule
    assert front_call.name == shop_call.name == "GET"
    assert front_call.attributes["url.full"].endswith(f"/items/{item}")
    assert shop_call.attributes["url.full"].endswith(f"/stock/{item}")
    assert stock.attributes["url.path"] == f"/stock/{item}"


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_statuses_follow_the_conventions(run, name):
    _, front_status, shop_status, stock_status = REQUESTS[name]
    spans = chain(run, name)
    answered = {
        ("front", SERVER): front_status, ("front", CLIENT): shop_status,
        ("shop", SERVER): shop_status, ("shop", CLIENT): stock_status,
        ("stock", SERVER): stock_status,
    }
    for role, status in answered.items():
        span = spans[role]
        assert span.attributes["http.response.status_code"] == status, (role, span.attributes)
        # Both kinds are errors exactly when the status is a 5xx: a CLIENT span receiving
        # one, a SERVER span answering one (never because a call it made failed).
        assert span.status_code == (STATUS_ERROR if status >= 500 else STATUS_UNSET), (role, span.attributes)
        assert ("error.type" in span.attributes) == (status >= 500), (role, span.attributes)
    if name != "ok":
        stock = spans["stock", SERVER]
        assert stock.attributes["error.type"] == "LookupError" and stock.events == ("exception",)
        assert spans["shop", CLIENT].attributes["error.type"] == "500"
        assert spans["front", CLIENT].attributes["error.type"] == "502"
        assert spans["shop", SERVER].attributes["error.type"] == "502"
        assert spans["shop", SERVER].events == ()  # it answered 502 itself: no exception
    if name == "strict":  # a raised web.HTTPException keeps its status, and is no exception recorded
        assert spans["front", SERVER].attributes["error.type"] == "503"
    assert spans["front", SERVER].events == ()
