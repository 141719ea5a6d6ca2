"""The span exporters ``OTEL_TRACES_EXPORTER`` names, and the handle each one is used through.

- ``otlp``: for OTLP/HTTP autotrace's exporter (:mod:`autotrace.otlp_http`, bytes over
  ``http.client``); for gRPC autotrace's exporter over ``h2`` (:mod:`autotrace.otlp_grpc`)
  unless the app imported ``grpc`` before the exporter was made (in a forked child: at
  its first export), else the SDK's exporter with autotrace's encoding
  (:mod:`autotrace.otlp_exporters`); either way the spans were encoded as they ended
  (:mod:`autotrace.span_queue`, :mod:`autotrace.otlp_encode`);
- ``console``: each finished trace as an indented tree on stderr
  (:mod:`autotrace.console_view`);
- ``console-json``: the SDK's raw JSON, one object per span, on stderr.

Imported with the SDK (see :mod:`autotrace.sdk`), never at start-up; an exporter's
transport (grpc; http.client for OTLP/HTTP) is imported by its factory, for the protocol chosen only
(for OTLP/gRPC at set-up, by :func:`grpc_imports`; its channel is made at the first export).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from typing import Any, Callable, Mapping, Sequence

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import _log, export_report
from .config import Configuration

logger = _log.logger


# The variables grpcio reads for a proxy: the h2 exporter has no proxy support, so with one
# of them set the export goes through grpcio's exporter, which honours them (and no_proxy).
GRPC_PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy")


def _grpc_proxy_set(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) or environ.get(name.upper()) for name in GRPC_PROXY_VARIABLES)


def _h2_wanted() -> bool:
    """Whether OTLP/gRPC goes over h2 (:mod:`autotrace.otlp_grpc`) rather than grpcio: the app
    has not imported grpc (then it costs nothing) and no proxy is set (h2's path has none)."""
    return "grpc" not in sys.modules and not _grpc_proxy_set(os.environ)


def _own_exporter_settings(settings: Configuration) -> dict[str, Any]:
    """What the agent's own OTLP exporters (HTTP, and gRPC over h2) are made with."""
    return {
        "endpoint": settings.endpoint,
        "headers": dict(settings.headers),
        "timeout_s": settings.timeout_s,
        "compression": settings.compression,
        "certificate": settings.certificate,
        "client_key": settings.client_key,
        "client_certificate": settings.client_certificate,
    }


def otlp_factory(settings: Configuration) -> Callable[[], SpanExporter]:
    """The factory of the OTLP exporter ``settings`` describe (protocol, endpoint, headers, ...)."""

    def make() -> SpanExporter:
        if settings.protocol == "grpc" and _h2_wanted():
            # The app has not imported grpc: HTTP/2 with h2 (a few MB), not grpcio (about 21 MB).
            try:
                from .otlp_grpc import OtlpGrpcExporter
            except ImportError as exc:  # h2 missing: grpcio's exporter
                logger.debug("OTLP/gRPC over h2 unavailable (%s); using grpcio's exporter", exc)
            else:
                return OtlpGrpcExporter(insecure=settings.insecure, **_own_exporter_settings(settings))
        if settings.protocol == "grpc":
            from grpc import Compression as GrpcCompression

            from .otlp_exporters import grpc_exporter_class

            GrpcExporter = grpc_exporter_class()  # the SDK's, with autotrace's span encoder
            return GrpcExporter(
                endpoint=settings.endpoint,
                insecure=settings.insecure,
                headers=dict(settings.headers),
                timeout=settings.timeout_s,
                compression=GrpcCompression.Gzip
                if settings.compression == "gzip"
                else GrpcCompression.NoCompression,
            )
        if not settings.credential_provider:
            from .otlp_http import OtlpHttpExporter  # no protobuf, no requests

            return OtlpHttpExporter(**_own_exporter_settings(settings))
        # A credential provider's requests.Session: the SDK's exporter, which loads it.
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

        from .otlp_exporters import http_exporter_class

        HttpExporter = http_exporter_class()  # the SDK's, with autotrace's span encoder
        return HttpExporter(
            endpoint=settings.endpoint,
            headers=dict(settings.headers),
            timeout=settings.timeout_s,
            compression=HttpCompression.Gzip
            if settings.compression == "gzip"
            else HttpCompression.NoCompression,
        )

    return make


def grpc_imports() -> None:
    """Import what the OTLP/gRPC exporter is made of, without making one: a set-up that may
    be followed by a fork (gunicorn's master) makes no channel, and the export thread that
    makes it later imports nothing of weight. That is h2 and :mod:`autotrace.otlp_grpc` when
    the exporter will be that one (see :func:`otlp_factory`), else grpcio, the SDK's
    exporter and the agent's encoding."""
    if _h2_wanted():
        try:
            from . import otlp_grpc  # noqa: F401
        except ImportError as exc:  # h2 missing: grpcio's exporter, as otlp_factory decides too
            logger.debug("OTLP/gRPC over h2 unavailable (%s); using grpcio's exporter", exc)
        else:
            return
    import grpc  # noqa: F401
    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter  # noqa: F401

    from . import otlp_exporters  # noqa: F401


def console_factory() -> SpanExporter:
    """``console``: each finished trace as an indented tree on stderr."""
    from .console_view import ConsoleTreeExporter

    return ConsoleTreeExporter()


def console_json_factory() -> SpanExporter:
    """``console-json``: the SDK's raw JSON, one object per span, on stderr."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter(out=sys.stderr)


def factories(settings: Configuration) -> dict[str, Callable[[], SpanExporter]]:
    """Exporter name (a value of ``OTEL_TRACES_EXPORTER``) -> the factory of that exporter."""
    return {"otlp": otlp_factory(settings), "console": console_factory, "console-json": console_json_factory}


class ExporterHandle(SpanExporter):
    """Owns one real exporter: made at set-up, made anew in a forked child.

    It is made at set-up, not at the first export, because the first export may come
    at interpreter exit, when importing the exporter's transport is no longer allowed.
    A child of ``fork`` must not share the parent's connection (an HTTP connection or a
    gRPC channel), so it makes its own at its first export; the modules are already
    imported by then. The OTLP/gRPC exporter is always made at the first export, its
    modules imported at set-up (:func:`grpc_imports`): a process that sets up and then
    forks (gunicorn's master) makes no channel, and the first request does not wait for
    one. Export runs with instrumentation suppressed, the key every
    autotrace hook checks, so the exporter's own calls are never traced or injected.

    Failed exports are reported by :mod:`autotrace.export_report`; ``failures`` replaces
    the agent's report of them (the doctor keeps the cause instead of logging it);
    ``settings``, the configuration of the OTLP exporter, lets the report name what is
    wrong with the endpoint. At exit (:func:`closing`) a failed export is not retried.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], SpanExporter],
        failures: export_report.ExportFailures | None = None,
        settings: Configuration | None = None,
    ) -> None:
        self.name = name
        self.settings = settings if name == "otlp" else None
        self._closing = False
        self._factory = factory
        self._lock = threading.Lock()
        self._failed = False
        self._exporter: SpanExporter | None = None
        self._reporting = False  # the report is set up at the first export
        self.failures = failures
        if self.settings is not None and self.settings.protocol == "grpc":
            self._prepare(grpc_imports)
        else:
            self._get()
        _handles.add(self)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """In a forked child: a new exporter at the first export. The parent's is kept,
        never used, closed nor freed here: its connection is the parent's (for gRPC, its
        channel's state belongs to the parent's gRPC)."""
        if self._exporter is not None:
            _inherited.append(self._exporter)
        self._exporter = None
        self._lock = threading.Lock()

    def _prepare(self, imports: Callable[[], None]) -> None:
        """At set-up: import the exporter's modules (the exporter is made at the first export)."""
        try:
            imports()
        except Exception as exc:  # noqa: BLE001 - fail open, one line
            self._cannot_create(exc)

    def _cannot_create(self, exc: Exception) -> None:
        self._failed = True
        logger.warning(
            "cannot create the %s exporter (%s: %s); spans are dropped; %s",
            self.name,
            type(exc).__name__,
            exc,
            export_report.DOCTOR,
        )

    def _get(self) -> SpanExporter | None:
        if self._exporter is None and not self._failed:
            with self._lock:
                if self._exporter is None and not self._failed:
                    token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
                    try:
                        exporter = self._factory()
                        if self._closing:  # made at exit (a first export then): no retries either
                            _stop_retries(exporter)
                        self._exporter = exporter
                        export_report.quiet_sdk_export_logs()
                    except Exception as exc:  # noqa: BLE001 - fail open, one line
                        self._cannot_create(exc)
                    finally:
                        detach(token)
        return self._exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        exporter = self._get()
        if exporter is None:
            return SpanExportResult.FAILURE
        if not self._reporting:
            self._reporting = True
            self.failures = export_report.failures_of(exporter, self.name, self.failures, self.settings)
            if self._closing:
                self.failures.closing = True
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        started = time.monotonic()
        try:
            causes = export_report.start_capture()  # what the SDK logs meanwhile: the cause, not a line
            try:
                result = exporter.export(spans)
            except Exception as exc:  # noqa: BLE001 - reported once per cause, then summarised
                causes.insert(0, (exc,))
                result = SpanExportResult.FAILURE
            finally:
                export_report.stop_capture()
            # Still suppressed: diagnosing a failure may ask the port, and that is not traced.
            export_report.report(
                self.failures, result is SpanExportResult.SUCCESS, causes, len(spans), time.monotonic() - started
            )
            # An exception's traceback holds its frames, and through them this one, which holds
            # the list: a cycle only the full garbage collection would free, and with it the
            # batch (while the collector is down, one per export: tens of MB).
            causes.clear()
        finally:
            detach(token)
        return result

    def closing(self) -> None:
        """At exit: export what is left once, without retrying a failed export.

        The SDK's exporters retry a failed export with a growing back-off (1 s, 2 s, ...)
        until their timeout, unless they are shutting down; the event that says so is set
        now, before the last batches are exported, so that a collector that is not there
        (refused, unknown host, another protocol) costs one attempt, not the flush bound.
        A collector that accepts and does not answer still holds the exit up to the bound.
        """
        self._closing = True
        if self.failures is not None:
            self.failures.closing = True
        exporter = self._exporter
        if exporter is not None:  # None: not made yet (a forked child), _get stops its retries
            _stop_retries(exporter)

    def waiting_for(self) -> str:
        """What an export under way waits for, in words ("" when none is known to wait)."""
        exporter = self._exporter
        activity = getattr(exporter, "activity", None)
        if isinstance(activity, str):
            return activity
        if exporter is not None and self.settings is not None:
            from .config import redact_url

            return f"an export to {redact_url(self.settings.endpoint)} is still waiting for an answer"
        return ""

    def shutdown(self, timeout_millis: float = 30000, **kwargs: object) -> None:
        exporter = self._exporter
        export_report.close(self.failures)
        if exporter is not None:
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        exporter = self._exporter
        return True if exporter is None else exporter.force_flush(timeout_millis)


def _stop_retries(exporter: SpanExporter) -> None:
    """Tell an exporter that the process is exiting: a failed export is not retried."""
    closing = getattr(exporter, "closing", None)  # autotrace's OTLP/HTTP exporter
    if callable(closing):
        closing()
    client = getattr(exporter, "_client", None)  # OTLP/HTTP: the SDK's HTTP client
    for event in (getattr(client, "_shutdown_event", None), getattr(exporter, "_shutdown_in_progress", None)):
        if event is not None and hasattr(event, "set"):
            event.set()


_handles: weakref.WeakSet[ExporterHandle] = weakref.WeakSet()
_inherited: list[SpanExporter] = []  # in a forked child: the exporters of its parent (see _forget)


def closing() -> None:
    """At exit, before the last flush: no exporter retries a failed export any more
    (see :meth:`ExporterHandle.closing`); never raises."""
    for handle in list(_handles):
        try:
            handle.closing()
        except Exception as exc:  # noqa: BLE001 - the flush bound still holds
            logger.debug("cannot stop the %s exporter's retries: %s", handle.name, exc)


def waiting_for() -> str:
    """What the exports under way wait for, in words (see :meth:`ExporterHandle.waiting_for`)."""
    for handle in list(_handles):
        try:
            found = handle.waiting_for()
        except Exception:  # noqa: BLE001
            found = ""
        if found:
            return found
    return ""


def lost_spans() -> int:
    """Spans of failed exports since the start, all exporters."""
    return sum(handle.failures.lost_spans for handle in list(_handles) if handle.failures is not None)
