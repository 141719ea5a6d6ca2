"""urllib3 used directly: one CLIENT span per request sent, its context in the headers the peer received.

In process, against the recording peer (tests/http_peer.py), with every client hook
applied as under the agent: urllib3 over http.client, and requests over both, must
give one span per request. A test that compares with an un-traced call makes that
call first, then applies the hooks (``request.getfixturevalue("client_hooks")``).
"""

from __future__ import annotations


import pytest
import requests
import urllib3
from opentelemetry import context
from opentelemetry.trace import StatusCode
from urllib3._collections import HTTPHeaderDict  # where 1.26 and 2.x both have it
from urllib3.util import Retry

from autotrace.hooks import urllib3 as urllib3_hook
from client_checks import HAND_TRACEPARENT, assert_failed, assert_get_200, assert_propagated, client_spans, closed_port, fail_dns, tls_url, without_date

URLLIB3_2 = int(urllib3.__version__.split(".")[0]) >= 2


@pytest.fixture
def manager():
    with urllib3.PoolManager(retries=False, timeout=5) as pools:
        yield pools


@pytest.fixture
def pool(peer):
    with urllib3.HTTPConnectionPool("127.0.0.1", peer.port, retries=False, timeout=5) as connections:
        yield connections


def test_pool_manager_request_is_one_client_span_whose_id_the_peer_received(client_hooks, peer, parent, manager):
    before = context.get_current()
    response = manager.request("GET", peer.url("/ok?token=secret", "get"))
    assert context.get_current() is before
    assert (response.status, response.data) == (200, b"ok\n")

    [span] = client_spans(client_hooks)
    [got] = peer.requests("get")
    assert_propagated(span, got, parent)
    assert_get_200(span, f"{peer.base}/ok?token=REDACTED&case=get", peer.port)
    # urllib3 over http.client: nothing else was recorded.
    assert len(client_hooks.get_finished_spans()) == 1


def test_connection_pool_urlopen_is_one_client_span(client_hooks, peer, parent, pool):
    response = pool.urlopen("POST", "/ok?case=urlopen", body=b"payload")
    assert response.status == 200
    [span] = client_spans(client_hooks)
    assert span.name == "POST"
    assert span.attributes["url.full"] == peer.url("/ok", "urlopen")
    assert_propagated(span, peer.requests("urlopen")[0], parent)
    assert len(client_hooks.get_finished_spans()) == 1


def test_module_request_helper_and_keep_alive(client_hooks, peer):
    if URLLIB3_2:
        urllib3.request("GET", peer.url("/ok", "helper"), timeout=5)
    else:
        urllib3.PoolManager().request("GET", peer.url("/ok", "helper"), timeout=5)
    with urllib3.HTTPConnectionPool("127.0.0.1", peer.port, maxsize=1) as pool:
        for _ in range(3):  # one connection, reused
            pool.request("GET", "/ok?case=alive")
        assert pool.num_connections == 1
    assert_propagated(client_spans(client_hooks)[0], peer.requests("helper")[0])
    spans = client_spans(client_hooks)[1:]
    assert len(spans) == 3
    for span, got in zip(spans, peer.requests("alive")):
        assert_propagated(span, got)


def test_streamed_response_span_ends_when_the_call_returns(client_hooks, peer, pool):
    response = pool.urlopen("GET", "/stream?case=stream", preload_content=False)
    [span] = client_spans(client_hooks)  # ended: the response head was received
    assert span.attributes["http.response.status_code"] == 200
    assert b"".join(response.stream()) == b"".join(b"line %d\n" % i for i in range(5))
    response.release_conn()
    assert len(client_spans(client_hooks)) == 1


def test_requests_over_urllib3_is_one_span(client_hooks, peer, parent):
    response = requests.get(peer.url("/ok", "requests"), timeout=5)
    assert response.status_code == 200
    [span] = client_spans(client_hooks)
    assert_propagated(span, peer.requests("requests")[0], parent)
    assert len(client_hooks.get_finished_spans()) == 1


def test_requests_redirects_are_one_span_per_hop(client_hooks, peer, parent):
    requests.get(peer.url("/redirect/2", "requests-hops"), timeout=5)
    hops = client_spans(client_hooks)
    got = peer.requests("requests-hops")
    assert len(hops) == len(got) == 4
    for span, one in zip(hops, got):
        assert_propagated(span, one, parent)


def test_urllib3_connection_used_directly_is_one_span(client_hooks, peer, parent):
    # urllib3's HTTPConnection overrides putrequest, putheader and getresponse, calling
    # http.client's: the http.client hook traces it, once.
    conn = urllib3.connection.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.request("GET", "/ok?case=conn", headers={"traceparent": HAND_TRACEPARENT})
        response = conn.getresponse()  # urllib3's HTTPResponse (2.x), http.client's (1.26)
        assert (response.status, response.data if URLLIB3_2 else response.read()) == (200, b"ok\n")
    finally:
        conn.close()
    [span] = client_spans(client_hooks)
    assert_propagated(span, peer.requests("conn")[0], parent)


# -- redirects and retries ------------------------------------------------------------


def test_pool_manager_redirect_hops_are_sibling_spans(client_hooks, peer, parent):
    with urllib3.PoolManager(timeout=5) as manager:
        response = manager.request("GET", peer.url("/redirect/2", "hops"))
    assert (response.status, response.data) == (200, b"ok\n")
    hops = client_spans(client_hooks)
    got = peer.requests("hops")
    assert [r.path for r in got] == ["/redirect/2", "/redirect/1", "/redirect/0", "/ok"]
    assert len(hops) == 4
    for span, one in zip(hops, got):
        assert_propagated(span, one, parent)  # siblings: each the parent's child
    assert [s.attributes["http.response.status_code"] for s in hops] == [302, 302, 302, 200]
    assert [s.attributes.get("http.request.resend_count") for s in hops] == [None, 1, 2, 3]
    assert [s.attributes["url.full"] for s in hops] == [peer.url(r.path, "hops") for r in got]


def test_retries_are_a_span_each_numbered_by_resend_count(client_hooks, peer, parent, pool):
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        pool.urlopen("GET", "/status/503?case=retry", retries=Retry(total=2, status_forcelist=[503]))
    attempts = client_spans(client_hooks)
    got = peer.requests("retry")
    assert len(attempts) == len(got) == 3
    for span, one in zip(attempts, got):
        assert_propagated(span, one, parent)
        assert span.attributes["error.type"] == "503"
        assert span.status.status_code == StatusCode.ERROR
    assert [s.attributes.get("http.request.resend_count") for s in attempts] == [None, 1, 2]


def test_connect_retries_are_a_span_each(client_hooks, manager):
    url = f"http://127.0.0.1:{closed_port()}/ok"
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        manager.request("GET", url, retries=Retry(total=1, backoff_factor=0))
    attempts = client_spans(client_hooks)
    assert len(attempts) == 2
    for span in attempts:
        assert_failed(span, "urllib3.exceptions.NewConnectionError")
    assert [s.attributes.get("http.request.resend_count") for s in attempts] == [None, 1]


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 503])
def test_error_status_makes_the_span_an_error(client_hooks, peer, pool, code):
    response = pool.urlopen("GET", f"/status/{code}")
    assert response.status == code
    [span] = client_spans(client_hooks)
    assert span.attributes["http.response.status_code"] == code
    assert span.attributes["error.type"] == str(code)
    assert span.status.status_code == StatusCode.ERROR
    assert span.events == ()


@pytest.mark.parametrize("retries", [False, 0])
def test_connection_refused_reaches_the_app_untouched(request, retries):
    url = f"http://127.0.0.1:{closed_port()}/ok"

    def call():
        with urllib3.PoolManager(timeout=5) as manager:
            with pytest.raises(Exception) as raised:
                manager.request("GET", url, retries=retries)
        return raised.value

    untraced = call()
    spans = request.getfixturevalue("client_hooks")
    before = context.get_current()
    traced = call()
    assert context.get_current() is before
    assert type(traced) is type(untraced)
    assert type(traced.__cause__) is type(untraced.__cause__)
    [span] = client_spans(spans)
    assert_failed(span, "urllib3.exceptions.NewConnectionError")


@pytest.mark.parametrize("failure", ["dns", "tls"])
def test_dns_and_tls_failures_reach_the_app_untouched(request, peer, monkeypatch, failure):
    url = f"http://{fail_dns(monkeypatch)}/x" if failure == "dns" else tls_url(peer)
    if failure == "tls":
        expected = urllib3.exceptions.SSLError
    else:  # 1.26 has no NameResolutionError: a NewConnectionError
        expected = getattr(urllib3.exceptions, "NameResolutionError", urllib3.exceptions.NewConnectionError)

    def call():
        with urllib3.PoolManager(timeout=5, retries=False) as manager:
            with pytest.raises(Exception) as raised:
                manager.request("GET", url)
        return raised.value

    untraced = call()
    spans = request.getfixturevalue("client_hooks")
    traced = call()
    assert type(traced) is type(untraced) is expected
    [span] = client_spans(spans)
    assert_failed(span, f"urllib3.exceptions.{expected.__name__}")
    assert span.attributes["url.full"] == url


def test_timeout_reaches_the_app_untouched(request, peer):
    def call():
        with urllib3.HTTPConnectionPool("127.0.0.1", peer.port, retries=False) as pool:
            with pytest.raises(Exception) as raised:
                pool.urlopen("GET", "/slow?seconds=1", timeout=0.2)
        return raised.value

    untraced = call()
    spans = request.getfixturevalue("client_hooks")
    traced = call()
    assert type(traced) is type(untraced) is urllib3.exceptions.ReadTimeoutError
    [span] = client_spans(spans)
    assert_failed(span, "urllib3.exceptions.ReadTimeoutError")


# -- the caller's objects, suppression, responses ---------------------------------------


@pytest.mark.parametrize("kind", ["dict", "HTTPHeaderDict"])
@pytest.mark.parametrize("name", ["traceparent", "Traceparent", "TRACEPARENT"])
def test_headers_are_not_changed_and_a_hand_set_traceparent_is_replaced(client_hooks, peer, pool, kind, name):
    original = {"X-App": "1", name: HAND_TRACEPARENT}
    headers = dict(original) if kind == "dict" else HTTPHeaderDict(original)
    pool.urlopen("GET", "/ok?case=hand", headers=headers)
    assert type(headers) is (dict if kind == "dict" else HTTPHeaderDict)
    assert list(headers.items()) == list(original.items())
    [span] = client_spans(client_hooks)
    [got] = peer.requests("hand")
    assert_propagated(span, got)  # exactly one traceparent: ours
    assert got.headers["x-app"] == ["1"]


def test_pool_headers_are_not_changed(client_hooks, peer):
    with urllib3.HTTPConnectionPool("127.0.0.1", peer.port, headers={"X-Pool": "1"}) as pool:
        pool.request("GET", "/ok?case=pool")
        pool.urlopen("GET", "/ok?case=pool")
        assert pool.headers == {"X-Pool": "1"}
    first, second = peer.requests("pool")
    assert first.headers["x-pool"] == second.headers["x-pool"] == ["1"]
    for span, got in zip(client_spans(client_hooks), (first, second)):
        assert_propagated(span, got)


def test_suppressed_makes_no_span_and_sends_no_header(client_hooks, peer, pool, suppressed):
    assert pool.urlopen("GET", "/ok?case=quiet").status == 200
    assert client_spans(client_hooks) == []
    assert "traceparent" not in peer.requests("quiet")[0].headers


@pytest.mark.parametrize("path", ["/ok", "/stream", "/status/404", "/redirect/1"])
def test_response_is_what_an_untraced_call_gets(request, peer, path):
    def call(case: str) -> tuple:
        with urllib3.PoolManager(timeout=5) as manager:
            response = manager.request("GET", peer.url(path, case))
            return response.status, response.reason, response.version, without_date(response.headers), response.data

    untraced = call("plain")
    exporter = request.getfixturevalue("client_hooks")
    assert call("traced") == untraced
    # One span per request sent: one, or one per hop of a redirect.
    sent = len(peer.requests("traced"))
    assert sent == (1 if "redirect" not in path else len(peer.requests("plain")))
    assert len(exporter.get_finished_spans()) == sent


def test_proxy_request_in_absolute_form(client_hooks, peer):
    # The peer answers a request in absolute form too: no DNS for the target.
    with urllib3.ProxyManager(peer.base, timeout=5, retries=False) as proxy:
        response = proxy.request("GET", "http://user:password@example.invalid/ok?token=secret&case=proxy")
    assert response.status == 200
    [span] = client_spans(client_hooks)
    assert span.attributes["url.full"] == "http://example.invalid/ok?token=REDACTED&case=proxy"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("example.invalid", 80)
    assert_propagated(span, peer.requests("proxy")[0])


@pytest.mark.parametrize(
    ("make", "target", "expected"),
    [
        (lambda: urllib3.HTTPConnectionPool("example.com"), "/a?b=c", "http://example.com/a?b=c"),
        (lambda: urllib3.HTTPConnectionPool("example.com", 80), "/", "http://example.com/"),
        (lambda: urllib3.HTTPConnectionPool("example.com", 8080), "", "http://example.com:8080/"),
        (lambda: urllib3.HTTPConnectionPool("[::1]", 8080), "/", "http://[::1]:8080/"),
        (lambda: urllib3.HTTPSConnectionPool("::1"), "/", "https://[::1]/"),
        (lambda: urllib3.HTTPSConnectionPool("example.com", 443), "/x", "https://example.com/x"),
        (lambda: urllib3.HTTPSConnectionPool("example.com", 80), "/x", "https://example.com:80/x"),
    ],
)
def test_url_from_the_pool(make, target, expected):
    assert urllib3_hook._url(make(), target) == expected


def test_positional_headers_and_retries_are_found():
    # urllib3 2 takes them positionally too (after body); the hook finds them either way.
    def _make_request(self, conn, method, url, body=None, headers=None, retries=None, timeout=None):
        return headers, retries

    assert urllib3_hook._positional_index(_make_request, "headers") == 1
    assert urllib3_hook._positional_index(_make_request, "retries") == 2

    def old(self, conn, method, url, timeout=None, chunked=False, **httplib_request_kw):  # urllib3 1.26
        return httplib_request_kw

    assert urllib3_hook._positional_index(old, "headers") is None


@pytest.mark.skipif(not URLLIB3_2, reason="urllib3 1.26 takes them by keyword only")
def test_headers_and_retries_passed_positionally(client_hooks, peer, pool):
    headers = {"X-App": "1"}
    retries = Retry(total=3)
    retries = retries.increment("GET", "/ok", error=urllib3.exceptions.ProtocolError("once"))
    conn = pool._get_conn()
    try:
        response = pool._make_request(conn, "GET", "/ok?case=positional", None, headers, retries)
        assert response.status == 200
    finally:
        pool._put_conn(conn)
    assert headers == {"X-App": "1"}
    [span] = client_spans(client_hooks)
    assert span.attributes["http.request.resend_count"] == 1
    [got] = peer.requests("positional")
    assert_propagated(span, got)
    assert got.headers["x-app"] == ["1"]


def test_named_headers_are_captured(client_hooks, peer, pool, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "X-App,traceparent")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "X-Peer")
    pool.urlopen("GET", "/ok?case=capture", headers={"X-App": "1"})
    [span] = client_spans(client_hooks)
    [got] = peer.requests("capture")
    assert span.attributes["http.request.header.x-app"] == ("1",)
    assert span.attributes["http.request.header.traceparent"] == tuple(got.headers["traceparent"])
    assert span.attributes["http.response.header.x-peer"] == ("yes",)


def test_a_request_without_headers_gets_the_propagation_headers_alone_and_they_are_captured(client_hooks, peer, pool, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "traceparent")
    pool.urlopen("GET", "/ok?case=bare", headers={})
    [span] = client_spans(client_hooks)
    [got] = peer.requests("bare")
    assert_propagated(span, got)
    assert span.attributes["http.request.header.traceparent"] == tuple(got.headers["traceparent"])


# -- the propagation headers written into the head by http.client ----------------------


def test_headers_go_into_the_head_once_and_nothing_is_left_on_the_connection(client_hooks, peer, parent):
    from autotrace.hooks import http_client

    with urllib3.HTTPConnectionPool("127.0.0.1", peer.port, maxsize=1, retries=False, timeout=5) as pool:
        for headers in (None, {"x-app": "1"}):
            response = pool.request("GET", "/ok?case=lines", headers=headers)
            assert response.status == 200
        conn = pool.pool.get()  # the one connection, kept alive
        try:
            assert http_client.HEAD_LINES_KEY not in conn.__dict__
            assert http_client.sends_head_lines(conn)
        finally:
            pool.pool.put(conn)
    spans = client_spans(client_hooks)
    got = peer.requests("lines")
    assert len(spans) == len(got) == 2
    for span, one in zip(spans, got):
        assert_propagated(span, one, parent)
    assert got[1].headers["x-app"] == ["1"]


def test_a_request_failing_before_its_head_is_sent_leaves_no_lines_for_the_next(client_hooks, peer, parent, pool):
    from autotrace.hooks import http_client

    conn = pool._get_conn()  # the hooked method, called as urlopen calls it, on a connection kept here
    try:
        with pytest.raises(ValueError):  # http.client's putheader refuses the value: no head sent
            pool._make_request(conn, "GET", "/ok?case=bad", headers={"x-bad": "a\nb"})
        assert http_client.HEAD_LINES_KEY not in conn.__dict__
    finally:
        conn.close()
    pool.request("GET", "/ok?case=after")
    failed, sent = client_spans(client_hooks)
    assert failed.status.status_code == StatusCode.ERROR
    assert_propagated(sent, peer.requests("after")[0], parent)


def test_head_lines_are_made_only_from_values_that_can_go_as_they_are():
    from autotrace.hooks import http_client

    assert http_client.head_lines({"traceparent": "00-ab-cd-01"}) == b"traceparent: 00-ab-cd-01"
    assert http_client.head_lines({"traceparent": "t", "tracestate": "a=1", "baggage": "k=v"}) == (
        b"traceparent: t\r\ntracestate: a=1\r\nbaggage: k=v"
    )
    assert http_client.head_lines({}) is None
    for value in ("a\r\nx-injected: 1", "a\nb", "caf\u20ac", 5):
        assert http_client.head_lines({"baggage": value}) is None
        assert http_client.head_lines({"traceparent": "t", "baggage": value}) is None
