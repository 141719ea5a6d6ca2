"""OpenTelemetry SDK set-up: one global TracerProvider, batch export, bounded flush.

This module is imported only when the tracing API is first used (see
:mod:`autotrace.provider`), never at start-up; exporter transports (grpc, requests)
are imported inside the factories, for the protocol chosen only.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import threading
from typing import Callable, Sequence

from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, Tracer, TracerProvider, sampling
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from . import _log
from ._version import __version__
from .config import Settings
from .entrypoint import Entrypoint

logger = _log.logger


# How often failed exports are summarised after the first one of each cause is reported.
EXPORT_SUMMARY_INTERVAL_S = 60.0

# The SDK's loggers that log each failed batch (and each retry): their lines are replaced
# by the agent's own report (see ExportFailures); the cause they carry is kept.
_SDK_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
)
_capture = threading.local()  # .causes: what the SDK logged during the current export
_quieted = False
_QUEUE_FULL = "Queue full, dropping %s."  # the SDK's line for each span its batch queue drops


def _quiet_sdk_export_logs() -> None:
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
                if record.msg == _QUEUE_FULL:  # in span.end() on the app's thread: cheap
                    queue_drops.dropped()
                    return False
                causes = getattr(_capture, "causes", None)
                if causes is not None:  # inside ExporterHandle.export: keep the cause, drop the line
                    causes.append(record.args if isinstance(record.args, tuple) else (record.getMessage(),))
                    return False
            except Exception:  # noqa: BLE001 - the SDK's line is shown instead
                pass
            return True

    for name in _SDK_EXPORT_LOGGERS:
        # First, before the SDK's DuplicateFilter, which would hide repeats from the count.
        logging.getLogger(name).filters.insert(0, _ExportLogFilter())


def _keep_http_client_results(exporter: object) -> None:
    """Keep the cause of a failed OTLP/HTTP export: the SDK's client returns it, the
    exporter drops it (and a batch that times out during retries logs no cause)."""
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


def _is_refused(text: str) -> bool:
    text = text.lower()
    return "connection refused" in text or "errno 111" in text or "failed to connect" in text


def classify_failure(evidence: Sequence[object]) -> tuple[str, str]:
    """(kind, hint) of a failed export from what it left: an exception, or the SDK's log args.

    The kind is what failures are counted by: connection refused, timeout, HTTP <status>,
    gRPC <code>, or the exception's type; the hint is shown with the first report only.
    """
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
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen or len(seen) > 20:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        todo.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ExportFailures:
    """Reports failed exports of one exporter without a line per batch.

    The first failure of each kind is reported at once with its cause; later ones are
    counted and summarised at most once per ``interval_s``; the first success after
    failures logs one line (at most one per interval too).
    """

    def __init__(
        self,
        target: str,
        interval_s: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.target = target  # "to <endpoint>", or a "the <name> exporter"
        self.interval_s = EXPORT_SUMMARY_INTERVAL_S if interval_s is None else interval_s
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self.failing = False
        self._since: float | None = None  # start of the window being counted
        self._batches = 0
        self._spans = 0
        self._kinds: dict[str, int] = {}
        self._last_recovery: float | None = None

    def _first(self, kind: str, hint: str) -> None:
        every = f"{self.interval_s:g} s"
        if self.target.startswith("to "):
            logger.warning(
                "spans could not be exported %s: %s%s; further failures are summarised every %s",
                self.target, kind, hint, every,
            )
        else:
            logger.warning("%s failed: %s%s; further failures are summarised every %s", self.target, kind, hint, every)

    def _counts(self) -> str:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(self._kinds.items(), key=lambda kv: -kv[1]))
        batches = "1 batch" if self._batches == 1 else f"{self._batches} batches"
        text = f"{batches} ({_plural(self._spans, 'span')})"
        return f"{text} {'was' if self._batches == 1 else 'were'} not exported: {kinds}"

    def _reset(self, now: float | None) -> None:
        self._since = now
        self._batches = self._spans = 0
        self._kinds = {}

    def failed(self, kind: str, hint: str, spans: int) -> None:
        now = self._clock()
        with self._lock:
            self.failing = True
            if self._since is None:
                self._since = now
            if kind not in self._reported:
                self._reported.add(kind)
                self._first(kind, hint)
                return
            self._batches += 1
            self._spans += spans
            self._kinds[kind] = self._kinds.get(kind, 0) + 1
            elapsed = now - self._since
            if elapsed >= self.interval_s:
                logger.warning("in the last %.0f s, %s", elapsed, self._counts())
                self._reset(now)

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
            pending = f" ({self._counts()} since the last report)" if self._batches else ""
            what = f"spans are exported {self.target} again" if self.target.startswith("to ") else f"{self.target} works again"
            logger.info("%s%s", what, pending)
            self._reset(None)

    def close(self) -> None:
        """At shutdown: summarise what is still counted."""
        with self._lock:
            if self._batches and self._since is not None:
                logger.warning("in the last %.0f s, %s", self._clock() - self._since, self._counts())
                self._reset(None)


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


class ExporterHandle(SpanExporter):
    """Owns one real exporter: made at set-up, made anew in a forked child.

    It is made at set-up, not at the first export, because the first export may come
    at interpreter exit, when importing the exporter's transport is no longer allowed.
    A child of ``fork`` must not share the parent's connection (a requests session or a
    gRPC channel), so it makes its own at its first export; the modules are already
    imported by then. Export runs with instrumentation suppressed, the key every
    autotrace hook checks, so the exporter's own calls are never traced or injected.
    """

    def __init__(self, name: str, factory: Callable[[], SpanExporter]) -> None:
        self.name = name
        self._factory = factory
        self._lock = threading.Lock()
        self._failed = False
        self._exporter: SpanExporter | None = None
        self.failures: ExportFailures | None = None  # made at the first export
        self._get()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._exporter = None
        self._lock = threading.Lock()

    def _get(self) -> SpanExporter | None:
        if self._exporter is None and not self._failed:
            with self._lock:
                if self._exporter is None and not self._failed:
                    token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
                    try:
                        self._exporter = self._factory()
                        _quiet_sdk_export_logs()
                    except Exception as exc:  # noqa: BLE001 - fail open, one line
                        self._failed = True
                        logger.warning(
                            "cannot create the %s exporter (%s: %s); spans are dropped",
                            self.name,
                            type(exc).__name__,
                            exc,
                        )
                    finally:
                        detach(token)
        return self._exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        exporter = self._get()
        if exporter is None:
            return SpanExportResult.FAILURE
        if self.failures is None:
            self._start_reporting(exporter)
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        _capture.causes = causes = []  # what the SDK logs meanwhile: the cause, not a line
        try:
            result = exporter.export(spans)
        except Exception as exc:  # noqa: BLE001 - reported once per cause, then summarised
            causes.insert(0, (exc,))
            result = SpanExportResult.FAILURE
        finally:
            _capture.causes = None
            detach(token)
        self._report(result, causes, len(spans))
        return result

    def _start_reporting(self, exporter: SpanExporter) -> None:
        target = f"the {self.name} exporter"
        try:
            endpoint = getattr(exporter, "_endpoint", None)
            if isinstance(endpoint, str) and endpoint:
                from .config import redact_url

                target = f"to {redact_url(endpoint)}"
            _keep_http_client_results(exporter)
        except Exception as exc:  # noqa: BLE001 - fail open: reported without the endpoint
            _log.warn_once("export-report", "cannot report export failures fully (%s: %s)", type(exc).__name__, exc)
        self.failures = ExportFailures(target)

    def _report(self, result: SpanExportResult, causes: list, spans: int) -> None:
        """Say how the export went (see ExportFailures, QueueDrops); never raises."""
        try:
            failures = self.failures
            if failures is not None:
                if result is SpanExportResult.SUCCESS:
                    failures.succeeded()
                else:
                    kind, hint = classify_failure([arg for args in causes for arg in args])
                    failures.failed(kind, hint, spans)
            queue_drops.summarise()
        except Exception as exc:  # noqa: BLE001 - on the export thread: one line, then go on
            _log.warn_once("export-report", "cannot report export failures (%s: %s)", type(exc).__name__, exc)

    def shutdown(self, timeout_millis: float = 30000, **kwargs: object) -> None:
        exporter = self._exporter
        try:
            if self.failures is not None:
                self.failures.close()
            queue_drops.summarise(final=True)
        except Exception as exc:  # noqa: BLE001 - shutdown goes on
            _log.warn_once("export-report", "cannot report export failures (%s: %s)", type(exc).__name__, exc)
        if exporter is not None:
            exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        exporter = self._exporter
        return True if exporter is None else exporter.force_flush(timeout_millis)


def _otlp_factory(settings: Settings) -> Callable[[], SpanExporter]:
    def make() -> SpanExporter:
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
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

        from .otlp_exporters import http_exporter_class, http_session

        HttpExporter = http_exporter_class()  # the SDK's, with autotrace's span encoder
        return HttpExporter(
            endpoint=settings.endpoint,
            session=http_session(os.environ),  # keeps OTEL_EXPORTER_OTLP_CERTIFICATE's CA file
            headers=dict(settings.headers),
            timeout=settings.timeout_s,
            compression=HttpCompression.Gzip
            if settings.compression == "gzip"
            else HttpCompression.NoCompression,
        )

    return make


def _console_factory() -> SpanExporter:
    """``console``: each finished trace as an indented tree on stderr."""
    from .console_view import ConsoleTreeExporter

    return ConsoleTreeExporter()


def _console_json_factory() -> SpanExporter:
    """``console-json``: the SDK's raw JSON, one object per span, on stderr."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    return ConsoleSpanExporter(out=sys.stderr)


def build_resource(settings: Settings, entry: Entrypoint, service_name: str) -> Resource:
    """The resource, built directly (no detector entry points: they cost start-up time).

    Process attributes leave out the command's arguments: they may hold secrets.
    """
    attributes: dict[str, object] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _sdk_version(),
        "telemetry.distro.name": "autotrace",
        "telemetry.distro.version": __version__,
        "process.pid": os.getpid(),
        "process.executable.name": os.path.basename(sys.executable or "python"),
        "process.executable.path": sys.executable or "",
        "process.command": entry.program,
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": platform.python_version(),
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
        "os.type": sys.platform,
    }
    attributes.update(settings.resource_attributes)
    attributes["service.name"] = service_name
    return Resource(attributes)


def _sdk_version() -> str:
    try:
        from opentelemetry.sdk.version import __version__ as version

        return version
    except Exception:  # noqa: BLE001
        return "unknown"


def build_sampler(settings: Settings) -> sampling.Sampler:
    name, arg = settings.sampler, settings.sampler_arg
    if name == "always_on":
        return sampling.ALWAYS_ON
    if name == "always_off":
        return sampling.ALWAYS_OFF
    if name == "traceidratio":
        return sampling.TraceIdRatioBased(arg)
    # Parent-based, also honouring a decision B3 carries without ids (b3: 0) or defers.
    from .propagation.sampler import UpstreamParentBased

    if name == "parentbased_always_off":
        return UpstreamParentBased(sampling.ALWAYS_OFF)
    if name == "parentbased_traceidratio":
        return UpstreamParentBased(sampling.TraceIdRatioBased(arg))
    return UpstreamParentBased(sampling.ALWAYS_ON)


class AgentTracer(Tracer):
    """A tracer of the agent's provider that follows the app's provider once the app sets one.

    Code that took a tracer before the app set its own provider (module-level
    ``tracer = trace.get_tracer(__name__)``, or a hook patched early) must end up
    in the app's provider, as it would without the agent.
    """

    def start_span(self, *args, **kwargs):  # type: ignore[override]
        replacement = _app_provider
        if replacement is not None:
            # The SDK keeps the scope private (``instrumentation_info`` is its deprecated twin).
            scope = getattr(self, "_instrumentation_scope", None) or self.instrumentation_info
            return replacement.get_tracer(scope.name, scope.version, scope.schema_url).start_span(*args, **kwargs)
        return super().start_span(*args, **kwargs)


class AgentTracerProvider(TracerProvider):
    def _handle_fork(self) -> None:
        """In a forked child: only the process id in our resource changes.

        The SDK's own handler (1.4x) re-runs the resource detectors on a thread pool in
        the child. That deadlocks when ``concurrent.futures.thread`` was imported after
        the provider was made (the gRPC exporter imports it at set-up): its at-fork
        handler, which releases its lock in the child, runs after the provider's. The
        resource is built directly anyway (see :func:`build_resource`).
        """
        self._tracers_lock = threading.Lock()
        update = getattr(self, "_update_resource", None)
        if update is not None:
            update(Resource({"process.pid": os.getpid()}))

    def get_tracer(self, *args, **kwargs):  # type: ignore[override]
        replacement = _app_provider
        if replacement is not None:
            return replacement.get_tracer(*args, **kwargs)
        tracer = super().get_tracer(*args, **kwargs)
        if type(tracer) is Tracer:
            tracer.__class__ = AgentTracer
        return tracer


_provider: AgentTracerProvider | None = None
_app_provider: trace.TracerProvider | None = None
_handover: threading.Thread | None = None  # shuts our provider down after a hand-over


# Spans ended in this process, and that number when flush_if_recorded last flushed.
_ended = 0
_flushed_at = 0


class _EndCounter(SpanProcessor):
    """Counts ended spans, so a flush can be skipped when nothing was recorded."""

    def on_end(self, span: ReadableSpan) -> None:
        global _ended
        _ended += 1


def flush_if_recorded(timeout_s: float) -> None:
    """Flush (not finally) if a span ended since the last such flush: cheap when none did."""
    global _flushed_at
    if _ended == _flushed_at:
        return
    _flushed_at = _ended
    flush(timeout_s, final=False)


def install(set_global: Callable[[trace.TracerProvider], None], settings: Settings, resource: Resource) -> None:
    """Create the agent's provider and make it the global one (with ``set_global``)."""
    global _provider
    provider = AgentTracerProvider(
        sampler=build_sampler(settings), resource=resource, shutdown_on_exit=False
    )
    provider.add_span_processor(_EndCounter())
    factories: dict[str, Callable[[], SpanExporter]] = {
        "otlp": _otlp_factory(settings),
        "console": _console_factory,
        "console-json": _console_json_factory,
    }
    for name in settings.exporters:
        provider.add_span_processor(
            BatchSpanProcessor(
                ExporterHandle(name, factories[name]),
                max_queue_size=settings.bsp_max_queue_size,
                schedule_delay_millis=settings.bsp_schedule_delay_ms,
                max_export_batch_size=settings.bsp_max_export_batch_size,
                export_timeout_millis=settings.bsp_export_timeout_ms,
            )
        )
    queue_drops.queue_size = settings.bsp_max_queue_size  # named when spans are dropped
    set_global(provider)
    _provider = provider
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _flush_at_multiprocessing_exit(settings.shutdown_timeout_s))
    logger.debug("TracerProvider set up (exporters: %s)", ",".join(settings.exporters) or "none")


_exit_flush_pid = 0


def _flush_at_multiprocessing_exit(timeout_s: float) -> None:
    """In a forked child: flush at the end of a ``multiprocessing`` fork child too.

    Such a child ends with ``os._exit``, so ``atexit`` never flushes what it recorded;
    multiprocessing runs its own exit finalizers instead. They are cleared when the child
    starts, so ours is registered by an after-fork callback, which runs after that. Other
    forked children (gunicorn workers) end through ``sys.exit``, and ``atexit`` flushes.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return

    def arm(_provider: object) -> None:
        global _exit_flush_pid
        if _exit_flush_pid == os.getpid():
            return
        _exit_flush_pid = os.getpid()
        # Lowest priority: after the child's own finalizers and its children are joined.
        util.Finalize(None, flush, args=(timeout_s,), exitpriority=-1000)

    try:
        util.register_after_fork(_provider, arm)
    except Exception as exc:  # noqa: BLE001 - fail open
        logger.debug("cannot flush at the exit of multiprocessing children: %s", exc)


def hand_over(trace_module, app_provider: trace.TracerProvider) -> bool:
    """Make the app's provider the global one in place of the agent's.

    The API allows one ``set_tracer_provider``; ours came first, so the app's call would
    be refused and its exporters silently unused. Instead the app's provider becomes the
    global one, tracers already handed out follow it (:class:`AgentTracer`), and ours
    flushes what it holds through its own exporters.
    """
    global _app_provider, _handover
    provider = _provider
    if provider is None or app_provider is provider or _app_provider is not None:
        return False
    try:
        trace_module._TRACER_PROVIDER = app_provider  # noqa: SLF001 - no public way to replace
    except Exception as exc:  # noqa: BLE001
        logger.warning("cannot hand over to the app's TracerProvider (%s)", exc)
        return False
    _app_provider = app_provider
    logger.info("the app set its own TracerProvider (%s); spans now go there", type(app_provider).__name__)
    _handover = threading.Thread(target=provider.shutdown, name="autotrace-handover", daemon=True)
    _handover.start()
    return True


def _bounded(work: Callable[[], None], timeout_s: float) -> bool:
    """Run ``work`` on a helper thread, waiting at most ``timeout_s`` for it.

    An exporter stuck on a dead collector cannot hold the process past the bound.
    """

    def run() -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001
            logger.warning("flushing spans failed (%s: %s)", type(exc).__name__, exc)

    worker = threading.Thread(target=run, name="autotrace-flush", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        logger.warning("spans not flushed within %gs (AUTOTRACE_SHUTDOWN_TIMEOUT); going on without them", timeout_s)
        return False
    return True


def flush(timeout_s: float, final: bool = True) -> bool:
    """Flush the agent's provider (and shut it down when ``final``), at most ``timeout_s``."""
    provider = _provider
    if provider is None:
        return True
    app = _app_provider
    handover = _handover

    def work() -> None:
        if handover is not None:
            # Our provider is already shutting down (a second shutdown returns at once,
            # before the spans it holds are exported): wait for that instead.
            handover.join()
        if final:
            provider.shutdown()
        else:
            provider.force_flush(int(timeout_s * 1000))
        if app is not None and hasattr(app, "force_flush"):
            app.force_flush(int(timeout_s * 1000))

    return _bounded(work, timeout_s)


def flush_app_provider(timeout_s: float) -> bool:
    """Flush a provider the app set itself (it shuts itself down at exit)."""
    current = trace.get_tracer_provider()
    if not hasattr(current, "force_flush"):
        return True
    return _bounded(lambda: current.force_flush(int(timeout_s * 1000)), timeout_s)
