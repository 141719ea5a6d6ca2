"""Failed exports and dropped spans, reported without a line per batch.

The SDK logs each failed batch (and each retry) and each span its full batch queue
drops. The agent replaces those lines by its own report: the first failure of each
cause at once, with the cause (:func:`classify_failure`), then a summary at most once
a minute (:class:`ExportFailures`), and the same for queue drops (:class:`QueueDrops`).
:class:`autotrace.exporters.ExporterHandle` runs each export inside :func:`start_capture`
... :func:`stop_capture`, so the causes the SDK logs meanwhile are kept, not printed.

Imported with the SDK (see :mod:`autotrace.sdk`), never at start-up.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Iterator, Sequence

from . import _log

logger = _log.logger


# How often failed exports are summarised after the first one of each cause is reported.
EXPORT_SUMMARY_INTERVAL_S = 60.0

# The SDK's loggers that log each failed batch (and each retry): their lines are replaced
# by the agent's own report (see ExportFailures); the cause they carry is kept.
SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
)
_capture = threading.local()  # .causes: what the SDK logged during the current export
_quieted = False
QUEUE_FULL = "Queue full, dropping %s."  # the SDK's line for each span its batch queue drops


def quiet_sdk_export_logs() -> None:
    """Hide the SDK's per-batch export log lines; idempotent. Run when an exporter is made."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    import logging

    class _ExportLogFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            # Runs inside the SDK's logging calls, on the app's threads too: never raises.
            try:
                if record.msg == QUEUE_FULL:  # in span.end() on the app's thread: cheap
                    queue_drops.dropped()
                    return False
                causes = getattr(_capture, "causes", None)
                if causes is not None:  # inside ExporterHandle.export: keep the cause, drop the line
                    causes.append(record.args if isinstance(record.args, tuple) else (record.getMessage(),))
                    return False
            except Exception:  # noqa: BLE001 - the SDK's line is shown instead
                pass
            return True

    for name in SDK_EXPORT_LOGGERS:
        # First, before the SDK's DuplicateFilter, which would hide repeats from the count.
        logging.getLogger(name).filters.insert(0, _ExportLogFilter())


def keep_http_client_results(exporter: object) -> None:
    """Keep the cause of a failed OTLP/HTTP export: the SDK's client returns it, the
    exporter drops it (and a batch that times out during retries logs no cause); and the
    collector's message when it answers with an error status."""
    client = getattr(exporter, "_client", None)
    export = getattr(client, "export", None)
    if export is None or getattr(export, "_autotrace", False):
        return

    def keep(data):
        result = export(data)
        causes = getattr(_capture, "causes", None)
        if causes is not None and not getattr(result, "success", True):
            causes.insert(0, (getattr(result, "error", None), getattr(result, "status_code", None)))
        return result

    keep._autotrace = True  # type: ignore[attr-defined]
    try:
        client.export = keep
    except Exception:  # noqa: BLE001 - a client without attributes: the logs still tell
        pass
    transport = getattr(client, "_transport", None)
    request = getattr(transport, "request", None)
    if request is None:
        return

    def request_keeping_the_answer(*args, **kwargs):
        result = request(*args, **kwargs)
        try:
            status = getattr(result, "status_code", None)
            causes = getattr(_capture, "causes", None)
            if causes is not None and isinstance(status, int) and status >= 400:
                message = collector_message(result)
                if message:
                    causes.append((message,))
        except Exception:  # noqa: BLE001 - the status alone is reported
            pass
        return result

    try:
        transport.request = request_keeping_the_answer
    except Exception:  # noqa: BLE001
        pass


def collector_message(result: object) -> str:
    """The message of a collector's error answer (the SDK's HTTP result): see :func:`collector_text`."""
    content = result.content()  # type: ignore[attr-defined]
    return collector_text(content, result.headers().get("content-type") or "")  # type: ignore[attr-defined]


def collector_text(content: bytes, content_type: str) -> str:
    """The message of a collector's error answer: a google.rpc.Status (protobuf or JSON), or text;
    never raises (an answer that cannot be read has no message)."""
    try:
        return _collector_text(content, content_type)
    except Exception:  # noqa: BLE001 - the status alone is reported
        return ""


def _collector_text(content: bytes, content_type: str) -> str:
    from .doctor.endpoint import CollectorMessage

    kind = content_type.lower()
    text = ""
    if "protobuf" in kind:
        text = _status_message(content)
    elif "json" in kind:
        import json

        body = json.loads(content.decode("utf-8", "replace"))
        text = str(body.get("message", "")) if isinstance(body, dict) else ""
    else:
        text = content.decode("utf-8", "replace")
    return CollectorMessage(text.strip()) if text.strip() else ""


def message_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message, read by hand (no protobuf
    class needed): varint and length-delimited fields only; ValueError at anything else or
    at a truncated field, once the fields before it were given."""
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while i < len(data):
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
        raise ValueError("truncated varint")

    while i < len(data):
        key = varint()
        wire = key & 7
        if wire == 0:
            yield key >> 3, varint()
        elif wire == 2:
            length = varint()
            yield key >> 3, data[i : i + length]
            i += length
        else:
            raise ValueError("unexpected wire type")


def _status_message(data: bytes) -> str:
    """Field 2 (message) of a google.rpc.Status."""
    try:
        for number, value in message_fields(data):
            if number == 2 and isinstance(value, bytes):
                return value.decode("utf-8", "replace")
    except ValueError:
        pass
    return ""


def _is_refused(text: str) -> bool:
    text = text.lower()
    return "connection refused" in text or "errno 111" in text


DOCTOR = "run 'autotrace doctor' for details"  # the end of every export failure line


class Diagnosis(str):
    """A hint that says all: what is wrong and the fix (shown without the kind)."""


def describe(kind: str, hint: str) -> str:
    """The cause of a failure as its first report shows it."""
    return str(hint) if isinstance(hint, Diagnosis) else f"{kind}{hint}"


def classify_failure(evidence: Sequence[object], settings: object = None, diagnose: bool = True) -> tuple[str, str]:
    """(kind, hint) of a failed export from what it left: an exception, or the SDK's log args.

    The kind is what failures are counted by: connection refused, cannot resolve host,
    timeout, HTTP <status>, gRPC <code>, connection failed, or the exception's type;
    the hint is shown with the first report only. With the OTLP exporter's ``settings``,
    both come from the doctor's classifier (:func:`autotrace.doctor.endpoint.diagnose_failure`,
    which may ask the port what it speaks: ``diagnose=False`` gives the kind alone, at once).
    """
    if settings is not None and evidence:
        from .doctor import endpoint

        probe = endpoint.failure_probe(evidence, settings.timeout_s)  # type: ignore[attr-defined]
        kind = endpoint.failure_kind(probe, evidence)
        if kind is not None:  # on the way to the collector
            if not diagnose:
                return kind, ""
            kind, check = endpoint.diagnose_failure(settings, evidence)
            return kind, Diagnosis(f"{check.message}; fix: {check.fix}")
    return _classify_alone(evidence)


def _classify_alone(evidence: Sequence[object]) -> tuple[str, str]:
    """The classification without the endpoint's settings (an exporter that is not OTLP)."""
    status = code = exc_kind = None
    exc_hint = ""
    for item in evidence:
        text = str(item)
        if _is_refused(text):
            return "connection refused", " (is a collector listening there?)"
        if isinstance(item, BaseException):
            for exc in _chain(item):
                if isinstance(exc, ConnectionRefusedError) or _is_refused(str(exc)):
                    return "connection refused", " (is a collector listening there?)"
                if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
                    return "timeout", " (is the collector reachable? see OTEL_EXPORTER_OTLP_TIMEOUT)"
            grpc_code = getattr(item, "code", None)
            if callable(grpc_code):
                try:
                    code = code or getattr(grpc_code(), "name", None)
                except Exception:  # noqa: BLE001
                    pass
            if exc_kind is None:
                exc_kind, exc_hint = type(item).__name__, f" ({item})" if str(item) else ""
        elif type(item).__name__ == "StatusCode" and hasattr(item, "name"):
            code = code or item.name
        elif isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            status = status or item
        elif "timed out" in text.lower() or "timeout" in text.lower():
            exc_kind, exc_hint = exc_kind or "timeout", exc_hint
    if code == "DEADLINE_EXCEEDED" or (exc_kind == "timeout" and not status and not code):
        return "timeout", " (is the collector reachable? see OTEL_EXPORTER_OTLP_TIMEOUT)"
    if code:
        hint = " (check OTEL_EXPORTER_OTLP_HEADERS)" if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") else ""
        return f"gRPC {code}", hint
    if status:
        hint = {401: " (check OTEL_EXPORTER_OTLP_HEADERS)", 403: " (check OTEL_EXPORTER_OTLP_HEADERS)",
                404: " (check the endpoint's path)"}.get(status, "")
        return f"HTTP {status}", hint
    return exc_kind or "the exporter reported a failure", exc_hint


def _chain(exc: BaseException):
    from .doctor.endpoint import chain

    return chain(exc)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ExportFailures:
    """Reports failed exports of one exporter without a line per batch.

    The first failure of each kind is reported at once with its cause; every failed batch
    (that first one included) is counted, and the counts are summarised at most once per
    ``interval_s`` when batches failed that no line named yet; the first success after
    failures logs one line (at most one per interval too), with the counts not yet said.
    An export that succeeded only after retries (the collector was away for a while, and
    no batch was lost) gets one line too (:meth:`retried`).
    """

    def __init__(
        self,
        target: str,
        interval_s: float | None = None,
        clock: Callable[[], float] | None = None,
        settings: object = None,
    ) -> None:
        import time

        self.target = target  # "to <endpoint>", or a "the <name> exporter"
        self.settings = settings  # the OTLP exporter's configuration: failures are diagnosed
        self.closing = False  # at exit: a failed export is not retried, and the line says so
        self.interval_s = EXPORT_SUMMARY_INTERVAL_S if interval_s is None else interval_s
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self.failing = False
        self._since: float | None = None  # start of the window being counted
        self._summarised = False  # a summary was logged: counts are "since the last summary"
        self._batches = 0  # failed batches in the window (all of them)
        self._spans = 0
        self._unsaid = 0  # of those, batches no line has named yet
        self._kinds: dict[str, int] = {}
        self._last_recovery: float | None = None
        self.lost_batches = 0  # since the start, for the exit line
        self.lost_spans = 0

    def classify(self, evidence: Sequence[object]) -> tuple[str, str]:
        """(kind, hint) of a failure: the hint (which may ask the port) only for a new kind."""
        if self.settings is None:
            return classify_failure(evidence)
        kind, _ = classify_failure(evidence, self.settings, diagnose=False)
        if kind in self._reported:
            return kind, ""
        return classify_failure(evidence, self.settings)

    def kind_of(self, evidence: Sequence[object]) -> str:
        """The kind of a failure, at once (never asks the port)."""
        return classify_failure(evidence, self.settings, diagnose=False)[0]

    def _first(self, kind: str, hint: str, spans: int) -> None:
        if self.closing:
            then = f"not retried at exit ({_plural(spans, 'span')} dropped)"
        else:
            then = f"{_plural(spans, 'span')} not exported; further failures are summarised every {self.interval_s:g} s"
        if self.target.startswith("to "):
            logger.warning("spans could not be exported %s: %s; %s; %s", self.target, describe(kind, hint), then, DOCTOR)
        else:
            logger.warning("%s failed: %s; %s; %s", self.target, describe(kind, hint), then, DOCTOR)

    def _counts(self) -> str:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(self._kinds.items(), key=lambda kv: -kv[1]))
        batches = "1 batch" if self._batches == 1 else f"{self._batches} batches"
        text = f"{batches} ({_plural(self._spans, 'span')})"
        return f"{text} {'was' if self._batches == 1 else 'were'} not exported: {kinds}"

    def _reset(self, now: float | None) -> None:
        self._since = now
        self._batches = self._spans = self._unsaid = 0
        self._kinds = {}

    def _summarise(self, elapsed: float, now: float | None) -> None:
        logger.warning("in the last %.0f s, %s; %s", elapsed, self._counts(), DOCTOR)
        self._summarised = True
        self._reset(now)

    def failed(self, kind: str, hint: str, spans: int) -> None:
        now = self._clock()
        with self._lock:
            self.failing = True
            if self._since is None:
                self._since = now
            self._batches += 1
            self._spans += spans
            self._kinds[kind] = self._kinds.get(kind, 0) + 1
            self.lost_batches += 1
            self.lost_spans += spans
            if kind not in self._reported:
                self._reported.add(kind)
                self._first(kind, hint, spans)
                return
            self._unsaid += 1
            elapsed = now - self._since
            if elapsed >= self.interval_s:
                self._summarise(elapsed, now)

    def succeeded(self) -> None:
        if not self.failing:
            return
        now = self._clock()
        with self._lock:
            if not self.failing:
                return
            self.failing = False
            if self._last_recovery is not None and now - self._last_recovery < self.interval_s:
                return  # flapping: the counts go into the next summary
            self._last_recovery = now
            pending = ""
            if self._batches:
                since = "since the last summary" if self._summarised else "in all"
                pending = f" ({self._counts()} {since})"
            what = f"spans are exported {self.target} again" if self.target.startswith("to ") else f"{self.target} works again"
            logger.info("%s%s", what, pending)
            self._reset(None)

    def retried(self, kind: str, seconds: float) -> None:
        """An export succeeded after failed attempts of ``kind`` for ``seconds``: nothing lost."""
        if self.failing:
            self.succeeded()  # batches were lost meanwhile: that line says it
            return
        where = f"the collector at {self.target[3:]}" if self.target.startswith("to ") else self.target
        if kind in UNREACHABLE:
            what = f"{where} was unreachable for {seconds:.0f} s ({kind})"
        else:
            what = f"{where} answered {kind} for {seconds:.0f} s"
        logger.info("%s; all spans delivered after retry", what)

    def close(self) -> None:
        """At shutdown: summarise what no line has said yet."""
        with self._lock:
            if self._unsaid and self._since is not None:
                self._summarise(self._clock() - self._since, None)


# Kinds of failure that mean the collector could not be reached (the others: it answered).
UNREACHABLE = frozenset(("connection refused", "cannot resolve host", "timeout", "connection failed"))


class QueueDrops:
    """Reports spans dropped because a batch queue was full, whether exports fail or not.

    The first drop is reported at once, naming OTEL_BSP_MAX_QUEUE_SIZE and its value;
    later ones are counted (on the app's threads: a lock and an addition) and summarised
    at most once per ``interval_s``, from the export thread and at shutdown.
    """

    def __init__(self, interval_s: float | None = None, clock: Callable[[], float] | None = None) -> None:
        import time

        self.interval_s = EXPORT_SUMMARY_INTERVAL_S if interval_s is None else interval_s
        self.queue_size: int | None = None  # set by install(); the SDK's line does not say
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self.count = 0  # dropped in this process
        self._reported = 0  # of count, already reported
        self._since: float | None = None  # the last report

    def _setting(self) -> str:
        size = "default" if self.queue_size is None else self.queue_size
        return f"OTEL_BSP_MAX_QUEUE_SIZE={size}"

    def dropped(self) -> None:
        with self._lock:
            self.count += 1
            if self._since is not None:
                return
            self._since = self._clock()
            self._reported = self.count
        logger.warning(
            "a span was dropped: the batch queue is full (%s); spans end faster than they are exported "
            "(raise OTEL_BSP_MAX_QUEUE_SIZE, or lower OTEL_BSP_SCHEDULE_DELAY); "
            "further drops are summarised every %g s",
            self._setting(), self.interval_s,
        )

    def summarise(self, final: bool = False) -> None:
        """Report the drops not yet reported, if ``interval_s`` has passed (or ``final``)."""
        if self.count == self._reported:  # the common case, without the lock
            return
        now = self._clock()
        with self._lock:
            pending = self.count - self._reported
            since = self._since if self._since is not None else now
            if not pending or (not final and now - since < self.interval_s):
                return
            self._reported = self.count
            self._since = now
        logger.warning(
            "in the last %.0f s, %s dropped: the batch queue was full (%s)",
            now - since, _plural(pending, "more span") + (" was" if pending == 1 else " were"), self._setting(),
        )

    def _forget(self) -> None:
        """In a forked child: its own count, and its own first report."""
        self._lock = threading.Lock()
        self.count = self._reported = 0
        self._since = None


queue_drops = QueueDrops()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=queue_drops._forget)


def add_cause(*evidence: object) -> None:
    """Evidence of a failed export attempt (an exception; an HTTP status and the collector's
    message), kept when called inside an export (see :func:`start_capture`)."""
    causes = getattr(_capture, "causes", None)
    if causes is not None:
        causes.append(evidence)


def start_capture() -> list:
    """Keep what the SDK logs on this thread from now on (the causes of a failed export),
    instead of its lines; returns the list that receives them."""
    _capture.causes = causes = []
    return causes


def stop_capture() -> None:
    _capture.causes = None


def failures_of(
    exporter: object, name: str, failures: ExportFailures | None = None, settings: object = None
) -> ExportFailures:
    """The report of ``exporter``'s failures: ``failures``, or one that names the exporter's
    endpoint (and diagnoses its failures with ``settings``, the OTLP exporter's); the cause
    of a failed OTLP/HTTP export is kept for it from now on."""
    target = f"the {name} exporter"
    try:
        # The endpoint as configured (with its scheme, which tells TLS), else the exporter's.
        endpoint = getattr(settings, "endpoint", None) or getattr(exporter, "_endpoint", None)
        if isinstance(endpoint, str) and endpoint:
            from .config import redact_url

            target = f"to {redact_url(endpoint)}"
        keep_http_client_results(exporter)
    except Exception as exc:  # noqa: BLE001 - fail open: reported without the endpoint
        _log.warn_once("export-report", "cannot report export failures fully (%s: %s)", type(exc).__name__, exc)
    return failures if failures is not None else ExportFailures(target, settings=settings)


def report(failures: ExportFailures | None, succeeded: bool, causes: list, spans: int, seconds: float = 0.0) -> None:
    """Say how an export went (see ExportFailures, QueueDrops); never raises. ``causes``:
    the evidence its failed attempts left (a successful export with some was retried);
    ``seconds``: how long it took."""
    try:
        if failures is not None:
            if succeeded and causes:
                failures.retried(failures.kind_of([arg for args in causes for arg in args]), seconds)
            elif succeeded:
                failures.succeeded()
            else:
                kind, hint = failures.classify([arg for args in causes for arg in args])
                failures.failed(kind, hint, spans)
        queue_drops.summarise()
    except Exception as exc:  # noqa: BLE001 - on the export thread: one line, then go on
        _log.warn_once("export-report", "cannot report export failures (%s: %s)", type(exc).__name__, exc)


def close(failures: ExportFailures | None) -> None:
    """At shutdown: summarise what is still counted; never raises."""
    try:
        if failures is not None:
            failures.close()
        queue_drops.summarise(final=True)
    except Exception as exc:  # noqa: BLE001 - shutdown goes on
        _log.warn_once("export-report", "cannot report export failures (%s: %s)", type(exc).__name__, exc)
