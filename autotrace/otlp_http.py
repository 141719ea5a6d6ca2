"""OTLP/HTTP span export over a kept-alive ``http.client`` connection: no protobuf, no requests.

The request body is the encoded ``ExportTraceServiceRequest`` the batch queue made
(:class:`autotrace.span_queue.EncodedBatch`); this module only sends it, as the OTel
exporter does and with the settings it reads from the environment (see
:func:`autotrace.exporters.otlp_factory`): the endpoint, headers, gzip compression, the
timeout (one deadline for an export, its retries included), the CA file, the client
certificate and key, and ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``.

Retries follow the OTLP specification: 429, 502, 503, 504 and connection errors
(refused, reset, unknown host, a connect timeout) are retried with exponential back-off
(1 s, 2 s, 4 s, ... with +/-20% jitter), or after the ``Retry-After`` the collector
gives, while the export's deadline allows, at most :data:`MAX_ATTEMPTS` attempts. What
cannot get better by waiting is not retried: another status, a TLS failure, an answer
that is not HTTP/1.x (another protocol on the port), a collector that accepted the
connection and did not answer within the timeout. At exit (:meth:`closing`) nothing is
retried. A kept-alive connection the collector closed meanwhile is reopened at once.

Each failed attempt leaves its evidence (the exception; the HTTP status and the
collector's message) for :mod:`autotrace.export_report`, which names the cause.
"""

from __future__ import annotations

import gzip
import http.client
import os
import random
import socket
import ssl
import threading
import time
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import _log, export_report, green
from ._version import __version__

logger = _log.logger

MAX_ATTEMPTS = 6  # as the OTel exporters
RETRYABLE_STATUS = frozenset((429, 502, 503, 504))
JITTER = 0.2
MAX_ERROR_BODY = 64 * 1024  # of a collector's error answer, read for its message
MAX_KEPT_BODY = 64 * 1024  # a longer success answer closes the connection instead of being read
USER_AGENT = f"OTel-OTLP-Exporter-Python/autotrace-{__version__}"


class ConnectTimeout(OSError):
    """No connection within the timeout (words the failure classifier knows: "connect timeout")."""


class ReadTimeout(OSError):
    """The collector accepted the connection and did not answer in time ("read timed out")."""


class NotHttp(OSError):
    """The port answered with something other than HTTP/1.x (another protocol: not retried)."""


def backoff_s(attempt: int, retry_after: float | None = None) -> float:
    """The wait before attempt ``attempt + 1`` (0-based): the collector's Retry-After, else
    2**attempt seconds with +/-20% jitter."""
    if retry_after is not None:
        return retry_after
    return 2**attempt * random.uniform(1 - JITTER, 1 + JITTER)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if seconds == seconds and seconds != float("inf") else None
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        import datetime

        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(when.timestamp() - time.time(), 0.0)


def _proxy_for(scheme: str, host: str, environ: Mapping[str, str]) -> str | None:
    """The proxy URL the environment gives for ``scheme://host`` (as requests reads it), or None."""
    names = (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY")
    proxy = next((environ[name] for name in names if environ.get(name)), None)
    if not proxy:
        return None
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return None
        entry = entry.lstrip(".").split(":", 1)[0]
        if host.lower() == entry or host.lower().endswith("." + entry):
            return None
    return proxy if "://" in proxy else f"http://{proxy}"


class TlsContext:
    """An exporter's client TLS context (the CA file, the client certificate and key, the
    ALPN protocols), made again when gevent or eventlet patched ``ssl`` since it was made:
    the original classes, whose code names ``SSLSocket`` as a module global (by then the
    patched class), fail to wrap a socket once ``ssl`` is patched."""

    def __init__(
        self,
        certificate: str | None,
        client_certificate: str | None = None,
        client_key: str | None = None,
        alpn: list[str] | None = None,
    ) -> None:
        self._settings = (certificate, client_certificate, client_key, alpn)
        self._context = self._new()

    def _new(self) -> ssl.SSLContext:
        certificate, client_certificate, client_key, alpn = self._settings
        self._patched = green.patched()
        context = ssl.create_default_context(cafile=certificate)
        if client_certificate:
            context.load_cert_chain(client_certificate, client_key)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def get(self) -> ssl.SSLContext:
        """The context to connect with now."""
        if self._patched != green.patched():
            self._context = self._new()
        return self._context


class RetryingExporter(SpanExporter):
    """What the agent's OTLP exporters (this module's, :mod:`autotrace.otlp_grpc`'s) share:
    the wait between attempts, and the exit, where nothing is retried. A subclass sets
    ``address`` and ``_close()``, and calls :meth:`_init_retries` in its ``__init__``."""

    address: str

    def _init_retries(self) -> None:
        # Set by closing() (at exit): a failed attempt is not retried, a back-off ends at once.
        self._shutdown_in_progress = threading.Event()
        self.activity = ""  # what the export under way waits for, in words (for the exit line)

    def _close(self) -> None:
        raise NotImplementedError

    def _payload(self, batch: Any) -> bytes:
        """The request body of a batch (an :class:`~autotrace.span_queue.EncodedBatch`, or
        a list of spans, encoded here), gzipped when the exporter compresses."""
        data = getattr(batch, "data", None)
        if data is None:  # a list of spans (not the agent's queue): encode them here
            from .otlp_encode import encode_spans

            data = encode_spans(batch)
        if self._gzip:
            data = gzip.compress(data, compresslevel=6)
        return data

    def _waited_to_retry(self, attempt: int, retryable: bool, retry_after: float | None, deadline: float) -> bool:
        """After failed attempt ``attempt`` (0 first): True once the back-off is waited and
        another attempt may go, False to give up (not retryable, the last attempt, the
        deadline, the exit)."""
        if not retryable or attempt + 1 == MAX_ATTEMPTS or self._shutdown_in_progress.is_set():
            return False
        wait = backoff_s(attempt, retry_after)
        if wait > deadline - time.monotonic():
            return False
        self.activity = f"waiting {wait:.1f} s to retry an export to {self.address}"
        try:
            return not self._shutdown_in_progress.wait(wait)
        finally:
            self.activity = ""

    def closing(self) -> None:
        """At exit: a failed attempt is not retried, a back-off under way ends."""
        self._shutdown_in_progress.set()

    def shutdown(self) -> None:
        self._shutdown_in_progress.set()
        self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class OtlpHttpExporter(RetryingExporter):
    """Posts encoded span batches to an OTLP/HTTP collector (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        compression: str = "none",
        certificate: str | None = None,
        client_key: str | None = None,
        client_certificate: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self._endpoint = endpoint
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout_s = timeout_s
        self._gzip = compression == "gzip"
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT}
        self._headers.update(headers or {})
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        # Made here: a bad certificate file is told at once.
        self._tls_context = TlsContext(certificate, client_certificate, client_key) if self._tls else None
        environ = os.environ if environ is None else environ
        self._proxy = _proxy_for(parts.scheme, self._host, environ)
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()  # one export at a time
        self._init_retries()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        """In a forked child: the parent's connection is the parent's."""
        self._connection = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    # -- the connection -----------------------------------------------------------------

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._proxy is None:
            host, port = self._host, self._port
        else:
            proxy = urlsplit(self._proxy)
            host, port = proxy.hostname or "", proxy.port or (443 if proxy.scheme == "https" else 80)
        if self._tls:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=self._tls_context.get() if self._tls_context else None
            )
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        if green.patched():  # a real socket for the export thread (a real OS thread)
            connection._create_connection = green.create_connection  # noqa: SLF001 - http.client's own hook for it
        if self._proxy is not None and self._tls:
            proxy = urlsplit(self._proxy)
            tunnel_headers = {}
            if proxy.username:
                import base64

                credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}".encode()
                tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode()
            connection.set_tunnel(self._host, self._port, headers=tunnel_headers)
        self.activity = f"connecting to {self.address}"
        try:
            connection.connect()
        except socket.timeout as exc:
            connection.close()
            raise ConnectTimeout(f"connect timeout: no connection to {self.address} within {timeout:g}s") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass

    def _post(self, data: bytes, deadline: float) -> tuple[int, Any, bytes]:
        """One POST: (status, headers, the body of an error answer). Raises on a transport failure."""
        reused = self._connection is not None
        for attempt in (0, 1):
            remaining = max(deadline - time.monotonic(), 0.001)
            connection = self._connection
            if connection is None:
                connection = self._connection = self._connect(remaining)
                reused = False
            elif connection.sock is not None:
                connection.sock.settimeout(remaining)
            target = self._path
            if self._proxy is not None and not self._tls:
                target = f"http://{self.address}{self._path}"
            try:
                self.activity = f"the collector at {self.address} accepted the connection and has not answered"
                connection.request("POST", target, body=data, headers=self._headers)
                response = connection.getresponse()
                status = response.status
                length = response.getheader("content-length")
                if 200 <= status < 300 and length is not None and length.isdigit() and int(length) <= MAX_KEPT_BODY:
                    response.read()
                    body = b""
                else:
                    body = response.read(MAX_ERROR_BODY) if status >= 300 else b""
                    self._close()  # an unread or unbounded answer: no reuse
                if response.will_close:
                    self._close()
                return status, response.headers, body
            except socket.timeout as exc:
                self._close()
                raise ReadTimeout(f"read timed out: no answer from {self.address} within {self._timeout_s:g}s") from exc
            except http.client.BadStatusLine as exc:
                self._close()
                if reused and attempt == 0 and isinstance(exc, http.client.RemoteDisconnected):
                    continue  # the collector closed the kept-alive connection: once more, anew
                raise NotHttp(f"{type(exc).__name__}: {exc!r}: the port does not answer HTTP/1.1") from exc
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                self._close()
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                self._close()
                raise
            finally:
                self.activity = ""
        raise AssertionError("unreachable")  # pragma: no cover

    # -- export -----------------------------------------------------------------------

    def export(self, batch: Any) -> SpanExportResult:
        """Send one batch (an :class:`~autotrace.span_queue.EncodedBatch`); the SDK's result."""
        data = self._payload(batch)
        with self._lock:
            deadline = time.monotonic() + self._timeout_s
            for attempt in range(MAX_ATTEMPTS):
                retry_after = None
                try:
                    status, headers, body = self._post(data, deadline)
                except (socket.gaierror, ConnectionError, ConnectTimeout) as exc:
                    export_report.add_cause(exc)
                    retryable = True
                except (ReadTimeout, NotHttp, ssl.SSLError, ssl.CertificateError) as exc:
                    export_report.add_cause(exc)
                    retryable = False
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    export_report.add_cause(exc)
                    retryable = isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)
                else:
                    if 200 <= status < 300:
                        return SpanExportResult.SUCCESS
                    export_report.add_cause(status, export_report.collector_text(body, headers.get("content-type") or ""))
                    retryable = status in RETRYABLE_STATUS
                    if retryable:
                        retry_after = parse_retry_after(headers.get("retry-after"))
                if not self._waited_to_retry(attempt, retryable, retry_after, deadline):
                    return SpanExportResult.FAILURE
        return SpanExportResult.FAILURE
