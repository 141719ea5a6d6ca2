"""A real HTTP server on loopback that records the headers of every request it receives.

The peer the client tests call (unit tests in process, integration tests from an app
run under ``autotrace run``). It is never traced: it runs in the test process, whose
http.server is not patched unless a test patches it.

Routes (``?case=...`` on any of them names the request in :attr:`Peer.received`):
``/ok`` 200 with a short body; ``/status/NNN`` that status; ``/redirect/N`` a 302 to
``/redirect/N-1`` and, at 0, to ``/ok``; ``/slow`` answers after ``?seconds=``;
``/stream`` a chunked body of five lines; ``/echo`` the request's headers as JSON;
``/close`` closes the connection without answering.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

STREAM_LINES = 5


@dataclass
class Received:
    method: str
    path: str
    query: dict
    headers: dict  # lower-case name -> list of values, as received

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass
class Peer:
    port: int
    received: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, case: str | None = None) -> str:
        if case is None:
            return self.base + path
        return f"{self.base}{path}{'&' if '?' in path else '?'}case={case}"

    def requests(self, case: str | None = None) -> list[Received]:
        with self.lock:
            found = list(self.received)
        if case is None:
            return found
        return [r for r in found if r.query.get("case") == [case]]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are separate writes
    peer: Peer  # set on the subclass made by start()

    def log_message(self, *args) -> None:
        pass

    def _record(self) -> tuple[str, dict]:
        parts = urlsplit(self.path)
        headers: dict = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        with self.peer.lock:
            self.peer.received.append(Received(self.command, parts.path, parse_qs(parts.query), headers))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        return parts.path, parse_qs(parts.query)

    def _reply(self, code: int, body: bytes, content_type: str = "text/plain", extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Peer", "yes")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        path, query = self._record()
        case = query.get("case", [None])[0]
        suffix = f"?case={case}" if case else ""
        if path == "/ok":
            self._reply(200, b"ok\n")
        elif path.startswith("/status/"):
            self._reply(int(path.rpartition("/")[2]), b"status\n")
        elif path.startswith("/redirect/"):
            left = int(path.rpartition("/")[2])
            target = f"/redirect/{left - 1}{suffix}" if left > 0 else f"/ok{suffix}"
            self._reply(302, b"", extra={"Location": target})
        elif path == "/slow":
            time.sleep(float(query.get("seconds", ["1"])[0]))
            self._reply(200, b"slow\n")
        elif path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index in range(STREAM_LINES):
                line = b"line %d\n" % index
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/echo":
            received = self.peer.requests()[-1]
            self._reply(200, json.dumps(received.headers, sort_keys=True).encode(), "application/json")
        elif path == "/close":
            self.close_connection = True
            self.connection.close()
        else:
            self._reply(404, b"missing\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that gave up first (the timeout tests, the TLS ones) is no error of the peer's.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def start() -> tuple[Peer, http.server.ThreadingHTTPServer, threading.Thread]:
    peer = Peer(0)
    handler = type("Handler", (_Handler,), {"peer": peer})
    server = _Server(("127.0.0.1", 0), handler)
    peer.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return peer, server, thread


def stop(server: http.server.ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)


if __name__ == "__main__":  # a peer for an app in another process: prints its port
    peer, server, thread = start()
    print(peer.port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop(server, thread)
