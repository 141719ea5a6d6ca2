"""The OTLP receivers: OTLP/HTTP (``POST /v1/traces``, protobuf or JSON, optionally gzip) and
OTLP/gRPC (``TraceService/Export``).

A batch is answered only after the store committed it. A request that is not valid OTLP
(malformed protobuf or JSON, a wrong content type, ids of the wrong length, a body over
:data:`MAX_BODY` before or after decompression) is refused whole with a 4xx (gRPC:
INVALID_ARGUMENT or RESOURCE_EXHAUSTED) and one log line; other requests are unaffected.
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .otlp import BadData, decode_json, decode_protobuf
from .server import Handler, ViewerHTTPServer, log, marker
from .store import Store

MAX_BODY = 16 * 1024 * 1024  # bytes, of the body as sent and after decompression
_CHUNK = 256 * 1024
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_GRPC_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class TooLarge(BadData):
    """A body over :data:`MAX_BODY` (answered 413)."""


def gunzip(data: bytes, limit: int = MAX_BODY) -> bytes:
    """Decompress a gzip body in bounded steps, refusing one that grows past ``limit``."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    parts, size = [], 0
    try:
        while True:
            part = inflater.decompress(data, _CHUNK)
            size += len(part)
            if size > limit:
                raise TooLarge(f"body over {limit} bytes after decompression")
            parts.append(part)
            data = inflater.unconsumed_tail
            if not data and (not part or inflater.eof):
                break
    except zlib.error as exc:
        raise BadData(f"malformed gzip: {exc}") from None
    if not inflater.eof:
        raise BadData("truncated gzip body")
    return b"".join(parts)


class OTLPHandler(Handler):
    def do_GET(self) -> None:
        if self.path.partition("?")[0] == "/autotrace-view":
            return self.answer_marker()
        self.answer(404, b"not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        path = self.path.partition("?")[0]
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        json_body = content_type == _JSON
        try:
            if path != "/v1/traces":
                self.close_connection = True
                return self._refuse(404, f"no such path {path}: OTLP traces go to /v1/traces", json_body, log_it=False)
            body = self._read_body()
            if content_type not in (_PROTOBUF, _JSON):
                return self._refuse(415, f"content type {content_type!r}: use {_PROTOBUF} or {_JSON}", json_body)
            encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding == "gzip":
                body = gunzip(body)
            elif encoding != "identity":
                return self._refuse(415, f"content encoding {encoding!r}: use gzip or none", json_body)
            records = decode_json(body) if json_body else decode_protobuf(body, plain=True)
        except TooLarge as exc:
            self.close_connection = True
            return self._refuse(413, str(exc), json_body)
        except BadData as exc:
            return self._refuse(400, str(exc), json_body)
        try:
            self.server.context["store"].write(records)
        except Exception as exc:  # noqa: BLE001 - the sender retries on 503
            return self._refuse(503, f"cannot store the batch: {type(exc).__name__}: {exc}", json_body)
        if json_body:
            self.answer(200, b"{}", _JSON)
        else:
            self.answer(200, b"", _PROTOBUF)  # an empty ExportTraceServiceResponse

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise BadData("bad Content-Length") from None
        if length > MAX_BODY:
            raise TooLarge(f"body of {length} bytes, over {MAX_BODY}")
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) != length:
            self.close_connection = True
            raise BadData("body shorter than its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts, size = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise BadData("malformed chunked body") from None
            if chunk == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            size += chunk
            if size > MAX_BODY:
                raise TooLarge(f"body over {MAX_BODY} bytes")
            parts.append(self.rfile.read(chunk))
            self.rfile.readline(16)

    def _refuse(self, status: int, message: str, json_body: bool, log_it: bool = True) -> None:
        if log_it:
            log(f"refused a batch from {self.client_address[0]} ({status}): {message}")
        if json_body:
            body, content_type = json.dumps({"code": 3, "message": message}).encode(), _JSON
        else:
            from google.rpc import status_pb2

            body, content_type = status_pb2.Status(code=3, message=message).SerializeToString(), _PROTOBUF
        if status == 413:
            self.close_connection = True
        self.answer(status, body, content_type)


def http_receiver(host: str, port: int, store: Store, ui_url: str) -> ViewerHTTPServer:
    """The OTLP/HTTP receiver, bound (not yet serving: call ``start``)."""
    return ViewerHTTPServer((host, port), OTLPHandler, store=store, marker=marker(ui_url))


class GrpcReceiver:
    """The OTLP/gRPC receiver on ``host:port`` (bound at construction; ``OSError`` if it cannot)."""

    def __init__(self, host: str, port: int, store: Store) -> None:
        import grpc

        self.store = store

        def export(body: bytes, context: Any) -> bytes:
            # The request arrives as bytes (no deserializer): malformed protobuf is then
            # INVALID_ARGUMENT here, not gRPC's INTERNAL "Exception deserializing request".
            try:
                records = decode_protobuf(body, plain=True)
            except BadData as exc:
                log(f"refused a gRPC batch from {context.peer()}: {exc}")
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            try:
                store.write(records)
            except Exception as exc:  # noqa: BLE001 - the sender retries on UNAVAILABLE
                log(f"cannot store a gRPC batch: {type(exc).__name__}: {exc}")
                context.abort(grpc.StatusCode.UNAVAILABLE, "cannot store the batch")
            return b""  # an empty ExportTraceServiceResponse

        handler = grpc.method_handlers_generic_handler(
            _GRPC_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
        )
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp-grpc"),
            options=[
                ("grpc.so_reuseport", 0),  # a port in use is an error, not shared
                ("grpc.max_receive_message_length", MAX_BODY),
            ],
        )
        self.server.add_generic_rpc_handlers((handler,))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio >= 1.60 raises where older ones return 0
            raise OSError(98, f"cannot bind {address}: {exc}") from None
        if not self.port:
            raise OSError(98, f"cannot bind {address}")

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float = 10.0) -> None:
        """Stop taking calls; calls in flight finish (committed) within ``grace`` seconds."""
        self.server.stop(grace).wait(grace + 1)
