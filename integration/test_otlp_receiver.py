"""Self-tests for the OTLP test receiver, driven by the OpenTelemetry SDK directly (no agent)."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otlp_receiver import Fault, OTLPReceiver, ReceivedSpan
from ports import free_port

SERVICE = "receiver-selftest"


def _emit(exporter: SpanExporter) -> tuple[str, str, str]:
    """Send a SERVER parent with a CLIENT child through a local provider; return (trace, parent, child) ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE, "deployment.environment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("selftest.scope")
    try:
        with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
            with tracer.start_as_current_span(
                "child",
                kind=SpanKind.CLIENT,
                attributes={
                    "str": "v",
                    "int": 7,
                    "float": 1.5,
                    "bool": True,
                    "list": ["a", "b"],
                },
            ) as child:
                child.add_event("something-happened")
                child.set_status(Status(StatusCode.ERROR, "boom"))
        ctx_p, ctx_c = parent.get_span_context(), child.get_span_context()
        return f"{ctx_p.trace_id:032x}", f"{ctx_p.span_id:016x}", f"{ctx_c.span_id:016x}"
    finally:
        provider.shutdown()


def _by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans}


def _assert_tree(spans: list[ReceivedSpan], ids: tuple[str, str, str], protocol: str) -> None:
    trace_id, parent_id, child_id = ids
    got = _by_name(spans)
    assert set(got) == {"parent", "child"}
    parent, child = got["parent"], got["child"]

    assert parent.trace_id == child.trace_id == trace_id
    assert len(trace_id) == 32 and trace_id == trace_id.lower()
    assert parent.span_id == parent_id and child.span_id == child_id
    assert parent.parent_span_id == "" and child.parent_span_id == parent_id
    assert parent.kind == 2 and child.kind == 3  # SERVER, CLIENT
    assert child.attributes == {"str": "v", "int": 7, "float": 1.5, "bool": True, "list": ["a", "b"]}
    assert parent.attributes == {}
    assert child.status_code == 2 and parent.status_code == 0
    assert child.events == ("something-happened",) and parent.events == ()
    for span in (parent, child):
        assert span.resource["service.name"] == SERVICE
        assert span.resource["deployment.environment"] == "test"
        assert span.scope == "selftest.scope"
        assert span.protocol == protocol
        assert span.headers.get("x-selftest") == "yes"
        assert all(k == k.lower() for k in span.headers)


def test_grpc_export(otlp_receiver: OTLPReceiver) -> None:
    exporter = GrpcSpanExporter(endpoint=otlp_receiver.grpc_endpoint, insecure=True, headers={"x-selftest": "yes"})
    ids = _emit(exporter)
    _assert_tree(otlp_receiver.wait_for_spans(2, timeout=10), ids, "grpc")
    # SimpleSpanProcessor exports each span on end(): child first, then parent.
    assert otlp_receiver.export_requests() == ["grpc", "grpc"]


def test_http_export(otlp_receiver: OTLPReceiver) -> None:
    exporter = HttpSpanExporter(endpoint=otlp_receiver.http_endpoint + "/v1/traces", headers={"X-Selftest": "yes"})
    ids = _emit(exporter)
    spans = otlp_receiver.wait_for_spans(2, timeout=10)
    _assert_tree(spans, ids, "http")
    assert otlp_receiver.export_requests() == ["http", "http"]
    assert spans[0].headers["content-type"] == "application/x-protobuf"
    assert "content-encoding" not in spans[0].headers


@pytest.mark.parametrize("compression", [HttpCompression.Gzip, HttpCompression.Deflate])
def test_http_compressed_export(otlp_receiver: OTLPReceiver, compression: HttpCompression) -> None:
    exporter = HttpSpanExporter(
        endpoint=otlp_receiver.http_endpoint + "/v1/traces",
        headers={"x-selftest": "yes"},
        compression=compression,
    )
    ids = _emit(exporter)
    spans = otlp_receiver.wait_for_spans(2, timeout=10)
    _assert_tree(spans, ids, "http")
    assert {s.headers["content-encoding"] for s in spans} == {compression.value}


def test_grpc_gzip_export(otlp_receiver: OTLPReceiver) -> None:
    exporter = GrpcSpanExporter(
        endpoint=otlp_receiver.grpc_endpoint,
        insecure=True,
        headers={"x-selftest": "yes"},
        compression=grpc.Compression.Gzip,
    )
    ids = _emit(exporter)
    _assert_tree(otlp_receiver.wait_for_spans(2, timeout=10), ids, "grpc")


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_env_points_default_exporters_here(
    otlp_receiver: OTLPReceiver, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    env = otlp_receiver.env(protocol)
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == protocol
    assert env["OTEL_TRACES_EXPORTER"] == "otlp" and env["OTEL_BSP_SCHEDULE_DELAY"] == "100"
    for key in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_INSECURE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-selftest=yes")
    # Exporters configured only from the environment (no endpoint argument).
    exporter = GrpcSpanExporter() if protocol == "grpc" else HttpSpanExporter()
    ids = _emit(exporter)
    _assert_tree(otlp_receiver.wait_for_spans(2, timeout=10), ids, "http" if protocol != "grpc" else "grpc")


def test_wait_for_spans_times_out_quickly(otlp_receiver: OTLPReceiver) -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"0 arrived"):
        otlp_receiver.wait_for_spans(1, timeout=0.5)
    assert time.monotonic() - started < 2.0


def test_wait_for_spans_predicate_and_clear(otlp_receiver: OTLPReceiver) -> None:
    _emit(GrpcSpanExporter(endpoint=otlp_receiver.grpc_endpoint, insecure=True))
    children = otlp_receiver.wait_for_spans(1, timeout=10, predicate=lambda s: s.name == "child")
    assert [s.name for s in children] == ["child"]
    with pytest.raises(AssertionError, match=r"'parent'"):  # the message lists what did arrive
        otlp_receiver.wait_for_spans(1, timeout=0.3, predicate=lambda s: s.name == "nope")
    otlp_receiver.clear()
    assert otlp_receiver.spans() == [] and otlp_receiver.export_requests() == []


def test_wait_for_spans_wakes_on_arrival(otlp_receiver: OTLPReceiver) -> None:
    exporter = HttpSpanExporter(endpoint=otlp_receiver.http_endpoint + "/v1/traces")
    timer = threading.Timer(0.2, _emit, args=(exporter,))
    timer.start()
    try:
        spans = otlp_receiver.wait_for_spans(2, timeout=10)
    finally:
        timer.join(10)
    assert {s.name for s in spans} == {"parent", "child"}


def _post(url: str, body: bytes, content_type: str) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            payload = resp.read()
            assert resp.headers["Content-Type"] == "application/x-protobuf"
            trace_service_pb2.ExportTraceServiceResponse.FromString(payload)
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_http_status_codes(otlp_receiver: OTLPReceiver) -> None:
    empty = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    base = otlp_receiver.http_endpoint
    assert _post(base + "/v1/traces", empty, "application/x-protobuf") == 200
    assert _post(base + "/v1/metrics", empty, "application/x-protobuf") == 404
    assert _post(base + "/v1/traces", b"{}", "application/json") == 415
    assert _post(base + "/v1/traces", b"\xff\xff\xff", "application/x-protobuf") == 400
    assert otlp_receiver.export_requests() == ["http"] and otlp_receiver.spans() == []


def _refused(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_free_port_has_no_listener() -> None:
    assert _refused(free_port())


def test_stop_releases_threads_and_ports() -> None:
    before = set(threading.enumerate())
    receiver = OTLPReceiver().start()
    _emit(GrpcSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True))
    _emit(HttpSpanExporter(endpoint=receiver.http_endpoint + "/v1/traces"))
    receiver.wait_for_spans(4, timeout=10)
    ports = [int(ep.rsplit(":", 1)[1]) for ep in (receiver.grpc_endpoint, receiver.http_endpoint)]

    started = time.monotonic()
    receiver.stop()
    receiver.stop()  # idempotent
    assert time.monotonic() - started < 5

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        if not leaked:
            break
        time.sleep(0.05)
    assert leaked == [], f"threads still alive after stop(): {leaked}"
    assert all(_refused(port) for port in ports)
    for port in ports:  # and the ports can be bound again
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


# -- fault modes ---------------------------------------------------------------------------


def _grpc_export(receiver: OTLPReceiver, timeout: float = 5) -> grpc.StatusCode:
    """One empty export over gRPC straight through a stub (no exporter, no retry): its status."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    with grpc.insecure_channel(receiver.grpc_endpoint.removeprefix("http://")) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        try:
            stub.Export(trace_service_pb2.ExportTraceServiceRequest(), timeout=timeout)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def _http_export(receiver: OTLPReceiver, timeout: float = 5) -> int | str:
    """One empty export over HTTP: its status, or the kind of failure."""
    empty = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    req = urllib.request.Request(receiver.http_endpoint + "/v1/traces", data=empty, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        from google.rpc import status_pb2

        assert err.headers["Content-Type"] == "application/x-protobuf"
        status = status_pb2.Status.FromString(err.read())
        assert status.code in (8, 14) and "on purpose" in status.message  # the gRPC code named, the message
        return int(err.code)
    except urllib.error.URLError as err:
        return "refused" if isinstance(err.reason, ConnectionRefusedError) else repr(err.reason)
    except (TimeoutError, socket.timeout):
        return "timeout"
    except (ConnectionError, http.client.RemoteDisconnected):
        return "closed"


def test_error_mode_answers_the_status_and_records_nothing() -> None:
    with OTLPReceiver(fault=Fault("error", http_status=429, grpc_code="RESOURCE_EXHAUSTED")) as receiver:
        assert _http_export(receiver) == 429
        assert _grpc_export(receiver) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert receiver.faulted_requests() == [("http", "429"), ("grpc", "RESOURCE_EXHAUSTED")]
        assert receiver.export_requests() == []
        receiver.set_fault(Fault("error"))  # the defaults: 503, UNAVAILABLE
        assert _http_export(receiver) == 503 and _grpc_export(receiver) == grpc.StatusCode.UNAVAILABLE
        receiver.up()
        assert _http_export(receiver) == 200 and _grpc_export(receiver) == grpc.StatusCode.OK
        assert receiver.export_requests() == ["http", "grpc"]


def test_refuse_keeps_the_ports_and_up_listens_on_them_again() -> None:
    with OTLPReceiver(fault=Fault("refuse")) as receiver:
        ports = receiver.port("grpc"), receiver.port("http")
        assert all(_refused(port) for port in ports)
        assert _http_export(receiver) == "refused"
        assert _grpc_export(receiver, timeout=2) == grpc.StatusCode.UNAVAILABLE
        receiver.up()
        assert (receiver.port("grpc"), receiver.port("http")) == ports
        assert _http_export(receiver) == 200 and _grpc_export(receiver) == grpc.StatusCode.OK
        receiver.down()
        assert _http_export(receiver) == "refused"
    assert all(_refused(port) for port in ports)


def test_down_then_up_comes_back_by_itself() -> None:
    with OTLPReceiver(fault=Fault("down-then-up", seconds=0.5)) as receiver:
        assert _http_export(receiver) == "refused"
        deadline = time.monotonic() + 10
        while _refused(receiver.port("http")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _http_export(receiver) == 200 and receiver.fault.mode == "ok"


def test_hang_holds_the_export_until_released() -> None:
    with OTLPReceiver(fault=Fault("hang")) as receiver:
        assert _http_export(receiver, timeout=0.5) == "timeout"
        assert _grpc_export(receiver, timeout=0.5) == grpc.StatusCode.DEADLINE_EXCEEDED
        waiting = ThreadPoolExecutor(max_workers=2)
        held = [waiting.submit(_http_export, receiver, 10), waiting.submit(_grpc_export, receiver, 10)]
        receiver.wait_for_faulted(4, timeout=5)
        started = time.monotonic()
        receiver.up()  # released: no answer, the connection closed; a gRPC export fails
        assert held[0].result(5) == "closed" and held[1].result(5) == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 3
        waiting.shutdown()
        assert receiver.export_requests() == [] and receiver.spans() == []
        assert _http_export(receiver) == 200
    started = time.monotonic()
    with OTLPReceiver(fault=Fault("hang")) as receiver:  # stop() releases a hanging export
        pending = threading.Thread(target=_grpc_export, args=(receiver, 30), daemon=True)
        pending.start()
        receiver.wait_for_faulted(1, timeout=5)
    pending.join(5)
    assert not pending.is_alive() and time.monotonic() - started < 6


def test_slow_answers_late_then_records() -> None:
    with OTLPReceiver(fault=Fault("slow", seconds=0.4)) as receiver:
        started = time.monotonic()
        assert _http_export(receiver) == 200 and _grpc_export(receiver) == grpc.StatusCode.OK
        assert time.monotonic() - started >= 0.8
        assert receiver.export_requests() == ["http", "grpc"] and receiver.faulted_requests() == []


@pytest.mark.parametrize("bad", [dict(mode="flaky"), dict(mode="slow", seconds=-1), dict(http_status=200),
                                 dict(grpc_code="OK"), dict(grpc_code="NOPE")])
def test_a_wrong_fault_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        Fault(**bad)


def test_the_command_line_collector(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    grpc_port, http_port = free_port(), free_port()
    script = Path(__file__).resolve().parent / "otlp_receiver.py"
    command = [sys.executable, str(script), "--mode", "error", "--http-status", "503",
               "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            first = process.stdout.readline()
            assert first.startswith(f"OTLP/gRPC on http://127.0.0.1:{grpc_port}, OTLP/HTTP on "
                                    f"http://127.0.0.1:{http_port}/v1/traces; mode error"), first
            receiver = OTLPReceiver()  # not started: only its endpoints, for the helpers above
            receiver.grpc_endpoint, receiver.http_endpoint = (f"http://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")
            assert _http_export(receiver) == 503 and _grpc_export(receiver) == grpc.StatusCode.UNAVAILABLE
        finally:
            process.terminate()
            out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out.splitlines()[-1] == "stopped: 0 spans (0 distinct span ids, 0 traces) in 0 exports received, 2 exports answered by the fault", out
    bad = subprocess.run([sys.executable, str(script), "--mode", "error", "--http-status", "200"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "http_status must be an error status" in bad.stderr
