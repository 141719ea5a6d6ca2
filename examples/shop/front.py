"""The shop's front door, a stdlib ``http.server``: ``GET /order?items=book,lamp`` places an
order with the orders service and answers what it said. No tracing code.

Run by ``run.py``: ``python front.py PORT``, with ``SHOP_ORDERS_URL`` in the environment.
"""

import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ORDERS = os.environ["SHOP_ORDERS_URL"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client may send its orders on one connection

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        if parts.path != "/order":
            self.answer(404, {"error": f"no route {parts.path}"})
            return
        items = parse_qs(parts.query).get("items", ["book"])[0].split(",")
        request = urllib.request.Request(
            f"{ORDERS}/orders", data=json.dumps({"items": items}).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                self.answer(200, json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            self.answer(502, {"error": f"orders answered {exc.code}: {exc.read().decode(errors='replace')}"})

    def answer(self, status: int, document: dict) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for the requests in progress


server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
print(f"front listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
# At SIGTERM: finish the requests in progress, then exit (the agent flushes at exit).
# shutdown() waits for serve_forever() to return: called from another thread.
signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=server.shutdown).start())
try:
    server.serve_forever(poll_interval=0.1)
finally:
    server.server_close()
