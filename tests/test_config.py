from __future__ import annotations

import pytest

from autotrace import config
from autotrace.config import DEFAULT_DENY, load, redact_url


def test_defaults(warnings):
    s = load({})
    assert s.protocol == "http/protobuf"
    assert s.endpoint == "http://localhost:4318/v1/traces"
    assert s.exporters == ("otlp",)
    assert s.sampler == "parentbased_always_on"
    assert s.sampler_arg == 1.0
    assert s.propagators == ("tracecontext", "baggage")
    assert s.shutdown_timeout_s == 5.0
    assert s.timeout_s == 10.0
    assert s.headers == {}
    assert s.insecure is True
    assert s.compression == "none"
    assert s.sdk_disabled is False
    assert s.service_name is None
    assert s.log_level == "info"
    assert (s.bsp_max_queue_size, s.bsp_max_export_batch_size) == (2048, 512)
    assert s.deny == DEFAULT_DENY
    assert s.extra_hooks == ()
    assert s.disabled_hooks == frozenset()
    assert warnings() == []


def test_empty_values_count_as_unset(warnings):
    s = load({"OTEL_TRACES_SAMPLER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": "  ", "OTEL_SERVICE_NAME": ""})
    assert s.sampler == "parentbased_always_on"
    assert s.endpoint == "http://localhost:4318/v1/traces"
    assert s.service_name is None
    assert warnings() == []


# -- endpoint and protocol ---------------------------------------------------------


@pytest.mark.parametrize(
    "generic, expected",
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://collector.example.com/otel", "https://collector.example.com/otel/v1/traces"),
    ],
)
def test_generic_http_endpoint_gets_traces_path(generic, expected):
    s = load({"OTEL_EXPORTER_OTLP_ENDPOINT": generic})
    assert s.protocol == "http/protobuf"
    assert s.endpoint == expected


def test_traces_http_endpoint_is_used_as_is():
    s = load({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom/path"})
    assert s.endpoint == "http://collector:4318/custom/path"


def test_traces_endpoint_wins_over_generic():
    s = load(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://specific:9999/v1/traces",
        }
    )
    assert s.endpoint == "http://specific:9999/v1/traces"


def test_grpc_endpoint_is_used_as_is():
    s = load({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:5555"})
    assert s.protocol == "grpc"
    assert s.endpoint == "http://collector:5555"


def test_grpc_default_endpoint():
    s = load({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert s.endpoint == "http://localhost:4317"


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_unset_protocol_with_port_4317_means_grpc(variable):
    s = load({variable: "http://collector:4317"})
    assert s.protocol == "grpc"
    assert s.endpoint == "http://collector:4317"


def test_explicit_http_protocol_on_port_4317_stays_http():
    s = load({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    assert s.protocol == "http/protobuf"
    assert s.endpoint == "http://c:4317/v1/traces"


def test_traces_variants_win_over_generic_ones():
    s = load(
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3000",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "false",
        }
    )
    assert s.protocol == "http/protobuf"
    assert s.timeout_s == 3.0
    assert s.compression == "gzip"
    assert s.insecure is False


def test_insecure_follows_the_scheme():
    assert load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).insecure is True
    assert load({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317"}).insecure is False


def test_timeouts_are_milliseconds():
    s = load({"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "AUTOTRACE_SHUTDOWN_TIMEOUT": "1500"})
    assert s.timeout_s == 2.5
    assert s.shutdown_timeout_s == 1.5


# -- headers -----------------------------------------------------------------------


def test_headers_are_url_decoded_and_lowercased(warnings):
    s = load({"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc%3D%3D, X-Tenant = a%2Cb ,k=v=w"})
    assert s.headers == {"authorization": "Bearer abc==", "x-tenant": "a,b", "k": "v=w"}
    assert warnings() == []


def test_traces_headers_merge_and_win():
    s = load(
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "a=1,API-Key=generic",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=specific,c=3",
        }
    )
    assert s.headers == {"a": "1", "api-key": "specific", "c": "3"}


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"])
@pytest.mark.parametrize(
    "entry",
    [
        "Authorization: Bearer s3cr3tvalue",  # a colon instead of "="
        "=s3cr3tvalue",  # no key
        "s3cr3tvalue",  # a value alone
    ],
)
def test_malformed_header_entry_is_dropped_and_never_echoed(variable, entry, warnings):
    s = load({variable: f"good=1,{entry}"})
    assert s.headers == {"good": "1"}
    lines = warnings()
    assert len(lines) == 1
    assert variable in lines[0]
    assert "s3cr3tvalue" not in lines[0]
    assert "Bearer" not in lines[0]


# -- invalid values: default plus exactly one warning naming variable and value -----

INVALID = [
    # (environment, the bad variable, the bad value, attribute, expected value)
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER", "sometimes", "sampler", "parentbased_always_on"),
    (
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        "OTEL_TRACES_SAMPLER_ARG",
        "1.5",
        "sampler_arg",
        1.0,
    ),
    (
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "-0.1"},
        "OTEL_TRACES_SAMPLER_ARG",
        "-0.1",
        "sampler_arg",
        1.0,
    ),
    (
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
        "OTEL_TRACES_SAMPLER_ARG",
        "half",
        "sampler_arg",
        1.0,
    ),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER", "zipkin", "exporters", ("otlp",)),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "protocol", "http/protobuf"),
    (
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"},
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "udp",
        "protocol",
        "http/protobuf",
    ),
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "collector:4318",
        "endpoint",
        "http://localhost:4318/v1/traces",
    ),
    (
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "localhost/v1/traces"},
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "localhost/v1/traces",
        "endpoint",
        "http://localhost:4318/v1/traces",
    ),
    (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:99999"},
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://collector:99999",
        "endpoint",
        "http://localhost:4318/v1/traces",
    ),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "timeout_s", 10.0),
    ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "nan"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "nan", "timeout_s", 10.0),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "-5"}, "OTEL_BSP_MAX_QUEUE_SIZE", "-5", "bsp_max_queue_size", 2048),
    ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0", "bsp_max_export_batch_size", 512),
    ({"OTEL_BSP_SCHEDULE_DELAY": "-1"}, "OTEL_BSP_SCHEDULE_DELAY", "-1", "bsp_schedule_delay_ms", 5000),
    ({"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED", "maybe", "sdk_disabled", False),
    (
        {"OTEL_EXPORTER_OTLP_INSECURE": "perhaps"},
        "OTEL_EXPORTER_OTLP_INSECURE",
        "perhaps",
        "insecure",
        True,
    ),
    ({"OTEL_LOG_LEVEL": "verbose"}, "OTEL_LOG_LEVEL", "verbose", "log_level", "info"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zip"}, "OTEL_EXPORTER_OTLP_COMPRESSION", "zip", "compression", "none"),
    ({"AUTOTRACE_SHUTDOWN_TIMEOUT": "-1"}, "AUTOTRACE_SHUTDOWN_TIMEOUT", "-1", "shutdown_timeout_s", 5.0),
]


@pytest.mark.parametrize("environ, variable, value, attribute, expected", INVALID, ids=[i[1] + "=" + i[2] for i in INVALID])
def test_invalid_value_gives_default_and_one_warning(environ, variable, value, attribute, expected, warnings):
    s = load(environ)
    assert getattr(s, attribute) == expected
    lines = warnings()
    assert len(lines) == 1, lines
    assert variable in lines[0]
    assert repr(value) in lines[0]


def test_batch_larger_than_queue_is_clamped_with_one_warning(warnings):
    s = load({"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200"})
    assert (s.bsp_max_queue_size, s.bsp_max_export_batch_size) == (100, 100)
    lines = warnings()
    assert len(lines) == 1
    assert "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in lines[0] and "'200'" in lines[0]


def test_small_queue_alone_shrinks_the_default_batch_silently(warnings):
    s = load({"OTEL_BSP_MAX_QUEUE_SIZE": "100"})
    assert (s.bsp_max_queue_size, s.bsp_max_export_batch_size) == (100, 100)
    assert warnings() == []


def test_endpoint_warning_does_not_echo_credentials(warnings):
    s = load({"OTEL_EXPORTER_OTLP_ENDPOINT": "user:pa55word@collector:4318"})
    assert s.endpoint == "http://localhost:4318/v1/traces"
    lines = warnings()
    assert len(lines) == 1 and "OTEL_EXPORTER_OTLP_ENDPOINT" in lines[0]
    assert "pa55word" not in lines[0]


def test_same_bad_variable_warns_once_per_process(warnings):
    load({"OTEL_TRACES_SAMPLER": "sometimes"})
    load({"OTEL_TRACES_SAMPLER": "sometimes"})
    load({"OTEL_TRACES_SAMPLER": "never"})
    assert len(warnings()) == 1
    load({"OTEL_SDK_DISABLED": "maybe"})  # another variable still warns
    assert len(warnings()) == 1


def test_load_never_raises_on_garbage(warnings):
    garbage = {
        name: "\x00 ,=,%zz,[::1"
        for name in (
            "OTEL_SDK_DISABLED OTEL_LOG_LEVEL OTEL_TRACES_EXPORTER OTEL_EXPORTER_OTLP_PROTOCOL "
            "OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT OTEL_EXPORTER_OTLP_HEADERS "
            "OTEL_EXPORTER_OTLP_TIMEOUT OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG OTEL_PROPAGATORS "
            "OTEL_BSP_MAX_QUEUE_SIZE OTEL_BSP_MAX_EXPORT_BATCH_SIZE OTEL_RESOURCE_ATTRIBUTES "
            "AUTOTRACE_SHUTDOWN_TIMEOUT AUTOTRACE_EXTRA_HOOKS"
        ).split()
    }
    s = load(garbage)
    assert s.endpoint == "http://localhost:4318/v1/traces"
    assert s.exporters == ("otlp",)
    assert warnings()


# -- describe / redaction ------------------------------------------------------------


def test_describe_redacts_headers_and_url_credentials():
    s = load(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://alice:pa55word@collector:4318/v1/traces",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t,x-team=core",
        }
    )
    assert s.headers["authorization"] == "Bearer s3cr3t"  # the exporter still gets it
    rows = dict(s.describe())
    text = repr(s.describe())
    assert "s3cr3t" not in text and "pa55word" not in text and "alice" not in text and "core" not in text
    assert rows["endpoint"] == "https://<redacted>@collector:4318/v1/traces"
    assert rows["headers"] == "authorization=<redacted>,x-team=<redacted>"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://u:p@host:4318/v1/traces", "http://<redacted>@host:4318/v1/traces"),
        ("https://token@host/x?y=1", "https://<redacted>@host/x?y=1"),
        ("http://host:4318/v1/traces", "http://host:4318/v1/traces"),
        ("u:p@host:4318", "<redacted>@host:4318"),
        ("http://[::1", "<invalid url>"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


# -- lists ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("none", ()),
        ("otlp,console", ("otlp", "console")),
        ("Console, OTLP ,console", ("console", "otlp")),
        ("console", ("console",)),
    ],
)
def test_exporters(value, expected, warnings):
    assert load({"OTEL_TRACES_EXPORTER": value}).exporters == expected
    assert warnings() == []


def test_unknown_exporter_beside_a_valid_one_is_ignored_with_one_warning(warnings):
    assert load({"OTEL_TRACES_EXPORTER": "otlp,zipkin,jaeger"}).exporters == ("otlp",)
    lines = warnings()
    assert len(lines) == 1 and "OTEL_TRACES_EXPORTER" in lines[0] and "'zipkin'" in lines[0]


def test_propagators(warnings):
    assert load({"OTEL_PROPAGATORS": "none"}).propagators == ()
    assert load({"OTEL_PROPAGATORS": "baggage"}).propagators == ("baggage",)
    assert warnings() == []
    assert load({"OTEL_PROPAGATORS": "tracecontext,no-such-propagator"}).propagators == ("tracecontext",)
    lines = warnings()
    assert len(lines) == 1 and "'no-such-propagator'" in lines[0]


def test_disabled_instrumentations():
    s = load({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": " requests, flask,,urllib3 "})
    assert s.disabled_hooks == frozenset({"requests", "flask", "urllib3"})


def test_deny_list():
    assert load({}).deny == DEFAULT_DENY
    assert "pip" in DEFAULT_DENY and "autotrace" in DEFAULT_DENY
    assert load({"AUTOTRACE_DENY": ""}).deny == ()
    assert load({"AUTOTRACE_DENY": "celery, pip"}).deny == ("celery", "pip")


def test_extra_hooks(warnings):
    s = load({"AUTOTRACE_EXTRA_HOOKS": "a.b=my.hooks, c = other.hooks:patch_c"})
    assert s.extra_hooks == (("a.b", "my.hooks"), ("c", "other.hooks:patch_c"))
    assert warnings() == []


@pytest.mark.parametrize("value", ["a.b=", "a.b"])
def test_extra_hooks_bad_entry_is_ignored_with_one_warning(value, warnings):
    s = load({"AUTOTRACE_EXTRA_HOOKS": f"{value},x=y.hooks"})
    assert s.extra_hooks == (("x", "y.hooks"),)
    lines = warnings()
    assert len(lines) == 1 and "AUTOTRACE_EXTRA_HOOKS" in lines[0] and "a.b" in lines[0]


def test_resource_attributes_and_service_name():
    s = load(
        {
            "OTEL_RESOURCE_ATTRIBUTES": "service.namespace=shop,team=a%20b",
            "OTEL_SERVICE_NAME": " checkout ",
            "OTEL_LOG_LEVEL": "DEBUG",
        }
    )
    assert s.resource_attributes == {"service.namespace": "shop", "team": "a b"}
    assert s.service_name == "checkout"
    assert s.log_level == "debug"


def test_settings_rejects_unknown_names():
    with pytest.raises(TypeError):
        config.Configuration(no_such_setting=1)


# -- values, sources and warnings as data ------------------------------------------------


def test_read_gives_sources_and_warnings_as_data_and_logs_nothing(warnings):
    s = config.read(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_TRACES_SAMPLER": "sometimes",
            "OTEL_TRACES_EXPORTER": "otlp,zipkin",
        }
    )
    assert warnings() == []
    assert [(w.variable, w.refused) for w in s.warnings] == [
        ("OTEL_TRACES_EXPORTER", None),  # an entry left out
        ("OTEL_TRACES_SAMPLER", "sometimes"),  # the default replaced the value
    ]
    assert s.warnings[1].text == (
        "OTEL_TRACES_SAMPLER='sometimes' is not valid (expected one of "
        + ", ".join(config.SAMPLERS)
        + "); using the default 'parentbased_always_on'"
    )
    assert str(s.sources["endpoint"]) == "variable OTEL_EXPORTER_OTLP_ENDPOINT"
    assert str(s.sources["protocol"]) == "derived from the endpoint's port 4317"
    assert s.sources["compression"].kind == "default"
    config.log_warnings(s.warnings)
    config.log_warnings(s.warnings)  # once per process
    assert [line.split(": ", 1)[1] for line in warnings()] == [w.text for w in s.warnings]


def test_every_setting_is_described_and_sourced():
    s = config.read({})
    assert [name for name, _ in s.describe()] == list(config.VARIABLES)
    assert set(s.sources) == set(config.VARIABLES)


def test_source_of_a_launcher_option_beats_the_variables():
    environ = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://a:4318/v1/traces"}
    assert str(config.source_of("endpoint", environ)) == "variable OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    flagged = config.source_of("endpoint", environ, {"OTEL_EXPORTER_OTLP_ENDPOINT": "--endpoint"})
    assert (flagged.kind, flagged.variable, str(flagged)) == ("flag", "OTEL_EXPORTER_OTLP_ENDPOINT", "flag --endpoint")
    assert config.source_of("deny", {"AUTOTRACE_DENY": ""}).kind == "variable"  # empty: trace everything
    assert config.source_of("service.name", {"OTEL_SERVICE_NAME": " "}).kind == "default"


def test_http_logging_and_propagator_settings_are_read_here(warnings):
    s = config.read(
        {
            "OTEL_PYTHON_EXCLUDED_URLS": "/health, a(",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "X-Request-Id",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE": "Content-Type",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": "authorization,set-cookie,a(",
            "AUTOTRACE_INCOMING_CONTEXT": "Restart",
            "OTEL_PYTHON_LOG_CORRELATION": "true",
            "OTEL_PYTHON_LOG_FORMAT": "%(message)s",
        }
    )
    http = s.http
    assert [p.pattern for p in http.excluded] == ["/health"]
    assert http.request_headers == ["x-request-id"] and http.client_response_headers == ["content-type"]
    assert http.response_headers == [] and http.client_request_headers == []
    assert http.sanitize.search("Set-Cookie") and http.sanitize.search("x-a(") and not http.sanitize.search("x")
    assert http.incoming_context == "restart"
    assert s.log_correlation is True and s.log_format == "%(message)s"
    assert [w.key for w in s.warnings] == ["OTEL_PYTHON_EXCLUDED_URLS:a("]
    assert warnings() == []


def test_http_settings_are_read_once_until_reset(monkeypatch, warnings):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/health,b[")
    monkeypatch.setenv("AUTOTRACE_INCOMING_CONTEXT", "sometimes")
    config.reset_http_settings()
    try:
        first = config.http_settings()
        assert [p.pattern for p in first.excluded] == ["/health"] and first.incoming_context == "continue"
        lines = warnings()
        assert len(lines) == 2 and "'b['" in lines[0] and "AUTOTRACE_INCOMING_CONTEXT='sometimes'" in lines[1]
        monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "/other")
        assert config.http_settings() is first
        config.reset_http_settings()
        assert [p.pattern for p in config.http_settings().excluded] == ["/other"]
        assert warnings() == []  # each wrong value warned once
    finally:
        config.reset_http_settings()


def test_propagator_names_and_log_correlation_read_the_environment(monkeypatch, warnings):
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3, no-such-propagator, B3")
    monkeypatch.setenv("OTEL_PYTHON_LOG_CORRELATION", "maybe")
    monkeypatch.setenv("OTEL_PYTHON_LOG_FORMAT", " %(message)s ")
    assert config.propagator_names() == ("b3",)
    assert config.log_correlation() is False
    assert config.log_format() == "%(message)s"
    lines = warnings()
    assert len(lines) == 2 and "'no-such-propagator'" in lines[0] and "OTEL_PYTHON_LOG_CORRELATION='maybe'" in lines[1]
    monkeypatch.delenv("OTEL_PROPAGATORS")
    monkeypatch.delenv("OTEL_PYTHON_LOG_CORRELATION")
    monkeypatch.delenv("OTEL_PYTHON_LOG_FORMAT")
    assert config.propagator_names() == config.DEFAULT_PROPAGATORS
    assert config.log_correlation() is False and config.log_format() is None
