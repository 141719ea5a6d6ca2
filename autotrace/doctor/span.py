"""The test span: one real span sent through the agent's own exporter, bounded."""

from __future__ import annotations

import time

from ..export_report import Diagnosis, ExportFailures, classify_failure, describe
from .check import FAIL, OK, Check, redact
from .endpoint import CERTIFICATE_FIX


def failure_fix(kind: str, hint: str) -> str:
    """The fix for a failed test span, from the agent's own classification of the failure."""
    text = f"{kind} {hint}".lower()
    if "certificate" in text or kind == "SSLError":
        return CERTIFICATE_FIX
    if kind == "connection refused":
        return "start the collector, or point --endpoint at where it listens"
    if kind == "timeout":
        return "check that the collector is reachable from here, or raise OTEL_EXPORTER_OTLP_TIMEOUT"
    if kind in ("HTTP 401", "HTTP 403", "gRPC UNAUTHENTICATED", "gRPC PERMISSION_DENIED"):
        return "set the credentials in OTEL_EXPORTER_OTLP_HEADERS"
    if kind == "HTTP 404":
        return "check the endpoint's path: the collector's OTLP/HTTP traces path is /v1/traces"
    if kind == "gRPC UNAVAILABLE":
        return "check the endpoint's port and TLS (https:// or OTEL_EXPORTER_OTLP_INSECURE) against the collector's"
    return "check that the endpoint is the collector's OTLP receiver and the protocol matches it"


class Verdict(ExportFailures):
    """Keeps the classified cause of a failed export instead of logging it."""

    kind = hint = ""

    def failed(self, kind: str, hint: str, spans: int) -> None:
        self.kind, self.hint = kind, hint

    def succeeded(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_span_check(settings, service_name: str, timeout: float) -> Check:
    """Send one real span through the agent's own exporter, synchronously and bounded.

    The export runs through :class:`autotrace.exporters.ExporterHandle`, so a failure is
    classified exactly as the agent classifies it
    (:func:`autotrace.export_report.classify_failure`).
    """
    import logging
    import threading

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    from .. import exporters

    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # the doctor reports it
    settings.timeout_s = min(settings.timeout_s, timeout)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    spans = []

    class Keep(SpanProcessor):
        def on_end(self, span):
            spans.append(span)

    provider.add_span_processor(Keep())
    with provider.get_tracer("autotrace.doctor").start_as_current_span("autotrace doctor test span"):
        pass
    verdict = Verdict(f"to {redact(settings.endpoint)}", settings=settings)  # diagnosed as the agent does
    result: list[object] = []

    def send() -> None:
        try:
            handle = exporters.ExporterHandle("otlp", exporters.otlp_factory(settings), failures=verdict)
            try:
                result.append(handle.export(spans))
            finally:
                handle.shutdown()
        except Exception as exc:  # noqa: BLE001
            result.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    took = time.monotonic() - started
    outcome = result[0] if result else None
    shown = redact(settings.endpoint)
    if outcome == SpanExportResult.SUCCESS:
        return Check(OK, "test span", f"accepted by {shown} in {took * 1000:.0f} ms")
    if outcome is None:
        kind, hint = "timeout", f" (no answer within {timeout:g}s)"
    elif isinstance(outcome, Exception):
        kind, hint = classify_failure([outcome])
    elif verdict.kind:
        kind, hint = verdict.kind, verdict.hint
    else:
        kind, hint = "the exporter could not be created", ""
    if isinstance(hint, Diagnosis):
        found, _, fix = hint.partition("; fix: ")
        return Check(FAIL, "test span", f"not accepted by {shown} after {took * 1000:.0f} ms: {found}", fix)
    return Check(
        FAIL,
        "test span",
        f"not accepted by {shown} after {took * 1000:.0f} ms: {describe(kind, hint)}",
        failure_fix(kind, hint),
    )
