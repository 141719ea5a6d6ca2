"""A real in-process OTLP trace receiver for integration tests.

Listens for OTLP/gRPC (``TraceService/Export``) and OTLP/HTTP protobuf
(``POST /v1/traces``) on 127.0.0.1 with OS-assigned ports and records every
span it receives as a :class:`ReceivedSpan`.

It can also misbehave as a collector does (:class:`Fault`, changed at any time with
:meth:`OTLPReceiver.set_fault`): refuse connections (nothing listens on its ports, which
it keeps), accept an export and hang, answer each export late, answer with an error
(an HTTP status, a gRPC code), or be down for a while and then come back. Run as a
script it is a stand-alone collector with the same modes (``--help``).
"""

from __future__ import annotations

import argparse
import gzip
import signal
import socket
import sys
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
_MAX_HANG = 600.0  # a hanging export is released after this at the latest (stop() releases it at once)

FAULT_MODES = ("ok", "refuse", "hang", "slow", "error", "down-then-up")


@dataclass(frozen=True)
class Fault:
    """How the receiver answers exports.

    - ``ok``: record the spans, answer success.
    - ``refuse``: nothing listens on the receiver's ports (connections are refused); the
      ports are kept, and listened on again when the mode changes.
    - ``hang``: accept the export and never answer; the request is released (the
      connection closed, an HTTP export unanswered, a gRPC one failed UNAVAILABLE, nothing
      recorded) when the mode changes or the receiver stops.
    - ``slow``: wait ``seconds`` before recording the spans and answering success.
    - ``error``: record nothing, answer ``http_status`` (HTTP, with a google.rpc.Status
      body) or ``grpc_code`` (gRPC), with ``message``.
    - ``down-then-up``: ``refuse`` for ``seconds``, then ``ok``.
    """

    mode: str = "ok"
    seconds: float = 0.0
    http_status: int = 503
    grpc_code: str = "UNAVAILABLE"
    message: str = "the collector is failing on purpose (test receiver)"

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r} (one of {', '.join(FAULT_MODES)})")
        if self.seconds < 0:
            raise ValueError(f"seconds must be >= 0, not {self.seconds}")
        if not 400 <= self.http_status <= 599:
            raise ValueError(f"http_status must be an error status (400-599), not {self.http_status}")
        code = getattr(grpc.StatusCode, self.grpc_code, None)
        if code is None or code == grpc.StatusCode.OK:
            raise ValueError(f"grpc_code must name a gRPC error code, not {self.grpc_code!r}")


def _status_body(grpc_code: str, message: str) -> bytes:
    """A google.rpc.Status message (what an OTLP/HTTP collector answers an error with)."""
    from google.rpc import status_pb2

    code = getattr(grpc.StatusCode, grpc_code).value[0]
    return status_pb2.Status(code=code, message=message).SerializeToString()


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
        fault = self._receiver._answer_fault("grpc")
        if fault is not None:
            if fault.mode == "hang":
                context.abort(grpc.StatusCode.UNAVAILABLE, "released (test receiver)")
            context.abort(getattr(grpc.StatusCode, fault.grpc_code), fault.message)
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
        fault = self.server.receiver._answer_fault("http")
        if fault is not None:
            if fault.mode == "hang":
                self.close_connection = True  # released: no answer at all
                return
            body = _status_body(fault.grpc_code, fault.message)
            self._reply(fault.http_status, body, "application/x-protobuf")
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
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (its timeout) while a slow answer was on its way
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OTLPReceiver


class OTLPReceiver:
    """OTLP/gRPC + OTLP/HTTP(protobuf) trace receiver on loopback, healthy or faulty (:class:`Fault`)."""

    def __init__(self, grace: float = 2.0, fault: Fault = Fault()) -> None:
        self._grace = grace
        self._cond = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._requests: list[str] = []
        self._faulted: list[tuple[str, str]] = []
        self._fault = fault
        self._release = threading.Event()  # set: hanging and slow exports return now
        self._switch: Optional[threading.Timer] = None
        self._grpc_server: Optional[grpc.Server] = None
        self._grpc_pool: Optional[ThreadPoolExecutor] = None
        self._http_server: Optional[_HTTPServer] = None
        self._http_thread: Optional[threading.Thread] = None
        self._started = False
        self._lock = threading.Lock()  # listeners opened and closed one change at a time
        self.grpc_endpoint = ""
        self.http_endpoint = ""

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> OTLPReceiver:
        if self._started:
            return self
        self._started = True
        try:
            self._listen(0, 0)
            fault, self._fault = self._fault, Fault()
            self.set_fault(fault)
        except BaseException:
            self.stop()
            raise
        return self

    def _listen(self, grpc_port: int, http_port: int) -> None:
        """Open both listeners (0: a free port); the endpoints name the ports they got."""
        pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-receiver-grpc")
        server = grpc.server(pool)
        self._grpc_pool, self._grpc_server = pool, server
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        grpc_port = server.add_insecure_port(f"{_HOST}:{grpc_port}")
        if not grpc_port:
            raise RuntimeError("gRPC server could not bind a loopback port")
        server.start()
        self.grpc_endpoint = f"http://{_HOST}:{grpc_port}"

        self._http_server = _HTTPServer((_HOST, http_port), _HTTPHandler)
        self._http_server.receiver = self
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver-http",
            daemon=True,
        )
        self._http_thread.start()
        self.http_endpoint = f"http://{_HOST}:{self._http_server.server_address[1]}"

    def _close(self) -> None:
        """Close both listeners (bounded by ``grace``, + a little); the endpoints are kept."""
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

    def stop(self) -> None:
        """Stop both servers and their threads; idempotent and bounded by ``grace`` (+ a little)."""
        with self._lock:
            self._started = False
            if self._switch is not None:
                self._switch.cancel()
            self._release.set()  # hanging exports return, so the servers can stop
            self._close()

    # -- faults ------------------------------------------------------------
    def set_fault(self, fault: Fault) -> None:
        """Answer exports from now on as ``fault`` says (exports hanging now are released)."""
        with self._lock:
            if not self._started:
                self._fault = fault
                return
            if self._switch is not None:
                self._switch.cancel()
                self._switch = None
            self._release.set()
            self._release = threading.Event()
            down = fault.mode in ("refuse", "down-then-up")
            listening = self._grpc_server is not None
            with self._cond:
                self._fault = fault
            if down and listening:
                self._close()
            elif not down and not listening:
                self._listen(self.port("grpc"), self.port("http"))
            if fault.mode == "down-then-up":
                self._switch = threading.Timer(fault.seconds, self._come_up, args=(fault,))
                self._switch.daemon = True
                self._switch.start()

    def _come_up(self, fault: Fault) -> None:
        if self._fault is fault and self._started:
            self.set_fault(Fault())

    def down(self) -> None:
        """Refuse connections until :meth:`up` (the ports are kept)."""
        self.set_fault(Fault("refuse"))

    def up(self) -> None:
        """Healthy again: listen on the same ports, record and accept every export."""
        self.set_fault(Fault())

    @property
    def fault(self) -> Fault:
        return self._fault

    def port(self, protocol: str) -> int:
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return int(endpoint.rsplit(":", 1)[1])

    def _answer_fault(self, protocol: str) -> Optional[Fault]:
        """Called by a server for each export: None to record it and answer success, or the
        fault to answer with (after waiting as it says: a hang until released, a slow answer)."""
        with self._cond:
            fault, release = self._fault, self._release
        if fault.mode == "hang":
            self._note(protocol, "hang")
            release.wait(_MAX_HANG)
            return fault
        if fault.mode == "slow":
            release.wait(fault.seconds)
            return None
        if fault.mode == "error":
            self._note(protocol, str(fault.http_status) if protocol == "http" else fault.grpc_code)
            return fault
        return None

    def _note(self, protocol: str, outcome: str) -> None:
        with self._cond:
            self._faulted.append((protocol, outcome))
            self._cond.notify_all()

    def faulted_requests(self) -> list[tuple[str, str]]:
        """The exports answered by a fault: (protocol, ``hang`` or the status or code sent)."""
        with self._cond:
            return list(self._faulted)

    def wait_for_faulted(self, count: int = 1, timeout: float = 15.0) -> list[tuple[str, str]]:
        """Block until ``count`` exports were answered by a fault (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._faulted) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self._faulted)} of {count} faulted exports within {timeout}s")
                self._cond.wait(min(remaining, 0.5))
            return list(self._faulted)

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
            self._faulted.clear()

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
            raise RuntimeError("OTLPReceiver is not started")  # (refusing, it keeps its endpoints)
        return {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": otlp_protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }


# -- the command line: a stand-alone collector, healthy or faulty --------------------------


def _arguments(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python integration/otlp_receiver.py",
        description="An OTLP trace receiver on 127.0.0.1 (gRPC and HTTP/protobuf) that can misbehave as a "
        "collector does. It prints its endpoints, then a line a second while spans arrive or faults are "
        "answered, until SIGINT or SIGTERM.",
    )
    parser.add_argument("--mode", choices=FAULT_MODES, default="ok", help="how exports are answered (default ok)")
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="slow: the delay before each answer; down-then-up: how long it is down (default 2)")
    parser.add_argument("--http-status", type=int, default=503, help="error: the HTTP status (default 503; 429, 500, ...)")
    parser.add_argument("--grpc-code", default="UNAVAILABLE",
                        help="error: the gRPC status code's name (default UNAVAILABLE; RESOURCE_EXHAUSTED, ...)")
    parser.add_argument("--grpc-port", type=int, default=4317, help="0: any free port (default 4317)")
    parser.add_argument("--http-port", type=int, default=4318, help="0: any free port (default 4318)")
    return parser.parse_args(argv)


class Silent:
    """A port that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(5)


def main(argv: Optional[list[str]] = None) -> int:
    args = _arguments(argv)
    try:
        fault = Fault(args.mode, seconds=args.seconds, http_status=args.http_status, grpc_code=args.grpc_code)
    except ValueError as exc:
        print(f"otlp_receiver: {exc}", file=sys.stderr)
        return 2
    receiver = OTLPReceiver()
    receiver._started = True
    try:
        receiver._listen(args.grpc_port, args.http_port)
    except (OSError, RuntimeError) as exc:
        receiver.stop()
        print(f"otlp_receiver: cannot listen on ports {args.grpc_port}, {args.http_port}: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    receiver.set_fault(fault)  # before the line: a client that reads it meets the fault
    print(f"OTLP/gRPC on {receiver.grpc_endpoint}, OTLP/HTTP on {receiver.http_endpoint}/v1/traces; "
          f"mode {fault.mode}", flush=True)
    shown = (0, 0)
    try:
        while not stopping.wait(1.0):
            counts = (len(receiver.spans()), len(receiver.faulted_requests()))
            if counts != shown:
                shown = counts
                print(f"{counts[0]} spans received, {counts[1]} exports answered by the fault "
                      f"(mode now {receiver.fault.mode})", flush=True)
    finally:
        receiver.stop()
    spans = receiver.spans()
    print(f"stopped: {len(spans)} spans ({len({s.span_id for s in spans})} distinct span ids, "
          f"{len({s.trace_id for s in spans})} traces) in {len(receiver.export_requests())} exports received, "
          f"{len(receiver.faulted_requests())} exports answered by the fault", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
