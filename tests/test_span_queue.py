"""The OTLP batch queue (autotrace/span_queue.py): spans encoded as they end, bytes queued.

What it sends is byte for byte the SDK encoder's request of the same spans; it keeps no
span object; it is bounded in spans and bytes (drops reported as the SDK's are); the
app's span processors still see every span; a span open in the parent at a fork is not
exported by the child.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc

import pytest
from opentelemetry import context, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from autotrace import export_report, light_span
from autotrace.span_queue import EncodedBatch, EncodingBatchProcessor


class Collect:
    """An exporter keeping what it is given, answering ``result``."""

    def __init__(self, result=SpanExportResult.SUCCESS) -> None:
        self.batches: list[EncodedBatch] = []
        self.sizes: list[int] = []
        self.keep = True
        self.result = result
        self.shut = False

    def export(self, batch):
        self.sizes.append(len(batch))
        if self.keep:
            self.batches.append(batch)
        return self.result

    def shutdown(self) -> None:
        self.shut = True


class Recorder(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[object] = []
        self.ended: list[object] = []

    def on_start(self, span, parent_context=None) -> None:
        self.started.append(span)

    def on_end(self, span) -> None:
        self.ended.append(span)


def asleep(processor) -> None:
    """Keep the export thread asleep (no full batch wakes it): the queue fills."""
    processor._wake.set = lambda: None
    real_shutdown = processor.shutdown

    def shutdown():
        del processor._wake.set
        real_shutdown()

    processor.shutdown = shutdown


def _setup(resource=None, **kwargs):
    exporter = Collect()
    processor = EncodingBatchProcessor(exporter, schedule_delay_millis=60_000, **kwargs)
    provider = TracerProvider(resource=resource or Resource({"service.name": "svc"}), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider, processor, exporter


@pytest.fixture
def drops(monkeypatch):
    counter = export_report.QueueDrops(interval_s=60.0)
    monkeypatch.setattr(export_report, "queue_drops", counter)
    return counter


def test_the_batch_is_the_sdk_encoders_request_byte_for_byte():
    provider, processor, exporter = _setup()
    other = TracerProvider(resource=Resource({"service.name": "other"}), shutdown_on_exit=False)
    other.add_span_processor(processor)
    copy = InMemorySpanExporter()
    for p in (provider, other):
        p.add_span_processor(SimpleSpanProcessor(copy))
    tracers = [provider.get_tracer("a", "1"), provider.get_tracer("b"), other.get_tracer("a", "1")]
    for i in range(30):
        tracer = tracers[i % 3]
        if i % 2:
            span = light_span.start_span(tracer, f"hook{i}", SpanKind.SERVER, context.Context(), {"http.request.method": "GET", "i": i})
            span.add_event("e", {"k": [1, 2]})
        else:
            span = tracer.start_span(f"app{i}", kind=SpanKind.INTERNAL, attributes={"x": 1.5, "b": b"\x00"})
            span.set_status(trace.Status(trace.StatusCode.ERROR, "bad"))
        span.end()
    assert processor.force_flush()
    (batch,) = exporter.batches
    assert len(batch) == 30
    assert batch.data == sdk_encode_spans(copy.get_finished_spans()).SerializeToString()
    processor.shutdown()
    assert exporter.shut


def test_batches_are_bounded_in_spans_and_bytes():
    provider, processor, exporter = _setup(max_queue_size=100, max_export_batch_size=8, max_batch_bytes=2_000)
    tracer = provider.get_tracer("t")
    for i in range(40):
        tracer.start_span("s", attributes={"pad": "x" * (300 if i >= 20 else 1)}).end()
    processor.force_flush()
    sizes = [len(batch) for batch in exporter.batches]
    assert sum(sizes) == 40
    assert max(sizes) == 8 and sizes[:2] == [8, 8]  # small spans: by count
    assert all(len(b.data) <= 2_000 for b in exporter.batches[3:])  # large ones: by bytes
    assert len(exporter.batches) > 40 // 8 + 1
    processor.shutdown()


def test_a_queue_that_fits_one_batch_is_taken_whole_and_its_bytes_counted_down():
    provider, processor, exporter = _setup(max_queue_size=100, max_export_batch_size=8, max_batch_bytes=2_000)
    tracer = provider.get_tracer("t")
    for _ in range(5):
        tracer.start_span("s").end()
    assert processor.queued_bytes() > 0
    processor.force_flush()
    assert [len(batch) for batch in exporter.batches] == [5]
    assert processor.queued_bytes() == 0 and processor.undelivered() == 0
    for _ in range(12):  # more than a batch: taken span by span, the bytes still counted right
        tracer.start_span("s").end()
    processor.force_flush()
    assert [len(batch) for batch in exporter.batches] == [5, 8, 4]
    assert processor.queued_bytes() == 0 and processor.undelivered() == 0
    processor.shutdown()


def test_a_full_batch_wakes_the_export_thread():
    provider, processor, exporter = _setup(max_export_batch_size=5)
    tracer = provider.get_tracer("t")
    for _ in range(5):
        tracer.start_span("s").end()
    for _ in range(100):  # bounded wait for the export thread
        if exporter.batches:
            break
        threading.Event().wait(0.05)
    assert [len(b) for b in exporter.batches] == [5]
    processor.shutdown()


def test_the_queue_is_bounded_in_spans_and_bytes_and_drops_are_reported(drops, capsys):
    provider, processor, exporter = _setup(max_queue_size=10, max_export_batch_size=10)
    asleep(processor)  # keep the export thread asleep: the queue fills
    tracer = provider.get_tracer("t")
    for _ in range(25):
        tracer.start_span("s").end()
    assert processor.undelivered() == 10 and drops.count == 15
    assert "a span was dropped: the batch queue is full" in capsys.readouterr().err
    processor.force_flush()
    assert processor.undelivered() == 0 and processor.queued_bytes() == 0
    processor.shutdown()

    provider, processor, exporter = _setup(max_queue_size=1000, max_queue_bytes=5_000)
    asleep(processor)
    tracer = provider.get_tracer("t")
    drops.count = 0
    for _ in range(50):
        tracer.start_span("s", attributes={"pad": "x" * 400}).end()
    assert processor.queued_bytes() <= 5_000 and drops.count == 50 - processor.undelivered() > 0
    processor.shutdown()


def test_what_the_queue_retains_while_exports_fail_is_bytes_only(drops):
    """A collector that is down: the queue is full of bytes, and no span object is kept."""
    provider, processor, exporter = _setup(max_queue_size=2048, max_export_batch_size=512)
    exporter.result = SpanExportResult.FAILURE
    exporter.keep = False
    asleep(processor)
    tracer = provider.get_tracer("t")
    attributes = {"http.request.method": "GET", "url.path": "/items/42", "http.response.status_code": 200, "server.address": "shop"}

    def burst(n):
        for i in range(n):
            light_span.start_span(tracer, "GET /retained/{id}", SpanKind.SERVER, context.Context(), dict(attributes, i=i)).end()

    tracemalloc.start()
    try:
        burst(2100)  # fills the queue
        gc.collect()
        full = tracemalloc.get_traced_memory()[0]
        for _ in range(3):  # failed exports make room; more spans refill it
            processor.force_flush()
            burst(2048)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - full
    finally:
        tracemalloc.stop()
    assert processor.undelivered() == 2048
    per_span = processor.queued_bytes() / 2048
    assert 100 < per_span < 300, per_span  # the encoded span, nothing more
    # The queue (bytes and entries) and the encoder's bounded cache of frequent key-values.
    assert full < 2048 * (per_span + 150) + 512 * 1024, full
    assert grown < 128 * 1024, grown  # the same number of bytes held: no growth
    alive = [o for o in gc.get_objects() if issubclass(type(o), ReadableSpan) and o.name == "GET /retained/{id}"]
    assert alive == []  # no span object outlives its end
    assert exporter.sizes == [512] * 12
    processor.shutdown()


def test_the_apps_span_processors_still_see_every_span():
    provider, processor, exporter = _setup()
    recorder = Recorder()
    provider.add_span_processor(recorder)
    tracer = provider.get_tracer("t")
    hook = light_span.start_span(tracer, "hook", SpanKind.CLIENT, context.Context(), {"a": 1})
    app = tracer.start_span("app")
    app.end()
    hook.end()
    assert recorder.started == [hook, app]
    assert [s.name for s in recorder.ended] == ["app", "hook"]
    assert all(isinstance(s, ReadableSpan) for s in recorder.ended)
    processor.force_flush()
    assert len(exporter.batches[0]) == 2
    processor.shutdown()


def test_unsampled_spans_are_not_queued():
    exporter = Collect()
    processor = EncodingBatchProcessor(exporter, schedule_delay_millis=60_000)
    from opentelemetry.sdk.trace import sampling

    provider = TracerProvider(sampler=sampling.ALWAYS_OFF, shutdown_on_exit=False)
    provider.add_span_processor(processor)
    provider.get_tracer("t").start_span("s").end()
    assert processor.undelivered() == 0
    processor.shutdown()


@pytest.mark.parametrize("app_processor", [False, True], ids=["agent-processors", "with-an-app-processor"])
def test_a_span_open_at_a_fork_is_exported_by_the_parent_only(monkeypatch, app_processor):
    """The child's side of a fork (its at-fork handlers, run here by hand), for an SDK span
    and a light span, with the agent's processors alone (the light spans' short way) and
    with a processor of the app's too (the SDK's calls)."""
    from autotrace import span_queue

    provider, processor, exporter = _setup()
    if app_processor:
        recorder = Recorder()
        provider.add_span_processor(recorder)
    tracer = provider.get_tracer("t")
    open_at_fork = tracer.start_span("open at fork")
    hook_open = light_span.start_span(tracer, "hook open at fork", SpanKind.SERVER, context.Context(), {})
    tracer.start_span("queued before the fork").end()
    worker = processor._worker
    processor._at_fork_reinit()  # what the child runs after os.fork()
    monkeypatch.setattr(span_queue, "pid", span_queue.pid + 1)  # and the child's process id
    assert processor._worker is not worker and processor.undelivered() == 0  # the parent's queue is the parent's
    open_at_fork.end()
    hook_open.end()
    tracer.start_span("the child's own").end()
    light_span.start_span(tracer, "the child's hook span", SpanKind.CLIENT, context.Context(), {}).end()
    processor.force_flush()
    (batch,) = exporter.batches
    assert len(batch) == 2 and b"the child's own" in batch.data and b"the child's hook span" in batch.data
    assert b"open at fork" not in batch.data
    processor.shutdown()


def test_a_span_that_cannot_be_encoded_is_dropped_with_one_line(monkeypatch, capsys):
    from autotrace import _log, span_queue

    monkeypatch.setattr(_log, "_warned", set())

    def broken(span):
        raise ValueError("nope")

    monkeypatch.setattr(span_queue, "encode_span", broken)
    provider, processor, exporter = _setup()
    tracer = provider.get_tracer("t")
    for _ in range(3):
        tracer.start_span("s").end()  # never raises into the app
    assert processor.undelivered() == 0
    assert capsys.readouterr().err.count("could not be encoded (ValueError: nope)") == 1
    processor.shutdown()


# -- the compiled light end (autotrace/_speedups.c: light_end), against the Python one ----------


def _light_spans(tracer, n, pad=1, **extra):
    spans = []
    for i in range(n):
        span = light_span.start_span(tracer, "hook", SpanKind.CLIENT, context.Context(), {"i": i, "pad": "x" * pad, **extra})
        span.end()
        spans.append(span)
    return spans


def test_the_compiled_light_end_is_used_and_queues_the_same_bytes_as_the_python_one(monkeypatch):
    from autotrace import otlp_encode, span_queue
    from autotrace import _speedups

    provider, processor, exporter = _setup()
    assert type(processor._state) is _speedups.QueueState  # this install's: compiled
    assert processor.light_end.__self__ is processor._state
    tracer = provider.get_tracer("t")
    compiled = _light_spans(tracer, 5)
    processor.force_flush()
    # The same spans through the Python light end and encoder (the extension hidden).
    monkeypatch.setattr(span_queue, "speedups", None)
    monkeypatch.setattr(span_queue, "encode_light", otlp_encode._encode_light_py)
    provider2, python_processor, python_exporter = _setup()
    assert "light_end" not in vars(python_processor)
    for span in compiled:
        python_processor.light_end(span)
    python_processor.force_flush()
    assert exporter.batches[0].data == python_exporter.batches[0].data == sdk_encode_spans(compiled).SerializeToString()
    processor.shutdown()
    python_processor.shutdown()


def test_the_compiled_light_end_keeps_the_queues_bounds_and_reports_drops(drops):
    provider, processor, exporter = _setup(max_queue_size=10, max_export_batch_size=10)
    asleep(processor)
    tracer = provider.get_tracer("t")
    _light_spans(tracer, 25)
    assert processor.undelivered() == 10 and drops.count == 15
    processor.force_flush()
    assert processor.undelivered() == 0 and processor.queued_bytes() == 0
    processor.shutdown()

    provider, processor, exporter = _setup(max_queue_size=1000, max_queue_bytes=5_000)
    asleep(processor)
    drops.count = 0
    _light_spans(provider.get_tracer("t"), 50, pad=400)
    assert 0 < processor.queued_bytes() <= 5_000 and drops.count == 50 - processor.undelivered() > 0
    processor.shutdown()


def test_a_full_batch_of_light_spans_wakes_the_export_thread():
    provider, processor, exporter = _setup(max_export_batch_size=5)
    _light_spans(provider.get_tracer("t"), 5)
    for _ in range(100):  # bounded wait for the export thread
        if exporter.batches:
            break
        threading.Event().wait(0.05)
    assert [len(b) for b in exporter.batches] == [5]
    processor.shutdown()


def test_the_compiled_light_end_leaves_unsampled_shut_down_and_uncommon_spans_alone_or_to_python():
    from opentelemetry.sdk.trace import sampling

    exporter = Collect()
    processor = EncodingBatchProcessor(exporter, schedule_delay_millis=60_000)
    provider = TracerProvider(sampler=sampling.StaticSampler(sampling.Decision.RECORD_ONLY), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    _light_spans(provider.get_tracer("t"), 3)  # recorded, not sampled
    assert processor.undelivered() == 0
    processor.shutdown()

    provider, processor, exporter = _setup()
    tracer = provider.get_tracer("t")
    span = light_span.start_span(tracer, "with an event", SpanKind.CLIENT, context.Context(), {"a": 1})
    span.add_event("e", {"k": [1, 2]})  # not the C encoder's: the Python light end queues it
    span.end()
    assert processor.undelivered() == 1
    processor.force_flush()
    assert exporter.batches[0].data == sdk_encode_spans([span]).SerializeToString()
    processor.shutdown()
    _light_spans(tracer, 2)  # after the shutdown: not queued
    assert processor.undelivered() == 0


def test_a_failure_in_the_compiled_light_end_is_one_line_never_the_apps(monkeypatch, capsys):
    from autotrace import _log

    monkeypatch.setattr(_log, "_warned", set())
    provider, processor, exporter = _setup()

    class BrokenLock:
        def acquire(self):
            raise RuntimeError("no lock today")

    real_lock, processor._lock = processor._lock, BrokenLock()
    _light_spans(provider.get_tracer("t"), 3)  # never raises into the app
    processor._lock = real_lock
    assert processor.undelivered() == 0
    assert capsys.readouterr().err.count("(RuntimeError: no lock today)") == 1
    processor.shutdown()


def test_a_queue_bound_past_the_c_size_type_queues_light_spans_as_python_does(drops, monkeypatch, capsys):
    """OTEL_BSP_MAX_QUEUE_SIZE (or a byte bound) beyond 2**63: no bound reached, every span
    queued; the compiled light end once lost them all (an OverflowError per span)."""
    from autotrace import _log

    monkeypatch.setattr(_log, "_warned", set())
    provider, processor, exporter = _setup(max_queue_size=2**64, max_queue_bytes=10**30, max_export_batch_size=2**70)
    asleep(processor)
    _light_spans(provider.get_tracer("t"), 5)
    assert processor.undelivered() == 5 and drops.count == 0
    assert "could not be encoded" not in capsys.readouterr().err
    processor.force_flush()
    assert [len(batch) for batch in exporter.batches] == [5]
    processor.shutdown()


@pytest.mark.parametrize("bound", ["max_queue_size", "max_queue_bytes", "max_batch_bytes"])
def test_a_negative_queue_bound_is_refused_when_the_processor_is_made(bound):
    """The compiled light end reads its bounds once, when the processor is made: a bound it
    cannot use is a clear error then, never an error per span in the app's thread."""
    with pytest.raises(ValueError, match="non-negative"):
        EncodingBatchProcessor(Collect(), **{bound: -5})


def test_a_slow_export_thread_is_woken_once_per_ready_batch_not_per_span():
    """Past a ready batch, each light span's end called back into Python to wake the
    thread; now once per batch the thread has not taken yet."""
    from autotrace import otlp_encode

    provider, processor, exporter = _setup(max_export_batch_size=5)
    asleep(processor)
    wakes = []
    processor._wake.set = lambda: wakes.append(1)  # never set: is_set() stays False
    _light_spans(provider.get_tracer("t"), 12)
    assert processor.undelivered() == 12
    assert len(wakes) == (1 if otlp_encode.COMPILED else 8)
    assert len(processor._take()) == 5
    _light_spans(provider.get_tracer("t"), 1)  # still a ready batch: the thread is woken again
    assert len(wakes) == (2 if otlp_encode.COMPILED else 9)
    processor.force_flush()
    assert [len(batch) for batch in exporter.batches] == [5, 3]  # what _take above left
    processor.shutdown()
