"""``autotrace doctor`` as a user runs it, against the real test OTLP receiver."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from agent import AUTOTRACE, clean_env, write
from otlp_receiver import OTLPReceiver
from ports import free_port


def doctor(*options: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    env = clean_env(**extra)
    return subprocess.run(
        [AUTOTRACE, "doctor", "--timeout", "2", *options],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _lines(result: subprocess.CompletedProcess, prefix: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(prefix)]


def test_grpc_receiver_accepts_the_test_span(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor(
        "--service-name", "shop", "--endpoint", otlp_receiver.grpc_endpoint, "--protocol", "grpc", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert any("accepted by" in line for line in _lines(result, "OK   test span")), result.stdout
    assert "OK   endpoint:" in result.stdout
    assert "config service.name: shop (flag --service-name)" in result.stdout
    span = otlp_receiver.wait_for_spans(1, timeout=5)[0]
    assert span.name == "autotrace doctor test span"
    assert span.resource.get("service.name") == "shop"


def test_http_receiver_accepts_the_test_span(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor(cwd=tmp_path, OTEL_SERVICE_NAME="shop", **otlp_receiver.env("http"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result, "OK   test span: accepted by"), result.stdout
    assert "(variable OTEL_EXPORTER_OTLP_ENDPOINT)" in result.stdout
    assert otlp_receiver.wait_for_spans(1, timeout=5)


def test_json_output(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor("--json", cwd=tmp_path, OTEL_SERVICE_NAME="shop", **otlp_receiver.env("http"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == 0 and report["ok"] is True
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["test span"] == "OK" and statuses["endpoint"] == "OK"


def test_closed_port(tmp_path: Path) -> None:
    port = free_port()
    result = doctor("--endpoint", f"http://127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"FAIL endpoint: nothing listens on 127.0.0.1:{port}" in result.stdout, result.stdout


def test_unresolvable_host(tmp_path: Path) -> None:
    result = doctor("--endpoint", "http://no-such-host.invalid:4318", cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL endpoint: cannot resolve host 'no-such-host.invalid'" in result.stdout, result.stdout


def test_grpc_against_the_http_port(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor("--endpoint", otlp_receiver.http_endpoint, "--protocol", "grpc", cwd=tmp_path)
    assert result.returncode == 1
    assert "; fix: this is an OTLP/HTTP port: use --protocol http/protobuf or port 4317" in result.stdout, result.stdout


def test_http_against_the_grpc_port(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor("--endpoint", otlp_receiver.grpc_endpoint, "--protocol", "http/protobuf", cwd=tmp_path)
    assert result.returncode == 1
    assert "; fix: this is an OTLP/gRPC port: use --protocol grpc or port 4318" in result.stdout, result.stdout


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tls_against_the_plain_receiver(otlp_receiver: OTLPReceiver, tmp_path: Path, protocol: str) -> None:
    plain = otlp_receiver.grpc_endpoint if protocol == "grpc" else otlp_receiver.http_endpoint
    endpoint = plain.replace("http://", "https://")
    otlp = "grpc" if protocol == "grpc" else "http/protobuf"
    result = doctor("--endpoint", endpoint, "--protocol", otlp, cwd=tmp_path)
    assert result.returncode == 1
    assert "speaks plain text (no TLS)" in result.stdout, result.stdout
    assert "; fix: use http:// in the endpoint" in result.stdout


def test_traces_endpoint_without_the_path(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor(
        cwd=tmp_path,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.http_endpoint,
    )
    assert result.returncode == 1
    assert "answered 404 Not Found" in result.stdout, result.stdout
    assert "add /v1/traces" in result.stdout


def test_endpoint_with_a_doubled_path(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor(
        cwd=tmp_path,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.http_endpoint + "/v1/traces",
    )
    assert result.returncode == 1
    assert "/v1/traces is doubled" in result.stdout, result.stdout


def test_conflicting_sitecustomize(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    site = tmp_path / "opentelemetry" / "instrumentation" / "auto_instrumentation"
    write(site, "sitecustomize.py", "import opentelemetry.instrumentation.auto_instrumentation\n")
    result = doctor(
        cwd=tmp_path, PYTHONPATH=str(site), OTEL_SERVICE_NAME="shop", **otlp_receiver.env("http")
    )
    assert result.returncode == 1, result.stdout + result.stderr  # it would run after autotrace's
    assert "FAIL conflicts:" in result.stdout and "opentelemetry-instrument's sitecustomize" in result.stdout
    assert "; fix: remove its directory from PYTHONPATH" in result.stdout


def test_console_exporter_warns_and_succeeds(tmp_path: Path) -> None:
    result = doctor("--exporter", "console", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "WARN exporter: exporter console: no span leaves the process" in result.stdout


def test_wrong_value_is_named(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor(cwd=tmp_path, OTEL_TRACES_SAMPLER="sometimes", **otlp_receiver.env("http"))
    assert result.returncode == 0, result.stdout + result.stderr  # the default applies: spans are delivered
    assert "WARN config OTEL_TRACES_SAMPLER: OTEL_TRACES_SAMPLER='sometimes' is not valid" in result.stdout, result.stdout
    assert "autotrace WARNING" not in result.stderr


class _Answer404(__import__("http.server").server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(server) -> None:
    import threading

    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def test_plain_text_against_a_tls_collector(tmp_path: Path) -> None:
    import shutil
    import ssl
    from http.server import ThreadingHTTPServer

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the collector's certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer404)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _serve(server)
    try:
        port = server.server_address[1]
        result = doctor("--endpoint", f"http://127.0.0.1:{port}", "--protocol", "http/protobuf", cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert f"FAIL endpoint: http:// is configured but 127.0.0.1:{port} expects TLS; fix: use https:// in the endpoint" in result.stdout, result.stdout


def _foreign_port_checks(monkeypatch: pytest.MonkeyPatch, what: str, *options: str) -> list:
    """The doctor in process against a real listener registered as ``what``'s port.

    Any free port stands for the real one (9411, 14268), which may be taken on this machine.
    """
    from http.server import ThreadingHTTPServer

    from autotrace import cli
    from autotrace.doctor import endpoint as doctor_endpoint
    from autotrace.doctor import report as doctor_report

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Answer404)
    port = server.server_address[1]
    monkeypatch.setitem(doctor_endpoint.FOREIGN_PORTS, port, what)
    _serve(server)
    try:
        args = cli._parser().parse_args(
            ["doctor", "--timeout", "2", "--endpoint", f"http://127.0.0.1:{port}", *options]
        )
        checks = doctor_report.run_checks(args, clean_env())
    finally:
        server.shutdown()
        server.server_close()
    text = doctor_report.render_text(checks)
    assert doctor_report.exit_code(checks) == 1, text
    return text.splitlines()


def test_a_zipkin_port_where_otlp_was_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _foreign_port_checks(monkeypatch, "Zipkin's port", "--protocol", "http/protobuf")
    endpoint = next(line for line in lines if line.startswith("FAIL endpoint:"))
    assert "is Zipkin's port, not OTLP; fix: point the endpoint at the collector's OTLP port: 4317" in endpoint


def test_a_jaeger_port_where_otlp_was_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    from autotrace.doctor import endpoint as doctor_endpoint

    what = doctor_endpoint.FOREIGN_PORTS[14268]
    lines = _foreign_port_checks(monkeypatch, what, "--protocol", "grpc")
    endpoint = next(line for line in lines if line.startswith("FAIL endpoint:"))
    assert f"is {what}, not OTLP; fix: point the endpoint at the collector's OTLP port" in endpoint, lines


def test_a_refused_jaeger_port_points_at_the_otlp_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # 14268 itself, when nothing listens there
        if probe.connect_ex(("127.0.0.1", 14268)) == 0:
            pytest.fail("something listens on 127.0.0.1:14268; this test needs it closed")
    result = doctor("--endpoint", "http://127.0.0.1:14268", cwd=tmp_path)
    assert result.returncode == 1
    assert "FAIL endpoint: nothing listens on 127.0.0.1:14268 (Jaeger's Thrift-over-HTTP collector port, not OTLP); " \
        "fix: point the endpoint at the collector's OTLP port: 4317" in result.stdout, result.stdout


def test_credentials_never_printed(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    good = otlp_receiver.http_endpoint.replace("http://", "http://user:s3cretpw@")
    closed = f"http://user:s3cretpw@127.0.0.1:{free_port()}/?token=t0psecretq"
    for endpoint, code in ((good, 0), (closed, 1)):
        for extra in ((), ("--json",)):
            result = doctor("--endpoint", endpoint, "--protocol", "http/protobuf", *extra, cwd=tmp_path)
            assert result.returncode == code, result.stdout + result.stderr
            output = result.stdout + result.stderr
            assert "s3cretpw" not in output and "t0psecretq" not in output, output
            assert "<redacted>@127.0.0.1" in output


def test_insecure_false_against_a_plain_grpc_receiver(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor(
        "--endpoint", otlp_receiver.grpc_endpoint, "--protocol", "grpc", cwd=tmp_path,
        OTEL_EXPORTER_OTLP_INSECURE="false",
    )
    assert result.returncode == 1, result.stdout
    endpoint = _lines(result, "FAIL endpoint:")
    assert endpoint and "OTEL_EXPORTER_OTLP_INSECURE=false asks for TLS" in endpoint[0], result.stdout
    assert "; fix: set OTEL_EXPORTER_OTLP_INSECURE=true" in endpoint[0]
    assert "Handshake failed" not in result.stderr, result.stderr


def test_an_invalid_protocol_is_shown_as_rejected(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    env = {**otlp_receiver.env("http"), "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}
    result = doctor(cwd=tmp_path, **env)
    assert "WARN config protocol: http/protobuf (default (OTEL_EXPORTER_OTLP_PROTOCOL='thrift' was rejected))" \
        in result.stdout, result.stdout


def test_no_exporter_fails(tmp_path: Path) -> None:
    result = doctor("--exporter", "none", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "FAIL exporter: no exporter: spans are dropped (OTEL_TRACES_EXPORTER=none); fix:" in result.stdout


@pytest.mark.parametrize("value", ["inf", "-1", "nan"])
def test_a_bad_timeout_is_refused(tmp_path: Path, value: str) -> None:
    result = subprocess.run(
        [AUTOTRACE, "doctor", "--timeout", value], cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "--timeout" in result.stderr and "finite number of seconds above 0" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_interpreter_is_inspected(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    import sys

    base = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "other-env"
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60, capture_output=True)
    python = venv / "bin" / "python"
    app = write(tmp_path, "shop.py", "import flask\n")
    result = doctor("--", str(python), str(app), cwd=tmp_path, **otlp_receiver.env("http"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK   interpreter: libraries and conflicts checked in the command's Python {python}" in result.stdout
    not_installed = _lines(result, "OK   libraries: not installed:")
    assert not_installed and "flask" in not_installed[0], result.stdout  # flask is in the doctor's own venv only
    assert "OK   service name: shop (derived" in result.stdout
    span = otlp_receiver.wait_for_spans(1, timeout=5)[0]
    assert span.resource.get("service.name") == "shop"  # the derived name, not autotrace-doctor


def test_debug_reports_each_hook_applied_with_its_library_version(tmp_path: Path) -> None:
    from importlib import metadata

    from agent import PYTHON

    app = write(tmp_path, "app.py", "import flask\nprint('ready')\n")
    result = subprocess.run(
        [AUTOTRACE, "run", "--debug", "--exporter", "console", PYTHON, str(app)],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    version = metadata.version("flask")
    assert f"hook flask applied to flask.app (flask {version})" in result.stderr, result.stderr


# -- TLS collectors: a real OTLP receiver behind TLS, gRPC and HTTP ----------------------


def _trusting(cert: Path, **extra: str) -> dict[str, str]:
    """The CA given as the OTLP exporters read it, and no requests-wide bundle overriding it."""
    return {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(cert), "REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "", **extra}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_tls_receiver_accepts_the_test_span(tls_receiver, certificate, tmp_path: Path, protocol: str) -> None:
    receiver, grpc_port, http_port = tls_receiver
    port = grpc_port if protocol == "grpc" else http_port
    result = doctor(
        "--service-name", "shop", "--endpoint", f"https://127.0.0.1:{port}", "--protocol", protocol,
        cwd=tmp_path, **_trusting(certificate[1]),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result, "OK   test span: accepted by https://127.0.0.1:"), result.stdout
    span = receiver.wait_for_spans(1, timeout=5)[0]
    assert span.name == "autotrace doctor test span" and span.resource.get("service.name") == "shop"


def test_plain_grpc_against_a_tls_grpc_collector(tls_receiver, tmp_path: Path) -> None:
    _receiver, grpc_port, _http_port = tls_receiver
    result = doctor("--endpoint", f"http://127.0.0.1:{grpc_port}", "--protocol", "grpc", cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert f"FAIL endpoint: plain text is configured (http:// and OTEL_EXPORTER_OTLP_INSECURE) but 127.0.0.1:" \
        f"{grpc_port} expects TLS; fix: use https:// in the endpoint, or set OTEL_EXPORTER_OTLP_INSECURE=false" \
        in result.stdout, result.stdout


@pytest.mark.parametrize("configured", ["grpc", "http/protobuf"])
def test_the_wrong_protocol_behind_tls(tls_receiver, certificate, tmp_path: Path, configured: str) -> None:
    """Behind TLS the raw probes hear only TLS: the other protocol's export tells the port."""
    _receiver, grpc_port, http_port = tls_receiver
    port = http_port if configured == "grpc" else grpc_port  # the other protocol's port
    result = doctor(
        "--endpoint", f"https://127.0.0.1:{port}", "--protocol", configured, cwd=tmp_path,
        **_trusting(certificate[1]),
    )
    assert result.returncode == 1, result.stdout
    endpoint = _lines(result, "FAIL endpoint:")
    expected = (
        "this is an OTLP/HTTP port: use --protocol http/protobuf or port 4317"
        if configured == "grpc"
        else "this is an OTLP/gRPC port: use --protocol grpc or port 4318"
    )
    assert endpoint and "(behind TLS); fix: " + expected in endpoint[0], result.stdout


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_requests_ca_bundle_does_not_hide_the_otlp_certificate(
    tls_receiver, certificate, tmp_path: Path, variable: str
) -> None:
    """requests lets these replace a session's CA file (psf/requests#3829); the agent's exporter keeps its own."""
    import certifi  # requests' own dependency: a bundle without the test CA

    receiver, _grpc_port, http_port = tls_receiver
    environment = _trusting(certificate[1], **{variable: certifi.where()})
    result = doctor(
        "--service-name", "shop", "--endpoint", f"https://127.0.0.1:{http_port}", "--protocol", "http/protobuf",
        cwd=tmp_path, **environment,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _lines(result, "OK   test span: accepted by https://127.0.0.1:"), result.stdout
    assert receiver.wait_for_spans(1, timeout=5)[0].resource.get("service.name") == "shop"


def test_a_wrong_otlp_certificate_still_fails(tls_receiver, tmp_path: Path) -> None:
    import certifi

    _receiver, _grpc_port, http_port = tls_receiver
    result = doctor(
        "--endpoint", f"https://127.0.0.1:{http_port}", "--protocol", "http/protobuf", cwd=tmp_path,
        OTEL_EXPORTER_OTLP_CERTIFICATE=certifi.where(), REQUESTS_CA_BUNDLE="", CURL_CA_BUNDLE="",
    )
    assert result.returncode == 1, result.stdout
    endpoint = _lines(result, "FAIL endpoint:")
    assert endpoint and "TLS certificate not trusted" in endpoint[0], result.stdout
    assert "; fix: give the collector's CA certificate (a PEM file) in OTEL_EXPORTER_OTLP_CERTIFICATE" in endpoint[0]


# -- bad input: one line naming it, never a traceback ------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_header_that_cannot_be_sent(otlp_receiver: OTLPReceiver, tmp_path: Path, protocol: str) -> None:
    env = {**otlp_receiver.env(protocol), "OTEL_EXPORTER_OTLP_HEADERS": "x-team=%E2%82%AC,api-key=s3cretvalue"}
    result = doctor(cwd=tmp_path, **env)
    assert result.returncode == 1, result.stdout + result.stderr
    headers = _lines(result, "FAIL headers:")
    assert headers, result.stdout
    assert headers[0].startswith("FAIL headers: OTEL_EXPORTER_OTLP_HEADERS: header 'x-team' "), result.stdout
    assert "; fix: correct OTEL_EXPORTER_OTLP_HEADERS" in headers[0]
    assert _lines(result, "OK   endpoint:"), result.stdout  # probed with the headers that can be sent
    assert "FAIL test span: not sent: the headers check failed" in result.stdout
    assert "Traceback" not in result.stderr and "s3cretvalue" not in result.stdout + result.stderr
    assert not otlp_receiver.spans()


def test_another_agents_launcher_as_the_command(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    result = doctor("--", "opentelemetry-instrument", "python", "app.py", cwd=tmp_path, **otlp_receiver.env("http"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL conflicts: the command starts opentelemetry-instrument" in result.stdout
    assert "; fix: drop opentelemetry-instrument from the command" in result.stdout
    assert "no other tracing agent found" not in result.stdout  # the report does not contradict itself


@pytest.mark.parametrize(
    "endpoint",
    ["http://caf\u00e9.invalid:4318", "http://[::1", "http://h:99999", "collector:4318", "http://", "unix:///x.sock"],
)
def test_a_bad_endpoint_is_reported_not_raised(tmp_path: Path, endpoint: str) -> None:
    """Whatever the endpoint and however stdout encodes, a report and exit 1, never a traceback."""
    result = doctor("--endpoint", endpoint, "--json", cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == 1 and any(c["status"] == "FAIL" for c in report["checks"])
    text = doctor("--endpoint", endpoint, cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert text.returncode == 1 and "Traceback" not in text.stderr, text.stderr
    assert "spans cannot be delivered" in text.stdout


def test_an_instrumentor_the_app_calls_itself(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    write(tmp_path, "shop.py", "from opentelemetry.instrumentation.flask import FlaskInstrumentor\n"
          "FlaskInstrumentor().instrument()\n")
    result = doctor("--", "python", "shop.py", cwd=tmp_path, **otlp_receiver.env("http"))
    assert result.returncode == 0, result.stdout + result.stderr  # spans are delivered, doubled
    conflict = _lines(result, "WARN conflicts:")
    assert conflict and "shop.py calls FlaskInstrumentor itself" in conflict[0], result.stdout
