"""OTLP/gRPC span export over HTTP/2 with ``h2`` on a socket: no grpcio, no protobuf.

grpcio costs a worker about 21 MB; ``h2`` (python-hyper's HTTP/2 state machine, pure
Python) a few. :func:`autotrace.exporters.otlp_factory` picks this exporter for
``--protocol grpc`` when the app has not imported ``grpc`` (then grpcio's exporter costs
nothing more, and is used as before).

One unary call per batch, ``/opentelemetry.proto.collector.trace.v1.TraceService/Export``,
on a kept connection (one stream per export): the body is the 5-byte gRPC prefix
(compressed flag, big-endian length) and the encoded ``ExportTraceServiceRequest``
(:class:`autotrace.span_queue.EncodedBatch`). The settings are the SDK's gRPC exporter's
(see :func:`autotrace.exporters.otlp_factory`): the endpoint, ``insecure`` (TLS unless the
scheme is http or OTEL_EXPORTER_OTLP_INSECURE says so), the CA file, the client
certificate and key, headers as metadata, gzip compression, the timeout (one deadline
for an export, its retries included; sent as ``grpc-timeout``).

The status is ``grpc-status``/``grpc-message`` of the trailers (of the headers for a
trailers-only answer; an answer that is not gRPC maps its HTTP status as gRPC does).
Retries follow the OTLP specification: CANCELLED, DEADLINE_EXCEEDED, ABORTED,
OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and RESOURCE_EXHAUSTED when the collector sends
RetryInfo, and connection errors, with exponential back-off (1 s, 2 s, ... +/-20%) or the
collector's RetryInfo delay, while the deadline allows, at most ``MAX_ATTEMPTS``. Not
retried: another code, a TLS failure, a port that does not speak HTTP/2, a collector that
accepted the connection and did not answer in time; and nothing at exit (:meth:`closing`).
A connection the collector closed (GOAWAY, reset) is reopened at once; a forked child
makes its own; in a gevent/eventlet-patched process the socket is a real one
(:func:`autotrace.green.create_connection`).

Each failed attempt leaves its evidence (the exception; a :class:`StatusCode` and the
collector's message) for :mod:`autotrace.export_report`, which names the cause.
"""

from __future__ import annotations

import enum
import os
import socket
import ssl
import struct
import threading
import time
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from opentelemetry.sdk.trace.export import SpanExportResult

from . import _log, export_report, green
from ._version import __version__
from .otlp_http import MAX_ATTEMPTS, ConnectTimeout, ReadTimeout, RetryingExporter, TlsContext

logger = _log.logger

PATH = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
USER_AGENT = f"OTel-OTLP-Exporter-Python/autotrace-{__version__}"
MAX_ANSWER = 64 * 1024  # of a response body read; more resets the stream (a success answer is tiny)
READ_SIZE = 64 * 1024


class StatusCode(enum.IntEnum):
    """gRPC status codes (the name the failure classifier reads, as grpc's ``StatusCode``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


RETRYABLE = frozenset(
    (
        StatusCode.CANCELLED,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.ABORTED,
        StatusCode.OUT_OF_RANGE,
        StatusCode.UNAVAILABLE,
        StatusCode.DATA_LOSS,
    )
)
# An answer that is not gRPC: its HTTP status as gRPC maps it (grpc's doc/http-grpc-status-mapping.md).
HTTP_TO_CODE = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


class NotHttp2(OSError):
    """The port did not answer in HTTP/2 (a protocol error: another protocol; not retried)."""


class ConnectionLost(ConnectionError):
    """The collector closed the connection (or sent GOAWAY) before answering."""


class Answer:
    """The collector's answer to one call: a code, its message, RetryInfo's delay."""

    __slots__ = ("code", "message", "retry_after")

    def __init__(self, code: StatusCode, message: str = "", retry_after: float | None = None) -> None:
        self.code = code
        self.message = message
        self.retry_after = retry_after


def grpc_frame(data: bytes, compressed: bool) -> bytes:
    """The gRPC message prefix (compressed flag, big-endian length) and ``data``."""
    return struct.pack(">BI", 1 if compressed else 0, len(data)) + data


def grpc_timeout(seconds: float) -> str:
    """A ``grpc-timeout`` header value: at most 8 digits, in the finest unit that fits."""
    for unit, scale in (("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600)):
        value = max(int(seconds * scale), 1)
        if value < 10**8:
            return f"{value}{unit}"
    return "99999999H"


def retry_delay(status_details: str | None) -> float | None:
    """The delay of the google.rpc.RetryInfo in ``grpc-status-details-bin``, or None."""
    if not status_details:
        return None
    try:
        import base64

        data = base64.b64decode(status_details + "=" * (-len(status_details) % 4))
        for number, detail in export_report.message_fields(data):  # google.rpc.Status: 3 = details (Any)
            if number != 3 or not isinstance(detail, bytes):
                continue
            parts = dict(export_report.message_fields(detail))  # Any: 1 = type_url, 2 = value
            type_url = parts.get(1, b"")
            if not isinstance(type_url, bytes) or not type_url.endswith(b"google.rpc.RetryInfo"):
                continue
            retry_info = dict(export_report.message_fields(parts.get(2, b"")))  # type: ignore[arg-type]
            duration = dict(export_report.message_fields(retry_info.get(1, b"")))  # type: ignore[arg-type]
            seconds, nanos = duration.get(1, 0), duration.get(2, 0)
            if isinstance(seconds, int) and isinstance(nanos, int):
                return max(seconds + nanos / 1e9, 0.0)
    except (ValueError, TypeError):
        return None
    return None


def _answer_of(headers: Mapping[str, str]) -> Answer | None:
    """The gRPC status ``headers`` (trailers, or a trailers-only answer's headers) carry, or None."""
    code = headers.get("grpc-status")
    if code is None:
        return None
    try:
        status = StatusCode(int(code))
    except ValueError:
        status = StatusCode.UNKNOWN
    message = unquote(headers.get("grpc-message", ""))
    return Answer(status, message, retry_delay(headers.get("grpc-status-details-bin")))


_inherited: list[Any] = []  # in a forked child: its parent's sockets, never closed here


class OtlpGrpcExporter(RetryingExporter):
    """Sends encoded span batches to an OTLP/gRPC collector (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        insecure: bool | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        compression: str = "none",
        certificate: str | None = None,
        client_key: str | None = None,
        client_certificate: str | None = None,
    ) -> None:
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        if parts.scheme not in ("", "http", "https") or not parts.hostname:
            raise ValueError(f"not a gRPC endpoint: {endpoint!r}")
        self._endpoint = endpoint
        if parts.scheme == "https":
            insecure = False
        elif insecure is None:
            insecure = parts.scheme == "http"
        self._tls = not insecure
        self._host = parts.hostname
        self._port = parts.port or 4317
        self._timeout_s = timeout_s
        self._gzip = compression == "gzip"
        self._tls_context = TlsContext(certificate, client_certificate, client_key, alpn=["h2"]) if self._tls else None
        authority = f"[{self._host}]" if ":" in self._host else self._host
        self._headers: list[tuple[str, str]] = [
            (":method", "POST"),
            (":scheme", "https" if self._tls else "http"),
            (":path", PATH),
            (":authority", f"{authority}:{self._port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", USER_AGENT),
            ("grpc-accept-encoding", "identity,gzip"),
        ]
        if self._gzip:
            self._headers.append(("grpc-encoding", "gzip"))
        reserved = {name for name, _ in self._headers} | {"grpc-timeout", "connection", "host"}
        for name, value in (headers or {}).items():
            name = name.strip().lower()
            if name and name not in reserved and not name.startswith(":"):
                self._headers.append((name, str(value)))
        self._sock: Any = None
        self._h2: h2.connection.H2Connection | None = None
        self._heard = False
        self._lock = threading.Lock()  # one export at a time
        self._init_retries()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """In a forked child: the parent's connection is the parent's (kept, never closed here)."""
        if self._sock is not None:
            _inherited.append(self._sock)
        self._sock = self._h2 = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    # -- the connection -----------------------------------------------------------------

    def _connect(self, timeout: float) -> None:
        self.activity = f"connecting to {self.address}"
        connect = green.create_connection if green.patched() else socket.create_connection
        try:
            sock = connect((self._host, self._port), timeout)
        except socket.timeout as exc:
            raise ConnectTimeout(f"connect timeout: no connection to {self.address} within {timeout:g}s") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls_context is not None:
                try:
                    sock = self._tls_context.get().wrap_socket(sock, server_hostname=self._host)
                except socket.timeout as exc:
                    raise ConnectTimeout(f"connect timeout: no TLS handshake with {self.address} within {timeout:g}s") from exc
                if sock.selected_alpn_protocol() not in (None, "h2"):
                    raise NotHttp2(f"the port does not speak HTTP/2 (ALPN chose {sock.selected_alpn_protocol()!r})")
            connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
            connection.initiate_connection()
            sock.sendall(connection.data_to_send())
        except BaseException:
            sock.close()
            raise
        self._sock, self._h2 = sock, connection
        self._heard = False  # nothing received on this connection yet

    def _close(self) -> None:
        sock, self._sock, self._h2 = self._sock, None, None
        if sock is not None:
            try:
                sock.close()
            except Exception:  # noqa: BLE001
                pass

    def _call(self, message: bytes, deadline: float) -> Answer:
        """One call: the collector's answer. Raises on a transport failure."""
        reused = self._sock is not None
        for attempt in (0, 1):
            remaining = max(deadline - time.monotonic(), 0.001)
            if self._sock is None:
                self._connect(remaining)
                reused = False
            try:
                self.activity = f"the collector at {self.address} accepted the connection and has not answered"
                return self._exchange(message, deadline)
            except socket.timeout as exc:
                self._close()
                raise ReadTimeout(f"read timed out: no answer from {self.address} within {self._timeout_s:g}s") from exc
            except (ConnectionLost, ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
                self._close()
                if reused and attempt == 0:
                    continue  # the collector closed the kept connection: once more, anew
                if isinstance(exc, BrokenPipeError):  # words the failure classifier knows
                    raise ConnectionLost(f"the connection to {self.address} was closed while sending: {exc}") from exc
                raise
            except h2.exceptions.H2Error as exc:
                self._close()
                raise NotHttp2(f"HTTP/2 protocol error from {self.address}: {exc!r}: the port does not answer HTTP/2") from exc
            except BaseException:
                self._close()
                raise
            finally:
                self.activity = ""
        raise AssertionError("unreachable")  # pragma: no cover

    def _flush(self) -> None:
        data = self._h2.data_to_send()  # type: ignore[union-attr]
        if data:
            try:
                self._sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                self._said_http1()  # a server of another protocol may have answered and closed
                raise

    def _said_http1(self) -> None:
        """After a failed send on a connection that has not been heard from: raise
        :class:`NotHttp2` if the port answered in HTTP/1 (the answer is read, briefly)."""
        if self._heard:
            return
        try:
            self._sock.settimeout(0.2)
            data = self._sock.recv(READ_SIZE)
        except OSError:
            return
        if data.startswith(b"HTTP/"):
            self._heard = True
            raise NotHttp2(f"{self.address} answers {data[:8].decode('ascii', 'replace')}: the port does not speak HTTP/2")

    def _exchange(self, message: bytes, deadline: float) -> Answer:
        connection, sock = self._h2, self._sock
        assert connection is not None and sock is not None
        stream = connection.get_next_available_stream_id()
        headers = list(self._headers)
        headers.append(("grpc-timeout", grpc_timeout(max(deadline - time.monotonic(), 0.001))))
        connection.send_headers(stream, headers)
        self._flush()
        state: dict[str, Any] = {"headers": None, "trailers": None, "body": 0, "ended": False}
        view = memoryview(message)
        while view:
            size = min(connection.local_flow_control_window(stream), connection.max_outbound_frame_size, len(view))
            if size > 0:
                connection.send_data(stream, view[:size].tobytes(), end_stream=size == len(view))
                view = view[size:]
                self._flush()
            else:  # no window: wait for the collector's WINDOW_UPDATE (or its answer)
                self._receive(stream, state, deadline)
                if state["ended"]:
                    break
        while not state["ended"]:
            self._receive(stream, state, deadline)
        return self._answer(state)

    def _receive(self, stream: int, state: dict[str, Any], deadline: float) -> None:
        sock, connection = self._sock, self._h2
        assert connection is not None
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        data = sock.recv(READ_SIZE)
        if not data:
            raise ConnectionLost(f"the collector at {self.address} closed the connection without an answer")
        if not self._heard:
            self._heard = True
            if data.startswith(b"HTTP/"):  # h2 would wait for the rest of a "frame" that is not one
                raise NotHttp2(f"{self.address} answers {data[:8].decode('ascii', 'replace')}: the port does not speak HTTP/2")
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                state["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                state["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id == stream:
                    state["body"] += len(event.data)
                    if state["body"] > MAX_ANSWER:
                        raise NotHttp2(f"the answer from {self.address} exceeds {MAX_ANSWER} bytes: not OTLP/gRPC")
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                state["ended"] = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                code = StatusCode.UNAVAILABLE if event.error_code in (7,) else StatusCode.INTERNAL  # 7: REFUSED_STREAM
                state["reset"] = Answer(code, f"the stream was reset by the collector (HTTP/2 error {event.error_code})")
                state["ended"] = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                if not state["ended"]:
                    self._close()
                    if event.last_stream_id is not None and event.last_stream_id < stream:
                        raise ConnectionLost(f"the collector at {self.address} sent GOAWAY before the export")
                    raise ConnectionLost(
                        f"the collector at {self.address} closed the connection (GOAWAY, HTTP/2 error {event.error_code})"
                    )
                state["goaway"] = True  # answered: the connection is closed after this call
        self._flush()

    def _answer(self, state: dict[str, Any]) -> Answer:
        if state.get("goaway"):
            self._close()
        if "reset" in state:
            self._close()
            return state["reset"]
        headers = state["headers"] or {}
        answer = _answer_of(state["trailers"] or {}) or _answer_of(headers)
        if answer is not None:
            return answer
        status = headers.get(":status", "")
        http_status = int(status) if status.isdigit() else 0
        if http_status != 200:
            code = HTTP_TO_CODE.get(http_status, StatusCode.UNKNOWN)
            return Answer(code, f"HTTP {http_status}: the answer is not gRPC")
        return Answer(StatusCode.INTERNAL, "the answer has no grpc-status")

    # -- export -----------------------------------------------------------------------

    def export(self, batch: Any) -> SpanExportResult:
        """Send one batch (an :class:`~autotrace.span_queue.EncodedBatch`); the SDK's result."""
        message = grpc_frame(self._payload(batch), self._gzip)
        with self._lock:
            deadline = time.monotonic() + self._timeout_s
            for attempt in range(MAX_ATTEMPTS):
                retry_after = None
                try:
                    answer = self._call(message, deadline)
                except (socket.gaierror, ConnectionError, ConnectTimeout) as exc:
                    export_report.add_cause(exc)
                    retryable = True
                except (ReadTimeout, NotHttp2, ssl.SSLError, ssl.CertificateError) as exc:
                    export_report.add_cause(exc)
                    retryable = False
                except (OSError, ValueError) as exc:
                    export_report.add_cause(exc)
                    retryable = isinstance(exc, OSError)
                else:
                    if answer.code is StatusCode.OK:
                        return SpanExportResult.SUCCESS
                    export_report.add_cause(answer.code, answer.message or f"{answer.code.name} (no message)")
                    retry_after = answer.retry_after
                    retryable = answer.code in RETRYABLE or (
                        answer.code is StatusCode.RESOURCE_EXHAUSTED and retry_after is not None
                    )
                if not self._waited_to_retry(attempt, retryable, retry_after, deadline):
                    return SpanExportResult.FAILURE
        return SpanExportResult.FAILURE
