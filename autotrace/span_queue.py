"""The OTLP exporter's batch queue: each span is encoded once when it ends, the queue holds bytes.

:class:`EncodingBatchProcessor` takes the place of the SDK's ``BatchSpanProcessor`` for the
OTLP exporter (the console exporters keep the SDK's). When a sampled span ends, it is
encoded (:func:`autotrace.otlp_encode.encode_span`) and the queue keeps those bytes with
the span's resource and scope (shared, immutable objects), so no span object outlives
its end: nothing for the garbage collector's older generations, and a full queue of
2,048 typical spans costs about 1 MB instead of 15-20 MB. The export thread joins a batch
of them into one ``ExportTraceServiceRequest`` (:func:`autotrace.otlp_encode.encode_request`,
grouped by resource and scope as the SDK's encoder groups them) and only does the I/O.

Bounds: ``OTEL_BSP_MAX_QUEUE_SIZE`` spans and :data:`MAX_QUEUE_BYTES` bytes in the queue;
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans and :data:`MAX_BATCH_BYTES` bytes per export. A
span that does not fit is dropped and reported as the SDK's queue drops are
(:data:`autotrace.export_report.queue_drops`). Schedule, flush and shutdown follow the
SDK's batch processor: an export every ``OTEL_BSP_SCHEDULE_DELAY`` or as soon as a batch
is full; ``force_flush`` and ``shutdown`` export everything queued.

Fork: a child starts with an empty queue and its own export thread, as with the SDK. A
span started in the parent and still open at the fork belongs to the parent, which ends
and exports it; the child, whose copy of the code ends it too, does not export it again.
A light span (:mod:`autotrace.light_span`) knows the process that started it
(:data:`pid`); the processor keeps the ids of other spans open, for the same check.

Light spans take a shorter way: :meth:`EncodingBatchProcessor.light_end` is the whole of
the processor's work at their end (no ``on_start``: their process is on the span), and
:func:`autotrace.otlp_encode.encode_light` reads the span's state directly. Where the
optional extension ``autotrace._speedups`` is built, the processor's ``light_end`` is its
compiled one (sampled check, encoding, queue append under the lock, in one C call), which
hands what it does not do itself to :meth:`EncodingBatchProcessor._light_end_rest`. It
reads the processor's queue, lock, bounds, byte count and shutdown flag from one state
object (``_state``: ``autotrace._speedups.QueueState``, else :class:`_QueueState`), which
the processor's ``_bytes``, ``_shutdown`` and ``_lock`` read and write too.
"""

from __future__ import annotations

import collections
import os
import weakref
from typing import Any, Deque, Tuple

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from . import _log, export_report, green
from .otlp_encode import encode_light, encode_request, encode_span, speedups

logger = _log.logger

# The queue's bound in bytes, besides OTEL_BSP_MAX_QUEUE_SIZE's in spans: a few spans with
# huge attributes cannot hold more than this while the collector is away.
MAX_QUEUE_BYTES = 4 * 1024 * 1024
# An export's bound in bytes, besides OTEL_BSP_MAX_EXPORT_BATCH_SIZE's in spans: below the
# 4 MiB a collector's gRPC receiver accepts by default (max_recv_msg_size_mib).
MAX_BATCH_BYTES = 3 * 1024 * 1024
# Ids of the spans open in this process are kept (for a fork, see the module docstring) up
# to this many; beyond that (an app that never ends its spans) the record starts afresh.
MAX_OPEN_SPANS = 100_000

Entry = Tuple[Any, Any, bytes]  # (resource, instrumentation scope, encoded span)

# This process's id, set again in a forked child before anything else runs there: a light
# span started under another one was the parent's (see the module docstring).
pid = os.getpid()


def _new_pid() -> None:
    global pid
    pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pid)


def _encode_failed(exc: Exception) -> None:
    _log.warn_once(
        f"span_queue:{type(exc).__name__}",
        "a span could not be encoded (%s: %s); such spans are dropped",
        type(exc).__name__,
        exc,
    )


class _QueueState:
    """The state the compiled light end reads (``autotrace._speedups.QueueState``'s fields),
    where the extension is not built."""

    __slots__ = ("lock", "bytes", "shutdown", "woken")

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.bytes = 0  # the encoded size of what the queue holds
        self.shutdown = False
        self.woken = False  # a ready batch signalled since the export thread's last take


def _in_state(name: str) -> property:
    """A processor attribute kept in its state object (``self._state``), read and written there."""
    return property(
        lambda self: getattr(self._state, name),
        lambda self, value: setattr(self._state, name, value),
        doc=f"the state object's {name}",
    )


class EncodedBatch:
    """An encoded ``ExportTraceServiceRequest`` and the number of spans in it.

    What :class:`EncodingBatchProcessor` hands its exporter instead of a list of spans;
    ``len()`` is the number of spans, as for a list.
    """

    __slots__ = ("data", "count")

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count

    def __len__(self) -> int:
        return self.count


class EncodingBatchProcessor(SpanProcessor):
    """A batch span processor whose queue holds encoded spans (see the module docstring)."""

    def __init__(
        self,
        exporter: Any,
        max_queue_size: int = 2048,
        schedule_delay_millis: float = 5000,
        max_export_batch_size: int = 512,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        for bound in (max_queue_size, max_queue_bytes, max_batch_bytes):
            if bound < 0:
                raise ValueError(f"a queue bound must be a non-negative int, not {bound!r}")
        self._exporter = exporter
        self._max_queue_size = max_queue_size
        self._schedule_delay = schedule_delay_millis / 1000.0
        self._max_batch_size = max(1, min(max_export_batch_size, max_queue_size))
        self._max_queue_bytes = max_queue_bytes
        self._max_batch_bytes = max_batch_bytes
        self._queue: Deque[Entry] = collections.deque()
        if speedups is not None:
            # Read by the compiled light end: the bounds once, here (they never change).
            self._state: Any = speedups.QueueState(
                self._light_end_rest, self._queue, None,
                max_queue_size, max_queue_bytes, self._max_batch_size, max_batch_bytes,
            )  # fmt: skip
            # It shadows the method below, which stays the reference and the way for what
            # the C code does not handle.
            self.light_end = self._state.light_end
        else:
            self._state = _QueueState(None)
        self._in_flight = 0  # spans of the batch being exported
        self._open: set[int] = set()  # ids of sampled spans started in this process, not ended
        self._inherited: set[int] = set()  # in a forked child: those open in the parent at the fork
        self._init_threading()
        if hasattr(os, "register_at_fork"):
            reinit = weakref.WeakMethod(self._at_fork_reinit)

            def after_in_child() -> None:
                method = reinit()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_in_child)

    # The queue's byte count, the shutdown flag and the lock live in the state object.
    _bytes = _in_state("bytes")
    _shutdown = _in_state("shutdown")
    _lock = _in_state("lock")

    def _init_threading(self) -> None:
        # Real locks and a real OS thread, even in a process gevent or eventlet patched,
        # before or after this (autotrace.green). A new thread starts in an empty context:
        # no request's context is carried into it.
        self._lock = green.allocate_lock()  # the queue and its byte count
        self._export_lock = green.allocate_lock()  # one export at a time (worker, force_flush)
        self._wake = green.Flag()
        self._worker = green.RealThread(self._work, "autotrace-export")

    def _at_fork_reinit(self) -> None:
        self._queue.clear()
        self._bytes = 0
        self._state.woken = False
        self._in_flight = 0
        self._inherited = self._open
        self._open = set()
        self._init_threading()

    # -- the app's threads ------------------------------------------------------------------

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        context = span.context
        if context.trace_flags.sampled and getattr(span, "_pid", None) is None:
            opened = self._open
            if len(opened) >= MAX_OPEN_SPANS:
                opened.clear()  # never ended: forget them (a fork then exports them twice)
            opened.add(context.span_id)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if not context.trace_flags.sampled:
            return
        started_in = getattr(span, "_pid", None)  # a light span's process
        if started_in is not None:
            if started_in != pid:
                return  # the parent's span: the parent exports it
        else:
            span_id = context.span_id
            if self._inherited and span_id in self._inherited:
                self._inherited.discard(span_id)  # the parent's span: the parent exports it
                return
            self._open.discard(span_id)
        if self._shutdown:
            return
        try:
            data = encode_span(span)
        except Exception as exc:  # noqa: BLE001 - fail open: this span is lost, said once
            _encode_failed(exc)
            return
        self._put(span.resource, span.instrumentation_scope, data)

    def light_end(self, span: Any) -> None:
        """``on_end`` of a light span started in this process (the caller checked both)."""
        if not span._context[3] & 1 or self._shutdown:  # noqa: SLF001 - the trace flags: not sampled
            return
        try:
            data = encode_light(span)
        except Exception as exc:  # noqa: BLE001 - fail open: this span is lost, said once
            _encode_failed(exc)
            return
        self._put(span._resource, span._instrumentation_scope, data)  # noqa: SLF001

    def _light_end_rest(self, span: Any, outcome: int, exc: BaseException | None) -> None:
        """What the compiled light end (``autotrace._speedups.light_end``) leaves to Python:
        -1 a span it does not encode (the Python light end, whole), -2 a failure (``exc``:
        the span is lost, said once), 2 a full queue (the drop counted), 3 a ready batch."""
        if outcome == -1:
            EncodingBatchProcessor.light_end(self, span)
        elif outcome == -2:
            if not isinstance(exc, Exception):
                raise exc  # type: ignore[misc] - KeyboardInterrupt and the like: not the encoder's
            _encode_failed(exc)
        elif outcome == 2:
            export_report.queue_drops.dropped()
        elif outcome == 3 and not self._wake.is_set():
            self._wake.set()

    def _put(self, resource: Any, scope: Any, data: bytes) -> None:
        size = len(data)
        wake = False
        # Made before the lock is taken: the allocation may start a garbage collection,
        # whose finalizers may end a span on this thread and so come back here (the lock
        # is not re-entrant). Nothing under the lock allocates a tracked object.
        entry = (resource, scope, data)
        with self._lock:
            full = len(self._queue) >= self._max_queue_size or self._bytes + size > self._max_queue_bytes
            if not full:
                self._queue.append(entry)
                self._bytes += size
                wake = len(self._queue) >= self._max_batch_size or self._bytes >= self._max_batch_bytes
        if full:
            export_report.queue_drops.dropped()
        elif wake and not self._wake.is_set():
            self._wake.set()

    # -- the export thread ------------------------------------------------------------------

    def _work(self) -> None:
        while not self._shutdown:
            woken = self._wake.wait(self._schedule_delay)
            if self._shutdown:
                break
            self._export(at_least_one=not woken)
            self._wake.clear()
        self._export(everything=True)

    def _batch_ready(self) -> bool:
        return len(self._queue) >= self._max_batch_size or self._bytes >= self._max_batch_bytes

    def _take(self) -> list[Entry]:
        """The oldest spans, up to a batch's bounds (at least one)."""
        batch: list[Entry] = []
        size = 0
        with self._lock:
            self._state.woken = False  # the next ready batch wakes the thread again
            queue = self._queue
            if len(queue) <= self._max_batch_size and self._bytes <= self._max_batch_bytes:
                # All of it fits in one batch (the usual case): taken whole, not span by span.
                batch = list(queue)
                queue.clear()
                self._in_flight = len(batch)
                self._bytes = 0
                return batch
            while queue and len(batch) < self._max_batch_size:
                entry = queue[0]
                if batch and size + len(entry[2]) > self._max_batch_bytes:
                    break
                queue.popleft()
                batch.append(entry)
                size += len(entry[2])
            self._bytes -= size
            self._in_flight = len(batch)
        return batch

    def _export(self, at_least_one: bool = False, everything: bool = False) -> None:
        with self._export_lock:
            exported = 0
            while self._queue and (everything or self._batch_ready() or (at_least_one and exported == 0)):
                exported += 1
                batch = self._take()
                token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
                try:
                    self._exporter.export(EncodedBatch(encode_request(batch), len(batch)))
                except Exception as exc:  # noqa: BLE001 - the export thread goes on
                    logger.debug("exporting a batch failed: %s: %s", type(exc).__name__, exc)
                finally:
                    detach(token)
                    self._in_flight = 0

    # -- flush, shutdown, and what is left ----------------------------------------------------

    def undelivered(self) -> int:
        """Spans queued or being exported: what an exit that cannot wait would lose."""
        return len(self._queue) + self._in_flight

    def queued_bytes(self) -> int:
        return self._bytes

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._shutdown:
            return False
        self._export(everything=True)
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._wake.set()
        self._worker.join()
        self._exporter.shutdown()
