"""Tornado under ``autotrace run``: a Tornado service calling a Flask service, one trace.

Two real processes, neither with tracing code, both under ``autotrace run`` exporting to
a real OTLP receiver:

- ``stock`` (Flask on werkzeug's server): ``GET /stock/<int:item_id>``, and ``/broken``
  (a 500);
- ``shop`` (a Tornado ``Application.listen``): ``/items/([0-9]+)`` asks ``stock`` with
  ``AsyncHTTPClient`` (after a redirect of its own: ``/go/...`` answers 302), ``/fail``
  raises, ``/broken`` asks ``stock/broken`` and answers 502, ``/missing`` raises
  ``HTTPError(404)``.

The test sends each request with a ``traceparent`` and checks: one trace per request,
the expected span counts, the route names, the parents, the errors; the replies are
those of a plain run.
"""

from __future__ import annotations

import secrets
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent import AUTOTRACE, PYTHON, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

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
    return {"item": item_id, "left": 3}


@app.route("/redirected/<int:item_id>")
def redirected(item_id):
    return "", 302, {"Location": f"/stock/{item_id}"}


@app.route("/broken")
def broken():
    return "no", 500


app.run("127.0.0.1", int(sys.argv[1]))
"""

SHOP = """
import asyncio
import signal
import sys

import tornado.httpclient
import tornado.web

STOCK = f"http://127.0.0.1:{sys.argv[2]}"


class Ready(tornado.web.RequestHandler):
    def get(self):
        self.write("ready")


class Item(tornado.web.RequestHandler):
    async def get(self, item_id):
        client = tornado.httpclient.AsyncHTTPClient()
        response = await client.fetch(f"{STOCK}/redirected/{item_id}?token=s3cret", request_timeout=5)
        self.set_header("Content-Type", "application/json")
        self.write(response.body)


class Fail(tornado.web.RequestHandler):
    def get(self):
        raise RuntimeError("boom")


class Broken(tornado.web.RequestHandler):
    async def get(self):
        try:
            await tornado.httpclient.AsyncHTTPClient().fetch(f"{STOCK}/broken", request_timeout=5)
        except tornado.httpclient.HTTPClientError as exc:
            raise tornado.web.HTTPError(502, "stock said %d", exc.code)


class Missing(tornado.web.RequestHandler):
    def get(self):
        raise tornado.web.HTTPError(404)


async def main():
    app = tornado.web.Application(
        [(r"/ready", Ready), (r"/items/([0-9]+)", Item), (r"/fail", Fail), (r"/broken", Broken), (r"/missing", Missing)]
    )
    app.listen(int(sys.argv[1]), "127.0.0.1")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("serving", flush=True)
    await stop.wait()


asyncio.run(main())
"""

REQUESTS = {"item": "/items/7", "fail": "/fail", "broken": "/broken", "missing": "/missing"}


def fetch(url: str, traceparent: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"traceparent": traceparent} if traceparent else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def run_services(directory: Path, traced: bool) -> dict:
    """Start stock and shop (under ``autotrace run`` when traced), send every request, stop them.

    Returns {name: (status, body, trace id, parent id)} and, when traced, the spans.
    """
    stock_port, shop_port = free_port(), free_port()
    receiver = OTLPReceiver().start() if traced else None
    try:
        def command(script: str, *ports: int) -> list[str]:
            args = [PYTHON, str(directory / script), *map(str, ports)]
            return [AUTOTRACE, "run", *args] if traced else args

        def env(name: str) -> dict[str, str]:
            return clean_env(**receiver.env("http"), OTEL_SERVICE_NAME=name, OTEL_LOG_LEVEL="debug") if traced else clean_env()

        results = {}
        with Watched(command("stock.py", stock_port), directory, env("stock")) as stock, Watched(
            command("shop.py", shop_port, stock_port), directory, env("shop")
        ) as shop:
            wait_until_answers(f"http://127.0.0.1:{stock_port}/ready", timeout=30, process=stock)
            wait_until_answers(f"http://127.0.0.1:{shop_port}/ready", timeout=30, process=shop)
            for name, path in REQUESTS.items():
                trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
                status, body = fetch(f"http://127.0.0.1:{shop_port}{path}", f"00-{trace_id}-{parent_id}-01")
                results[name] = (status, body, trace_id, parent_id)
            for process in (shop, stock):
                process.send(signal.SIGTERM)
                process.finish(timeout=30)
        if receiver is not None:
            results["spans"] = receiver.spans()  # the processes have exited: everything has arrived
            results["stderr"] = shop.text("stderr") + stock.text("stderr")
        return results
    finally:
        if receiver is not None:
            receiver.stop()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    directory = tmp_path_factory.mktemp("tornado")
    write(directory, "stock.py", STOCK)
    write(directory, "shop.py", SHOP)
    return run_services(directory, traced=False), run_services(directory, traced=True)


def in_trace(traced: dict, name: str) -> list:
    trace_id = traced[name][2]
    return [s for s in traced["spans"] if s.trace_id == trace_id and s.attributes.get("url.path") != "/ready"]


def test_replies_are_those_of_a_plain_run(runs):
    plain, traced = runs
    for name in REQUESTS:
        assert traced[name][:2] == plain[name][:2], name
    assert [plain[name][0] for name in REQUESTS] == [200, 500, 502, 404]
    assert plain["item"][1] == b'{"item":7,"left":3}\n'


def test_hooks_applied_and_nothing_to_warn(runs):
    _, traced = runs
    stderr = traced["stderr"]
    for hook in ("tornado", "tornado_client", "tornado_simple_client", "flask"):
        assert f"hook {hook} applied" in stderr, stderr
    assert "autotrace WARNING" not in stderr, stderr
    assert "ended span" not in stderr, stderr


def test_a_call_through_both_services_is_one_trace(runs):
    _, traced = runs
    spans = in_trace(traced, "item")
    shop = [s for s in spans if s.resource.get("service.name") == "shop"]
    stock = [s for s in spans if s.resource.get("service.name") == "stock"]
    [front] = [s for s in shop if s.kind == SERVER]
    hops = sorted((s for s in shop if s.kind == CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(spans) == 5 and len(hops) == 2 and len(stock) == 2  # the redirect: two hops, two requests
    assert front.name == "GET /items/{1}" and front.attributes["http.route"] == "/items/{1}"
    assert front.parent_span_id == traced["item"][3]
    assert front.attributes["http.response.status_code"] == 200 and front.status_code == STATUS_UNSET
    for hop in hops:
        assert hop.parent_span_id == front.span_id and hop.name == "GET"
    assert hops[0].attributes["url.full"].endswith("/redirected/7?token=REDACTED")  # the secret is not recorded
    assert hops[1].attributes["url.full"].endswith("/stock/7")
    assert [h.attributes["http.response.status_code"] for h in hops] == [302, 200]
    assert [h.attributes.get("http.request.resend_count") for h in hops] == [None, 1]
    by_parent = {s.parent_span_id: s for s in stock}
    assert by_parent[hops[0].span_id].name == "GET /redirected/<int:item_id>"
    assert by_parent[hops[1].span_id].name == "GET /stock/<int:item_id>"
    assert all(s.kind == SERVER for s in stock)


def test_an_exception_is_an_error_span(runs):
    _, traced = runs
    [span] = in_trace(traced, "fail")
    assert span.name == "GET /fail" and span.kind == SERVER
    assert span.status_code == STATUS_ERROR
    assert span.attributes["error.type"] == "RuntimeError" and span.events == ("exception",)
    assert span.attributes["http.response.status_code"] == 500


def test_errors_along_the_way_keep_their_statuses(runs):
    _, traced = runs
    spans = in_trace(traced, "broken")
    assert len(spans) == 3
    [front] = [s for s in spans if s.kind == SERVER and s.resource.get("service.name") == "shop"]
    [call] = [s for s in spans if s.kind == CLIENT]
    [back] = [s for s in spans if s.resource.get("service.name") == "stock"]
    assert (front.name, front.attributes["http.response.status_code"], front.status_code) == ("GET /broken", 502, STATUS_ERROR)
    assert front.attributes["error.type"] == "HTTPError"
    assert (call.attributes["http.response.status_code"], call.status_code, call.attributes["error.type"]) == (500, STATUS_ERROR, "500")
    assert (back.name, back.attributes["http.response.status_code"], back.status_code) == ("GET /broken", 500, STATUS_ERROR)
    assert call.parent_span_id == front.span_id and back.parent_span_id == call.span_id

    [missing] = in_trace(traced, "missing")
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status_code == STATUS_UNSET and missing.events == ()
