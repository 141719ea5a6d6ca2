"""What the three shop services share: a small JSON-over-HTTP server and client, stdlib only.

No tracing code anywhere: under ``autotrace run`` each request a service serves is a
SERVER span and each call it makes is a CLIENT span carrying the trace to the next one.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Failed(Exception):
    """A call to another service failed: its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def call(method: str, url: str, body: dict | None = None) -> dict:
    """Send ``body`` as JSON, return the JSON answer; :class:`Failed` for an error status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise Failed(exc.code, f"{url.split('?')[0]} answered {exc.code}: {detail}") from None


def serve(name: str, routes: dict) -> None:
    """Serve ``routes`` (``"GET /stock"`` -> function(path_rest, query, body) -> (status, dict))
    on the port given as the first argument (0: any free port, named in the first line
    printed), until SIGTERM: then it finishes the requests in progress and returns, as a
    service stopped by its orchestrator should."""
    port = int(sys.argv[1])

    class Handler(BaseHTTPRequestHandler):
        def handle_request(self, method: str) -> None:
            path, _, query = self.path.partition("?")
            prefix, _, rest = path[1:].partition("/")
            route = routes.get(f"{method} /{prefix}")
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if route is None:
                status, answer = 404, {"error": f"no route {method} {path}"}
            else:
                try:
                    status, answer = route(rest, query, body)
                except Failed as exc:
                    status, answer = 502, {"error": str(exc)}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            self.handle_request("GET")

        def do_POST(self) -> None:  # noqa: N802
            self.handle_request("POST")

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = False  # server_close() waits for the requests in progress

    server = Server(("127.0.0.1", port), Handler)
    print(f"{name} listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    # shutdown() waits for serve_forever() to return: called from another thread.
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    finally:
        server.server_close()
