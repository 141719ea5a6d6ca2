"""A real in-process OTLP trace receiver for integration tests.

Listens for OTLP/gRPC (``TraceService/Export``) and OTLP/HTTP protobuf
(``POST /v1/traces``) on 127.0.0.1 with OS-assigned ports and records every
span it receives as a :class:`ReceivedSpan`.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Mapping, Optional

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2

_HOST = "127.0.0.1"
_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    parent_span_id: str  # 16 lowercase hex, or "" for a root span
    kind: int  # proto SpanKind value (INTERNAL=1, SERVER=2, CLIENT=3, PRODUCER=4, CONSUMER=5)
    attributes: dict = field(hash=False)
    resource: dict = field(hash=False)
    scope: str
    status_code: int  # proto Status code (0 unset, 1 ok, 2 error)
    events: tuple  # event names
    protocol: str  # "grpc" or "http"
    headers: dict = field(hash=False)  # export request metadata / HTTP headers, lower-case keys
    start_time_unix_nano: int = 0
    end_time_unix_nano: int = 0


def _any_value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)  # string/bool/int/double/bytes


def _attributes(kvs: Iterable[common_pb2.KeyValue]) -> dict:
    return {kv.key: _any_value(kv.value) for kv in kvs}


def _convert(
    request: trace_service_pb2.ExportTraceServiceRequest,
    protocol: str,
    headers: Mapping[str, str],
) -> list[ReceivedSpan]:
    out: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=int(span.kind),
                        attributes=_attributes(span.attributes),
                        resource=dict(resource),
                        scope=scope_spans.scope.name,
                        status_code=int(span.status.code),
                        events=tuple(e.name for e in span.events),
                        protocol=protocol,
                        headers=dict(headers),
                        start_time_unix_nano=int(span.start_time_unix_nano),
                        end_time_unix_nano=int(span.end_time_unix_nano),
                    )
                )
    return out


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self._receiver = receiver

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        headers = {k.lower(): v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self._receiver._record(request, "grpc", headers)
        return trace_service_pb2.ExportTraceServiceResponse()


class _HTTPHandler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no keep-alive handler threads
    # outlive stop() while the exporter's requests session holds a pooled socket.
    protocol_version = "HTTP/1.0"
    timeout = 10  # bounds a stalled client
    server: _HTTPServer

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/v1/traces":
            self._reply(404, b"not found", "text/plain")
            return
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-protobuf":
            self._reply(415, b"only application/x-protobuf is supported", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._reply(400, b"bad content-length", "text/plain")
            return
        body = self.rfile.read(length)
        encoding = self.headers.get("Content-Encoding", "").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                self._reply(415, b"unsupported content-encoding", "text/plain")
                return
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        except Exception as exc:  # bad compression or protobuf
            self._reply(400, f"cannot decode request: {exc}".encode(), "text/plain")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.receiver._record(request, "http", headers)
        self._reply(
            200,
            trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            "application/x-protobuf",
        )

    def do_GET(self) -> None:  # noqa: N802
        self._reply(404 if self.path != "/v1/traces" else 405, b"", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OTLPReceiver


class OTLPReceiver:
    """OTLP/gRPC + OTLP/HTTP(protobuf) trace receiver on loopback."""

    def __init__(self, grace: float = 2.0) -> None:
        self._grace = grace
        self._cond = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._requests: list[str] = []
        self._grpc_server: Optional[grpc.Server] = None
        self._grpc_pool: Optional[ThreadPoolExecutor] = None
        self._http_server: Optional[_HTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self.grpc_endpoint = ""
        self.http_endpoint = ""

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> OTLPReceiver:
        if self._grpc_server is not None:
            return self
        try:
            self._grpc_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-receiver-grpc")
            server = grpc.server(self._grpc_pool)
            self._grpc_server = server
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
            grpc_port = server.add_insecure_port(f"{_HOST}:0")
            if not grpc_port:
                raise RuntimeError("gRPC server could not bind a loopback port")
            server.start()
            self.grpc_endpoint = f"http://{_HOST}:{grpc_port}"

            self._http_server = _HTTPServer((_HOST, 0), _HTTPHandler)
            self._http_server.receiver = self
            self._http_thread = threading.Thread(
                target=self._http_server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="otlp-receiver-http",
                daemon=True,
            )
            self._http_thread.start()
            self.http_endpoint = f"http://{_HOST}:{self._http_server.server_address[1]}"
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers and their threads; idempotent and bounded by ``grace`` (+ a little)."""
        grpc_server, self._grpc_server = self._grpc_server, None
        pool, self._grpc_pool = self._grpc_pool, None
        http_server, self._http_server = self._http_server, None
        http_thread, self._http_thread = self._http_thread, None
        if grpc_server is not None:
            grpc_server.stop(self._grace).wait(self._grace + 1.0)
        if pool is not None:
            pool.shutdown(wait=True)  # grpc.server() does not own/shut down the executor
        if http_server is not None:
            if http_thread is not None and http_thread.is_alive():
                http_server.shutdown()  # only safe while serve_forever is running
            http_server.server_close()
        if http_thread is not None:
            http_thread.join(self._grace + 1.0)

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- recording ---------------------------------------------------------
    def _record(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        protocol: str,
        headers: Mapping[str, str],
    ) -> None:
        spans = _convert(request, protocol, headers)
        with self._cond:
            self._requests.append(protocol)
            self._spans.extend(spans)
            self._cond.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return list(self._spans)

    def export_requests(self) -> list[str]:
        with self._cond:
            return list(self._requests)

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()
            self._requests.clear()

    def wait_for_spans(
        self,
        count: int = 1,
        timeout: float = 15.0,
        predicate: Optional[Callable[[ReceivedSpan], bool]] = None,
    ) -> list[ReceivedSpan]:
        """Block until at least ``count`` spans matching ``predicate`` arrived; return the matches.

        Raises AssertionError (listing what did arrive) after ``timeout`` seconds.
        """
        match = predicate or (lambda _span: True)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [s for s in self._spans if match(s)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            arrived = list(self._spans)
        summary = "\n".join(
            f"  - {s.name!r} kind={s.kind} via {s.protocol} trace={s.trace_id} span={s.span_id} "
            f"parent={s.parent_span_id or '-'} attrs={s.attributes}"
            for s in arrived
        )
        raise AssertionError(
            f"timed out after {timeout}s waiting for {count} matching span(s); "
            f"{len(found)} matched, {len(arrived)} arrived in total:\n{summary or '  (none)'}"
        )

    # -- configuration -----------------------------------------------------
    def env(self, protocol: str = "grpc") -> dict[str, str]:
        """Environment variables that point an OTLP trace exporter at this receiver."""
        if protocol == "grpc":
            otlp_protocol, endpoint = "grpc", self.grpc_endpoint
        elif protocol in ("http", "http/protobuf"):
            otlp_protocol, endpoint = "http/protobuf", self.http_endpoint
        else:
            raise ValueError(f"unsupported OTLP protocol {protocol!r} (use 'grpc' or 'http/protobuf')")
        if not endpoint:
            raise RuntimeError("OTLPReceiver is not started")
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": otlp_protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
