"""Detection of a running ``autotrace view`` (:mod:`autotrace.viewer_probe`) against a stub."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from autotrace import viewer_probe
from ports import free_port
from viewer_stub import UI, VERSION, StubViewer


def test_a_viewer_is_found() -> None:
    with StubViewer() as stub:
        viewer = viewer_probe.probe("http", "127.0.0.1", stub.port, 1.0)
    assert viewer is not None
    assert (viewer.base, viewer.version, viewer.ui) == (stub.url, VERSION, UI)


def test_localhost_is_asked_at_its_address() -> None:
    with StubViewer() as stub:
        viewer = viewer_probe.viewer_at("http/protobuf", f"http://localhost:{stub.port}/v1/traces")
    assert viewer is not None and viewer.base == f"http://localhost:{stub.port}"


def test_nothing_listening_costs_nothing() -> None:
    port = free_port()
    start = time.monotonic()
    assert viewer_probe.viewer_at("http/protobuf", f"http://127.0.0.1:{port}/v1/traces") is None
    assert time.monotonic() - start < 0.1


@pytest.mark.parametrize("mode", ["404", "other"])
def test_another_server_is_not_a_viewer(mode: str) -> None:
    with StubViewer(mode) as stub:
        assert viewer_probe.probe("http", "127.0.0.1", stub.port, 1.0) is None


def test_a_slow_server_is_given_up_within_the_bound() -> None:
    with StubViewer("slow", delay=1.0) as stub:
        start = time.monotonic()
        assert viewer_probe.viewer_at("http/protobuf", f"{stub.url}/v1/traces") is None
        elapsed = time.monotonic() - start
        assert stub.marker_requests == 1  # it was asked, and not waited for
    assert elapsed < viewer_probe.LAUNCHER_TIMEOUT_S + 0.1


def test_a_server_that_drips_bytes_is_given_up_within_the_bound() -> None:
    listener = socket.create_server(("127.0.0.1", free_port()))
    stop = threading.Event()

    def drip() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(1024)
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.02):
                connection.sendall(b"X-Pad: 1\r\n")

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        assert viewer_probe.probe("http", "127.0.0.1", listener.getsockname()[1], 0.1) is None
        assert time.monotonic() - start < 0.2
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_only_loopback_http_endpoints_are_asked(monkeypatch) -> None:
    asked = []
    monkeypatch.setattr(viewer_probe, "probe", lambda *args: asked.append(args))
    assert viewer_probe.viewer_at("http/protobuf", "http://collector.example:4318/v1/traces") is None
    assert viewer_probe.viewer_at("http/protobuf", "http://10.0.0.5:4318/v1/traces") is None
    assert viewer_probe.viewer_at("http/protobuf", "https://localhost:4318/v1/traces") is None
    assert viewer_probe.viewer_at("grpc", "http://localhost:4317") is None
    assert asked == []
    viewer_probe.viewer_at("http/protobuf", "http://[::1]:4318/v1/traces")
    assert asked == [("http", "::1", 4318, viewer_probe.LAUNCHER_TIMEOUT_S)]


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("app.localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("127.0.0.1.example.com", False),
        ("128.0.0.1", False),
        ("0.0.0.0", False),
        ("collector", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert viewer_probe.is_loopback(host) is loopback


def test_startup_line() -> None:
    with StubViewer() as stub:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": stub.url}
        assert viewer_probe.startup_line(env) == f"spans go to autotrace view at {stub.url}; open {UI}"
        assert viewer_probe.startup_line({**env, "OTEL_TRACES_EXPORTER": "console"}) is None
        assert viewer_probe.startup_line({**env, "OTEL_TRACES_EXPORTER": "console,otlp"}) is not None
        assert viewer_probe.startup_line({**env, "OTEL_LOG_LEVEL": "warn"}) is None
        assert viewer_probe.startup_line({**env, "OTEL_SDK_DISABLED": "true"}) is None
        assert viewer_probe.startup_line({**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None


def test_the_marker_must_be_well_formed() -> None:
    def reply(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
        return b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body

    good = b'{"service": "autotrace-view", "version": "1.2", "ui": "http://127.0.0.1:16686"}'
    assert viewer_probe._marker(reply(good)) == ("1.2", "http://127.0.0.1:16686")
    assert viewer_probe._marker(reply(good, b"500 Oops")) is None
    assert viewer_probe._marker(reply(b"not json")) is None
    assert viewer_probe._marker(reply(b'["autotrace-view"]')) is None
    assert viewer_probe._marker(reply(good.replace(b"http://", b"javascript:"))) is None
    assert viewer_probe._marker(reply(good.replace(b"1.2", b"1.2\\u001b[31m"))) == ("1.2[31m", "http://127.0.0.1:16686")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(good) + good + b"\r\n0\r\n\r\n"
    assert viewer_probe._marker(chunked) == ("1.2", "http://127.0.0.1:16686")


def test_the_doctor_names_a_viewer() -> None:
    from autotrace.doctor.check import OK
    from autotrace.doctor.endpoint import Probe, Target, classify

    viewer = viewer_probe.Viewer("http://localhost:4318", "1.2", UI)
    target = Target("http://localhost:4318/v1/traces")
    check = classify("http/protobuf", target, Probe(accepted=True, viewer=viewer))
    assert check.status == OK
    assert f"is autotrace view 1.2 (UI {UI})" in check.message
    plain = classify("http/protobuf", target, Probe(accepted=True))
    assert "autotrace view" not in plain.message and "speaks OTLP/HTTP" in plain.message
