"""The OTLP receivers and the UI server of the viewer, in process, on loopback ports."""

from __future__ import annotations

import gzip
import http.client
import json
import threading

import pytest
from ports import free_port
from view_checks import body, new_trace_id, protobuf, span

from autotrace.view.receiver import MAX_BODY, GrpcReceiver, gunzip, http_receiver
from autotrace.view.server import CSP, ui_server
from autotrace.view.store import Store, TraceQuery


@pytest.fixture
def viewer():
    store = Store(":memory:")
    servers = [http_receiver("127.0.0.1", free_port(), store, "http://ui"), ui_server("127.0.0.1", free_port(), store, "http://ui")]
    for server in servers:
        server.start()
    yield store, servers[0].server_port, servers[1].server_port
    for server in servers:
        server.stop()
    store.close()


def post(port: int, data: bytes, content_type: str = "application/x-protobuf", path: str = "/v1/traces", **headers):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, data, {"Content-Type": content_type, **headers})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def get(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def stored(store: Store) -> int:
    return store.search(TraceQuery())[1]


def test_protobuf_json_and_gzip_are_stored_before_the_answer(viewer):
    store, otlp, _ = viewer
    assert post(otlp, protobuf([span(new_trace_id())])) == (200, "application/x-protobuf", b"")
    assert stored(store) == 1
    assert post(otlp, body([span(new_trace_id())]), "application/json; charset=utf-8") == (200, "application/json", b"{}")
    assert post(otlp, gzip.compress(protobuf([span(new_trace_id())])), **{"Content-Encoding": "gzip"})[0] == 200
    assert stored(store) == 3


@pytest.mark.parametrize(
    "data, content_type, headers, status",
    [
        (b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf", {}, 400),
        (b"{nope", "application/json", {}, 400),
        (b"{}", "text/plain", {}, 415),
        (b"{}", "application/json", {"Content-Encoding": "br"}, 415),
        (b"not gzip", "application/json", {"Content-Encoding": "gzip"}, 400),
        (gzip.compress(b"\0" * (MAX_BODY + 1)), "application/x-protobuf", {"Content-Encoding": "gzip"}, 413),
        (body([span("ab" * 8)]), "application/json", {}, 400),
        (protobuf([span("ab" * 16, start_ns=2**63)]), "application/x-protobuf", {}, 400),
    ],
    ids=["protobuf", "json", "content-type", "encoding", "not-gzip", "gzip-bomb", "id-length", "time-past-2**63"],
)
def test_bad_requests_are_refused_and_good_ones_go_on(viewer, data, content_type, headers, status, capsys):
    store, otlp, _ = viewer
    results = {}
    good = threading.Thread(target=lambda: results.update(good=post(otlp, protobuf([span(new_trace_id())]))[0]))
    good.start()
    code, _, answer = post(otlp, data, content_type, **headers)
    good.join(10)
    assert code == status and results["good"] == 200
    assert stored(store) == 1
    if status != 415 or "Content-Encoding" not in headers:
        assert "refused a batch" in capsys.readouterr().err
    assert post(otlp, b"x" * 10, "application/x-protobuf", path="/v1/logs")[0] == 404


def test_an_oversized_body_is_refused_unread(viewer):
    _, otlp, _ = viewer
    connection = http.client.HTTPConnection("127.0.0.1", otlp, timeout=10)
    connection.putrequest("POST", "/v1/traces")
    connection.putheader("Content-Type", "application/x-protobuf")
    connection.putheader("Content-Length", str(MAX_BODY + 1))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()


def test_gunzip_is_bounded():
    assert gunzip(gzip.compress(b"abc" * 1000)) == b"abc" * 1000
    with pytest.raises(ValueError):
        gunzip(gzip.compress(b"a" * 2000), limit=1000)


def test_grpc_stores_and_refuses_bad_data():
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    store = Store(":memory:")
    receiver = GrpcReceiver("127.0.0.1", free_port(), store)
    receiver.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(protobuf([span(new_trace_id())]))
            stub.Export(request, timeout=10)
            assert stored(store) == 1
            bad = trace_service_pb2.ExportTraceServiceRequest()
            bad.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 3, span_id=b"\x02" * 8)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Export(bad, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            raw = channel.unary_unary(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                request_serializer=None, response_deserializer=None,
            )
            with pytest.raises(grpc.RpcError) as caught:
                raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert stored(store) == 1
    finally:
        receiver.stop()
        store.close()


def test_a_grpc_port_in_use_is_an_os_error():
    store = Store(":memory:")
    first = GrpcReceiver("127.0.0.1", free_port(), store)
    try:
        with pytest.raises(OSError):
            GrpcReceiver("127.0.0.1", first.port, store)
    finally:
        first.stop()
        store.close()


def test_ui_pages_static_files_api_and_marker(viewer):
    store, otlp, ui = viewer
    for path in ("/", "/search", "/trace/" + "ab" * 16, "/services", "/map"):
        status, headers, page = get(ui, path)
        assert status == 200 and headers["Content-Security-Policy"] == CSP and b"<html" in page.lower()
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert get(ui, "/static/index.html")[0] == 200
    assert get(ui, "/static/../store.py")[0] == 404
    assert get(ui, "/static/nothing.js")[0] == 404
    assert get(ui, "/elsewhere")[0] == 404
    assert json.loads(get(ui, "/api/services")[2])["data"] == []
    for port in (otlp, ui):
        status, headers, marker = get(port, "/autotrace-view")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(marker)["service"] == "autotrace-view" and json.loads(marker)["ui"] == "http://ui"
