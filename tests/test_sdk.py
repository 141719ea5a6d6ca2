from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from autotrace import __version__, exporters, sdk
from autotrace.config import Configuration, load
from autotrace.entrypoint import parse


@pytest.mark.parametrize(
    "name, description",
    [
        ("always_on", "AlwaysOnSampler"),
        ("always_off", "AlwaysOffSampler"),
        ("traceidratio", "TraceIdRatioBased{0.25}"),
        ("parentbased_always_on", "ParentBased{root:AlwaysOnSampler,"),
        ("parentbased_always_off", "ParentBased{root:AlwaysOffSampler,"),
        ("parentbased_traceidratio", "ParentBased{root:TraceIdRatioBased{0.25},"),
    ],
)
def test_build_sampler(name, description):
    sampler = sdk.build_sampler(Configuration(sampler=name, sampler_arg=0.25))
    assert sampler.get_description().startswith(description)


def test_build_sampler_types_and_ratio():
    assert sdk.build_sampler(Configuration(sampler="always_on")) is sampling.ALWAYS_ON
    assert sdk.build_sampler(Configuration(sampler="always_off")) is sampling.ALWAYS_OFF
    ratio = sdk.build_sampler(Configuration(sampler="traceidratio", sampler_arg=0.5))
    assert isinstance(ratio, sampling.TraceIdRatioBased) and ratio.rate == 0.5
    assert isinstance(sdk.build_sampler(Configuration()), sampling.ParentBased)


def test_build_resource():
    settings = load({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=core,service.name=ignored"})
    entry = parse(["/venv/bin/python3", "/srv/app.py", "--db-password", "hunter2", "--token=s3cr3t"])
    attributes = dict(sdk.build_resource(settings, entry, "shop").attributes)
    assert attributes["service.name"] == "shop"
    assert attributes["telemetry.distro.name"] == "autotrace"
    assert attributes["telemetry.distro.version"] == __version__
    assert attributes["process.pid"] == os.getpid()
    assert attributes["host.name"] == socket.gethostname()
    assert attributes["deployment.environment"] == "prod"
    assert attributes["team"] == "core"
    assert attributes["process.command"] == "app"
    text = repr(attributes)
    assert "hunter2" not in text and "s3cr3t" not in text and "--db-password" not in text
    assert not any("args" in key or "command_line" in key for key in attributes)


class FakeExporter(SpanExporter):
    def __init__(self) -> None:
        self.suppressed_at_export: list = []
        self.suppressed_at_creation = get_value(_SUPPRESS_INSTRUMENTATION_KEY)

    def export(self, spans):
        self.suppressed_at_export.append(get_value(_SUPPRESS_INSTRUMENTATION_KEY))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_export_runs_with_instrumentation_suppressed():
    made: list[FakeExporter] = []

    def factory() -> FakeExporter:
        made.append(FakeExporter())
        return made[-1]

    handle = exporters.ExporterHandle("fake", factory)
    assert len(made) == 1  # made at set-up, not at the first export
    assert not get_value(_SUPPRESS_INSTRUMENTATION_KEY)
    assert handle.export([]) is SpanExportResult.SUCCESS
    assert handle.export([]) is SpanExportResult.SUCCESS
    assert made[0].suppressed_at_export == [True, True]
    assert made[0].suppressed_at_creation is True
    assert not get_value(_SUPPRESS_INSTRUMENTATION_KEY)  # detached afterwards
    assert len(made) == 1


def test_factory_that_raises_gives_failure_and_one_warning(warnings):
    attempts = []

    def factory():
        attempts.append(1)
        raise RuntimeError("no transport")

    handle = exporters.ExporterHandle("otlp", factory)
    assert handle.export([]) is SpanExportResult.FAILURE
    assert handle.export([]) is SpanExportResult.FAILURE
    assert handle.force_flush() is True
    handle.shutdown()
    assert len(attempts) == 1
    lines = warnings()
    assert len(lines) == 1 and "otlp exporter" in lines[0] and "no transport" in lines[0]


def test_the_grpc_exporter_is_made_at_the_first_export_its_modules_at_set_up(monkeypatch):
    """Over OTLP/gRPC the set-up imports the exporter's modules but makes no channel (a
    process that forks after its set-up, gunicorn's master, must have none); the first
    export makes it, with instrumentation suppressed, once."""
    imported: list[int] = []
    monkeypatch.setattr(exporters, "grpc_imports", lambda: imported.append(1))
    made: list[FakeExporter] = []

    def factory() -> FakeExporter:
        made.append(FakeExporter())
        return made[-1]

    settings = Configuration(protocol="grpc")
    handle = exporters.ExporterHandle("otlp", factory, settings=settings)
    assert imported == [1] and made == []  # modules at set-up, no exporter yet
    assert handle.force_flush() is True
    handle.closing()  # at exit before any export: the exporter made then gets no retries
    assert made == []
    assert handle.export([]) is SpanExportResult.SUCCESS
    assert handle.export([]) is SpanExportResult.SUCCESS
    assert len(made) == 1
    assert made[0].suppressed_at_creation is True
    assert made[0].suppressed_at_export == [True, True]
    http = exporters.ExporterHandle("otlp", factory, settings=Configuration(protocol="http/protobuf"))
    assert len(made) == 2 and imported == [1]  # OTLP/HTTP: made at set-up, as before
    http.shutdown()
    handle.shutdown()


def test_grpc_imports_import_the_exporter_without_making_a_channel():
    import sys

    exporters.grpc_imports()
    assert "grpc" in sys.modules
    assert "opentelemetry.exporter.otlp.proto.grpc.trace_exporter" in sys.modules
    assert "autotrace.otlp_exporters" in sys.modules


def test_grpc_modules_that_cannot_be_imported_give_one_warning_at_set_up(monkeypatch, warnings):
    def missing() -> None:
        raise ImportError("No module named 'grpc'")

    monkeypatch.setattr(exporters, "grpc_imports", missing)
    made: list[int] = []
    handle = exporters.ExporterHandle("otlp", lambda: made.append(1), settings=Configuration(protocol="grpc"))
    lines = warnings()
    assert len(lines) == 1 and "cannot create the otlp exporter (ImportError: No module named 'grpc')" in lines[0]
    assert handle.export([]) is SpanExportResult.FAILURE
    assert made == [] and warnings() == []  # not tried again, no second line


def test_exporter_that_raises_gives_failure_and_one_line_per_kind(warnings):
    class Broken(FakeExporter):
        def export(self, spans):
            raise OSError("stderr closed")

    handle = exporters.ExporterHandle("console", Broken)
    for _ in range(3):
        assert handle.export([]) is SpanExportResult.FAILURE
    assert not get_value(_SUPPRESS_INSTRUMENTATION_KEY)  # detached even on failure
    lines = warnings()
    assert len(lines) == 1 and "console exporter failed" in lines[0] and "stderr closed" in lines[0]


def _join_flush_threads() -> None:
    for thread in threading.enumerate():
        if thread.name == "autotrace-flush":
            thread.join(5)


def test_bounded_gives_up_within_the_bound(warnings):
    release = threading.Event()
    try:
        started = time.monotonic()
        assert sdk._bounded(lambda: release.wait(30), 0.2) is False
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 2.0
    finally:
        release.set()
        _join_flush_threads()
    lines = warnings()
    assert len(lines) == 1 and "not flushed within 0.2s" in lines[0]


def test_bounded_returns_true_when_work_finishes(warnings):
    done = []
    assert sdk._bounded(lambda: done.append(1), 5) is True
    assert done == [1]
    assert warnings() == []


def test_bounded_work_that_raises_is_reported_not_raised(warnings):
    def work():
        raise OSError("collector gone")

    assert sdk._bounded(work, 5) is True
    lines = warnings()
    assert len(lines) == 1 and "collector gone" in lines[0]
