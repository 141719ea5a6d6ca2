"""requests: one CLIENT span per request sent, its context in the headers the peer received.

In process, against the recording peer (tests/http_peer.py), with every client hook
applied as under the agent: requests over urllib3 over http.client must give one span.
The same calls under ``autotrace run`` are in integration/test_clients.py.
"""

from __future__ import annotations

import gc

import pytest
import requests
from opentelemetry import context
from opentelemetry.trace import StatusCode

from autotrace import client_span, patching
from hooks import requests as requests_hook
from client_checks import (
    CAPTURED_REQUEST_HEADERS,
    assert_failed,
    assert_get_200,
    assert_named_headers_captured,
    capture_named_headers,
    client_spans,
    closed_port,
    fail_dns,
    tls_url,
    traceparent_ids,
)


def test_get_is_one_client_span_whose_id_the_peer_received(client_hooks, peer, parent):
    before = context.get_current()
    response = requests.get(peer.url("/ok", "get"), timeout=5)
    assert context.get_current() is before
    assert response.status_code == 200 and response.text == "ok\n"

    [span] = client_spans(client_hooks)
    [received] = peer.requests("get")
    assert traceparent_ids(received.headers["traceparent"][0]) == (span.context.trace_id, span.context.span_id)
    assert len(received.headers["traceparent"]) == 1
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert_get_200(span, peer.url("/ok", "get"), peer.port)
    # requests over urllib3 over http.client: nothing else was recorded.
    assert len(client_hooks.get_finished_spans()) == 1


def test_every_helper_and_session_is_covered(client_hooks, peer):
    with requests.Session() as session:
        session.post(peer.url("/ok", "post"), data=b"x", timeout=5)
        session.request("PUT", peer.url("/ok", "put"), timeout=5)
    requests.delete(peer.url("/ok", "delete"), timeout=5)
    requests.head(peer.url("/ok", "head"), timeout=5)
    names = sorted(s.name for s in client_spans(client_hooks))
    assert names == ["DELETE", "HEAD", "POST", "PUT"]
    for case in ("post", "put", "delete", "head"):
        [received] = peer.requests(case)
        assert received.header("traceparent")


def test_without_a_current_span_the_client_span_starts_the_trace(client_hooks, peer):
    requests.get(peer.url("/ok", "root"), timeout=5)
    [span] = client_spans(client_hooks)
    assert span.parent is None
    assert traceparent_ids(peer.requests("root")[0].header("traceparent"))[1] == span.context.span_id


def test_each_redirect_hop_is_a_sibling_span_with_its_own_traceparent(client_hooks, peer, parent):
    response = requests.get(peer.url("/redirect/2", "redir"), timeout=5)
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [302, 302, 302]

    hops = client_spans(client_hooks)
    received = peer.requests("redir")
    assert [r.path for r in received] == ["/redirect/2", "/redirect/1", "/redirect/0", "/ok"]
    assert len(hops) == 4
    by_id = {span.context.span_id: span for span in hops}
    for index, request in enumerate(received):
        span = by_id[traceparent_ids(request.header("traceparent"))[1]]
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["url.full"] == peer.base + request.path + "?case=redir"
        assert span.attributes.get("http.request.resend_count") == (index or None)
        assert span.attributes["http.response.status_code"] == (302 if index < 3 else 200)
    # The hops follow each other: none ends after the next one starts.
    ordered = sorted(hops, key=lambda s: s.start_time)
    for first, second in zip(ordered, ordered[1:]):
        assert first.end_time <= second.start_time


def test_allow_redirects_false_is_one_span(client_hooks, peer):
    response = requests.get(peer.url("/redirect/1", "noredir"), allow_redirects=False, timeout=5)
    assert response.status_code == 302
    [span] = client_spans(client_hooks)
    assert span.attributes["http.response.status_code"] == 302
    assert span.status.status_code == StatusCode.UNSET


@pytest.mark.parametrize("code", [404, 500, 503])
def test_error_statuses_make_the_span_an_error(client_hooks, peer, code):
    response = requests.get(peer.url(f"/status/{code}"), timeout=5)
    assert response.status_code == code
    [span] = client_spans(client_hooks)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == str(code)
    assert span.attributes["http.response.status_code"] == code


def test_connection_refused_reaches_the_app_and_is_recorded(client_hooks, parent):
    port = closed_port()
    with pytest.raises(requests.exceptions.ConnectionError) as raised:
        requests.get(f"http://127.0.0.1:{port}/x", timeout=5)
    [span] = client_spans(client_hooks)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "requests.exceptions.ConnectionError"
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes["exception.message"] == str(raised.value)
    assert span.parent.span_id == parent.get_span_context().span_id


def test_timeout_reaches_the_app_and_is_recorded(client_hooks, peer):
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(peer.url("/slow?seconds=1"), timeout=0.2)
    [span] = client_spans(client_hooks)
    assert span.attributes["error.type"] == "requests.exceptions.ReadTimeout"
    assert span.status.status_code == StatusCode.ERROR


def test_dns_failure_is_recorded(request, monkeypatch):
    url = f"http://{fail_dns(monkeypatch)}/"
    with pytest.raises(Exception) as untraced:
        requests.get(url, timeout=5)
    client_hooks = request.getfixturevalue("client_hooks")
    with pytest.raises(Exception) as traced:
        requests.get(url, timeout=5)
    assert type(traced.value) is type(untraced.value) is requests.exceptions.ConnectionError
    [span] = client_spans(client_hooks)
    assert span.attributes["server.address"] == "name.invalid"
    assert_failed(span, "requests.exceptions.ConnectionError")
    assert span.events[0].attributes["exception.message"] == str(traced.value)


def test_tls_failure_reaches_the_app_and_is_recorded(request, peer, parent):
    with pytest.raises(Exception) as untraced:
        requests.get(tls_url(peer), timeout=5)
    client_hooks = request.getfixturevalue("client_hooks")
    before = context.get_current()
    with pytest.raises(Exception) as traced:
        requests.get(tls_url(peer), timeout=5)
    assert context.get_current() is before
    assert type(traced.value) is type(untraced.value) is requests.exceptions.SSLError
    [span] = client_spans(client_hooks)
    assert_failed(span, "requests.exceptions.SSLError")
    assert span.attributes["url.full"] == tls_url(peer) and span.attributes["server.port"] == peer.port
    assert span.parent.span_id == parent.get_span_context().span_id


def test_span_covers_the_body_unless_streaming(client_hooks, peer):
    requests.get(peer.url("/stream", "whole"), timeout=5)
    [whole] = client_spans(client_hooks)
    assert (whole.end_time - whole.start_time) / 1e9 >= 0.08  # five lines, 20 ms apart
    client_hooks.clear()

    with requests.get(peer.url("/stream", "streamed"), stream=True, timeout=5) as response:
        [head] = client_spans(client_hooks)  # ended when the head arrived
        lines = list(response.iter_lines())
    assert len(lines) == 5
    assert (head.end_time - head.start_time) / 1e9 < 0.08
    assert len(client_spans(client_hooks)) == 1


@pytest.mark.parametrize("how", ["never_read", "closed_early"])
def test_a_streamed_response_left_unread_has_its_one_span_ended(client_hooks, peer, how):
    import gc
    import weakref

    before = context.get_current()
    response = requests.get(peer.url("/stream", how), stream=True, timeout=5)
    if how == "closed_early":
        next(response.iter_content(4))
        response.close()
    [span] = client_spans(client_hooks)  # ended at the head: nothing is left open
    assert span.attributes["http.response.status_code"] == 200
    assert context.get_current() is before
    alive = weakref.ref(response)
    del response
    gc.collect()
    assert alive() is None  # the span holds no reference to the response
    assert client_spans(client_hooks) == [span]
    assert traceparent_ids(peer.requests(how)[0].header("traceparent"))[1] == span.context.span_id


def test_header_set_by_hand_is_replaced_and_the_callers_objects_are_unchanged(client_hooks, peer, capsys):
    from autotrace import _log

    _log.logger.level = _log.DEBUG
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"traceparent": mine, "X-Mine": "1"}
    requests.get(peer.url("/ok", "byhand"), headers=headers, timeout=5)
    assert "requests: the traceparent header set by the application is replaced" in capsys.readouterr().err
    assert headers == {"traceparent": mine, "X-Mine": "1"}
    [received] = peer.requests("byhand")
    assert received.headers["traceparent"] != [mine] and len(received.headers["traceparent"]) == 1
    [span] = client_spans(client_hooks)
    assert traceparent_ids(received.headers["traceparent"][0])[1] == span.context.span_id

    with requests.Session() as session:
        prepared = session.prepare_request(requests.Request("GET", peer.url("/ok", "prepared")))
        before = dict(prepared.headers)
        response = session.send(prepared, timeout=5)
        assert response.request is prepared
        assert dict(prepared.headers) == before  # sent with the header, left without it
        session.send(prepared, timeout=5)  # sent again: a new span, no stale header
    first, second = peer.requests("prepared")
    assert first.header("traceparent") != second.header("traceparent")


def test_a_mounted_custom_adapter_gets_the_headers(client_hooks, peer):
    class Adapter(requests.adapters.HTTPAdapter):
        seen = []

        def send(self, request, **kwargs):
            self.seen.append(request.headers.get("traceparent"))
            return super().send(request, **kwargs)

    with requests.Session() as session:
        session.mount("http://", Adapter())
        session.get(peer.url("/ok", "mounted"), timeout=5)
    [span] = client_spans(client_hooks)
    assert traceparent_ids(Adapter.seen[0])[1] == span.context.span_id
    assert peer.requests("mounted")[0].header("traceparent") == Adapter.seen[0]


def test_a_request_sent_from_a_response_hook_is_a_child_span(client_hooks, peer, parent):
    inner = []

    def hook(response, **kwargs):
        if not inner:
            inner.append(requests.get(peer.url("/ok", "inner"), timeout=5))

    requests.get(peer.url("/ok", "outer"), hooks={"response": hook}, timeout=5)
    spans = {s.attributes["url.full"].rpartition("=")[2]: s for s in client_spans(client_hooks)}
    assert set(spans) == {"outer", "inner"}
    assert spans["inner"].parent.span_id == spans["outer"].context.span_id
    assert spans["outer"].parent.span_id == parent.get_span_context().span_id


def test_suppressed_instrumentation_sends_no_header_and_records_nothing(client_hooks, peer):
    # What the agent's own exporter runs under.
    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        requests.post(peer.url("/ok", "exporter"), data=b"spans", timeout=5)
    finally:
        context.detach(token)
    assert client_hooks.get_finished_spans() == ()
    [received] = peer.requests("exporter")
    assert received.header("traceparent") is None


def test_errors_of_the_app_are_untouched(client_hooks):
    with requests.Session() as session:
        with pytest.raises(ValueError, match="You can only send PreparedRequests"):
            session.send(requests.Request("GET", "http://127.0.0.1:1/"))
        with pytest.raises(requests.exceptions.MissingSchema):
            session.get("no-scheme")
    assert client_spans(client_hooks) == []


def test_responses_are_the_same_as_untraced(client_hooks, peer):
    def fetch(case):
        response = requests.get(peer.url("/status/404", case), timeout=5)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "date"}
        return response.status_code, headers, response.content, response.url.replace(case, "")

    traced = fetch("traced")
    patching.undo(0)  # every hook off: plain requests
    plain = fetch("plain")
    assert traced == plain
    assert peer.requests("plain")[0].header("traceparent") is None


def test_a_request_of_another_library_from_a_response_hook_is_a_child_span(client_hooks, peer, parent):
    import urllib.request

    import urllib3

    def hook(response, **kwargs):
        urllib.request.urlopen(peer.url("/ok", "inner-urllib"), timeout=5).read()
        urllib3.PoolManager().request("GET", peer.url("/ok", "inner-urllib3"), timeout=5)

    requests.get(peer.url("/ok", "outer"), hooks={"response": hook}, timeout=5)
    spans = {s.attributes["url.full"].rpartition("=")[2]: s for s in client_spans(client_hooks)}
    assert set(spans) == {"outer", "inner-urllib", "inner-urllib3"}
    for case in ("inner-urllib", "inner-urllib3"):
        assert spans[case].parent.span_id == spans["outer"].context.span_id
        [received] = peer.requests(case)
        assert traceparent_ids(received.header("traceparent"))[1] == spans[case].context.span_id
    assert spans["outer"].parent.span_id == parent.get_span_context().span_id


def test_redirected_responses_and_their_requests_are_the_same_as_untraced(client_hooks, peer):
    def fetch(case):
        response = requests.get(peer.url("/redirect/2", case), timeout=5)
        hops = [response, *response.history]
        return [(hop.status_code, sorted(hop.request.headers.items()), hop.request.url.replace(case, "")) for hop in hops]

    traced = fetch("traced")
    assert len(peer.requests("traced")) == 4 and all(r.header("traceparent") for r in peer.requests("traced"))
    patching.undo(0)
    plain = fetch("plain")
    assert traced == plain
    assert all("traceparent" not in dict(headers) for _, headers, _ in traced)


def test_a_prepared_request_shared_between_threads_is_never_changed(client_hooks, peer):
    import threading

    with requests.Session() as session:
        prepared = session.prepare_request(requests.Request("GET", peer.url("/ok", "shared")))
        before = dict(prepared.headers)
        same = []

        def send_some() -> None:
            for _ in range(5):
                response = session.send(prepared, timeout=5)
                same.append(response.request is prepared and "traceparent" not in response.request.headers)

        threads = [threading.Thread(target=send_some) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
    assert dict(prepared.headers) == before
    assert same == [True] * 30
    spans = client_spans(client_hooks)
    assert len(spans) == 30
    sent = {traceparent_ids(r.header("traceparent"))[1] for r in peer.requests("shared")}
    assert sent == {s.context.span_id for s in spans}


def test_too_many_redirects_is_recorded_on_the_last_hop(client_hooks, peer, parent):
    with requests.Session() as session:
        session.max_redirects = 1
        with pytest.raises(requests.exceptions.TooManyRedirects) as raised:
            session.get(peer.url("/redirect/3", "toomany"), timeout=5)
    first, last = client_spans(client_hooks)
    assert first.attributes["http.response.status_code"] == 302 and not first.events
    assert last.attributes["http.response.status_code"] == 302
    assert last.attributes["error.type"] == "requests.exceptions.TooManyRedirects"
    [event] = last.events
    assert event.name == "exception" and event.attributes["exception.message"] == str(raised.value)
    assert last.parent.span_id == first.parent.span_id == parent.get_span_context().span_id


def test_each_retry_is_a_sibling_span_with_its_own_traceparent(client_hooks, peer, parent):
    from urllib3.util.retry import Retry

    retry = Retry(total=2, status_forcelist=[503], backoff_factor=0, raise_on_status=False)
    with requests.Session() as session:
        session.mount("http://", requests.adapters.HTTPAdapter(max_retries=retry))
        response = session.get(peer.url("/status/503", "retried"), timeout=5)
    assert response.status_code == 503
    spans = client_spans(client_hooks)
    assert [s.attributes.get("http.request.resend_count") for s in spans] == [None, 1, 2]
    assert all(s.attributes["http.response.status_code"] == 503 for s in spans)
    assert all(s.parent.span_id == parent.get_span_context().span_id for s in spans)
    sent = [traceparent_ids(r.header("traceparent"))[1] for r in peer.requests("retried")]
    assert sent == [s.context.span_id for s in spans]
    assert len(client_hooks.get_finished_spans()) == 3


def test_a_request_an_adapter_sends_itself_is_a_child_of_its_hop(client_hooks, peer, parent):
    # A mounted adapter that calls another service with requests before sending (a
    # token fetched first): a call of its own, not a hop of the one in flight, whose
    # spans keep their own responses.
    class Adapter(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            if "case=outer" in request.url:
                requests.get(peer.url("/ok", "inner"), timeout=5)
            return super().send(request, **kwargs)

    with requests.Session() as session:
        session.mount("http://", Adapter())
        response = session.get(peer.url("/redirect/1", "outer"), timeout=5)
    assert response.status_code == 200 and len(response.history) == 2

    spans = client_spans(client_hooks)
    hops = [s for s in spans if s.attributes["url.full"].endswith("case=outer")]
    inner = [s for s in spans if s.attributes["url.full"].endswith("case=inner")]
    assert len(hops) == len(peer.requests("outer")) == 3
    assert len(inner) == len(peer.requests("inner")) == 3
    assert [s.attributes["http.response.status_code"] for s in hops] == [302, 302, 200]
    assert [s.attributes.get("http.request.resend_count") for s in hops] == [None, 1, 2]
    for hop, got in zip(hops, peer.requests("outer")):
        assert hop.parent.span_id == parent.get_span_context().span_id
        assert traceparent_ids(got.header("traceparent"))[1] == hop.context.span_id
    # Each inner call: one span, 200, a child of the hop whose adapter sent it.
    for call, hop, got in zip(inner, hops, peer.requests("inner")):
        assert call.attributes["http.response.status_code"] == 200
        assert "http.request.resend_count" not in call.attributes
        assert call.parent.span_id == hop.context.span_id
        assert traceparent_ids(got.header("traceparent"))[1] == call.context.span_id
    assert len(spans) == 6


def test_named_headers_are_captured(client_hooks, peer, monkeypatch):
    capture_named_headers(monkeypatch)
    requests.get(peer.url("/ok", "capture"), headers=CAPTURED_REQUEST_HEADERS, timeout=5)
    [span] = client_spans(client_hooks)
    [got] = peer.requests("capture")
    assert_named_headers_captured(span, got)


def test_a_call_and_its_hops_are_freed_at_once_not_by_the_garbage_collector(client_hooks, peer, parent):
    # The exchange and its spans referred to each other: a cycle per call, left to the
    # collector. Once the outer send returns, nothing of the call is left in a cycle.
    with requests.Session() as session:
        session.get(peer.url("/ok", "warm"), timeout=5)  # the connection, outside the count
        gc.collect()
        gc.disable()
        try:
            session.get(peer.url("/ok", "nocycle"), timeout=5).close()
            session.get(peer.url("/redirect/1", "nocycle-hops"), timeout=5).close()
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = [type(found).__name__ for found in gc.garbage if isinstance(found, (client_span.ClientSpan, requests_hook.Exchange))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert left == []
    assert len(client_spans(client_hooks)) == 5  # warm, nocycle, the redirect's three hops (1, 0, ok)


def test_requests_own_adapter_sends_the_apps_request_the_headers_added_under_urllib3(client_hooks, peer, parent, monkeypatch):
    # requests' HTTPAdapter over the urllib3 hook: no copy of the request, the headers
    # written into the head by http.client; without the urllib3 hook, the copy again.
    from autotrace.hooks import urllib3 as urllib3_hook

    given = []
    send = requests.adapters.HTTPAdapter.send
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", lambda self, request, **kw: given.append(request) or send(self, request, **kw))
    with requests.Session() as session:
        prepared = session.prepare_request(requests.Request("GET", peer.url("/ok", "own")))
        session.send(prepared, timeout=5)
        assert given == [prepared] and "traceparent" not in prepared.headers
        monkeypatch.setattr(urllib3_hook, "_wrapper", None)  # as if urllib3's hook were not applied
        session.send(prepared, timeout=5)
        assert given[1] is not prepared and "traceparent" in given[1].headers
    first, second = client_spans(client_hooks)
    for span, got in zip((first, second), peer.requests("own")):
        [value] = got.headers["traceparent"]
        assert traceparent_ids(value) == (span.context.trace_id, span.context.span_id)
        assert span.parent.span_id == parent.get_span_context().span_id
