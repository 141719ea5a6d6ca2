"""Whether an OTLP endpoint is a running ``autotrace view``: its detection marker.

The viewer answers ``GET /autotrace-view`` on its OTLP/HTTP port (and its UI port) with
``{"service": "autotrace-view", "version": ..., "ui": "http://127.0.0.1:16686"}``.
:func:`probe` asks for it within a hard time bound, whatever the server does (a port
that accepts and never answers, or answers a byte at a time, costs at most ``timeout``);
:func:`viewer_at` applies the launcher's rule: only an OTLP/HTTP endpoint on this
machine is asked, so ``autotrace run`` never waits on the network. The launcher asks
once before it execs the command (:func:`startup_line`); ``autotrace doctor`` uses
:func:`probe` for its endpoint check. It uses ``_socket``, the C module under
``socket``: importing ``socket`` costs the launcher about 3 ms (its enum classes), more
than the probe itself (and ``json`` only when something answered 200).
"""

from __future__ import annotations

import _socket
import time

TYPE_CHECKING = False  # the launcher imports as little as it can
if TYPE_CHECKING:
    from typing import Mapping

MARKER_PATH = "/autotrace-view"
SERVICE = "autotrace-view"  # the marker's "service" value
LAUNCHER_TIMEOUT_S = 0.1  # what `autotrace run` may spend on the probe, at most
_MAX_REPLY = 16384  # the marker is a small JSON object: a longer reply is not the viewer


class Viewer:
    """A viewer found at ``base`` (``scheme://host:port``): its version and UI URL."""

    __slots__ = ("base", "ui", "version")

    def __init__(self, base: str, version: str, ui: str) -> None:
        self.base, self.version, self.ui = base, version, ui

    def __repr__(self) -> str:
        return f"Viewer({self.base!r}, {self.version!r}, {self.ui!r})"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost``, ``127.x.x.x`` or ``::1``.

    By name and address only, never by resolving it (no DNS on the launcher's path).
    """
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or host in ("::1", "0:0:0:0:0:0:0:1"):
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


def probe(scheme: str, host: str, port: int, timeout: float) -> Viewer | None:
    """The viewer answering ``GET /autotrace-view`` at ``host:port``, or None (anything else:
    refused, silent, slow, another server, a 404, not the marker). Plain HTTP only: the
    viewer serves no TLS. Returns within about ``timeout`` seconds, never raises."""
    if scheme != "http":
        return None
    deadline = time.monotonic() + timeout
    # "localhost" by its address: no resolver call, whose time no timeout bounds.
    address = "127.0.0.1" if host.lower().rstrip(".") == "localhost" else host
    shown = f"[{host}]" if ":" in host else host
    request = (
        f"GET {MARKER_PATH} HTTP/1.1\r\nHost: {shown}:{port}\r\n"
        "Accept: application/json\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "replace")
    family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
    try:
        sock = _socket.socket(family, _socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        sock.connect((address, port))  # an address, not a name: no resolver call
        sock.sendall(request)
        reply = _read_reply(sock, deadline)
    except (OSError, ValueError, OverflowError):
        return None
    finally:
        sock.close()
    marker = _marker(reply) if reply else None
    if marker is None:
        return None
    return Viewer(f"http://{shown}:{port}", marker[0], marker[1])


def _read_reply(sock: _socket.socket, deadline: float) -> bytes | None:
    """The reply's bytes until the server closes, the body is complete, or the deadline."""
    data = b""
    while len(data) <= _MAX_REPLY:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = _content_length(head)
            if length is not None and len(body) >= length:
                return data
    return None


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _marker(reply: bytes) -> tuple[str, str] | None:
    """(version, ui) from a ``200`` reply holding the marker, else None."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/1.") or status[1] != b"200":
        return None
    lines = head.lower().split(b"\r\n")
    if b"transfer-encoding: chunked" in lines:
        body = _unchunk(body)
    length = _content_length(head)
    if length is not None:
        body = body[:length]
    import json

    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("service") != SERVICE:
        return None
    version, ui = document.get("version"), document.get("ui")
    if not isinstance(version, str) or not isinstance(ui, str) or not ui.startswith(("http://", "https://")):
        return None
    # Shown on a terminal: printable characters only, and short.
    return _printable(version, 40), _printable(ui, 200)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            return b""
        if not sep or size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def _printable(text: str, limit: int) -> str:
    return "".join(c for c in text[:limit] if c.isprintable())


def viewer_at(protocol: str, endpoint: str, timeout: float = LAUNCHER_TIMEOUT_S) -> Viewer | None:
    """The viewer behind the traces ``endpoint``, asked only when the exporter speaks
    OTLP/HTTP (``http/protobuf``) in plain text to this machine; otherwise None, unasked.

    gRPC is not asked: the marker is served over HTTP, and the gRPC port's OTLP/HTTP
    neighbour cannot be known (a collector may hold 4317 and a viewer 4318).
    """
    if protocol != "http/protobuf":
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint)
        host, port = parts.hostname, parts.port or 80
    except ValueError:
        return None
    if parts.scheme != "http" or not host or not is_loopback(host):
        return None
    return probe("http", host, port, timeout)


def startup_line(environ: Mapping[str, str]) -> str | None:
    """The launcher's line when the command's spans go to a running viewer, else None.

    ``environ``: the command's environment (options applied). None when the exporters
    do not include otlp, the SDK is disabled, or the log level hides INFO lines.
    """
    from . import config

    settings = config.read(environ)
    if settings.sdk_disabled or "otlp" not in settings.exporters or settings.log_level not in ("debug", "info"):
        return None
    viewer = viewer_at(settings.protocol, settings.endpoint)
    if viewer is None:
        return None
    return f"spans go to autotrace view at {viewer.base}; open {viewer.ui}"
