"""The viewer's HTTP servers: the shared server class, and the UI + API server.

The UI server answers the single-page app's routes (``/``, ``/search``, ``/trace/{id}``,
``/services``, ``/map``) with ``static/index.html``, its assets at ``/static/{file}``, the
query API at ``/api/...`` (:mod:`autotrace.view.query`) and the detection marker at
``/autotrace-view``. Every response says ``nosniff``; HTML carries a Content-Security-Policy
that allows no inline script.
"""

from __future__ import annotations

import json
import mimetypes
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .._version import __version__
from .query import QueryAPI, error_response
from .store import Store

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGES = re.compile(r"/(search|services|map|trace/[^/]+)?/?")
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}


def log(message: str) -> None:
    """One line on stderr."""
    try:
        sys.stderr.write(f"autotrace view: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def marker(ui_url: str) -> bytes:
    """The body of ``GET /autotrace-view``, by which the agent recognises a viewer."""
    return json.dumps({"service": "autotrace-view", "version": __version__, "ui": ui_url}).encode()


class ViewerHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server whose :meth:`stop` lets requests in flight finish.

    Each connection's thread is joined at :meth:`stop` (not daemon threads): a request whose
    body was read is answered; idle keep-alive connections are ended by shutting their read
    side, so the stop does not wait for clients.
    """

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type, **context: Any) -> None:
        self.context = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, args=(0.1,), name=f"http-{self.server_port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        self.server_close()  # joins the connection threads


class Handler(BaseHTTPRequestHandler):
    """What both ports' handlers share: HTTP/1.1, an idle timeout, quiet, one way to answer."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this
    server: ViewerHTTPServer
    server_version = "autotrace-view"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # no access log

    def answer(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def answer_marker(self) -> None:
        self.answer(200, self.server.context["marker"])


class UIHandler(Handler):
    def do_GET(self) -> None:
        path, _, query_string = self.path.partition("?")
        if path == "/autotrace-view":
            return self.answer_marker()
        if path.startswith("/api/"):
            api: QueryAPI = self.server.context["api"]
            try:
                response = api.handle(path, query_string)
            except Exception as exc:  # noqa: BLE001 - one line, and the server goes on
                log(f"error answering {path}: {type(exc).__name__}: {exc}")
                response = error_response(500, "internal error")
            return self.answer(response.status, response.body, response.content_type, response.headers)
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        if _PAGES.fullmatch(path):
            return self._static("index.html")
        self.answer(404, b"not found\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET

    def _static(self, name: str) -> None:
        file = STATIC / name
        if not _STATIC_NAME.fullmatch(name) or not file.is_file():
            return self.answer(404, b"not found\n", "text/plain; charset=utf-8")
        suffix = file.suffix.lower()
        content_type = _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith(("javascript", "json", "svg+xml")):
            content_type += "; charset=utf-8"
        headers = {"Cache-Control": "no-cache"}
        if suffix == ".html":
            headers["Content-Security-Policy"] = CSP
        self.answer(200, file.read_bytes(), content_type, headers)


def ui_server(host: str, port: int, store: Store, ui_url: str) -> ViewerHTTPServer:
    """The UI + API server, bound (not yet serving: call ``start``)."""
    return ViewerHTTPServer((host, port), UIHandler, api=QueryAPI(store), marker=marker(ui_url))
