"""Trace ids in log records (the logging hook), and OTEL_PYTHON_LOG_CORRELATION."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from autotrace import provider
from autotrace.hooks import logging as logging_hook

FIELDS = ("otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName")


@pytest.fixture
def restore_logging(monkeypatch):
    """Whatever the test does to logging's factory, default format and root logger is undone."""
    for name in (logging_hook.CORRELATION_ENV, logging_hook.FORMAT_ENV):
        monkeypatch.delenv(name, raising=False)
    factory = logging.getLogRecordFactory()
    percent, basic = logging._STYLES["%"], logging.BASIC_FORMAT
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logging_hook._name_cache = (None, "")
    yield
    logging_hook.unpatch(logging)
    logging.setLogRecordFactory(factory)
    logging._STYLES["%"], logging.BASIC_FORMAT = percent, basic
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging_hook._name_cache = (None, "")


@pytest.fixture
def hooked(spans, restore_logging):
    logging_hook.patch(logging)
    return spans


def tracer():
    return trace.get_tracer("test-log-correlation")


def record(message: str = "hello") -> logging.LogRecord:
    return logging.getLogger("test.log").makeRecord("test.log", logging.INFO, __file__, 1, message, (), None)


def provider_service_name() -> str:
    return trace.get_tracer_provider().resource.attributes["service.name"]


def test_a_record_inside_a_span_names_it(hooked):
    with tracer().start_as_current_span("parent") as span:
        made = record()
    ctx = span.get_span_context()
    assert made.otelTraceID == format(ctx.trace_id, "032x") and len(made.otelTraceID) == 32
    assert made.otelSpanID == format(ctx.span_id, "016x") and len(made.otelSpanID) == 16
    assert made.otelTraceSampled is True
    assert made.otelServiceName == provider_service_name()


def test_a_record_outside_a_span_has_zero_ids(hooked):
    made = record()
    assert (made.otelTraceID, made.otelSpanID, made.otelTraceSampled) == ("0" * 32, "0" * 16, False)
    assert made.otelServiceName == provider_service_name()


def test_an_unsampled_span_is_named_with_sampled_false(hooked):
    ctx = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0))
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(ctx)))
    try:
        made = record()
    finally:
        context.detach(token)
    assert (made.otelTraceID, made.otelSpanID, made.otelTraceSampled) == (f"{0x1234:032x}", f"{0x5678:016x}", False)


def test_records_logged_through_a_logger_have_the_fields(hooked):
    seen = []

    class Keep(logging.Handler):
        def emit(self, rec):
            seen.append(rec)

    logger = logging.getLogger("test.log.handler")
    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with tracer().start_as_current_span("parent") as span:
            logger.warning("inside")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    inside, outside = seen
    assert inside.otelSpanID == format(span.get_span_context().span_id, "016x")
    assert outside.otelSpanID == "0" * 16


def test_a_format_naming_the_fields_works_in_an_unchanged_app(hooked):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        logging.Formatter("%(otelTraceID)s %(otelSpanID)s %(otelTraceSampled)s %(otelServiceName)s %(message)s")
    )
    logger = logging.getLogger("test.log.format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with tracer().start_as_current_span("parent") as span:
            logger.warning("in a span")
        logger.warning("not in a span")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    ctx = span.get_span_context()
    name = provider_service_name()
    assert stream.getvalue().splitlines() == [
        f"{ctx.trace_id:032x} {ctx.span_id:016x} True {name} in a span",
        f"{'0' * 32} {'0' * 16} False {name} not in a span",
    ]


def test_an_app_factory_set_before_the_agent_is_still_called(spans, restore_logging):
    base = logging.getLogRecordFactory()

    def app_factory(*args, **kwargs):
        made = base(*args, **kwargs)
        made.app_field = "app"
        return made

    logging.setLogRecordFactory(app_factory)
    logging_hook.patch(logging)
    with tracer().start_as_current_span("parent") as span:
        made = record()
    assert made.app_field == "app"
    assert made.otelSpanID == format(span.get_span_context().span_id, "016x")


def test_an_app_factory_set_after_that_chains_keeps_the_fields(hooked):
    ours = logging.getLogRecordFactory()

    def app_factory(*args, **kwargs):
        made = ours(*args, **kwargs)
        made.app_field = "app"
        return made

    logging.setLogRecordFactory(app_factory)
    with tracer().start_as_current_span("parent") as span:
        made = record()
    assert made.app_field == "app"
    assert made.otelSpanID == format(span.get_span_context().span_id, "016x")


class AppRecord(logging.LogRecord):
    """An app's own record class, set as the factory without chaining the one in place."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.app_field = "app"


def test_an_app_factory_set_after_that_does_not_chain_still_gives_logged_records_the_fields(hooked):
    logging.setLogRecordFactory(AppRecord)
    assert logging.getLogRecordFactory() is AppRecord  # the app's own, as it set it
    with tracer().start_as_current_span("parent") as span:
        made = record()
    assert type(made) is AppRecord and made.app_field == "app"
    ctx = span.get_span_context()
    assert (made.otelTraceID, made.otelSpanID, made.otelTraceSampled) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", True)
    assert made.otelServiceName == provider_service_name()
    direct = AppRecord("direct", logging.INFO, __file__, 1, "m", (), None)  # no logger: documented
    assert not any(hasattr(direct, field) for field in FIELDS)


def _logged_with(fmt: str, *calls) -> list[str]:
    """The lines a logger writes with formatter ``fmt`` for each ``(message, extra)`` call."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt))
    logger = logging.getLogger("test.log.extra")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for message, extra in calls:
            logger.warning(message, extra=extra)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return stream.getvalue().splitlines()


def test_extra_naming_the_fields_gives_the_apps_values(hooked):
    fmt = "%(otelTraceID)s %(otelSpanID)s %(otelTraceSampled)s %(otelServiceName)s %(custom)s %(message)s"
    with tracer().start_as_current_span("parent") as span:
        lines = _logged_with(
            fmt,
            ("all", {"otelTraceID": "t", "otelSpanID": "s", "otelTraceSampled": "maybe", "otelServiceName": "n", "custom": 1}),
            ("one", {"otelTraceID": "mine", "custom": 2}),
            ("none", {"custom": 3}),
        )
    ctx = span.get_span_context()
    trace_id, span_id, name = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", provider_service_name()
    assert lines == [
        "t s maybe n 1 all",
        f"mine {span_id} True {name} 2 one",
        f"{trace_id} {span_id} True {name} 3 none",
    ]


def test_extra_refused_by_logging_is_refused_as_without_the_agent(restore_logging):
    def refusal(extra):
        logger = logging.getLogger("test.log.refused")
        with pytest.raises(KeyError) as raised:
            logger.makeRecord("n", logging.INFO, __file__, 1, "m", (), None, extra=extra)
        return str(raised.value)

    extras = ({"message": "x"}, {"asctime": "x", "otelTraceID": "t"}, {"levelname": "x"})
    plain = [refusal(extra) for extra in extras]
    logging_hook.patch(logging)
    assert [refusal(extra) for extra in extras] == plain
    with pytest.raises(TypeError):  # not a mapping: logging's own error
        logging.getLogger("test.log.refused").warning("m", extra=42)


def test_patch_twice_wraps_once(hooked):
    ours = logging.getLogRecordFactory()
    logging_hook.patch(logging)
    assert logging.getLogRecordFactory() is ours


def test_unpatch_puts_the_factory_back(spans, restore_logging):
    before = logging.getLogRecordFactory()
    logging_hook.patch(logging)
    assert logging.getLogRecordFactory() is not before
    logging_hook.unpatch(logging)
    assert logging.getLogRecordFactory() is before


def test_a_failing_lookup_still_gives_the_record_every_field(hooked, monkeypatch):
    def broken(*args):
        raise RuntimeError("broken")

    monkeypatch.setattr(logging_hook, "_find_service_name", broken)
    monkeypatch.setattr(logging_hook, "_current_ids", broken)
    with tracer().start_as_current_span("parent"):
        made = record("still here")
    assert made.getMessage() == "still here"
    assert (made.otelTraceID, made.otelSpanID, made.otelTraceSampled, made.otelServiceName) == (
        "0" * 32,
        "0" * 16,
        False,
        "",
    )


def test_records_in_one_span_and_then_another_name_each_span(hooked):
    with tracer().start_as_current_span("first") as first:
        a, b = record(), record()
    with tracer().start_as_current_span("second") as second:
        c = record()
    assert a.otelSpanID == b.otelSpanID == format(first.get_span_context().span_id, "016x")
    assert c.otelSpanID == format(second.get_span_context().span_id, "016x")
    assert record().otelSpanID == "0" * 16


# -- the service name --------------------------------------------------------------------


def test_service_name_is_the_agents(hooked, monkeypatch):
    monkeypatch.setattr(provider, "_setup_args", (None, None, "checkout"))
    monkeypatch.setattr(provider, "_state", "waiting")
    logging_hook._name_cache = (None, "")
    assert record().otelServiceName == "checkout"


def test_service_name_is_the_apps_providers_when_the_agent_declined(hooked, monkeypatch):
    monkeypatch.setattr(provider, "_setup_args", (None, None, "checkout"))
    monkeypatch.setattr(provider, "_state", "declined")
    logging_hook._name_cache = (None, "")
    assert record().otelServiceName == provider_service_name()


# -- OTEL_PYTHON_LOG_CORRELATION -------------------------------------------------------------


def _basic_config_output(monkeypatch, implicit: bool = False) -> str:
    """What the root logger writes after basicConfig() with no format (explicit or implicit)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # basicConfig()'s default stream
    if implicit:
        logging.warning("implicit")  # no handler: logging calls basicConfig() itself
    else:
        logging.basicConfig()
        logging.getLogger("app").warning("explicit")
    return stream.getvalue()


@pytest.mark.parametrize("implicit", [False, True])
def test_correlation_true_puts_the_ids_in_basic_configs_default_format(spans, restore_logging, monkeypatch, implicit):
    monkeypatch.setenv(logging_hook.CORRELATION_ENV, "true")
    logging_hook.patch(logging)
    with tracer().start_as_current_span("parent") as span:
        out = _basic_config_output(monkeypatch, implicit)
    ctx = span.get_span_context()
    assert f"[trace_id={ctx.trace_id:032x} span_id={ctx.span_id:016x} " in out
    assert f"resource.service.name={provider_service_name()} trace_sampled=True] - " in out


def test_correlation_keeps_a_format_the_app_passes(spans, restore_logging, monkeypatch):
    monkeypatch.setenv(logging_hook.CORRELATION_ENV, "true")
    logging_hook.patch(logging)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = io.StringIO()
    logging.basicConfig(stream=stream, format="%(levelname)s|%(message)s")
    logging.getLogger("app").warning("mine")
    assert stream.getvalue() == "WARNING|mine\n"


@pytest.mark.parametrize("value", [None, "false", "FALSE"])
def test_correlation_false_or_unset_leaves_the_default_format(spans, restore_logging, monkeypatch, warnings, value):
    if value is not None:
        monkeypatch.setenv(logging_hook.CORRELATION_ENV, value)
    logging_hook.patch(logging)
    assert _basic_config_output(monkeypatch) == "WARNING:app:explicit\n"
    assert warnings() == []


def test_an_invalid_correlation_value_warns_once(spans, restore_logging, monkeypatch, capsys):
    monkeypatch.setenv(logging_hook.CORRELATION_ENV, "perhaps")
    logging_hook.patch(logging)
    logging_hook.unpatch(logging)
    logging_hook.patch(logging)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autotrace WARNING:")]
    assert len(lines) == 1, lines
    assert "OTEL_PYTHON_LOG_CORRELATION" in lines[0] and "perhaps" in lines[0]
    assert _basic_config_output(monkeypatch) == "WARNING:app:explicit\n"  # the default: false


def test_otel_python_log_format_chooses_the_default_format(spans, restore_logging, monkeypatch):
    monkeypatch.setenv(logging_hook.CORRELATION_ENV, "true")
    monkeypatch.setenv(logging_hook.FORMAT_ENV, "%(otelTraceID)s:%(message)s")
    logging_hook.patch(logging)
    assert _basic_config_output(monkeypatch) == "0" * 32 + ":explicit\n"


def test_an_invalid_otel_python_log_format_warns_and_uses_the_default(spans, restore_logging, monkeypatch, capsys):
    monkeypatch.setenv(logging_hook.CORRELATION_ENV, "true")
    monkeypatch.setenv(logging_hook.FORMAT_ENV, "%(unclosed")
    logging_hook.patch(logging)
    logging_hook.unpatch(logging)
    logging_hook.patch(logging)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines  # one line, once, nothing else
    assert lines[0].startswith("autotrace WARNING: OTEL_PYTHON_LOG_FORMAT=")
    assert "'%(unclosed'" in lines[0]
    assert logging.BASIC_FORMAT == logging_hook.DEFAULT_FORMAT


# An app that sets its own record factory (not chaining), then basicConfig(), with the
# correlated default format: every line is written, with the ids.
@pytest.mark.parametrize("fmt", [None, "%(otelTraceID)s %(otelSpanID)s %(message)s"], ids=["default", "env"])
def test_correlated_default_format_with_an_apps_own_factory(spans, restore_logging, monkeypatch, fmt):
    monkeypatch.setenv(logging_hook.CORRELATION_ENV, "true")
    if fmt is not None:
        monkeypatch.setenv(logging_hook.FORMAT_ENV, fmt)
    logging_hook.patch(logging)
    logging.setLogRecordFactory(AppRecord)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # basicConfig()'s stream, and "--- Logging error ---"'s
    logging.basicConfig()
    with tracer().start_as_current_span("parent") as span:
        logging.getLogger("app").warning("in a span")
    logging.getLogger("app").warning("outside")
    root.handle(logging.makeLogRecord({"msg": "no fields", "levelno": logging.WARNING}))  # made without a logger
    out = stream.getvalue()
    assert "Logging error" not in out, out
    ctx = span.get_span_context()
    if fmt is None:
        inside, outside, bare = out.splitlines()
        assert f"[trace_id={ctx.trace_id:032x} span_id={ctx.span_id:016x} " in inside and inside.endswith("- in a span")
        assert f"[trace_id={'0' * 32} span_id={'0' * 16} " in outside and outside.endswith("- outside")
        assert f"[trace_id={'0' * 32} span_id={'0' * 16} resource.service.name= trace_sampled=False] - no fields" in bare
    else:
        assert out.splitlines() == [
            f"{ctx.trace_id:032x} {ctx.span_id:016x} in a span",
            f"{'0' * 32} {'0' * 16} outside",
            f"{'0' * 32} {'0' * 16} no fields",
        ]


def test_only_the_correlated_format_fills_in_missing_fields(spans, restore_logging, monkeypatch):
    monkeypatch.setenv(logging_hook.CORRELATION_ENV, "true")
    logging_hook.patch(logging)
    bare = logging.LogRecord("bare", logging.INFO, __file__, 1, "m", (), None)  # no factory
    assert logging.Formatter().format(bare) == "m"
    assert logging.Formatter(logging_hook.DEFAULT_FORMAT).format(bare).endswith("trace_sampled=False] - m")
    with pytest.raises(ValueError, match="otelTraceID"):  # the app's own format: as without the agent
        logging.Formatter("%(otelTraceID)s %(message)s").format(bare)
    assert not hasattr(bare, "otelTraceID")  # the record itself is left as it was


LAST_RESORT = """
import logging, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from autotrace.hooks import logging as hook
hook.patch(logging)
trace.set_tracer_provider(TracerProvider())
with trace.get_tracer("t").start_as_current_span("parent") as span:
    logging.getLogger("named").warning("no handler configured")
print(format(span.get_span_context().trace_id, "032x"), format(span.get_span_context().span_id, "016x"))
"""


@pytest.mark.parametrize("correlation", ["true", "false"])
def test_a_named_logger_without_handlers_writes_through_last_resort(correlation):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.update(OTEL_SERVICE_NAME="last-resort", OTEL_PYTHON_LOG_CORRELATION=correlation)
    out = subprocess.run([sys.executable, "-c", LAST_RESORT], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    trace_id, span_id = out.stdout.split()
    [line] = out.stderr.splitlines()
    if correlation == "true":
        assert "WARNING [named] [<string>:9] " in line
        assert f"[trace_id={trace_id} span_id={span_id} resource.service.name=last-resort trace_sampled=True] - " in line
        assert line.endswith("- no handler configured")
    else:
        assert line == "no handler configured"  # Python's own last resort: the message only


def test_nothing_of_opentelemetry_is_imported_while_nothing_is_traced():
    code = (
        "import sys, logging\n"
        "from autotrace.hooks import logging as hook\n"
        "hook.patch(logging)\n"
        "r = logging.getLogger('x').makeRecord('x', 20, 'f', 1, 'm', (), None)\n"
        "print(r.otelTraceID, r.otelSpanID, r.otelTraceSampled, repr(r.otelServiceName))\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env["OTEL_SERVICE_NAME"] = "quiet"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{'0' * 32} {'0' * 16} False 'quiet'", "[]"]


def test_a_record_made_while_the_api_is_being_imported_has_zero_ids(hooked, monkeypatch):
    import types

    monkeypatch.setattr(logging_hook, "_lookup", None)
    # As while opentelemetry.trace.propagation runs its own import: no _SPAN_KEY yet.
    monkeypatch.setitem(sys.modules, "opentelemetry.trace.propagation", types.ModuleType("opentelemetry.trace.propagation"))
    with tracer().start_as_current_span("parent"):
        made = record()
    assert (made.otelTraceID, made.otelSpanID, made.otelTraceSampled) == ("0" * 32, "0" * 16, False)
    assert logging_hook._lookup is None  # looked up again at the next record
