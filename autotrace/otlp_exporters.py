"""The SDK's OTLP span exporters, with :mod:`autotrace.otlp_encode` as their encoder.

Imported by the OTLP exporter factory only, after the exporter's transport module: for
gRPC always, for OTLP/HTTP only with a credential provider (otherwise
:mod:`autotrace.otlp_http` sends the bytes). A batch from the agent's queue
(:class:`autotrace.span_queue.EncodedBatch`) is already encoded and sent as it is.

* HTTP: the SDK's ``export`` encodes with ``encode_spans(spans).SerializePartialToString()``,
  ``encode_spans`` being a global of its module, with no hook in between. That global is
  replaced once by a dispatcher: for calls made inside :class:`HttpSpanExporter.export`
  (a thread-local flag) it returns our bytes wrapped in an object with the two
  ``Serialize*`` methods; for any other caller (an app's own exporter) it calls the
  encoder it replaced. The SDK's export logic (size limit, retries, metrics) is reused
  unchanged.
* gRPC: the exporter's ``_translate_data`` hook (the mixin's abstract method each signal
  overrides) returns ``ExportTraceServiceRequest.FromString(our bytes)``: a real message,
  parsed in C, so the stub's serializer and everything else stay the SDK's.

Either way, an error of our encoder falls back to the SDK's encoder for that batch
(warned once), and the first batch is checked against the SDK's encoding (on a sample):
if they differ, ours is switched off for the process (warned once).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Sequence

from . import _log
from .otlp_encode import encode_spans
from .span_queue import EncodedBatch

logger = _log.logger

_VERIFY_SAMPLE = 32

_lock = threading.Lock()
_state = {"verified": False, "disabled": False}


def _check(spans: Sequence[Any], sdk_encode: Callable[[Sequence[Any]], Any]) -> bool:
    """Once per process: does our encoding of a sample equal the SDK's? False turns ours off."""
    if _state["disabled"]:
        return False
    if _state["verified"]:
        return True
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    sample = list(spans[:_VERIFY_SAMPLE])
    try:
        same = ExportTraceServiceRequest.FromString(encode_spans(sample)) == sdk_encode(sample)
    except Exception as exc:  # noqa: BLE001
        same = False
        logger.debug("checking the span encoder failed: %s: %s", type(exc).__name__, exc)
    with _lock:
        if same:
            _state["verified"] = True
        else:
            _state["disabled"] = True
    if not same:
        _log.warn_once(
            "otlp_encode:mismatch",
            "autotrace's span encoder disagrees with this SDK's OTLP encoder; the SDK's encoder is used",
        )
    return same


def _encode_or_none(spans: Sequence[Any], sdk_encode: Callable[[Sequence[Any]], Any]) -> bytes | None:
    """Our bytes, or None to use the SDK's encoder for this batch."""
    if not _check(spans, sdk_encode):
        return None
    try:
        return encode_spans(spans, pause=True)  # on the export thread: request threads go first
    except Exception as exc:  # noqa: BLE001 - fall back for this batch
        _log.warn_once(
            f"otlp_encode:{type(exc).__name__}",
            "autotrace's span encoder failed (%s: %s); the SDK's encoder is used for such batches",
            type(exc).__name__,
            exc,
        )
        return None


class _Encoded:
    """Encoded request bytes, standing in for the message in the SDK's HTTP ``export``."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def SerializePartialToString(self, **_kwargs: object) -> bytes:  # noqa: N802 - protobuf's name
        return self._data

    SerializeToString = SerializePartialToString

    def ByteSize(self) -> int:  # noqa: N802
        return len(self._data)


_local = threading.local()


def _install_http_dispatcher(module: Any) -> bool:
    """Replace ``module.encode_spans`` by the dispatcher (once); False when it cannot."""
    with _lock:
        current = getattr(module, "encode_spans", None)
        if getattr(current, "_autotrace_dispatcher", False):
            return True
        if not callable(current):
            return False
        sdk_encode = current

        def encode_spans_dispatch(spans: Sequence[Any]) -> Any:
            if type(spans) is EncodedBatch:  # encoded as the spans ended (autotrace.span_queue)
                return _Encoded(spans.data)
            if getattr(_local, "active", False):
                data = _encode_or_none(spans, sdk_encode)
                if data is not None:
                    return _Encoded(data)
            return sdk_encode(spans)

        encode_spans_dispatch._autotrace_dispatcher = True  # type: ignore[attr-defined]
        encode_spans_dispatch.__wrapped__ = sdk_encode  # type: ignore[attr-defined]
        module.encode_spans = encode_spans_dispatch
        return True


def http_exporter_class() -> type:
    """The SDK's OTLP/HTTP span exporter, encoding with ours (or the SDK's class unchanged)."""
    from opentelemetry.exporter.otlp.proto.http import trace_exporter as module

    base = module.OTLPSpanExporter
    if not _install_http_dispatcher(module):
        logger.debug("the OTLP/HTTP exporter has no encode_spans to replace; the SDK's encoder is used")
        return base

    class HttpSpanExporter(base):  # type: ignore[misc, valid-type]
        def export(self, spans):  # type: ignore[override]
            previous = getattr(_local, "active", False)
            _local.active = True
            try:
                return super().export(spans)
            finally:
                _local.active = previous

    return HttpSpanExporter


def grpc_exporter_class() -> type:
    """The SDK's OTLP/gRPC span exporter, encoding with ours (or the SDK's class unchanged)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as base
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    translate = getattr(base, "_translate_data", None)
    if not callable(translate):
        logger.debug("the OTLP/gRPC exporter has no _translate_data; the SDK's encoder is used")
        return base

    class GrpcSpanExporter(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            metrics = getattr(self, "_metrics", None)
            if metrics is not None and callable(getattr(metrics, "export_operation", None)):
                self._metrics = _ForgetsTheError(metrics)

        if callable(getattr(base, "_initialize_channel_and_stub", None)):

            def _initialize_channel_and_stub(self) -> None:
                """The SDK's channel, made with grpc's own functions, not the agent's hook's.

                The export is not traced (instrumentation is suppressed), but a channel made
                through the hook carries its interceptor, and grpc's interceptor machinery
                keeps each failed call's exception, traceback and request in a reference
                cycle (while the collector is down: megabytes a minute until a full
                garbage collection). Anything else that wraps grpc's functions still applies.
                """
                import grpc

                from .patching import unwrapped

                try:
                    options = dict(compression=self._compression, options=self._channel_options)
                    if self._insecure:
                        self._channel = unwrapped(grpc.insecure_channel)(self._endpoint, **options)
                    else:
                        self._channel = unwrapped(grpc.secure_channel)(self._endpoint, self._credentials, **options)
                    self._client = self._stub(self._channel)
                except AttributeError:  # an SDK of another layout: its own way
                    super()._initialize_channel_and_stub()

        def _translate_data(self, data):  # type: ignore[override]
            if type(data) is EncodedBatch:  # encoded as the spans ended (autotrace.span_queue)
                return ExportTraceServiceRequest.FromString(data.data)
            sdk_encode = super()._translate_data
            encoded = _encode_or_none(data, sdk_encode)
            if encoded is not None:
                try:
                    return ExportTraceServiceRequest.FromString(encoded)
                except Exception as exc:  # noqa: BLE001
                    _log.warn_once(
                        "otlp_encode:parse",
                        "autotrace's span encoding could not be parsed (%s: %s); using the SDK's encoder",
                        type(exc).__name__,
                        exc,
                    )
            return sdk_encode(data)

    return GrpcSpanExporter


class _ForgetsTheError:
    """The SDK gRPC exporter's metrics, with its export result's error dropped after use.

    The SDK's ``_export`` keeps a failed export's ``RpcError`` on the result its metrics
    hand out (``result.error``), in a local of the frame that error's traceback holds: a
    reference cycle, freed only by a full garbage collection, that keeps the request (every
    span of the batch, parsed) and the batch alive. While a collector is down, one per
    failed export: RSS grew by about 20 MB. The error is dropped once the metrics have
    recorded it, which breaks the cycle.
    """

    def __init__(self, metrics: Any) -> None:
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metrics, name)

    @contextlib.contextmanager
    def export_operation(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        result = None
        try:
            with self._metrics.export_operation(*args, **kwargs) as result:
                yield result
        finally:
            if result is not None and getattr(result, "error", None) is not None:
                try:
                    result.error = None
                except Exception:  # noqa: BLE001 - a result of another layout: the cycle stays
                    pass
