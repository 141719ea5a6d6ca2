"""urllib.request and http.client: one CLIENT span per request sent, its context in the headers the peer received.

In process, against the recording peer (tests/http_peer.py), with every client hook
applied as under the agent: urllib.request over http.client must give one span. A
test that compares with an un-traced call makes that call first, then applies the
hooks (``request.getfixturevalue("client_hooks")``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from opentelemetry import context
from opentelemetry.trace import StatusCode

from autotrace.hooks import http_client as http_client_hook
from client_checks import (
    HAND_TRACEPARENT,
    assert_failed,
    assert_get_200,
    assert_propagated,
    client_spans,
    closed_port,
    fail_dns,
    received,
    tls_url,
    without_date,
)

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    """urlopen's default opener reads proxies from the environment: loopback goes direct."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    urllib.request.install_opener(None)
    yield
    urllib.request.install_opener(None)


def urlopen(url, **kwargs) -> tuple[int, list, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=kwargs.pop("timeout", 5), **kwargs) as response:
            return response.status, response.getheaders(), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.items(), error.read()


def test_urlopen_is_one_client_span_whose_id_the_peer_received(client_hooks, peer, parent):
    before = context.get_current()
    status, _, body = urlopen(peer.url("/ok", "get"))
    assert context.get_current() is before
    assert (status, body) == (200, b"ok\n")

    [span] = client_spans(client_hooks)
    [received] = peer.requests("get")
    assert_propagated(span, received, parent)
    assert_get_200(span, peer.url("/ok", "get"), peer.port)
    # urllib.request over http.client: nothing else was recorded.
    assert len(client_hooks.get_finished_spans()) == 1


def test_urlopen_of_a_request_with_a_body(client_hooks, peer):
    request = urllib.request.Request(peer.url("/ok", "post"), data=b"payload", method="POST")
    status, _, _ = urlopen(request)
    assert status == 200
    [span] = client_spans(client_hooks)
    assert span.name == "POST" and span.attributes["http.request.method"] == "POST"
    assert_propagated(span, peer.requests("post")[0])


def test_urlopen_without_a_current_span_starts_the_trace(client_hooks, peer):
    urlopen(peer.url("/ok", "root"))
    [span] = client_spans(client_hooks)
    assert span.parent is None
    assert_propagated(span, peer.requests("root")[0])


def test_urlopen_each_redirect_hop_is_a_sibling_span_with_its_own_traceparent(client_hooks, peer, parent):
    status, _, body = urlopen(peer.url("/redirect/2", "hops"))
    assert (status, body) == (200, b"ok\n")

    hops = client_spans(client_hooks)
    received = peer.requests("hops")
    assert [r.path for r in received] == ["/redirect/2", "/redirect/1", "/redirect/0", "/ok"]
    assert len(hops) == 4
    for span, request in zip(hops, received):
        assert_propagated(span, request, parent)  # siblings: each the parent's child
    assert [s.attributes["http.response.status_code"] for s in hops] == [302, 302, 302, 200]
    assert [s.attributes.get("http.request.resend_count") for s in hops] == [None, 1, 2, 3]
    assert [s.attributes["url.full"] for s in hops] == [peer.url(r.path, "hops") for r in received]


@pytest.mark.parametrize("code", [404, 503])
def test_urlopen_error_status_makes_the_span_an_error(client_hooks, peer, code):
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(peer.url(f"/status/{code}", "status"), timeout=5)
    raised.value.close()
    assert raised.value.code == code
    [span] = client_spans(client_hooks)
    assert span.attributes["http.response.status_code"] == code
    assert span.attributes["error.type"] == str(code)
    assert span.status.status_code == StatusCode.ERROR
    assert span.events == ()


def test_urlopen_connection_refused_reaches_the_app_untouched(request, peer):
    url = f"http://127.0.0.1:{closed_port()}/ok"
    with pytest.raises(Exception) as untraced:
        urllib.request.urlopen(url, timeout=5)
    spans = request.getfixturevalue("client_hooks")
    before = context.get_current()
    with pytest.raises(Exception) as traced:
        urllib.request.urlopen(url, timeout=5)
    assert context.get_current() is before
    assert type(traced.value) is type(untraced.value) is urllib.error.URLError
    assert type(traced.value.reason) is type(untraced.value.reason)
    [span] = client_spans(spans)
    assert_failed(span, "urllib.error.URLError")


def test_urlopen_timeout_reaches_the_app_untouched(request, peer):
    url = peer.url("/slow?seconds=1", "slow")
    with pytest.raises(Exception) as untraced:
        urllib.request.urlopen(url, timeout=0.2)
    spans = request.getfixturevalue("client_hooks")
    with pytest.raises(Exception) as traced:
        urllib.request.urlopen(url, timeout=0.2)
    assert type(traced.value) is type(untraced.value)
    [span] = client_spans(spans)
    assert_failed(span, client_span_error_type(traced.value))


@pytest.mark.parametrize("failure", ["dns", "tls"])
def test_urlopen_dns_and_tls_failures_reach_the_app_untouched(request, peer, monkeypatch, failure):
    url = f"http://{fail_dns(monkeypatch)}/x" if failure == "dns" else tls_url(peer)
    with pytest.raises(Exception) as untraced:
        urllib.request.urlopen(url, timeout=5)
    spans = request.getfixturevalue("client_hooks")
    with pytest.raises(Exception) as traced:
        urllib.request.urlopen(url, timeout=5)
    assert type(traced.value) is type(untraced.value) is urllib.error.URLError
    assert type(traced.value.reason) is type(untraced.value.reason)
    assert isinstance(traced.value.reason, socket.gaierror if failure == "dns" else ssl.SSLError)
    [span] = client_spans(spans)
    assert_failed(span, "urllib.error.URLError")
    assert span.attributes["url.full"] == url


def client_span_error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize("how", ["add_header", "headers_argument", "lower_case_key", "add_unredirected_header"])
def test_urlopen_replaces_a_hand_set_traceparent_and_leaves_the_request_as_it_was(client_hooks, peer, capsys, how):
    from autotrace import _log

    _log.logger.level = _log.DEBUG
    headers = {"X-App": "1", "traceparent": HAND_TRACEPARENT} if how == "headers_argument" else {"X-App": "1"}
    req = urllib.request.Request(peer.url("/ok", "hand"), headers=headers)
    if how == "add_header":
        req.add_header("traceparent", HAND_TRACEPARENT)
    elif how == "lower_case_key":
        req.headers["traceparent"] = HAND_TRACEPARENT  # set directly: do_open would send it in place of ours
    elif how == "add_unredirected_header":
        req.add_unredirected_header("traceparent", HAND_TRACEPARENT)
    headers = list(req.headers.items())
    unredirected = list(req.unredirected_hdrs.items())

    urlopen(req)
    [span] = client_spans(client_hooks)
    [received] = peer.requests("hand")
    assert_propagated(span, received)  # exactly one traceparent: ours
    assert received.headers["x-app"] == ["1"]
    assert "traceparent header set by the application is replaced" in capsys.readouterr().err
    # The app's headers are as they were; urllib added its own (Host, User-agent) only.
    assert list(req.headers.items()) == headers
    assert list(req.unredirected_hdrs.items())[: len(unredirected)] == unredirected
    assert all(name.lower() != "traceparent" for name, _ in list(req.unredirected_hdrs.items())[len(unredirected):])


def test_urlopen_leaves_the_request_exactly_as_an_untraced_call_does(request, peer):
    def make() -> urllib.request.Request:
        req = urllib.request.Request(peer.url("/ok", "same"), headers={"X-App": "1", "Traceparent": HAND_TRACEPARENT})
        req.add_unredirected_header("Baggage", "app=1")
        return req

    untraced = make()
    urlopen(untraced)
    request.getfixturevalue("client_hooks")
    traced = make()
    urlopen(traced)
    assert list(traced.headers.items()) == list(untraced.headers.items())
    assert list(traced.unredirected_hdrs.items()) == list(untraced.unredirected_hdrs.items())
    first, second = peer.requests("same")
    assert first.header("traceparent") == HAND_TRACEPARENT  # un-traced: the app's
    assert len(second.headers["traceparent"]) == 1 and second.header("traceparent") != HAND_TRACEPARENT
    assert second.headers["baggage"] == ["app=1"]  # the span has no baggage: the app's is sent as it is


def test_urlopen_suppressed_makes_no_span_and_sends_no_header(client_hooks, peer, parent, suppressed):
    status, _, _ = urlopen(peer.url("/ok", "quiet"))
    assert status == 200
    assert client_spans(client_hooks) == []
    assert "traceparent" not in peer.requests("quiet")[0].headers


@pytest.mark.parametrize("path", ["/ok", "/stream", "/status/404", "/redirect/1"])
def test_urlopen_response_is_what_an_untraced_call_gets(request, peer, path):
    untraced = urlopen(peer.url(path, "plain"))
    exporter = request.getfixturevalue("client_hooks")
    traced = urlopen(peer.url(path, "traced"))
    assert traced[0] == untraced[0] and traced[2] == untraced[2]
    assert without_date(traced[1]) == without_date(untraced[1])
    # One span per request sent: one, or one per hop of a redirect.
    sent = len(peer.requests("traced"))
    assert sent == (1 if "redirect" not in path else len(peer.requests("plain")))
    assert len(exporter.get_finished_spans()) == sent


def test_urlopen_url_full_has_no_user_information_and_no_secret(client_hooks, peer):
    # Through a proxy (the peer answers a request in absolute form too): no DNS.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": peer.base}))
    with opener.open("http://user:password@example.invalid/ok?token=secret&case=proxy", timeout=5) as response:
        assert response.status == 200
    [span] = client_spans(client_hooks)
    assert span.attributes["url.full"] == "http://example.invalid/ok?token=REDACTED&case=proxy"
    assert span.attributes["server.address"] == "example.invalid"
    assert span.attributes["server.port"] == 80
    assert_propagated(span, peer.requests("proxy")[0])


# -- http.client ----------------------------------------------------------------------


def test_http_client_request_is_one_client_span_whose_id_the_peer_received(client_hooks, peer, parent):
    before = context.get_current()
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.request("GET", "/ok?case=conn&token=secret")
        response = conn.getresponse()
        assert context.get_current() is before
        assert (response.status, response.read()) == (200, b"ok\n")
    finally:
        conn.close()
    assert context.get_current() is before

    [span] = client_spans(client_hooks)
    assert_propagated(span, peer.requests("conn")[0], parent)
    assert_get_200(span, f"{peer.base}/ok?case=conn&token=REDACTED", peer.port)
    assert len(client_hooks.get_finished_spans()) == 1


def test_http_client_low_level_calls_replace_a_hand_put_traceparent(client_hooks, peer, parent, capsys):
    from autotrace import _log

    _log.logger.level = _log.DEBUG
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.putrequest("GET", "/ok?case=low")
        conn.putheader("X-App", "1")
        conn.putheader("TraceParent", HAND_TRACEPARENT)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 200
        response.read()
    finally:
        conn.close()
    [span] = client_spans(client_hooks)
    [received] = peer.requests("low")
    assert_propagated(span, received, parent)  # exactly one: ours
    assert received.headers["x-app"] == ["1"]
    assert "the TraceParent header set by the application is replaced" in capsys.readouterr().err


def test_http_client_request_headers_dict_is_not_changed(client_hooks, peer):
    headers = {"X-App": "1", "traceparent": HAND_TRACEPARENT}
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.request("POST", "/ok?case=dict", body=b"x", headers=headers)
        conn.getresponse().read()
    finally:
        conn.close()
    assert headers == {"X-App": "1", "traceparent": HAND_TRACEPARENT}
    [span] = client_spans(client_hooks)
    assert span.name == "POST"
    assert_propagated(span, peer.requests("dict")[0])


def test_http_client_keep_alive_requests_are_a_span_each(client_hooks, peer):
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("GET", "/ok?case=alive")
            conn.getresponse().read()
    finally:
        conn.close()
    spans = client_spans(client_hooks)
    received = peer.requests("alive")
    assert len(spans) == len(received) == 3
    for span, request in zip(spans, received):
        assert_propagated(span, request)
    assert len({s.context.span_id for s in spans}) == 3


@pytest.mark.parametrize("code", [404, 503])
def test_http_client_error_status_makes_the_span_an_error(client_hooks, peer, code):
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.request("GET", f"/status/{code}")
        response = conn.getresponse()
        assert response.status == code
        response.read()
    finally:
        conn.close()
    [span] = client_spans(client_hooks)
    assert span.attributes["http.response.status_code"] == code
    assert span.attributes["error.type"] == str(code)
    assert span.status.status_code == StatusCode.ERROR


def test_http_client_connection_refused_reaches_the_app_untouched(client_hooks, parent):
    conn = http.client.HTTPConnection("127.0.0.1", closed_port(), timeout=5)
    before = context.get_current()
    with pytest.raises(ConnectionRefusedError):
        conn.request("GET", "/ok")
    assert context.get_current() is before
    conn.close()
    [span] = client_spans(client_hooks)
    assert_failed(span, "ConnectionRefusedError")
    assert span.parent.span_id == parent.get_span_context().span_id


@pytest.mark.parametrize("failure", ["dns", "tls"])
def test_http_client_dns_and_tls_failures_reach_the_app_untouched(client_hooks, peer, parent, monkeypatch, failure):
    if failure == "dns":
        conn = http.client.HTTPConnection(fail_dns(monkeypatch), timeout=5)
        expected, error_type = socket.gaierror, "socket.gaierror"
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", peer.port, timeout=5)
        expected, error_type = ssl.SSLError, "ssl.SSLError"
    before = context.get_current()
    try:
        with pytest.raises(Exception) as raised:
            conn.request("GET", "/ok")  # the connection is made when the head is sent
        assert type(raised.value) is expected
        assert context.get_current() is before
    finally:
        conn.close()
    [span] = client_spans(client_hooks)
    assert_failed(span, error_type)
    assert span.parent.span_id == parent.get_span_context().span_id


def test_http_client_timeout_reaches_the_app_untouched(client_hooks, peer):
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=0.2)
    try:
        conn.request("GET", "/slow?seconds=1")
        with pytest.raises(TimeoutError):
            conn.getresponse()
    finally:
        conn.close()
    [span] = client_spans(client_hooks)
    assert_failed(span, "TimeoutError")


def test_http_client_closed_before_the_response_ends_the_span(client_hooks, peer):
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    conn.putrequest("GET", "/ok?case=abandoned")
    assert client_spans(client_hooks) == []  # pending on the connection
    conn.close()
    [span] = client_spans(client_hooks)
    assert span.end_time is not None
    assert "http.response.status_code" not in span.attributes

    # (http.client keeps the abandoned request's lines in its buffer: a new connection.)
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    conn.request("HEAD", "/ok?case=abandoned")  # sent, its response never read
    assert len(received(peer, "abandoned")) == 1
    conn.close()
    first, second = client_spans(client_hooks)
    assert second.name == "HEAD" and "http.response.status_code" not in second.attributes
    assert_propagated(second, peer.requests("abandoned")[0])
    assert http_client_hook._CALL not in conn.__dict__


def test_http_client_suppressed_makes_no_span_and_sends_no_header(client_hooks, peer, suppressed):
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.request("GET", "/ok?case=quiet")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
        assert http_client_hook._CALL not in conn.__dict__
    finally:
        conn.close()
    assert client_spans(client_hooks) == []
    assert "traceparent" not in peer.requests("quiet")[0].headers


def test_http_client_under_urllib_request_stores_nothing_on_the_connection(client_hooks, peer, monkeypatch):
    seen = []
    original = http.client.HTTPConnection.endheaders

    def endheaders(self, *args, **kwargs):
        seen.append(dict(self.__dict__))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(http.client.HTTPConnection, "endheaders", endheaders)
    urlopen(peer.url("/ok", "layers"))
    assert len(seen) == 1 and http_client_hook._CALL not in seen[0]
    assert len(client_spans(client_hooks)) == 1
    assert len(peer.requests("layers")[0].headers["traceparent"]) == 1


@pytest.mark.parametrize("path", ["/ok", "/stream", "/status/503"])
def test_http_client_response_is_what_an_untraced_call_gets(request, peer, path):
    def call() -> tuple:
        conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.reason, response.version, without_date(response.getheaders()), response.read()
        finally:
            conn.close()

    untraced = call()
    exporter = request.getfixturevalue("client_hooks")
    assert call() == untraced
    assert len(exporter.get_finished_spans()) == 1


def test_http_client_request_abandoned_without_close_ends_when_the_connection_is_collected(client_hooks, peer):
    import gc
    import weakref

    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    conn.request("GET", "/ok?case=collected")  # sent; neither getresponse() nor close()
    assert len(received(peer, "collected")) == 1
    assert client_spans(client_hooks) == []
    conn.sock.close()  # the socket only: the connection object is simply dropped
    alive = weakref.ref(conn)
    del conn
    gc.collect()
    assert alive() is None  # the pending span did not keep the connection alive
    [span] = client_spans(client_hooks)
    assert span.end_time is not None and "http.response.status_code" not in span.attributes
    assert_propagated(span, peer.requests("collected")[0])


def test_http_client_finished_requests_leave_no_finalizer(client_hooks, peer):
    import weakref

    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        before = len(weakref.finalize._registry)
        for _ in range(5):
            conn.request("GET", "/ok?case=finalizers")
            conn.getresponse().read()
        assert len(weakref.finalize._registry) == before
    finally:
        conn.close()
    assert len(client_spans(client_hooks)) == 5


def test_http_client_absolute_url_to_a_proxy(client_hooks, peer):
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.request("GET", "http://user:password@example.invalid:8080/ok?case=abs&token=secret")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
    finally:
        conn.close()
    [span] = client_spans(client_hooks)
    assert span.attributes["url.full"] == "http://example.invalid:8080/ok?case=abs&token=REDACTED"
    assert (span.attributes["server.address"], span.attributes["server.port"]) == ("example.invalid", 8080)


@pytest.mark.parametrize(
    ("make", "target", "expected"),
    [
        (lambda: http.client.HTTPConnection("example.com"), "/a?b=c", "http://example.com/a?b=c"),
        (lambda: http.client.HTTPConnection("example.com", 8080), "", "http://example.com:8080/"),
        (lambda: http.client.HTTPConnection("[::1]:8080"), "/", "http://[::1]:8080/"),
        (lambda: http.client.HTTPSConnection("example.com"), "/", "https://example.com/"),
        (lambda: http.client.HTTPSConnection("example.com", 80), "/", "https://example.com:80/"),
    ],
)
def test_http_client_url_from_the_connection(make, target, expected):
    assert http_client_hook._url(make(), target) == expected


def test_http_client_url_through_a_tunnel_is_the_target():
    conn = http.client.HTTPSConnection("proxy.example", 3128)
    conn.set_tunnel("target.example", 8443)
    assert http_client_hook._url(conn, "/x") == "https://target.example:8443/x"


def get_with_x_app(peer, case: str) -> None:
    """GET the peer's /ok twice: with urlopen (X-App: 1), then http.client directly (X-App: 2)."""
    urlopen(urllib.request.Request(peer.url("/ok", case), headers={"X-App": "1"}))
    conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=5)
    try:
        conn.request("GET", f"/ok?case={case}", headers={"X-App": "2"})
        conn.getresponse().read()
    finally:
        conn.close()


def test_named_headers_are_captured(client_hooks, peer, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "X-App,traceparent")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "X-Peer,Content-Type")
    get_with_x_app(peer, "capture")
    spans = client_spans(client_hooks)
    assert len(spans) == 2
    for span, app, got in zip(spans, ("1", "2"), peer.requests("capture")):
        assert span.attributes["http.request.header.x-app"] == (app,)
        assert span.attributes["http.request.header.traceparent"] == tuple(got.headers["traceparent"])
        assert span.attributes["http.response.header.x-peer"] == ("yes",)
        assert span.attributes["http.response.header.content-type"] == ("text/plain",)


def test_request_headers_are_captured_without_propagation_headers(client_hooks, peer, monkeypatch):
    # OTEL_PROPAGATORS=none: nothing is injected, the named headers are still captured.
    from opentelemetry import propagate
    from opentelemetry.propagators.composite import CompositePropagator

    from autotrace import api

    api.load()  # installs the agent's propagators: the test's must come after (run alone, it came first)
    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", CompositePropagator([]))
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "X-App")
    get_with_x_app(peer, "none")
    spans = client_spans(client_hooks)
    assert [s.attributes.get("http.request.header.x-app") for s in spans] == [("1",), ("2",)]
    assert [r.header("traceparent") for r in peer.requests("none")] == [None, None]


def test_urlopen_headers_are_written_into_the_head_by_http_client_the_request_untouched(client_hooks, peer, parent):
    class OwnPutrequest(http.client.HTTPConnection):
        def putrequest(self, method, url, *args, **kwargs):  # not http.client's: its own way
            return http.client.HTTPConnection.putrequest(self, method, url, *args, **kwargs)

    assert http_client_hook.class_takes_head_lines(http.client.HTTPConnection)
    assert not http_client_hook.class_takes_head_lines(OwnPutrequest)

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(OwnPutrequest, req)

    req = urllib.request.Request(peer.url("/ok", "head"), headers={"X-App": "1"})
    for opener in (urllib.request.build_opener(), urllib.request.build_opener(Handler)):
        with opener.open(req, timeout=5) as response:
            assert response.status == 200
        assert req.headers == {"X-app": "1"}
        assert set(req.unredirected_hdrs) == {"Host", "User-agent"}  # urllib's own
    spans = client_spans(client_hooks)
    got = peer.requests("head")
    assert len(spans) == len(got) == 2
    for span, one in zip(spans, got):
        assert_propagated(span, one, parent)
