"""aiohttp's ClientSession: one CLIENT span per hop sent, its context in the headers the peer received.

In process, against the recording peer (tests/http_peer.py), with every client hook
applied as under the agent, plus the aiohttp client hook. ``run(fn)`` calls
``fn(session)`` under ``asyncio.run`` and checks that no context is left current.
"""

from __future__ import annotations

import asyncio
import importlib

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import context
from opentelemetry.trace import SpanKind, StatusCode
from ports import free_port

from autotrace import patching
from autotrace.hooks import aiohttp_client as aiohttp_client_hook
from client_checks import (
    CAPTURED_REQUEST_HEADERS,
    HAND_TRACEPARENT,
    assert_failed,
    assert_redirect_hops,
    assert_get_200,
    assert_named_headers_captured,
    capture_named_headers,
    client_spans,
    closed_port,
    fail_dns,
    traceparent_ids,
)


@pytest.fixture
def hooks(client_hooks):
    mark = len(patching.history)
    aiohttp_client_hook.patch(importlib.import_module("aiohttp.client"))
    yield client_hooks
    patching.undo(mark)


def run(fn, **session_kwargs):
    """``fn(session)`` with a new ClientSession; the context is the same after."""

    async def main():
        before = context.get_current()
        async with aiohttp.ClientSession(**session_kwargs) as session:
            try:
                return await fn(session)
            finally:
                assert context.get_current() is before

    return asyncio.run(main())


async def fetch(session, url, **kwargs):
    async with session.get(url, **kwargs) as response:
        return response.status, await response.read(), response


def test_get_is_one_client_span_whose_id_the_peer_received(hooks, peer, parent):
    status, body, _ = run(lambda session: fetch(session, peer.url("/ok", "get")))
    assert (status, body) == (200, b"ok\n")
    [span] = client_spans(hooks)
    [received] = peer.requests("get")
    assert len(received.headers["traceparent"]) == 1
    assert traceparent_ids(received.header("traceparent")) == (span.context.trace_id, span.context.span_id)
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.kind == SpanKind.CLIENT
    assert_get_200(span, peer.url("/ok", "get"), peer.port)
    assert len(hooks.get_finished_spans()) == 1


def test_every_method_and_the_module_helper(hooks, peer):
    async def calls(session):
        async with session.post(peer.url("/ok", "post"), data=b"x") as response:
            await response.read()
        async with session.request("PUT", peer.url("/ok", "put")) as response:
            await response.read()

    run(calls)

    async def module_helper():
        async with aiohttp.request("DELETE", peer.url("/ok", "delete")) as response:
            await response.read()

    asyncio.run(module_helper())
    assert sorted(s.name for s in client_spans(hooks)) == ["DELETE", "POST", "PUT"]
    for case in ("post", "put", "delete"):
        [received] = peer.requests(case)
        assert received.header("traceparent")


def test_headers_go_on_a_copy(hooks, peer):
    mine = {"X-App": "1"}
    defaults = {"X-Default": "d"}

    async def twice(session):
        await fetch(session, peer.url("/ok", "copy"), headers=mine)
        await fetch(session, peer.url("/ok", "copy"), headers=mine)
        return dict(session.headers)

    assert run(twice, headers=defaults) == defaults
    assert mine == {"X-App": "1"}
    first, second = peer.requests("copy")
    assert first.header("x-app") == second.header("x-app") == "1"
    assert first.header("x-default") == "d"
    assert len(second.headers["traceparent"]) == 1
    assert first.header("traceparent") != second.header("traceparent")


def test_each_redirect_hop_is_a_sibling_span_with_its_own_traceparent(hooks, peer, parent):
    status, body, response = run(
        lambda session: fetch(session, peer.url("/redirect/2", "redir"), headers={"traceparent": HAND_TRACEPARENT})
    )
    assert (status, body) == (200, b"ok\n")
    assert [r.status for r in response.history] == [302, 302, 302]

    hops = client_spans(hooks)
    received = peer.requests("redir")
    assert [r.path for r in received] == ["/redirect/2", "/redirect/1", "/redirect/0", "/ok"]
    assert len(hops) == 4
    assert_redirect_hops(hops, received, parent, peer, HAND_TRACEPARENT)


def test_redirect_not_followed_is_one_span(hooks, peer):
    status, _, _ = run(lambda session: fetch(session, peer.url("/redirect/1", "noredir"), allow_redirects=False))
    assert status == 302
    [span] = client_spans(hooks)
    assert span.attributes["http.response.status_code"] == 302
    assert span.status.status_code == StatusCode.UNSET


def test_too_many_redirects_is_recorded_on_the_last_hop(hooks, peer):
    with pytest.raises(aiohttp.TooManyRedirects):
        run(lambda session: fetch(session, peer.url("/redirect/5", "many"), max_redirects=2))
    hops = sorted(client_spans(hooks), key=lambda s: s.start_time)
    assert len(hops) == 2 == len(peer.requests("many"))
    assert hops[0].status.status_code == StatusCode.UNSET
    last = hops[1]
    assert last.attributes["error.type"] == "aiohttp.client_exceptions.TooManyRedirects"
    assert last.attributes["http.response.status_code"] == 302
    assert last.status.status_code == StatusCode.ERROR


@pytest.mark.parametrize("code", [404, 500])
def test_error_statuses_make_the_span_an_error(hooks, peer, code):
    status, _, _ = run(lambda session: fetch(session, peer.url(f"/status/{code}")))
    assert status == code
    [span] = client_spans(hooks)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == str(code)
    assert span.attributes["http.response.status_code"] == code


def test_connection_refused_reaches_the_app_and_is_recorded(hooks, parent):
    port = closed_port()
    with pytest.raises(aiohttp.ClientConnectorError) as raised:
        run(lambda session: fetch(session, f"http://127.0.0.1:{port}/x"))
    [span] = client_spans(hooks)
    assert_failed(span, "aiohttp.client_exceptions.ClientConnectorError")
    assert span.events[0].attributes["exception.message"] == str(raised.value)
    assert span.parent.span_id == parent.get_span_context().span_id


def test_dns_failure_reaches_the_app_untouched(hooks, monkeypatch):
    url = f"http://{fail_dns(monkeypatch)}/x"
    with pytest.raises(aiohttp.ClientConnectorError) as raised:
        run(lambda session: fetch(session, url))
    [span] = client_spans(hooks)
    cls = type(raised.value)  # ClientConnectorDNSError from aiohttp 3.10
    assert_failed(span, f"{cls.__module__}.{cls.__qualname__}")
    assert span.attributes["url.full"] == url


def test_timeout_is_recorded_as_the_app_gets_it(hooks, peer):
    with pytest.raises(asyncio.TimeoutError) as raised:
        run(lambda session: fetch(session, peer.url("/slow?seconds=1"), timeout=aiohttp.ClientTimeout(sock_read=0.2)))
    [span] = client_spans(hooks)
    cls = type(raised.value)
    assert span.attributes["error.type"] == f"{cls.__module__}.{cls.__qualname__}"
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_url_secrets_are_redacted(hooks, peer):
    url = f"http://user:pw@127.0.0.1:{peer.port}/ok?case=secret&token=s3cret"
    run(lambda session: fetch(session, url))
    [span] = client_spans(hooks)
    full = span.attributes["url.full"]
    assert "pw" not in full and "s3cret" not in full and "user" not in full
    assert full.startswith(f"http://127.0.0.1:{peer.port}/ok?case=secret&token=")


def test_named_headers_are_captured(hooks, peer, monkeypatch):
    capture_named_headers(monkeypatch)
    run(lambda session: fetch(session, peer.url("/ok", "capture"), headers=CAPTURED_REQUEST_HEADERS))
    [span] = client_spans(hooks)
    [received] = peer.requests("capture")
    assert_named_headers_captured(span, received)


def test_suppressed_instrumentation_sends_no_span_and_no_header(hooks, peer, suppressed):
    run(lambda session: fetch(session, peer.url("/ok", "quiet")))
    assert not client_spans(hooks)
    [received] = peer.requests("quiet")
    assert received.header("traceparent") is None


def test_ws_connect_is_one_span_for_the_handshake(hooks, parent):
    async def echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen.append(request.headers.get("traceparent"))
        async for message in ws:
            await ws.send_str("echo " + message.data)
        return ws

    seen: list = []

    async def main():
        app = web.Application()
        app.router.add_get("/ws", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    await ws.send_str("a")
                    reply = (await ws.receive()).data
                    await ws.send_str("b")
                    return reply, (await ws.receive()).data, port
        finally:
            await runner.cleanup()

    first, second, port = asyncio.run(asyncio.wait_for(main(), 20))
    assert (first, second) == ("echo a", "echo b")
    [span] = client_spans(hooks)
    assert span.name == "GET"
    assert span.attributes["url.full"] == f"ws://127.0.0.1:{port}/ws"
    assert span.attributes["http.response.status_code"] == 101
    assert span.status.status_code == StatusCode.UNSET
    assert traceparent_ids(seen[0])[1] == span.context.span_id
    assert span.parent.span_id == parent.get_span_context().span_id


@pytest.mark.skipif(not hasattr(aiohttp, "ClientHandlerType"), reason="client middlewares: aiohttp 3.12+")
def test_each_round_of_a_client_middleware_is_a_span(hooks, peer, parent):
    async def second_round(request, handler):
        response = await handler(request)
        if response.status == 401:
            response.release()
            request.headers["Authorization"] = "Bearer second"
            request.url = request.url.with_path("/ok").with_query(request.url.query)
            response = await handler(request)
        return response

    status, body, _ = run(lambda session: fetch(session, peer.url("/status/401", "rounds")), middlewares=(second_round,))
    assert (status, body) == (200, b"ok\n")
    first, second = peer.requests("rounds")
    assert second.header("authorization") == "Bearer second"
    assert len(second.headers["traceparent"]) == 1 and first.header("traceparent") != second.header("traceparent")
    spans = {s.context.span_id: s for s in client_spans(hooks)}
    assert len(spans) == 2
    one, two = (spans[traceparent_ids(r.header("traceparent"))[1]] for r in (first, second))
    assert one.attributes["http.response.status_code"] == 401 and "http.request.resend_count" not in one.attributes
    assert two.attributes["http.response.status_code"] == 200 and two.attributes["http.request.resend_count"] == 1
    assert one.parent.span_id == two.parent.span_id == parent.get_span_context().span_id
    assert one.end_time <= two.start_time


def test_under_an_httpx_call_aiohttp_is_its_transport(hooks, peer):
    """An httpx transport over an aiohttp session (httpx-aiohttp): httpx's span is the call's."""
    from autotrace import client_span

    async def under_httpx(session):
        outer = client_span.start("httpx", "GET", peer.url("/ok", "layer"))
        try:
            async with session.get(peer.url("/ok", "layer"), headers=outer.headers()) as response:
                return await response.read()
        finally:
            outer.close()

    assert run(under_httpx) == b"ok\n"
    [span] = client_spans(hooks)
    [received] = peer.requests("layer")
    assert traceparent_ids(received.header("traceparent"))[1] == span.context.span_id  # httpx's, as sent


def test_a_session_request_inside_another_is_a_call_of_its_own(hooks, peer):
    async def nested(request, handler):  # a token-fetching middleware, say
        if "case=outer" in str(request.url):
            async with aiohttp.ClientSession() as other:
                async with other.get(peer.url("/ok", "inner")) as response:
                    await response.read()
        return await handler(request)

    if not hasattr(aiohttp, "ClientHandlerType"):
        pytest.skip("client middlewares: aiohttp 3.12+")
    run(lambda session: fetch(session, peer.url("/ok", "outer")), middlewares=(nested,))
    spans = {s.attributes["url.full"].rpartition("=")[2]: s for s in client_spans(hooks)}
    assert set(spans) == {"outer", "inner"}
    assert "http.request.resend_count" not in spans["outer"].attributes
    assert traceparent_ids(peer.requests("outer")[0].header("traceparent"))[1] == spans["outer"].context.span_id
    assert traceparent_ids(peer.requests("inner")[0].header("traceparent"))[1] == spans["inner"].context.span_id


def test_a_refused_websocket_handshake_is_recorded(hooks, peer):
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        run(lambda session: session.ws_connect(peer.url("/ok", "ws")))
    [span] = client_spans(hooks)
    assert span.attributes["http.response.status_code"] == 200
    cls = type(raised.value)
    assert span.attributes["error.type"] == f"{cls.__module__}.{cls.__qualname__}"
    assert span.status.status_code == StatusCode.ERROR
    [received] = peer.requests("ws")
    assert traceparent_ids(received.header("traceparent"))[1] == span.context.span_id


def test_a_retry_after_a_dropped_connection_is_a_hop_of_its_own(hooks, peer):
    """aiohttp sends an idempotent request once more when the server closes without answering."""
    with pytest.raises(aiohttp.ServerDisconnectedError):
        run(lambda session: fetch(session, peer.url("/close", "retry")))
    received = peer.requests("retry")
    hops = sorted(client_spans(hooks), key=lambda s: s.start_time)
    assert len(hops) == len(received)
    if len(hops) == 1:
        pytest.skip("this aiohttp does not retry (3.8.6 does not; 3.14 does)")
    assert len(hops) == 2
    for hop, request in zip(hops, received):
        assert_failed(hop, "aiohttp.client_exceptions.ServerDisconnectedError")
        assert traceparent_ids(request.header("traceparent"))[1] == hop.context.span_id
    assert [h.attributes.get("http.request.resend_count") for h in hops] == [None, 1]
    assert hops[0].end_time <= hops[1].start_time
