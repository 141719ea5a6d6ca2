"""httpx: one CLIENT span per hop sent, its context in the headers the peer received.

In process, against the recording peer (tests/http_peer.py), with every client hook
applied as under the agent. Each test runs with ``httpx.Client`` and with
``httpx.AsyncClient`` (under ``asyncio.run``); ``run(mode, fn)`` calls ``fn(client)``,
awaiting it for the async client, and checks that no context is left current.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect

import httpx
import pytest
from opentelemetry import context
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import patching
from client_checks import (
    CAPTURED_REQUEST_HEADERS,
    assert_failed,
    assert_redirect_hops,
    assert_named_headers_captured,
    capture_named_headers,
    client_spans,
    closed_port,
    fail_dns,
    tls_url,
    traceparent_ids,
)

MODES = ["sync", "async"]


def run(mode: str, fn, **client_kwargs):
    """``fn(client)`` with a new Client or AsyncClient; the context is the same after."""
    if mode == "sync":
        before = context.get_current()
        with httpx.Client(**client_kwargs) as client:
            try:
                return fn(client)
            finally:
                assert context.get_current() is before

    async def main():
        before = context.get_current()
        async with httpx.AsyncClient(**client_kwargs) as client:
            try:
                result = fn(client)
                return await result if inspect.isawaitable(result) else result
            finally:
                assert context.get_current() is before

    return asyncio.run(main())


def get(mode: str, url: str, client_kwargs: dict | None = None, **kwargs) -> httpx.Response:
    return run(mode, lambda client: client.get(url, **kwargs), **(client_kwargs or {}))


@pytest.mark.parametrize("mode", MODES)
def test_get_is_one_client_span_whose_id_the_peer_received(client_hooks, peer, parent, mode):
    response = get(mode, peer.url("/ok", "get"), timeout=5)
    assert response.status_code == 200 and response.text == "ok\n"

    [span] = client_spans(client_hooks)
    [received] = peer.requests("get")
    assert len(received.headers["traceparent"]) == 1
    assert traceparent_ids(received.header("traceparent")) == (span.context.trace_id, span.context.span_id)
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.name == "GET"
    assert span.kind == SpanKind.CLIENT
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "url.full": peer.url("/ok", "get"),
        "server.address": "127.0.0.1",
        "server.port": peer.port,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }
    assert span.status.status_code == StatusCode.UNSET
    assert len(client_hooks.get_finished_spans()) == 1  # nothing under httpx made a span


@pytest.mark.parametrize("mode", MODES)
def test_every_method_and_the_module_helpers_are_covered(client_hooks, peer, mode):
    def calls(client):
        if mode == "sync":
            client.post(peer.url("/ok", "post"), content=b"x")
            client.request("PUT", peer.url("/ok", "put"))
            return None

        async def both():
            await client.post(peer.url("/ok", "post"), content=b"x")
            await client.request("PUT", peer.url("/ok", "put"))

        return both()

    run(mode, calls, timeout=5)
    if mode == "sync":
        httpx.delete(peer.url("/ok", "delete"), timeout=5)  # a Client of its own
    assert sorted(s.name for s in client_spans(client_hooks)) == (["DELETE"] if mode == "sync" else []) + ["POST", "PUT"]
    for case in ("post", "put") + (("delete",) if mode == "sync" else ()):
        [received] = peer.requests(case)
        assert received.header("traceparent")


def test_without_a_current_span_the_client_span_starts_the_trace(client_hooks, peer):
    get("sync", peer.url("/ok", "root"), timeout=5)
    [span] = client_spans(client_hooks)
    assert span.parent is None
    assert traceparent_ids(peer.requests("root")[0].header("traceparent"))[1] == span.context.span_id


@pytest.mark.parametrize("mode", MODES)
def test_each_redirect_hop_is_a_sibling_span_with_its_own_traceparent(client_hooks, peer, parent, mode):
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = get(mode, peer.url("/redirect/2", "redir"), follow_redirects=True, headers={"traceparent": mine}, timeout=5)
    assert response.status_code == 200 and response.text == "ok\n"
    assert [r.status_code for r in response.history] == [302, 302, 302]

    hops = client_spans(client_hooks)
    received = peer.requests("redir")
    assert [r.path for r in received] == ["/redirect/2", "/redirect/1", "/redirect/0", "/ok"]
    assert len(hops) == 4
    assert_redirect_hops(hops, received, parent, peer, mine)


@pytest.mark.parametrize("mode", MODES)
def test_redirect_not_followed_is_one_span(client_hooks, peer, mode):
    response = get(mode, peer.url("/redirect/1", "noredir"), timeout=5)
    assert response.status_code == 302 and response.next_request is not None
    assert "traceparent" not in response.next_request.headers  # the next hop the app may send
    [span] = client_spans(client_hooks)
    assert span.attributes["http.response.status_code"] == 302
    assert span.status.status_code == StatusCode.UNSET


class TwoRounds(httpx.Auth):
    """Sends the request, and once more with a credential if it was refused."""

    def auth_flow(self, request):
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = "Bearer second"
            request.url = request.url.copy_with(path="/ok")
            yield request


@pytest.mark.parametrize("mode", MODES)
def test_each_authentication_round_is_a_span(client_hooks, peer, parent, mode):
    response = get(mode, peer.url("/status/401", "auth"), auth=TwoRounds(), timeout=5)
    assert response.status_code == 200
    first, second = peer.requests("auth")
    assert second.header("authorization") == "Bearer second"
    assert len(second.headers["traceparent"]) == 1
    assert first.header("traceparent") != second.header("traceparent")
    spans = {s.context.span_id: s for s in client_spans(client_hooks)}
    assert len(spans) == 2
    one, two = (spans[traceparent_ids(r.header("traceparent"))[1]] for r in (first, second))
    assert one.attributes["http.response.status_code"] == 401 and "http.request.resend_count" not in one.attributes
    assert two.attributes["http.response.status_code"] == 200 and two.attributes["http.request.resend_count"] == 1
    assert one.parent.span_id == two.parent.span_id == parent.get_span_context().span_id
    assert one.end_time <= two.start_time


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code", [404, 500])
def test_error_statuses_make_the_span_an_error(client_hooks, peer, code, mode):
    response = get(mode, peer.url(f"/status/{code}"), timeout=5)
    assert response.status_code == code
    [span] = client_spans(client_hooks)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == str(code)
    assert span.attributes["http.response.status_code"] == code


@pytest.mark.parametrize("mode", MODES)
def test_connection_refused_reaches_the_app_and_is_recorded(client_hooks, parent, mode):
    port = closed_port()
    with pytest.raises(httpx.ConnectError) as raised:
        get(mode, f"http://127.0.0.1:{port}/x", timeout=5)
    assert type(raised.value) is httpx.ConnectError
    [span] = client_spans(client_hooks)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "httpx.ConnectError"
    assert "http.response.status_code" not in span.attributes
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "httpx.ConnectError"
    assert event.attributes["exception.message"] == str(raised.value)
    assert span.parent.span_id == parent.get_span_context().span_id


@pytest.mark.parametrize("mode", MODES)
def test_timeout_reaches_the_app_and_is_recorded(client_hooks, peer, mode):
    with pytest.raises(httpx.ReadTimeout) as raised:
        get(mode, peer.url("/slow?seconds=1"), timeout=0.2)
    assert type(raised.value) is httpx.ReadTimeout
    [span] = client_spans(client_hooks)
    assert span.attributes["error.type"] == "httpx.ReadTimeout"
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("failure", ["dns", "tls"])
def test_dns_and_tls_failures_reach_the_app_untouched(request, peer, monkeypatch, parent, mode, failure):
    url = f"http://{fail_dns(monkeypatch)}/x" if failure == "dns" else tls_url(peer)
    with pytest.raises(Exception) as untraced:
        get(mode, url, timeout=5)
    client_hooks = request.getfixturevalue("client_hooks")
    with pytest.raises(Exception) as traced:
        get(mode, url, timeout=5)
    assert type(traced.value) is type(untraced.value) is httpx.ConnectError
    [span] = client_spans(client_hooks)
    assert_failed(span, "httpx.ConnectError")
    assert span.events[0].attributes["exception.message"] == str(traced.value)
    assert span.attributes["url.full"] == url
    assert span.parent.span_id == parent.get_span_context().span_id


class BrokenBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that fails after its first chunk."""

    def __iter__(self):
        yield b"first"
        raise httpx.ReadError("connection lost")

    async def __aiter__(self):
        yield b"first"
        raise httpx.ReadError("connection lost")


@pytest.mark.parametrize("mode", MODES)
def test_a_body_that_fails_after_the_head_is_recorded_on_the_span(client_hooks, mode):
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=BrokenBody()))
    with pytest.raises(httpx.ReadError, match="connection lost"):
        get(mode, "http://mock.test/body", client_kwargs={"transport": transport})
    [span] = client_spans(client_hooks)
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["error.type"] == "httpx.ReadError"
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


@pytest.mark.parametrize("mode", MODES)
def test_span_covers_the_body_unless_streaming(client_hooks, peer, mode):
    response = get(mode, peer.url("/stream", "whole"), timeout=5)
    assert response.text.count("\n") == 5
    [whole] = client_spans(client_hooks)
    assert (whole.end_time - whole.start_time) / 1e9 >= 0.08  # five lines, 20 ms apart
    client_hooks.clear()

    found = {}
    if mode == "sync":
        with httpx.Client(timeout=5) as client, client.stream("GET", peer.url("/stream", "streamed")) as streamed:
            found["head"] = client_spans(client_hooks)  # ended when the head arrived
            found["lines"] = list(streamed.iter_lines())
    else:

        async def main():
            async with httpx.AsyncClient(timeout=5) as client, client.stream("GET", peer.url("/stream", "streamed")) as streamed:
                found["head"] = client_spans(client_hooks)
                found["lines"] = [line async for line in streamed.aiter_lines()]

        asyncio.run(main())
    [head] = found["head"]
    assert len(found["lines"]) == 5
    assert (head.end_time - head.start_time) / 1e9 < 0.08
    assert client_spans(client_hooks) == [head]
    [received] = peer.requests("streamed")
    assert traceparent_ids(received.header("traceparent"))[1] == head.context.span_id


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["never_read", "closed_early"])
def test_a_streamed_response_left_unread_has_its_one_span_ended(client_hooks, peer, mode, how):
    import gc
    import weakref

    def stream(client):
        request = client.build_request("GET", peer.url("/stream", how))
        if mode == "sync":
            response = client.send(request, stream=True)
            if how == "closed_early":
                next(response.iter_bytes())
                response.close()
            return weakref.ref(response)

        async def main():
            response = await client.send(request, stream=True)
            if how == "closed_early":
                await response.aiter_bytes().__anext__()
                await response.aclose()
            return weakref.ref(response)

        return main()

    alive = run(mode, stream, timeout=5)  # the client closed: the response never read to its end
    gc.collect()
    assert alive() is None  # the span holds no reference to the response
    [span] = client_spans(client_hooks)  # ended at the head: nothing is left open
    assert span.attributes["http.response.status_code"] == 200
    assert traceparent_ids(peer.requests(how)[0].header("traceparent"))[1] == span.context.span_id


@pytest.mark.parametrize("mode", MODES)
def test_header_set_by_hand_is_replaced_and_the_callers_objects_are_unchanged(client_hooks, peer, mode, capsys):
    from autotrace import _log

    _log.logger.level = _log.DEBUG
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"traceparent": mine, "X-Mine": "1"}
    get(mode, peer.url("/ok", "byhand"), headers=headers, timeout=5)
    assert "httpx: the traceparent header set by the application is replaced" in capsys.readouterr().err
    assert headers == {"traceparent": mine, "X-Mine": "1"}
    [received] = peer.requests("byhand")
    assert len(received.headers["traceparent"]) == 1 and received.header("traceparent") != mine
    assert received.header("x-mine") == "1"
    [span] = client_spans(client_hooks)
    assert traceparent_ids(received.header("traceparent"))[1] == span.context.span_id

    built = {}

    def send_twice(client):
        plain = client.build_request("GET", peer.url("/ok", "built"))
        own = client.build_request("GET", peer.url("/ok", "built"), headers={"traceparent": mine})
        built["before"] = (list(plain.headers.multi_items()), list(own.headers.multi_items()))
        built["requests"] = (plain, own)
        if mode == "sync":
            return [client.send(plain), client.send(plain), client.send(own)]

        async def sends():
            return [await client.send(plain), await client.send(plain), await client.send(own)]

        return sends()

    responses = run(mode, send_twice, timeout=5)
    plain, own = built["requests"]
    assert responses[0].request is plain and responses[2].request is own
    # Sent with the header, left as they were: without it, or with the app's own.
    assert (list(plain.headers.multi_items()), list(own.headers.multi_items())) == built["before"]
    assert "traceparent" not in plain.headers and own.headers["traceparent"] == mine
    first, second, third = peer.requests("built")
    values = [r.header("traceparent") for r in (first, second, third)]
    assert len(set(values)) == 3 and mine not in values  # each send its own span, no stale header
    assert {traceparent_ids(v)[1] for v in values} == {s.context.span_id for s in client_spans(client_hooks)[1:]}


@pytest.mark.parametrize("mode", MODES)
def test_a_custom_transport_and_a_mount_get_the_headers(client_hooks, peer, mode):
    seen = []

    def handler(request):
        seen.append(request.headers.get("traceparent"))
        return httpx.Response(204, headers={"X-Mock": "yes"})

    response = get(mode, "http://mock.test/a", client_kwargs={"transport": httpx.MockTransport(handler)})
    assert response.status_code == 204 and response.headers["x-mock"] == "yes"
    [span] = client_spans(client_hooks)
    assert traceparent_ids(seen[0])[1] == span.context.span_id
    assert span.attributes["server.address"] == "mock.test" and span.attributes["server.port"] == 80
    client_hooks.clear()

    mounted = httpx.HTTPTransport() if mode == "sync" else httpx.AsyncHTTPTransport()
    mounts = {"http://mock.test": httpx.MockTransport(handler), "http://127.0.0.1": mounted}
    get(mode, "http://mock.test/b", client_kwargs={"mounts": mounts})
    get(mode, peer.url("/ok", "mounted"), client_kwargs={"mounts": mounts, "timeout": 5})
    mock_span, peer_span = sorted(client_spans(client_hooks), key=lambda s: s.start_time)
    assert traceparent_ids(seen[1])[1] == mock_span.context.span_id
    [received] = peer.requests("mounted")
    assert traceparent_ids(received.header("traceparent"))[1] == peer_span.context.span_id


@pytest.mark.parametrize("mode", MODES)
def test_suppressed_instrumentation_makes_no_span_and_sends_no_header(client_hooks, peer, mode):
    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        response = get(mode, peer.url("/redirect/1", "quiet"), follow_redirects=True, timeout=5)
    finally:
        context.detach(token)
    assert response.status_code == 200
    assert client_hooks.get_finished_spans() == ()
    assert [r.header("traceparent") for r in peer.requests("quiet")] == [None, None, None]


@pytest.mark.parametrize("mode", MODES)
def test_an_httpx_call_inside_a_transport_is_a_child_span(client_hooks, peer, parent, mode):
    # A transport that itself calls another service with httpx: a call of its own,
    # a child of the outer hop (the same library, so not taken for a lower layer).
    inner_ids = []

    def handler(request):
        with httpx.Client(timeout=5) as inner:
            inner.get(peer.url("/ok", "inner"))
        inner_ids.append(request.headers["traceparent"])
        return httpx.Response(200)

    get(mode, "http://mock.test/outer", client_kwargs={"transport": httpx.MockTransport(handler)})
    spans = {s.attributes["url.full"]: s for s in client_spans(client_hooks)}
    outer, inner = spans["http://mock.test/outer"], spans[peer.url("/ok", "inner")]
    assert outer.parent.span_id == parent.get_span_context().span_id
    assert inner.parent.span_id == outer.context.span_id
    assert traceparent_ids(peer.requests("inner")[0].header("traceparent"))[1] == inner.context.span_id


@pytest.mark.parametrize("mode", MODES)
def test_named_headers_are_captured(client_hooks, peer, monkeypatch, mode):
    capture_named_headers(monkeypatch)
    get(mode, peer.url("/ok", "capture"), headers=CAPTURED_REQUEST_HEADERS, timeout=5)
    [span] = client_spans(client_hooks)
    [got] = peer.requests("capture")
    assert_named_headers_captured(span, got)


def _observable(response: httpx.Response) -> tuple:
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "date"]
    history = [(r.status_code, r.url) for r in response.history]
    return response.status_code, headers, response.content, str(response.url), response.http_version, history


@pytest.mark.parametrize("mode", MODES)
def test_responses_are_those_of_an_untraced_call(spans, peer, mode):
    import httpx._client

    hook = importlib.import_module("autotrace.hooks.httpx")
    paths = ["/ok", "/status/404", "/stream", "/redirect/1"]

    def calls():
        return [get(mode, peer.url(path), follow_redirects=True, timeout=5) for path in paths]

    assert not hasattr(httpx.Client.send, patching.ORIGINAL)
    untraced = [_observable(r) for r in calls()]
    mark = len(patching.history)
    hook.patch(httpx._client)
    try:
        assert hasattr(httpx.Client.send, patching.ORIGINAL)
        traced = [_observable(r) for r in calls()]
    finally:
        patching.undo(mark)
    assert traced == untraced
    assert len(client_spans(spans)) == 6  # /redirect/1 is three hops
    assert not hasattr(httpx.AsyncClient._send_single_request, patching.ORIGINAL)


def test_patch_is_idempotent_and_wraps_coroutines_as_coroutines(spans):
    import httpx._client

    hook = importlib.import_module("autotrace.hooks.httpx")
    mark = len(patching.history)
    hook.patch(httpx._client)
    try:
        hook.patch(httpx._client)
        assert len(patching.history) == mark + 4
        assert inspect.iscoroutinefunction(httpx.AsyncClient.send)
        assert inspect.iscoroutinefunction(httpx.AsyncClient._send_single_request)
        assert httpx.Client.send.__name__ == "send" and httpx.Client.send.__wrapped__ is not None
    finally:
        patching.undo(mark)
