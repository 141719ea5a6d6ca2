"""``autotrace doctor`` in process: attribution, redaction, the classifier, JSON, conflicts."""

from __future__ import annotations

import json

import pytest

from autotrace import cli, doctor
from autotrace.doctor import FAIL, OK, WARN, Check, Probe, Target, classify


def parse(*argv: str):
    return cli._parser().parse_args(["doctor", *argv])


def config_checks(args, environ) -> dict[str, Check]:
    env = cli.build_environment(args, dict(environ))
    settings, warnings = doctor.load_settings(env)
    return {c.name: c for c in doctor.configuration_checks(settings, warnings, args, environ)}


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
    assert doctor.source_of("endpoint", parse(), environ) == "variable OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


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
    settings, _ = doctor.load_settings({})
    assert doctor.service_name_check(settings, []).status == WARN
    assert doctor.service_name_check(settings, ["python", "shop.py"]).message.startswith("shop (derived from")
    settings, _ = doctor.load_settings({"OTEL_RESOURCE_ATTRIBUTES": "service.name=cart"})
    assert doctor.service_name_check(settings, []).message.startswith("cart (from service.name")


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
    report = json.loads(doctor.render_json(checks))
    assert report == {
        "ok": True,
        "exit_code": 0,
        "checks": [
            {"status": "OK", "name": "endpoint", "message": "fine", "fix": ""},
            {"status": "OK", "name": "test span", "message": "accepted by x in 3 ms", "fix": ""},
        ],
    }
    failing = checks + [Check(FAIL, "x", "broken", "mend it")]
    assert json.loads(doctor.render_json(failing))["exit_code"] == 1
    text = doctor.render_text(failing)
    assert "FAIL x: broken\n     fix: mend it\n" in text


def test_exit_code_for_console_exporter() -> None:
    assert doctor.exit_code([Check(WARN, "exporter", "no span leaves the process", "use otlp")]) == 0


def test_conflicting_sitecustomize(tmp_path) -> None:
    site = tmp_path / "opentelemetry" / "instrumentation" / "auto_instrumentation"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text("# opentelemetry-instrument\n")
    checks = doctor.conflict_checks([str(site)], [], own_dir=str(tmp_path / "own"))
    assert [c.status for c in checks] == [WARN]
    assert "opentelemetry-instrument" in checks[0].message and checks[0].fix


def test_ddtrace_sitecustomize(tmp_path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import ddtrace.bootstrap.sitecustomize\n")
    checks = doctor.conflict_checks([str(tmp_path)], [], own_dir=str(tmp_path / "own"))
    assert checks[0].status == WARN and "ddtrace" in checks[0].message


def test_user_sitecustomize_is_chained_and_own_is_skipped(tmp_path) -> None:
    own, user = tmp_path / "own", tmp_path / "user"
    own.mkdir()
    user.mkdir()
    (own / "sitecustomize.py").write_text("")
    (user / "sitecustomize.py").write_text("print('hi')\n")
    checks = doctor.conflict_checks([str(own), str(user)], [], own_dir=str(own))
    assert [c.status for c in checks] == [OK]
    assert "chained" in checks[0].message and str(user) in checks[0].message


def test_conflicting_distributions() -> None:
    checks = doctor.conflict_checks(
        [], ["ddtrace", "jaeger_client", "opentelemetry-instrumentation-flask", "flask"], own_dir=""
    )
    messages = " | ".join(c.message for c in checks)
    assert all(c.status == WARN for c in checks)
    assert "ddtrace" in messages and "jaeger-client" in messages
    assert "opentelemetry-instrumentation-flask" in messages
    assert doctor.conflict_checks([], ["flask"], own_dir="")[0].status == OK


def test_library_checks() -> None:
    versions = {"flask": "3.0.0", "django": "3.1", "grpcio": "1.60.0"}
    checks = doctor.library_checks(frozenset({"grpc", "grpc_aio"}), version_of=versions.get)
    text = {c.message: c.status for c in checks}
    assert text["flask 3.0.0 covered (flask)"] == OK
    assert any(m.startswith("django 3.1 installed but not covered") and s == WARN for m, s in text.items())
    assert any(m.startswith("grpcio 1.60.0 installed, hook disabled") for m in text)
    assert any(m.startswith("standard library covered: http_server") for m in text)
    assert any(m.startswith("not installed:") and "requests" in m for m in text)
