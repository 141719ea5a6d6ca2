from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from dbservers import mariadb_server, postgres_server, rabbitmq_server, redis_cluster_server, redis_server  # noqa: F401  (session fixtures)
from otlp_receiver import OTLPReceiver, Silent


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A fresh OTLP/gRPC + OTLP/HTTP receiver on loopback, stopped after the test."""
    with OTLPReceiver() as receiver:
        yield receiver


@pytest.fixture
def silent() -> Iterator[Silent]:
    """A collector's port that accepts connections and never answers, closed after the test."""
    listener = Silent()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (key, cert); the cert is its own CA."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the collector's certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    return key, cert


@pytest.fixture
def tls_receiver(certificate: tuple[Path, Path]):
    """The test receiver's OTLP/gRPC and OTLP/HTTP services, each on a TLS port of its own."""
    import ssl
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
    from otlp_receiver import _HTTPHandler, _HTTPServer, _TraceServicer

    key, cert = certificate
    receiver = OTLPReceiver()  # not started: it records what the TLS servers receive
    pool = ThreadPoolExecutor(max_workers=4)
    grpc_server = grpc.server(pool)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(receiver), grpc_server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    grpc_port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    http_server = _HTTPServer(("127.0.0.1", 0), _HTTPHandler)
    http_server.receiver = receiver
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
    thread = threading.Thread(target=http_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver, grpc_port, http_server.server_address[1]
    finally:
        http_server.shutdown()
        http_server.server_close()
        thread.join(5)
        grpc_server.stop(1).wait(3)
        pool.shutdown(wait=True)
