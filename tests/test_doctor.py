"""``autotrace doctor`` in process: attribution, redaction, the classifier, JSON, conflicts."""

from __future__ import annotations

import json

import pytest

from autotrace import cli, launcher
from autotrace.doctor import check as doctor_check
from autotrace.doctor import command as doctor_command
from autotrace.doctor import endpoint as doctor_endpoint
from autotrace.doctor import environment as doctor_environment
from autotrace.doctor import report as doctor_report
from autotrace.doctor import settings as doctor_settings
from autotrace.doctor import span as doctor_span
from autotrace.doctor.check import FAIL, OK, WARN, Check
from autotrace.doctor.endpoint import Probe, Target, classify


def parse(*argv: str):
    return cli._parser().parse_args(["doctor", *argv])


def config_checks(args, environ) -> dict[str, Check]:
    env = launcher.build_environment(args, dict(environ))
    settings, warnings = doctor_settings.load_settings(env)
    return {c.name: c for c in doctor_settings.configuration_checks(settings, warnings, args, environ)}


def test_source_flag_variable_default() -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_SAMPLER": "always_on"}
    checks = config_checks(parse("--service-name", "shop", "--protocol", "grpc"), environ)
    assert checks["config service.name"].message == "shop (flag --service-name)"
    assert checks["config protocol"].message == "grpc (flag --protocol)"
    assert checks["config endpoint"].message == "http://collector:4318 (variable OTEL_EXPORTER_OTLP_ENDPOINT)"
    assert checks["config sampler"].message.endswith("(variable OTEL_TRACES_SAMPLER)")
    assert checks["config compression"].message == "none (default)"


def test_flag_beats_the_traces_variable() -> None:
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://a:4318/v1/traces"}
    checks = config_checks(parse("--endpoint", "http://b:4318"), environ)
    assert checks["config endpoint"].message == "http://b:4318/v1/traces (flag --endpoint)"
    assert doctor_settings.source_of("endpoint", parse(), environ) == "variable OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


def test_protocol_derived_from_port_4317() -> None:
    checks = config_checks(parse(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert checks["config protocol"].message == "grpc (derived from the endpoint's port 4317)"


def test_headers_are_redacted() -> None:
    checks = config_checks(parse(), {"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cret,x-team=abc"})
    message = checks["config headers"].message
    assert "authorization=<redacted>" in message and "x-team=<redacted>" in message
    assert "s3cret" not in message and "abc" not in message


def test_wrong_values_are_captured_as_warnings(capsys) -> None:
    checks = config_checks(parse(), {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"})
    warning = checks["config OTEL_EXPORTER_OTLP_PROTOCOL"]
    assert warning.status == WARN and "'thrift'" in warning.message and warning.fix
    assert capsys.readouterr().err == ""


def test_service_name_checks() -> None:
    settings, _ = doctor_settings.load_settings({})
    assert doctor_settings.service_name_check(settings, []).status == WARN
    assert doctor_settings.service_name_check(settings, ["python", "shop.py"]).message.startswith("shop (derived from")
    settings, _ = doctor_settings.load_settings({"OTEL_RESOURCE_ATTRIBUTES": "service.name=cart"})
    assert doctor_settings.service_name_check(settings, []).message.startswith("cart (from service.name")
    settings, _ = doctor_settings.load_settings({"OTEL_SERVICE_NAME": "shop"})
    assert doctor_settings.service_name_check(settings, []).message == "shop (from OTEL_SERVICE_NAME)"
    flagged = parse("--service-name", "shop")
    assert doctor_settings.service_name_check(settings, [], flagged).message == "shop (from --service-name)"


def test_service_name_check_warns_about_a_generic_name(tmp_path, monkeypatch) -> None:
    settings, _ = doctor_settings.load_settings({})
    app = tmp_path / "app"
    app.mkdir()
    monkeypatch.chdir(app)
    # gunicorn main:app run from a folder called app: every name on the way is generic.
    check = doctor_settings.service_name_check(settings, ["gunicorn", "main:app"])
    assert check.status == WARN and check.message.startswith("app (derived from")
    assert "generic" in check.message and "OTEL_SERVICE_NAME" in check.fix
    check = doctor_settings.service_name_check(settings, ["python", "main.py"])
    assert (check.status, check.message.split(" ")[0]) == (WARN, "main")
    shop = tmp_path / "shop"
    shop.mkdir()
    monkeypatch.chdir(shop)
    check = doctor_settings.service_name_check(settings, ["gunicorn", "main:app"])
    assert (check.status, check.message.split(" ")[0], check.fix) == (OK, "shop", "")


def test_doctor_accepts_a_command_after_double_dash() -> None:
    args = parse("--json", "--", "python", "app.py")
    assert args.json and args.command[-2:] == ["python", "app.py"]


@pytest.mark.parametrize(
    "protocol, url, probe, status, expected",
    [
        ("grpc", "http://h:4318", Probe(speaks="http1", grpc_code="UNAVAILABLE"), FAIL,
         "this is an OTLP/HTTP port: use --protocol http/protobuf or port 4317"),
        ("http/protobuf", "http://h:4317/v1/traces", Probe(speaks="h2"), FAIL,
         "this is an OTLP/gRPC port: use --protocol grpc or port 4318"),
        ("http/protobuf", "https://h:4318/v1/traces", Probe(speaks="http1"), FAIL, "use http://"),
        ("grpc", "http://h:4317", Probe(speaks="tls", grpc_code="UNAVAILABLE"), FAIL, "use https://"),
        ("http/protobuf", "http://h:4318", Probe(http_status=404, speaks="http1"), FAIL, "add /v1/traces"),
        ("http/protobuf", "http://h:4318/v1/traces/v1/traces", Probe(http_status=404, speaks="http1"), FAIL,
         "/v1/traces is doubled"),
        ("http/protobuf", "http://h:14268/v1/traces", Probe(http_status=404, speaks="http1"), FAIL, "4318"),
        ("grpc", "http://h:14250", Probe(grpc_code="UNIMPLEMENTED", speaks="h2"), FAIL, "4317"),
        ("http/protobuf", "http://h:9411/v1/traces", Probe(http_status=404, speaks="http1"), FAIL, "OTLP port"),
        ("http/protobuf", "http://h:4318/v1/traces", Probe(http_status=401, speaks="http1"), FAIL,
         "OTEL_EXPORTER_OTLP_HEADERS"),
        ("grpc", "http://h:4317", Probe(accepted=True), OK, ""),
    ],
)
def test_classify(protocol, url, probe, status, expected) -> None:
    check = classify(protocol, Target(url), probe)
    assert check.status == status
    assert expected in check.fix


def test_classify_names_the_problem() -> None:
    assert classify("grpc", Target("http://h:4317"), Probe(resolved=False)).message == "cannot resolve host 'h'"
    assert classify("grpc", Target("http://h:4317"), Probe(connect="refused")).message == "nothing listens on h:4317"
    jaeger = classify("http/protobuf", Target("http://h:14268/v1/traces"), Probe(http_status=404, speaks="http1"))
    assert "Jaeger" in jaeger.message
    zipkin = classify("http/protobuf", Target("http://h:9411/v1/traces"), Probe(connect="refused"))
    assert "Zipkin" in zipkin.message


def test_json_shape_and_exit_code() -> None:
    checks = [Check(OK, "endpoint", "fine"), Check(OK, "test span", "accepted by x in 3 ms")]
    report = json.loads(doctor_report.render_json(checks))
    assert report == {
        "ok": True,
        "exit_code": 0,
        "checks": [
            {"status": "OK", "name": "endpoint", "message": "fine", "fix": ""},
            {"status": "OK", "name": "test span", "message": "accepted by x in 3 ms", "fix": ""},
        ],
    }
    failing = checks + [Check(FAIL, "x", "broken", "mend it")]
    assert json.loads(doctor_report.render_json(failing))["exit_code"] == 1
    text = doctor_report.render_text(failing)
    assert "FAIL x: broken; fix: mend it\n" in text  # the problem and its fix on one line


def test_exit_code_for_console_exporter() -> None:
    assert doctor_report.exit_code([Check(WARN, "exporter", "no span leaves the process", "use otlp")]) == 0


def test_conflicting_sitecustomize(tmp_path) -> None:
    site = tmp_path / "opentelemetry" / "instrumentation" / "auto_instrumentation"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text("# opentelemetry-instrument\n")
    checks = doctor_environment.conflict_checks([str(site)], [], own_dir=str(tmp_path / "own"))
    assert [c.status for c in checks] == [FAIL]  # chained after autotrace's: it runs
    assert "opentelemetry-instrument" in checks[0].message and checks[0].fix


def test_ddtrace_sitecustomize(tmp_path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import ddtrace.bootstrap.sitecustomize\n")
    checks = doctor_environment.conflict_checks([str(tmp_path)], [], own_dir=str(tmp_path / "own"))
    assert checks[0].status == FAIL and "ddtrace" in checks[0].message


def test_a_shadowed_agent_sitecustomize_is_a_warning(tmp_path) -> None:
    user, agent = tmp_path / "user", tmp_path / "ddtrace" / "bootstrap"
    user.mkdir()
    agent.mkdir(parents=True)
    (user / "sitecustomize.py").write_text("print('hi')\n")
    (agent / "sitecustomize.py").write_text("import ddtrace.bootstrap.sitecustomize\n")
    checks = doctor_environment.conflict_checks([str(user), str(agent)], [], own_dir=str(tmp_path / "own"))
    assert [c.status for c in checks] == [OK, WARN]
    assert "hidden behind" in checks[1].message and str(user) in checks[1].message


def test_user_sitecustomize_is_chained_and_own_is_skipped(tmp_path) -> None:
    own, user = tmp_path / "own", tmp_path / "user"
    own.mkdir()
    user.mkdir()
    (own / "sitecustomize.py").write_text("")
    (user / "sitecustomize.py").write_text("print('hi')\n")
    checks = doctor_environment.conflict_checks([str(own), str(user)], [], own_dir=str(own))
    assert [c.status for c in checks] == [OK]
    assert "chained" in checks[0].message and str(user) in checks[0].message


def test_conflicting_distributions() -> None:
    checks = doctor_environment.conflict_checks(
        [], ["ddtrace", "jaeger_client", "opentelemetry-instrumentation-flask", "flask"], own_dir=""
    )
    messages = " | ".join(c.message for c in checks)
    assert all(c.status == WARN for c in checks)
    assert "ddtrace" in messages and "jaeger-client" in messages
    assert "opentelemetry-instrumentation-flask" in messages
    assert doctor_environment.conflict_checks([], ["flask"], own_dir="")[0].status == OK


def test_library_checks() -> None:
    versions = {"flask": "3.0.0", "django": "3.1", "grpcio": "1.60.0"}
    checks = doctor_environment.library_checks(frozenset({"grpc", "grpc_aio"}), version_of=versions.get)
    text = {c.message: c.status for c in checks}
    assert text["flask 3.0.0 covered (flask)"] == OK
    assert any(m.startswith("django 3.1 installed but not covered") and s == WARN for m, s in text.items())
    assert any(m.startswith("grpcio 1.60.0 installed, hook disabled") for m in text)
    assert any(m.startswith("standard library covered: http_server") for m in text)
    assert any(m.startswith("not installed:") and "requests" in m for m in text)


def test_library_checks_name_the_distribution_installed_of_several() -> None:
    # psycopg2's module comes from "psycopg2" or "psycopg2-binary": the one installed is checked.
    checks = doctor_environment.library_checks(version_of={"psycopg2-binary": "2.9.9"}.get)
    text = {c.message: c.status for c in checks}
    assert text["psycopg2-binary 2.9.9 covered (psycopg2, psycopg2_extras)"] == OK
    checks = doctor_environment.library_checks(version_of={"psycopg2-binary": "2.7.7"}.get)
    assert any(c.message.startswith("psycopg2-binary 2.7.7 installed but not covered") for c in checks)


def test_a_rejected_value_is_not_credited_to_its_variable() -> None:
    checks = config_checks(parse(), {"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"})
    protocol = checks["config protocol"]
    assert protocol.status == WARN
    assert protocol.message == "http/protobuf (default (OTEL_EXPORTER_OTLP_PROTOCOL='thrift' was rejected))"
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in protocol.fix


def test_credentials_are_redacted_everywhere() -> None:
    url = "http://user:s3cretpw@h:4318/v1/traces?token=t0psecret&x=1"
    target = Target(url)
    assert "s3cret" not in classify("http/protobuf", target, Probe(accepted=True)).message
    failed = classify("http/protobuf", target, Probe(http_status=500, error="POST " + url))
    checks = doctor_check.scrub([failed], doctor_check.secrets_of(url))
    text = doctor_report.render_text(checks) + doctor_report.render_json(checks)
    assert "s3cretpw" not in text and "t0psecret" not in text and "user:" not in text
    assert doctor_check.redact(url) == "http://<redacted>@h:4318/v1/traces?token=REDACTED&x=1"


def test_ipv6_address_is_bracketed() -> None:
    assert Target("http://[::1]:4318/v1/traces").address == "[::1]:4318"


@pytest.mark.parametrize("text", ["inf", "nan", "-1", "0", "1e12x"])
def test_timeout_must_be_finite_and_positive(text: str, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("--timeout", text)
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_timeout_is_capped() -> None:
    assert parse("--timeout", "1e12").timeout == doctor_report.MAX_TIMEOUT_S


def test_insecure_false_means_tls_for_grpc() -> None:
    settings, _ = doctor_settings.load_settings(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4317", "OTEL_EXPORTER_OTLP_INSECURE": "false"}
    )
    assert doctor_endpoint.uses_tls(settings)
    target = Target(settings.endpoint, tls=doctor_endpoint.uses_tls(settings))
    check = classify("grpc", target, Probe(grpc_code="UNAVAILABLE", speaks="h2"))
    assert check.status == FAIL and "OTEL_EXPORTER_OTLP_INSECURE" in check.message + check.fix


def test_untrusted_certificate_names_the_ca_variable() -> None:
    check = classify("http/protobuf", Target("https://h:4318/v1/traces"),
                     Probe(error="TLS certificate not trusted: self-signed certificate", speaks="tls"))
    assert check.status == FAIL and "OTEL_EXPORTER_OTLP_CERTIFICATE" in check.fix
    assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in doctor_span.failure_fix("SSLError", " (CERTIFICATE_VERIFY_FAILED)")


def test_refused_foreign_port_points_at_the_otlp_port() -> None:
    check = classify("http/protobuf", Target("http://h:14268/v1/traces"), Probe(connect="refused"))
    assert "Jaeger" in check.message and check.fix == doctor_endpoint.OTLP_FIX


def test_doubled_path_names_the_variable_used() -> None:
    url, probe = "http://h:4318/v1/traces/v1/traces", Probe(http_status=404, speaks="http1")
    traces = classify("http/protobuf", Target(url), probe, "variable OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = classify("http/protobuf", Target(url), probe, "variable OTEL_EXPORTER_OTLP_ENDPOINT")
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in traces.fix and "OTEL_EXPORTER_OTLP_ENDPOINT (" not in traces.fix
    assert "OTEL_EXPORTER_OTLP_ENDPOINT (and --endpoint)" in base.fix


def test_no_exporter_fails() -> None:
    checks = doctor_report.run_checks(parse("--exporter", "none"), {})
    exporter = next(c for c in checks if c.name == "exporter")
    assert exporter.status == FAIL and "OTEL_TRACES_EXPORTER=none" in exporter.message
    assert doctor_report.exit_code(checks) == 1


def test_a_rejected_flag_is_credited_to_the_flag() -> None:
    args = parse("--endpoint", "collector:4318")  # no scheme: refused, the default applies
    checks = config_checks(args, {})
    endpoint = checks["config endpoint"]
    assert endpoint.status == WARN
    assert endpoint.message == "http://localhost:4318/v1/traces (default (--endpoint 'collector:4318' was rejected))"
    assert endpoint.fix == "correct --endpoint"
    assert checks["config OTEL_EXPORTER_OTLP_ENDPOINT"].fix.startswith("correct --endpoint;")


def test_a_rejected_variable_other_than_the_source_is_not_blamed() -> None:
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://a:4318/v1/traces", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}
    checks = config_checks(parse(), environ)
    assert checks["config endpoint"].status == OK
    assert checks["config endpoint"].message == "http://a:4318/v1/traces (variable OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)"


@pytest.mark.parametrize(
    "protocol, name, value, problem",
    [
        ("http/protobuf", "authorization", "Bearer abc", ""),
        ("http/protobuf", "x", "caf\u00e9", ""),  # Latin-1 is fine for HTTP
        ("http/protobuf", "x", "\u20ac", "outside Latin-1"),
        ("http/protobuf", "x y", "1", "not a valid HTTP header name"),
        ("http/protobuf", "x", "a\nb", "control character"),
        ("http/protobuf", "x", " s3cret", "leading blank"),
        ("grpc", "x-api-key", "abc", ""),
        ("grpc", "x y", "1", "not a valid gRPC metadata key"),
        ("grpc", "x", "caf\u00e9", "not printable ASCII"),
        ("grpc", "x", "a\tb", "not printable ASCII"),
        ("grpc", "x-bin", "abc", "binary (-bin)"),
    ],
)
def test_header_problems(protocol, name, value, problem) -> None:
    found = doctor_settings.unsendable_headers({name: value}, protocol)
    if not problem:
        assert found == {}
    else:
        assert problem in found[name]
        check = doctor_settings.headers_check(found, "variable OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        assert check.status == FAIL and check.message.startswith("OTEL_EXPORTER_OTLP_TRACES_HEADERS: header ")
        assert "correct OTEL_EXPORTER_OTLP_TRACES_HEADERS" in check.fix
        assert value.strip() not in check.message  # values are secrets: never quoted


def test_unsendable_headers_fail_before_any_export() -> None:
    """The headers check fails on its own; the probes run without the bad header (a closed port here)."""
    from ports import free_port

    port = free_port()
    environ = {"OTEL_EXPORTER_OTLP_HEADERS": "x=%E2%82%AC,authorization=Bearer%20s3cretvalue"}
    checks = doctor_report.run_checks(parse("--timeout", "1", "--endpoint", f"http://127.0.0.1:{port}"), environ)
    by_name = {c.name: c for c in checks}
    assert by_name["headers"].status == FAIL and "'x'" in by_name["headers"].message
    assert "authorization" not in by_name["headers"].message
    assert by_name["endpoint"].message == f"nothing listens on 127.0.0.1:{port}"
    assert doctor_report.exit_code(checks) == 1
    assert "s3cretvalue" not in doctor_report.render_text(checks) + doctor_report.render_json(checks)


@pytest.mark.parametrize(
    "protocol, url, fix",
    [
        ("grpc", "https://h:4318", "this is an OTLP/HTTP port: use --protocol http/protobuf or port 4317"),
        ("http/protobuf", "https://h:4317/v1/traces", "this is an OTLP/gRPC port: use --protocol grpc or port 4318"),
    ],
)
def test_classify_the_other_protocol_behind_tls(protocol, url, fix) -> None:
    probe = Probe(speaks="tls", other_accepts=True, grpc_code="UNAVAILABLE", error="RemoteDisconnected")
    check = classify(protocol, Target(url), probe)
    assert check.status == FAIL and check.fix == fix and "behind TLS" in check.message


@pytest.mark.parametrize("launcher", ["opentelemetry-instrument", "/usr/local/bin/ddtrace-run"])
def test_another_agents_launcher_in_the_command_fails(launcher: str) -> None:
    checks = doctor_command.command_checks([launcher, "python", "app.py", "--password", "hunter2"], {})
    assert [c.status for c in checks] == [FAIL]
    assert checks[0].name == "conflicts" and "second tracer" in checks[0].message
    assert "hunter2" not in checks[0].message + checks[0].fix  # arguments are never echoed


def test_a_denied_command_fails_unless_the_deny_list_allows_it() -> None:
    checks = doctor_command.command_checks(["python", "-m", "pip", "install", "x"], {})
    assert [(c.status, c.name) for c in checks] == [(FAIL, "command")]
    assert checks[0].message == "pip is on the default AUTOTRACE_DENY list: autotrace run does not trace it"
    assert doctor_command.command_checks(["python", "-m", "pip"], {"AUTOTRACE_DENY": ""}) == []
    assert doctor_command.command_checks(["python", "shop.py"], {"AUTOTRACE_DENY": "shop"})[0].message.startswith(
        "shop is on AUTOTRACE_DENY"
    )
    assert doctor_command.command_checks(["python", "shop.py"], {}) == []


def test_the_report_is_written_to_any_stdout(monkeypatch, capsys) -> None:
    import io

    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr("sys.stdout", ascii_out)
    doctor_report._write("FAIL endpoint: cannot resolve host 'caf\u00e9'\n")
    ascii_out.flush()
    assert ascii_out.buffer.getvalue() == b"FAIL endpoint: cannot resolve host 'caf\\xe9'\n"


def test_an_unwritable_stdout_costs_one_line(monkeypatch, tmp_path, capsys) -> None:
    import io
    import os

    class Full(io.StringIO):
        """A full disk: every write fails; its descriptor is a real file."""

        fd = -1

        def fileno(self) -> int:
            return self.fd

        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    full = Full()
    full.fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr("sys.stdout", full)
    try:
        doctor_report._write("report\n")  # no raise
    finally:
        os.close(full.fd)
    assert capsys.readouterr().err == "autotrace doctor: cannot write the report: [Errno 28] No space left on device\n"


def test_instrumentors_the_app_calls_itself(tmp_path) -> None:
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "wsgi.py").write_text(
        "from opentelemetry.instrumentation.flask import FlaskInstrumentor\n"
        "FlaskInstrumentor.instrument_app(app)\n"
        "GrpcInstrumentorClient().instrument()\n"
        "RequestsInstrumentor( ) . instrument(tracer_provider=p)\n"
    )
    (tmp_path / "plain.py").write_text("import flask  # FlaskInstrumentor is only named here\n")
    shop = str(tmp_path / "shop" / "wsgi.py")
    assert doctor_command.app_files(["gunicorn", "-w", "2", "shop.wsgi:application"], str(tmp_path)) == [shop]
    assert doctor_command.app_files(["python", "-m", "shop.wsgi"], str(tmp_path)) == [shop]
    checks = doctor_command.instrumentor_checks(["python", "-u", "shop/wsgi.py"], str(tmp_path))
    assert [(c.status, c.name) for c in checks] == [(WARN, "conflicts")]
    assert "calls FlaskInstrumentor, GrpcInstrumentorClient, RequestsInstrumentor itself" in checks[0].message
    assert checks[0].fix.startswith("remove those calls")
    assert doctor_command.instrumentor_checks(["python", "plain.py"], str(tmp_path)) == []
    assert doctor_command.instrumentor_checks(["python", "missing.py"], str(tmp_path)) == []


def test_every_setting_the_agent_reads_is_checked_when_set() -> None:
    checks = config_checks(parse(), {"AUTOTRACE_INCOMING_CONTEXT": "bogus", "OTEL_BSP_MAX_QUEUE_SIZE": "100"})
    assert checks["config AUTOTRACE_INCOMING_CONTEXT"].status == WARN
    assert checks["config incoming context"].message == (
        "continue (default (AUTOTRACE_INCOMING_CONTEXT='bogus' was rejected))"
    )
    assert checks["config batch"].message.endswith("(variable OTEL_BSP_MAX_QUEUE_SIZE)")
    unset = config_checks(parse(), {})
    assert "config batch" not in unset and "config deny" not in unset  # at their default: not shown
    assert "config compression" in unset


# -- the running agent's failed exports, read by the same classifier ----------------------


def _runtime(protocol: str, endpoint: str, evidence: list, speaks: str = "") -> Check:
    """The check a failed export gives, without the network (``speaks``: what the port would say)."""
    probe = doctor_endpoint.failure_probe(evidence, 10.0)
    if speaks:
        probe.speaks = speaks
    return classify(protocol, Target(endpoint, tls=endpoint.startswith("https")), probe)


def test_failure_evidence_of_the_running_agent_is_classified_as_the_doctor_does():
    import socket

    import grpc
    import requests

    refused = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    assert _runtime("http/protobuf", "http://h:4318/v1/traces", [refused]).message == "nothing listens on h:4318"
    grpc_refused = [grpc.StatusCode.UNAVAILABLE, "traces", "h:4317", 1.0,
                    "failed to connect to all addresses; last error: UNKNOWN: ipv4:1.2.3.4:4317: "
                    "Failed to connect to remote host: Connection refused"]
    assert _runtime("grpc", "http://h:4317", grpc_refused).message == "nothing listens on h:4317"
    unknown = socket.gaierror(-2, "Name or service not known")
    assert _runtime("http/protobuf", "http://c.invalid:4318/v1/traces", [unknown]).message == (
        "cannot resolve host 'c.invalid'"
    )
    grpc_unknown = [grpc.StatusCode.UNAVAILABLE, "errors resolving c.invalid:4317: Domain name not found"]
    assert _runtime("grpc", "http://c.invalid:4317", grpc_unknown).message == "cannot resolve host 'c.invalid'"
    no_answer = [grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"]
    assert "accepted the connection but sent no answer" in _runtime("grpc", "http://h:4317", no_answer).message
    busy = [None, 503, doctor_endpoint.CollectorMessage("memory limit reached")]
    assert _runtime("http/protobuf", "http://h:4318/v1/traces", busy).message == (
        "h:4318 failed the export: HTTP 503: memory limit reached"
    )
    refused_export = [grpc.StatusCode.INVALID_ARGUMENT, "traces", "h:4317", "bad span"]
    assert _runtime("grpc", "http://h:4317", refused_export).message == (
        "h:4317 refused the export: INVALID_ARGUMENT: bad span"
    )
    # What the port speaks comes from asking it (diagnose_failure) when the failure cannot tell.
    framing = [grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNAVAILABLE: "
               "ipv4:1.2.3.4:4318: Failed parsing HTTP/2 (Expected SETTINGS frame as the first frame)"]
    assert doctor_endpoint.failure_kind(doctor_endpoint.failure_probe(framing, 1.0), framing) == (
        "connection failed"
    )
    assert "answers HTTP/1.1" in _runtime("grpc", "http://h:4318", framing, speaks="http1").message
    # Not a failure on the way to the collector: no kind (the agent names the exception).
    boom = [RuntimeError("boom")]
    assert doctor_endpoint.failure_kind(doctor_endpoint.failure_probe(boom, 1.0), boom) is None


def test_the_collectors_message_is_read_from_a_status_body():
    from autotrace import export_report

    class Answer:
        def __init__(self, body: bytes, kind: str) -> None:
            self.body, self.kind = body, kind

        def content(self) -> bytes:
            return self.body

        def headers(self) -> dict:
            return {"content-type": self.kind}

    status = bytes([0x08, 3, 0x12, 8]) + b"bad span"  # google.rpc.Status{code: 3, message: "bad span"}
    assert export_report.collector_message(Answer(status, "application/x-protobuf")) == "bad span"
    assert export_report.collector_message(Answer(b'{"code": 3, "message": "bad"}', "application/json")) == "bad"
    assert export_report.collector_message(Answer(b"  overloaded\n", "text/plain")) == "overloaded"
    assert export_report.collector_message(Answer(b"", "text/plain")) == ""
