"""What the outgoing-request tests check, written once (tests/test_client_*.py)."""

from __future__ import annotations

import socket
import time

from opentelemetry.trace import SpanKind, StatusCode
from ports import free_port

HAND_TRACEPARENT = "00-11111111111111111111111111111111-2222222222222222-01"


def client_spans(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]


def traceparent_ids(value: str) -> tuple[int, int]:
    """(trace id, parent id) of a ``traceparent`` value."""
    version, trace_id, span_id, flags = value.split("-")
    return int(trace_id, 16), int(span_id, 16)


def assert_propagated(span, received, parent=None) -> None:
    """The peer got exactly one traceparent: the span's; the span is the parent's child."""
    [value] = received.headers["traceparent"]
    assert traceparent_ids(value) == (span.context.trace_id, span.context.span_id)
    if parent is not None:
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id


def assert_redirect_hops(hops, received, parent, peer, app_traceparent: str) -> None:
    """Four hops of ``/redirect/2`` (302, 302, 302, 200): sibling CLIENT spans under ``parent``,
    each request carrying its own hop's ``traceparent`` (one: not the app's, not an earlier
    hop's), numbered by ``http.request.resend_count``, none ending after the next starts."""
    by_id = {span.context.span_id: span for span in hops}
    seen = set()
    for index, request in enumerate(received):
        [value] = request.headers["traceparent"]
        assert value not in seen and value != app_traceparent
        seen.add(value)
        trace_id, span_id = traceparent_ids(value)
        span = by_id[span_id]
        assert trace_id == parent.get_span_context().trace_id
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["url.full"] == peer.base + request.path + "?case=redir"
        assert span.attributes.get("http.request.resend_count") == (index or None)
        assert span.attributes["http.response.status_code"] == (302 if index < 3 else 200)
        assert span.status.status_code == StatusCode.UNSET
    ordered = sorted(hops, key=lambda s: s.start_time)
    assert [s.attributes.get("http.request.resend_count", 0) for s in ordered] == [0, 1, 2, 3]
    for first, second in zip(ordered, ordered[1:]):
        assert first.end_time <= second.start_time


def assert_failed(span, error_type: str) -> None:
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == error_type
    assert [event.name for event in span.events] == ["exception"]
    assert "http.response.status_code" not in span.attributes


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused."""
    return free_port()


def received(peer, case: str, count: int = 1, timeout: float = 5.0) -> list:
    """The requests the peer recorded, once there are ``count`` (it records them in its own thread)."""
    deadline = time.monotonic() + timeout
    while len(peer.requests(case)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return peer.requests(case)


def without_date(headers) -> list:
    """Header pairs (a list of pairs, or a mapping) without Date."""
    pairs = headers.items() if hasattr(headers, "items") else headers
    return [(name, value) for name, value in pairs if name.lower() != "date"]


def assert_get_200(span, url_full: str, port: int) -> None:
    """A GET answered 200 by the loopback peer: the stable HTTP client attributes, exactly."""
    assert span.name == "GET"
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "url.full": url_full,
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }
    assert span.status.status_code == StatusCode.UNSET


INVALID_HOST = "name.invalid"


def fail_dns(monkeypatch) -> str:
    """Resolving INVALID_HOST fails as an unknown name does, with no query leaving the machine.

    Every client resolves through ``socket.getaddrinfo`` (asyncio's resolver too), so the
    library maps the ``gaierror`` to its own exception exactly as for a real DNS failure.
    Returns the host name.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host in (INVALID_HOST, INVALID_HOST.encode()):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return INVALID_HOST


def tls_url(peer, path: str = "/ok") -> str:
    """An ``https://`` URL of the plain-HTTP peer: the TLS handshake fails (wrong version number)."""
    return f"https://127.0.0.1:{peer.port}{path}"


# What test_named_headers_are_captured sets, for requests and httpx alike.
CAPTURE_REQUEST = "X-App,traceparent,Authorization"
CAPTURE_RESPONSE = "X-Peer,Content-Length"
CAPTURED_REQUEST_HEADERS = {"X-App": "1", "Authorization": "Bearer s3cret"}


def capture_named_headers(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", CAPTURE_REQUEST)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", CAPTURE_RESPONSE)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "authorization")


def assert_named_headers_captured(span, received) -> None:
    """Exactly the named headers, as sent and answered (CAPTURED_REQUEST_HEADERS); the sanitized one redacted."""
    assert span.attributes["http.request.header.x-app"] == ("1",)
    assert span.attributes["http.request.header.traceparent"] == tuple(received.headers["traceparent"])
    assert span.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    assert span.attributes["http.response.header.x-peer"] == ("yes",)
    assert span.attributes["http.response.header.content-length"] == ("3",)
    named = ("x-app", "traceparent", "authorization", "x-peer", "content-length")
    assert not [k for k in span.attributes if ".header." in k and k.rpartition(".")[2] not in named]
