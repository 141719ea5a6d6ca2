"""OpenTelemetry SDK set-up: one global TracerProvider, its sampler, batch export, bounded flush.

This module is imported only when the tracing API is first used (see
:mod:`autotrace.provider`), never at start-up. The exporters are made by
:mod:`autotrace.exporters`; their failures are reported by :mod:`autotrace.export_report`.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import threading
from typing import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, Tracer, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from . import _log, export_report, exporters, green
from ._version import __version__
from .config import Configuration
from .entrypoint import Entrypoint
from .otlp_encode import speedups
from .span_queue import EncodingBatchProcessor

logger = _log.logger


def build_resource(settings: Configuration, entry: Entrypoint, service_name: str) -> Resource:
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


def build_sampler(settings: Configuration) -> sampling.Sampler:
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
_queues: list[EncodingBatchProcessor] = []  # the OTLP exporters' queues (what an exit would lose)
_app_provider: trace.TracerProvider | None = None
_handover: threading.Thread | None = None  # shuts our provider down after a hand-over


# The number of spans ended when flush_if_recorded last flushed.
_flushed_at = 0


class _EndCounter(SpanProcessor):
    """Counts ended spans, so a flush can be skipped when nothing was recorded.

    Where ``autotrace._speedups`` is built, a light span's end is counted by a C function
    (``count_end``: no Python frame per span), which keeps the process's count.
    """

    def __init__(self) -> None:
        self._ended = 0
        if speedups is not None:
            self._counted_at = speedups.ended()  # the C count is the process's: from here on
            self.light_end = speedups.count_end

    @property
    def ended(self) -> int:
        if speedups is None:
            return self._ended
        return self._ended + speedups.ended() - self._counted_at

    def on_end(self, span: ReadableSpan) -> None:
        self._ended += 1

    def light_end(self, span: ReadableSpan) -> None:
        """``on_end`` of a light span (:mod:`autotrace.light_span`: no ``on_start`` needed)."""
        self._ended += 1


_counter = _EndCounter()  # the agent's provider's (one per process)


def flush_if_recorded(timeout_s: float) -> None:
    """Flush (not finally) if a span ended since the last such flush: cheap when none did."""
    global _flushed_at
    ended = _counter.ended
    if ended == _flushed_at:
        return
    _flushed_at = ended
    flush(timeout_s, final=False)


def install(set_global: Callable[[trace.TracerProvider], None], settings: Configuration, resource: Resource) -> None:
    """Create the agent's provider and make it the global one (with ``set_global``)."""
    global _provider
    provider = AgentTracerProvider(
        sampler=build_sampler(settings), resource=resource, shutdown_on_exit=False
    )
    provider.add_span_processor(_counter)
    factories = exporters.factories(settings)
    for name in settings.exporters:
        handle = exporters.ExporterHandle(name, factories[name], settings=settings)
        if name == "otlp":  # spans encoded as they end, the queue holds bytes
            processor: SpanProcessor = EncodingBatchProcessor(
                handle,
                max_queue_size=settings.bsp_max_queue_size,
                schedule_delay_millis=settings.bsp_schedule_delay_ms,
                max_export_batch_size=settings.bsp_max_export_batch_size,
            )
        else:  # the console exporters read span objects
            processor = BatchSpanProcessor(
                handle,
                max_queue_size=settings.bsp_max_queue_size,
                schedule_delay_millis=settings.bsp_schedule_delay_ms,
                max_export_batch_size=settings.bsp_max_export_batch_size,
                export_timeout_millis=settings.bsp_export_timeout_ms,
            )
        provider.add_span_processor(processor)
        if isinstance(processor, EncodingBatchProcessor):
            _queues.append(processor)
    export_report.queue_drops.queue_size = settings.bsp_max_queue_size  # named when spans are dropped
    set_global(provider)
    _provider = provider
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _flush_at_multiprocessing_exit(settings.shutdown_timeout_s))
    logger.debug(
        "TracerProvider set up (exporters: %s) on thread %s",
        ",".join(settings.exporters) or "none",
        threading.current_thread().name,
    )


_exit_flush_pid = 0  # the process whose multiprocessing exit finalizer flushes


def flushes_at_multiprocessing_exit() -> bool:
    """Whether this process (a forked ``multiprocessing`` child) flushes by itself at its exit."""
    return _exit_flush_pid == os.getpid()


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


def app_provider() -> trace.TracerProvider | None:
    """The provider the app set after the agent's own (see :func:`hand_over`), or None."""
    return _app_provider


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


def _bounded(work: Callable[[], None], timeout_s: float, stuck: Callable[[], str] | None = None) -> bool:
    """Run ``work`` on a helper thread, waiting at most ``timeout_s`` for it.

    An exporter stuck on a dead collector cannot hold the process past the bound. The
    line then says what it waits for and what is lost (``stuck()``).
    """

    def run() -> None:
        try:
            work()
        except Exception as exc:  # noqa: BLE001
            logger.warning("flushing spans failed (%s: %s)", type(exc).__name__, exc)

    # A real OS thread waited for with a real lock (autotrace.green): in a process gevent or
    # eventlet patched, a threading.Thread would be a greenlet and its join a wait on the
    # hub, which an export blocked on a real socket never lets run: the bound would not hold.
    worker = green.RealThread(run, "autotrace-flush")
    if not worker.join(timeout_s):
        why = "an export is still waiting for an answer"
        if stuck is not None:
            try:
                why = stuck() or why
            except Exception as exc:  # noqa: BLE001 - the line without the details
                logger.debug("cannot tell what the flush waits for: %s", exc)
        logger.warning(
            "spans not flushed within %gs (AUTOTRACE_SHUTDOWN_TIMEOUT): %s; going on without them; %s",
            timeout_s,
            why,
            export_report.DOCTOR,
        )
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
            exporters.closing()  # a failed export is not retried at exit
            provider.shutdown()
        else:
            provider.force_flush(int(timeout_s * 1000))
        if app is not None and hasattr(app, "force_flush"):
            app.force_flush(int(timeout_s * 1000))

    return _bounded(work, timeout_s, _stuck)


def _stuck() -> str:
    """What a flush past its bound waits for, and the spans it leaves undelivered."""
    why = exporters.waiting_for() or "an export is still waiting for an answer"
    left = sum(queue.undelivered() for queue in _queues)
    return f"{why}; {left} span{'' if left == 1 else 's'} not delivered"


def flush_app_provider(timeout_s: float) -> bool:
    """Flush a provider the app set itself (it shuts itself down at exit)."""
    current = trace.get_tracer_provider()
    if not hasattr(current, "force_flush"):
        return True
    return _bounded(lambda: current.force_flush(int(timeout_s * 1000)), timeout_s)
