"""A stand-in for ``autotrace view`` in the agent-side tests: the detection marker and
``POST /v1/traces``, on a loopback port from :func:`ports.free_port`.

``mode`` sets what ``GET /autotrace-view`` does: ``viewer`` (the marker), ``404`` (a
collector that knows no such path), ``slow`` (the marker after ``delay`` seconds),
``other`` (200 with some other JSON service).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ports import free_port

UI = "http://127.0.0.1:16686"
VERSION = "9.8.7"


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str = "application/json") -> None:
    """Answer ``handler``'s request with ``body`` (a length, so the connection can be kept)."""
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class StubViewer:
    def __init__(self, mode: str = "viewer", delay: float = 1.0) -> None:
        self.mode, self.delay = mode, delay
        self.port = free_port()
        self.marker_requests = 0
        self.exports = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/autotrace-view" or stub.mode == "404":
                    send(self, 404, b'{"error": "not found"}')
                    return
                stub.marker_requests += 1
                if stub.mode == "slow":
                    time.sleep(stub.delay)
                service = "autotrace-view" if stub.mode != "other" else "some-collector"
                body = {"service": service, "version": VERSION, "ui": UI}
                send(self, 200, json.dumps(body).encode())

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.exports += 1
                send(self, 200, b"", "application/x-protobuf")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "StubViewer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
