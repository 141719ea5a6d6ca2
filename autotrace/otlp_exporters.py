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

The gRPC exporter's calls also go through :class:`_ForkGate` (no fork while the export
thread is inside gRPC) and :class:`_Stub` (no call on a channel whose last call failed
UNAVAILABLE: it may still be waiting out its reconnect back-off).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from . import _log, green
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
    fork_gate.install()

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

                The channel has subchannels of its own (not shared with the app's channels
                to the same address, nor with the channel it replaces: a new channel
                connects at once); it is made, and later closed, inside the fork gate;
                its stub is a :class:`_Stub`.
                """
                import grpc

                from .patching import unwrapped

                with fork_gate.holding():
                    try:
                        options = dict(compression=self._compression, options=_channel_options(self._channel_options))
                        if self._insecure:
                            channel = unwrapped(grpc.insecure_channel)(self._endpoint, **options)
                        else:
                            channel = unwrapped(grpc.secure_channel)(self._endpoint, self._credentials, **options)
                        stub = self._stub(channel)
                    except AttributeError:  # an SDK of another layout: its own way
                        super()._initialize_channel_and_stub()
                        return
                self._channel = _Channel(channel)
                self._client = _Stub(self, stub)

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


def _channel_options(options: Any) -> tuple:
    """The SDK's channel options, with a subchannel pool of the channel's own."""
    options = tuple(options or ())
    if any(name == "grpc.use_local_subchannel_pool" for name, _ in options):
        return options
    return options + (("grpc.use_local_subchannel_pool", 1),)


# -- fork ---------------------------------------------------------------------------------

# How long a fork waits at most for the export thread's gRPC call to end by itself, and
# then, that call cancelled, for it to leave gRPC (see _ForkGate).
FORK_WAIT_S = 0.5
FORK_CANCEL_WAIT_S = 1.0
# The export thread waits this long at most for a fork's end (it is told at once).
FORK_STUCK_S = 10.0


def grpc_future_cancelled() -> type:
    import grpc

    return grpc.FutureCancelledError


class _InFlight:
    """One gRPC call (or channel work, ``future`` None) of the export thread."""

    __slots__ = ("future", "for_fork")

    def __init__(self, future: Any = None) -> None:
        self.future = future
        self.for_fork = False  # cancelled so that a fork could go on: sent again after it


class _ForkGate:
    """No fork while the export thread is inside gRPC.

    grpcio's fork handlers (its core's ``pthread_atfork``, on by default) make a forked
    child's gRPC usable only when no other thread is inside gRPC at the fork; otherwise
    they are skipped (grpc logs "Other threads are currently calling into gRPC, skipping
    fork() handlers") and the child inherits grpc's state as that thread left it, locks
    held by a thread that does not exist in the child: the child's own export may then
    wait for ever (to the flush bound at its exit, its spans lost).

    So the export thread's calls are made through :meth:`call` (as futures) and its
    channel work inside :meth:`holding`; before a fork (:func:`os.register_at_fork`) new
    ones wait, and those under way get :data:`FORK_WAIT_S` to end. A call still under way
    then (a slow or hanging collector) is cancelled, and sent again once the fork is done,
    with what is left of its deadline (a collector that had the batch already may then
    get it twice); a fork never waits more than :data:`FORK_WAIT_S` +
    :data:`FORK_CANCEL_WAIT_S`. The child starts with an open gate and makes a channel of
    its own (:class:`autotrace.exporters.ExporterHandle`).
    """

    def __init__(self) -> None:
        self._installed = False
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._in_flight: set[_InFlight] = set()
        self._forking = False
        self._local = threading.local()

    def install(self) -> None:
        """Register the fork handlers (once per process; a child inherits them)."""
        with _lock:
            if self._installed or not hasattr(os, "register_at_fork"):
                return
            self._installed = True
        os.register_at_fork(before=self._before, after_in_parent=self._after_in_parent, after_in_child=self._reset)

    def _wait_for_the_fork(self) -> None:
        """Called with the condition held: wait for a fork under way to be done (bounded:
        should the fork's end never be told, the gate opens after FORK_STUCK_S)."""
        if self._forking and not self._cond.wait_for(lambda: not self._forking, FORK_STUCK_S):
            self._forking = False

    def _enter(self, entry: _InFlight) -> None:
        """Called with the condition held: wait for a fork under way, then count ``entry`` in."""
        self._wait_for_the_fork()
        self._in_flight.add(entry)

    def _leave(self, entry: _InFlight) -> None:
        with self._cond:
            self._in_flight.discard(entry)
            self._cond.notify_all()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Channel work (making, closing a channel): a fork waits for it."""
        if getattr(self._local, "inside", False):
            yield
            return
        entry = _InFlight()
        with self._cond:
            self._enter(entry)
        self._local.inside = True
        try:
            yield
        finally:
            self._local.inside = False
            self._leave(entry)

    def call(self, multicallable: Any, request: Any, timeout: float | None, **kwargs: Any) -> Any:
        """``multicallable(request, timeout=..., **kwargs)`` made as a future; its response.

        Sent again, with what is left of ``timeout``, when a fork cancelled it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            entry = _InFlight()
            with self._cond:
                self._enter(entry)
                try:
                    left = None if deadline is None else deadline - time.monotonic()
                    entry.future = future = multicallable.future(request, timeout=left, **kwargs)
                    # Out of gRPC once the call's last event is handled: its done callback
                    # runs then (at once if it is done already). Added before a fork can
                    # cancel the call.
                    future.add_done_callback(lambda _future, entry=entry: self._leave(entry))
                except BaseException:
                    self._in_flight.discard(entry)
                    raise
            try:
                error = future.exception()  # waits for the call's end
            except grpc_future_cancelled():
                if not entry.for_fork:
                    raise
                with self._cond:  # cancelled for a fork: once it is done, sent again
                    self._wait_for_the_fork()
                continue
            if error is None:
                return future.result()
            # A failed call's future is its error: raised from here with no reference left
            # to it in this frame, which its traceback holds (a cycle that would keep the
            # request until a full garbage collection).
            try:
                raise error
            finally:
                error = future = entry = None

    def _before(self) -> None:
        try:
            with self._cond:
                self._forking = True
                if not self._in_flight:
                    return
                self._cond.wait_for(lambda: not self._in_flight, FORK_WAIT_S)
                for entry in list(self._in_flight):
                    if entry.future is not None:
                        entry.for_fork = True  # before the cancel: the export thread wakes with it
                        entry.future.cancel()
                self._cond.wait_for(lambda: not self._in_flight, FORK_CANCEL_WAIT_S)
        except Exception as exc:  # noqa: BLE001 - the fork goes on
            logger.debug("waiting for the gRPC export before a fork failed: %s: %s", type(exc).__name__, exc)

    def _after_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()


fork_gate = _ForkGate()


class _Channel:
    """The exporter's channel, closed inside the fork gate (the SDK closes it after an
    UNAVAILABLE export, then makes another)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def close(self) -> None:
        with fork_gate.holding():
            self.channel.close()

    def __getattr__(self, name: str) -> Any:
        if name == "channel":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.channel, name)


class _Stub:
    """The exporter's stub: ``Export`` through the fork gate, never on a stale channel.

    A channel whose last call failed UNAVAILABLE (the collector refused the connection,
    or answered UNAVAILABLE) may sit in grpc's reconnect back-off, in which a call fails
    at once without trying to connect: after an outage, the first export on it failed
    although the collector was back, and the SDK's first retry comes after 1 s (+-20 %),
    so with an export timeout of 1-2 s that batch was lost. Such a channel is replaced
    (closed, and a new one made, which connects at once) before the next call.

    So is a channel made before gevent or eventlet patched the process: its calls would
    mix the real locks it was made with and the green ones each call makes, and the export
    thread then waited for an answer that had come (every span after the patching lost).
    """

    def __init__(self, exporter: Any, stub: Any) -> None:
        self._exporter = exporter
        self._stub = stub
        self._stale = False
        self._patched = green.patched()

    def Export(self, request: Any, timeout: float | None = None, **kwargs: Any) -> Any:  # noqa: N802 - grpc's name
        exporter = self._exporter
        if (self._stale or self._patched != green.patched()) and exporter._client is self:
            exporter._channel.close()
            exporter._initialize_channel_and_stub()
        client = exporter._client
        if client is not self:  # the new channel's
            return client.Export(request, timeout=timeout, **kwargs)
        import grpc

        try:
            return fork_gate.call(self._stub.Export, request, timeout, **kwargs)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                self._stale = True
            raise

    def __getattr__(self, name: str) -> Any:
        if name == "_stub":
            raise AttributeError(name)
        return getattr(self._stub, name)


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
