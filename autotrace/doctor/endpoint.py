"""The collector's endpoint: resolve, connect, send an empty export, and name what is wrong.

:func:`probe_endpoint` finds out what the port does (:class:`Probe`); :func:`classify`,
pure, turns that into one check with its fix. The running agent uses the same classifier
for a failed export (:func:`diagnose_failure`): what the failure left (an exception, the
SDK's log arguments) is read into a :class:`Probe` (:func:`failure_probe`), and when that
cannot tell what the port speaks, the port is asked as the doctor asks it (:func:`speaks`).
Imported by the agent only when an export fails.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Iterator, Sequence

from .. import viewer_probe
from .check import FAIL, OK, Check, redact

# Ports of other tracing systems, recognized when OTLP fails on them.
FOREIGN_PORTS = {
    14268: "Jaeger's Thrift-over-HTTP collector port",
    14250: "Jaeger's gRPC (model.proto) collector port",
    6831: "Jaeger's UDP agent port",
    6832: "Jaeger's UDP agent port",
    9411: "Zipkin's port",
}
OTLP_FIX = "point the endpoint at the collector's OTLP port: 4317 for --protocol grpc, 4318 for http/protobuf"
CERTIFICATE_FIX = (
    "give the collector's CA certificate (a PEM file) in OTEL_EXPORTER_OTLP_CERTIFICATE, "
    "or use http:// if the collector's receiver is plain text"
)


class Target:
    """The parts of the traces endpoint the probes need."""

    def __init__(self, url: str, tls: bool | None = None) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.url = url
        self.shown = redact(url)  # what is printed
        self.scheme = parts.scheme
        # Whether the exporter uses TLS: the scheme, or for gRPC OTEL_EXPORTER_OTLP_INSECURE too.
        self.tls = parts.scheme == "https" if tls is None else tls
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path or "/"
        if parts.query:
            self.path += "?" + parts.query

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Probe:
    """What the probes found out; the input of :func:`classify`."""

    def __init__(self, **values: object) -> None:
        self.resolved = True
        self.connect = "ok"  # ok, refused, timeout, error
        self.connect_error = ""
        self.accepted = False  # the configured protocol accepted an empty export
        self.http_status = None  # HTTP configured: the POST's status
        self.grpc_code = ""  # gRPC configured: the status code's name
        self.error = ""  # the protocol call's error, in words
        self.speaks = ""  # what the raw probe heard: http1, h2, tls, silent, other
        self.other_accepts = False  # behind TLS: the protocol not configured accepted an export
        self.viewer = None  # OTLP/HTTP accepted: the autotrace view answering there (viewer_probe.Viewer)
        self.answered = False  # gRPC: the UNAVAILABLE came from the collector (see answered_unavailable)
        self.__dict__.update(values)


def classify(protocol: str, target: Target, probe: Probe, endpoint_source: str = "") -> Check:
    """Name what is wrong with the endpoint (or OK) from the probes' results. Pure."""
    name = "endpoint"
    where = f"{target.address}"
    foreign = FOREIGN_PORTS.get(target.port)
    if not probe.resolved:
        return Check(FAIL, name, f"cannot resolve host {target.host!r}", "check the endpoint's host name (and DNS)")
    if probe.connect == "refused":
        if foreign:
            return Check(FAIL, name, f"nothing listens on {where} ({foreign}, not OTLP)", OTLP_FIX)
        return Check(
            FAIL,
            name,
            f"nothing listens on {where}",
            "start the collector, or point --endpoint at where it listens",
        )
    if probe.connect != "ok":
        return Check(
            FAIL,
            name,
            f"cannot connect to {where}: {probe.connect_error or probe.connect}",
            "check the host, the port and any firewall between here and the collector",
        )
    if probe.accepted and probe.viewer is not None:
        viewer = probe.viewer
        return Check(
            OK,
            name,
            f"{target.shown} is autotrace view {viewer.version} (UI {viewer.ui}); an empty OTLP/HTTP export was accepted",
        )
    if probe.accepted:
        via = "OTLP/gRPC" if protocol == "grpc" else "OTLP/HTTP"
        return Check(OK, name, f"{target.shown} speaks {via} (an empty export was accepted)")
    # For gRPC, OTEL_EXPORTER_OTLP_INSECURE=false means TLS even with http:// (as the exporter does).
    insecure_says = protocol == "grpc" and target.tls != (target.scheme == "https")
    if target.tls and probe.speaks in ("http1", "h2"):
        if insecure_says:
            return Check(
                FAIL,
                name,
                f"OTEL_EXPORTER_OTLP_INSECURE=false asks for TLS but {where} speaks plain text (no TLS)",
                "set OTEL_EXPORTER_OTLP_INSECURE=true (or unset it), or enable TLS on the collector's receiver",
            )
        return Check(
            FAIL,
            name,
            f"https:// is configured but {where} speaks plain text (no TLS)",
            "use http:// in the endpoint, or enable TLS on the collector's receiver",
        )
    if not target.tls and probe.speaks == "tls":
        if protocol == "grpc":
            return Check(
                FAIL,
                name,
                f"plain text is configured (http:// and OTEL_EXPORTER_OTLP_INSECURE) but {where} expects TLS",
                "use https:// in the endpoint, or set OTEL_EXPORTER_OTLP_INSECURE=false",
            )
        return Check(
            FAIL,
            name,
            f"http:// is configured but {where} expects TLS",
            "use https:// in the endpoint",
        )
    if probe.speaks == "silent" and probe.error.startswith("no answer"):
        return Check(
            FAIL,
            name,
            f"{where} accepted the connection but sent no answer ({probe.error})",
            "check that the collector is healthy and that this is its OTLP port, or raise OTEL_EXPORTER_OTLP_TIMEOUT",
        )
    if "certificate" in probe.error.lower():
        return Check(FAIL, name, f"{where} speaks TLS but {probe.error}", CERTIFICATE_FIX)
    if probe.other_accepts and protocol == "grpc":
        return Check(
            FAIL,
            name,
            f"gRPC is configured but {where} is an OTLP/HTTP receiver (behind TLS)",
            "this is an OTLP/HTTP port: use --protocol http/protobuf or port 4317",
        )
    if probe.other_accepts:
        return Check(
            FAIL,
            name,
            f"http/protobuf is configured but {where} is an OTLP/gRPC receiver (behind TLS)",
            "this is an OTLP/gRPC port: use --protocol grpc or port 4318",
        )
    if foreign and probe.speaks != ("h2" if protocol == "grpc" else "http1") or (
        foreign and probe.http_status == 404
    ):
        return Check(FAIL, name, f"{where} is {foreign}, not OTLP", OTLP_FIX)
    if foreign and probe.grpc_code == "UNIMPLEMENTED":
        return Check(FAIL, name, f"{where} is {foreign}, not OTLP", OTLP_FIX)
    if protocol == "grpc" and probe.speaks == "http1":
        return Check(
            FAIL,
            name,
            f"gRPC is configured but {where} answers HTTP/1.1",
            "this is an OTLP/HTTP port: use --protocol http/protobuf or port 4317",
        )
    if protocol != "grpc" and probe.speaks == "h2":
        return Check(
            FAIL,
            name,
            f"http/protobuf is configured but {where} speaks HTTP/2 (gRPC)",
            "this is an OTLP/gRPC port: use --protocol grpc or port 4318",
        )
    if protocol != "grpc" and probe.http_status == 404:
        path = target.path.rstrip("/")
        traces_variable = endpoint_source.endswith("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if path.count("/v1/traces") > 1:
            if traces_variable:
                fix = (
                    "/v1/traces is doubled: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as is: "
                    "remove the repeated /v1/traces from it"
                )
            else:
                fix = (
                    "/v1/traces is doubled: OTEL_EXPORTER_OTLP_ENDPOINT (and --endpoint) take the "
                    "collector's base URL (e.g. http://collector:4318), the path is appended: "
                    "remove /v1/traces from it"
                )
        elif not path.endswith("/v1/traces"):
            if not endpoint_source.endswith(("OTEL_EXPORTER_OTLP_ENDPOINT", "--endpoint")):
                fix = (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as is: add /v1/traces to it, "
                    "or set OTEL_EXPORTER_OTLP_ENDPOINT to the base URL instead"
                )
            else:
                fix = "check the endpoint's path: the collector's OTLP/HTTP traces path is /v1/traces"
        else:
            fix = "check the endpoint's path: the collector's OTLP/HTTP traces path is /v1/traces"
        return Check(FAIL, name, f"POST {redact(target.path)} answered 404 Not Found", fix)
    if protocol != "grpc" and probe.http_status in (401, 403):
        return Check(
            FAIL,
            name,
            f"the collector refused the export: HTTP {probe.http_status}",
            "set the credentials in OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=Bearer%20...)",
        )
    if protocol == "grpc" and probe.grpc_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return Check(
            FAIL,
            name,
            f"the collector refused the export: {probe.grpc_code}",
            "set the credentials in OTEL_EXPORTER_OTLP_HEADERS",
        )
    if protocol == "grpc" and probe.grpc_code == "UNIMPLEMENTED":
        return Check(
            FAIL,
            name,
            f"{where} speaks gRPC but has no OTLP TraceService",
            OTLP_FIX,
        )
    if protocol != "grpc" and probe.http_status is not None and probe.http_status >= 400:
        said = f": {probe.error}" if probe.error else ""
        if probe.http_status >= 500:
            return Check(
                FAIL,
                name,
                f"{where} failed the export: HTTP {probe.http_status}{said}",
                "the collector is reachable but failing: check its logs and its health",
            )
        return Check(
            FAIL,
            name,
            f"{where} refused the export: HTTP {probe.http_status}{said}",
            "check that this is the collector's OTLP/HTTP receiver, and what its answer says",
        )
    if protocol == "grpc" and probe.grpc_code == "UNAVAILABLE" and probe.answered:
        said = probe.error.split(":", 1)[1].strip() if probe.error.startswith("UNAVAILABLE:") else probe.error
        said = f" ({said})" if said else ""
        return Check(
            FAIL,
            name,
            f"{where} is up but answered UNAVAILABLE{said}: it is not taking spans now (overloaded, or shutting down)",
            "the collector is reachable but failing: check its logs, its health and its memory limits",
        )
    if protocol == "grpc" and probe.grpc_code and probe.grpc_code not in ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return Check(
            FAIL,
            name,
            f"{where} refused the export: {probe.error or probe.grpc_code}",
            "check that this is the collector's OTLP/gRPC receiver, and what its answer says",
        )
    detail = probe.error or (f"HTTP {probe.http_status}" if probe.http_status else probe.grpc_code or "no answer")
    return Check(
        FAIL,
        name,
        f"{target.shown} did not accept an OTLP {'gRPC' if protocol == 'grpc' else 'HTTP'} export: {detail}",
        "check that the endpoint is the collector's OTLP receiver and the protocol matches it",
    )


def _resolve(host: str, port: int, timeout: float) -> bool:
    import threading

    result: list[bool] = []

    def work() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            result.append(True)
        except (OSError, UnicodeError):
            result.append(False)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _connect(target: Target, timeout: float) -> tuple[str, str]:
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            return "ok", ""
    except ConnectionRefusedError:
        return "refused", ""
    except socket.timeout:
        return "timeout", f"no answer within {timeout:g}s"
    except OSError as exc:
        return "error", str(exc)


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _exchange(target: Target, payload: bytes, timeout: float) -> bytes:
    """Send ``payload`` on a fresh plain connection, return the first bytes of the reply."""
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(payload)
            data = b""
            deadline = time.monotonic() + timeout
            while len(data) < 64 and time.monotonic() < deadline:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"HTTP/") or _is_h2(data) or data[:1] == b"\x15":
                    break
            return data
    except OSError:
        return b""


def _is_h2(data: bytes) -> bool:
    # A frame header: 3 bytes length, 1 byte type (4 SETTINGS, 7 GOAWAY), flags, stream.
    return len(data) >= 9 and data[3] in (4, 7) and data[0] == 0


def _tls_handshake(target: Target, timeout: float) -> bool:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout) as sock, context.wrap_socket(
            sock, server_hostname=target.host
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def speaks(target: Target, timeout: float) -> str:
    """What the port speaks: http1, h2 (gRPC), tls, silent (closes or says nothing), other."""
    request = f"GET / HTTP/1.1\r\nHost: {target.address}\r\nConnection: close\r\n\r\n".encode()
    reply = _exchange(target, request, timeout)
    if reply.startswith(b"HTTP/1."):
        if b"HTTPS port" in reply or b"https port" in reply.lower():
            return "tls"
        return "http1"
    if _is_h2(reply):
        return "h2"
    if reply[:2] in (b"\x15\x03", b"\x16\x03"):
        return "tls"
    reply = _exchange(target, _H2_PREFACE, timeout)
    if _is_h2(reply):
        return "h2"
    if reply.startswith(b"HTTP/"):
        return "http1"
    if _tls_handshake(target, timeout):
        return "tls"
    return "silent" if not reply else "other"


def _empty_request() -> bytes:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    return trace_service_pb2.ExportTraceServiceRequest().SerializeToString()


def _http_export(target: Target, headers, timeout: float, cafile: str | None = None) -> tuple[int | None, str]:
    import http.client
    import ssl

    try:
        if target.scheme == "https":
            connection = http.client.HTTPSConnection(
                target.host, target.port, timeout=timeout, context=ssl.create_default_context(cafile=cafile)
            )
        else:
            connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        try:
            body = _empty_request()
            connection.request(
                "POST",
                target.path,
                body=body,
                headers={**dict(headers), "Content-Type": "application/x-protobuf"},
            )
            return connection.getresponse().status, ""
        finally:
            connection.close()
    except ssl.SSLCertVerificationError as exc:
        return None, f"TLS certificate not trusted: {exc.verify_message}"
    except socket.timeout:
        return None, f"no answer within {timeout:g}s"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}".rstrip(": ")
    except ValueError as exc:  # a header http.client refuses; its text may quote a secret value
        return None, f"{type(exc).__name__}: a header cannot be sent"


def _grpc_export(target: Target, headers, timeout: float, cafile: str | None = None) -> tuple[str, str]:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import (
        trace_service_pb2,
        trace_service_pb2_grpc,
    )

    address = target.address
    if target.tls:
        roots = None
        if cafile:
            try:
                with open(cafile, "rb") as file:
                    roots = file.read()
            except OSError as exc:
                return "UNAVAILABLE", f"cannot read the CA file OTEL_EXPORTER_OTLP_CERTIFICATE: {exc}"
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots))
    else:
        channel = grpc.insecure_channel(address)
    try:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        stub.Export(
            trace_service_pb2.ExportTraceServiceRequest(),
            timeout=timeout,
            metadata=list(dict(headers).items()) or None,
        )
        return "OK", ""
    except grpc.RpcError as exc:
        code = exc.code().name if exc.code() is not None else "UNKNOWN"
        return code, f"{code}: {exc.details()}"
    except (TypeError, ValueError) as exc:  # metadata grpc refuses before sending
        return "INTERNAL", f"{type(exc).__name__}: a header cannot be sent"
    finally:
        channel.close()


def uses_tls(settings) -> bool:
    """The exporter's decision: https://, or for gRPC also OTEL_EXPORTER_OTLP_INSECURE=false."""
    https = settings.endpoint.split(":", 1)[0].lower() == "https"
    return https or (settings.protocol == "grpc" and not settings.insecure)


def probe_endpoint(settings, timeout: float, headers=None) -> tuple[Target, Probe]:
    """Resolve, connect, export an empty request with the configured protocol; if that
    fails, find out what the port speaks. ``headers``: those to send (default: all)."""
    target = Target(settings.endpoint, tls=uses_tls(settings))
    headers = settings.headers if headers is None else headers
    cafile = settings.certificate  # the CA file the exporter trusts
    probe = Probe()
    probe.resolved = _resolve(target.host, target.port, timeout)
    if not probe.resolved:
        return target, probe
    probe.connect, probe.connect_error = _connect(target, timeout)
    if probe.connect != "ok":
        return target, probe
    if settings.protocol == "grpc":
        probe.grpc_code, probe.error = _grpc_export(target, headers, timeout, cafile)
        probe.accepted = probe.grpc_code == "OK"
        probe.answered = probe.grpc_code == "UNAVAILABLE" and answered_unavailable(probe.error)
    else:
        probe.http_status, probe.error = _http_export(target, headers, timeout, cafile)
        probe.accepted = probe.http_status is not None and 200 <= probe.http_status < 300
        if probe.accepted:
            probe.viewer = viewer_probe.probe(target.scheme, target.host, target.port, timeout)
    if not probe.accepted:
        probe.speaks = speaks(target, timeout)
    if not probe.accepted and target.tls and probe.speaks == "tls":
        # Behind TLS the raw probes cannot tell gRPC from HTTP/1.1: try the other protocol.
        probe.other_accepts = _other_protocol_accepts(settings.protocol, target, headers, timeout, cafile)
    return target, probe


def _other_protocol_accepts(protocol: str, target: Target, headers, timeout: float, cafile: str | None) -> bool:
    """Whether the protocol not configured accepts an empty export on the same TLS port."""
    if protocol == "grpc":
        status, _ = _http_export(Target(f"https://{target.address}/v1/traces"), headers, timeout, cafile)
        return status is not None and 200 <= status < 300
    code, _ = _grpc_export(Target(f"https://{target.address}", tls=True), headers, timeout, cafile)
    return code == "OK"


# -- a failed export of the running agent ---------------------------------------------

_UNRESOLVED = (
    "name or service not known",
    "failed to resolve",
    "nodename nor servname",
    "temporary failure in name resolution",
    "errors resolving",
    "domain name not found",
    "no address associated",
)
_REFUSED = ("connection refused", "errno 111", "[winerror 10061]")
_CONNECT_TIMEOUT = ("connecttimeout", "connect timeout", "connection timed out", "timed out connecting")
_NO_ANSWER = ("readtimeout", "read timed out", "deadline exceeded", "deadline_exceeded", "timed out")
_CERTIFICATE = ("certificate_verify_failed", "certificate verify failed")
# Words of the details of an UNAVAILABLE status grpc makes itself, when no collector answered:
# the connection could not be made (refused, TLS, HTTP/2 framing, name resolution) or was lost.
_GRPC_TRANSPORT = (
    "failed to connect", "connect failed", "connection", "socket", "reset", "broken pipe", "goaway",
    "handshake", "ssl", "tls", "http2", "http/2", "keepalive", "endpoint", "transport", "closed", "eof",
    "resolv", "dns", "address", "channel", "stream removed", "fd shutdown", "cancelling all calls",
)


def answered_unavailable(details: str) -> bool:
    """Whether an UNAVAILABLE status with ``details`` came from the collector (it is up and
    answers, but is overloaded or shutting down), not from grpc itself (no connection)."""
    text = details.lower()
    if text.startswith("unavailable:"):
        text = text[len("unavailable:") :]
    text = text.strip()
    return bool(text) and not any(word in text for word in _GRPC_TRANSPORT)


def _texts(evidence: Sequence[object]) -> list[str]:
    """The text of each piece of evidence, exceptions with their causes (lower case)."""
    texts = []
    for item in evidence:
        if isinstance(item, BaseException):
            for exc in chain(item):
                texts.append(f"{type(exc).__name__} {exc}".lower())
        elif item is not None:
            texts.append(str(getattr(item, "name", item) if type(item).__name__ == "StatusCode" else item).lower())
    return texts


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes, contexts, exception arguments and reasons (urllib3's), each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen or len(seen) > 20:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        todo.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)


def failure_probe(evidence: Sequence[object], timeout_s: float) -> Probe:
    """What a failed export tells about the endpoint, as a :class:`Probe`. Pure: no network.

    ``evidence``: what the export left: exceptions, and the SDK's log arguments (a gRPC
    status code and its details, an HTTP status, the collector's message as
    :class:`CollectorMessage`). ``probe.speaks`` stays "" when the failure cannot tell
    what the port speaks (a reset or closed connection, a TLS or HTTP/2 framing error):
    :func:`diagnose_failure` then asks the port.
    """
    probe = Probe()
    texts = _texts(evidence)
    text = " | ".join(texts)
    message = next((str(item) for item in evidence if isinstance(item, CollectorMessage)), "")
    for item in evidence:
        if type(item).__name__ == "StatusCode" and hasattr(item, "name"):
            probe.grpc_code = probe.grpc_code or item.name
        elif isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            probe.http_status = probe.http_status or item
    if any(marker in text for marker in _UNRESOLVED) or "gaierror" in text:
        probe.resolved = False
    elif any(marker in text for marker in _REFUSED) or "connectionrefusederror" in text:
        probe.connect = "refused"
    elif any(marker in text for marker in _CONNECT_TIMEOUT):
        probe.connect, probe.connect_error = "timeout", f"no answer within {timeout_s:g}s"
    elif probe.http_status is not None:
        probe.error = _printable(message, 200)
    elif any(marker in text for marker in _CERTIFICATE):
        probe.speaks = "tls"
        probe.error = "TLS certificate not trusted" + _after(text, "certificate verify failed:", "certificate_verify_failed:")
    elif probe.grpc_code == "UNAVAILABLE" and answered_unavailable(_grpc_details(evidence)):
        probe.answered = True  # the collector answered: it is there, but not taking spans now
        probe.error = f"UNAVAILABLE: {_printable(_grpc_details(evidence), 200)}"
    elif any(marker in text for marker in _NO_ANSWER) or probe.grpc_code == "DEADLINE_EXCEEDED":
        probe.speaks, probe.error = "silent", f"no answer within {timeout_s:g}s"
    elif probe.grpc_code and probe.grpc_code not in ("UNAVAILABLE", "UNKNOWN"):
        probe.error = f"{probe.grpc_code}: {_printable(message or _grpc_details(evidence), 200)}".rstrip(": ")
    return probe


def _grpc_details(evidence: Sequence[object]) -> str:
    """The details of the last gRPC status in ``evidence``: the SDK's gRPC log lines end with them."""
    return next((i for i in reversed(evidence) if isinstance(i, str) and i not in ("traces", "spans")), "")


def _after(text: str, *markers: str) -> str:
    for marker in markers:
        if marker in text:
            rest = text.split(marker, 1)[1].split("(", 1)[0].split(":", 1)[0].strip(" ')\"")
            return f": {rest}" if rest else ""
    return ""


def _printable(text: str, limit: int) -> str:
    text = " ".join(text.split())
    text = "".join(c for c in text if c.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CollectorMessage(str):
    """The text of the collector's answer to a failed OTLP/HTTP export (evidence)."""


# Words of a failure on the way to the collector (the connection, TLS, HTTP/2 framing).
_TRANSPORT = (
    "connection", "reset", "ssl", "tls", "badstatusline", "unavailable", "socket", "closed", "http/2",
    "protocol", "remote", "eof", "aborted", "handshake",
)


def failure_kind(probe: Probe, evidence: Sequence[object] = ()) -> str | None:
    """The short cause failed exports are counted by, from :func:`failure_probe`'s probe;
    None when the failure did not happen on the way to the collector (an encoder's error)."""
    if not probe.resolved:
        return "cannot resolve host"
    if probe.connect == "refused":
        return "connection refused"
    if probe.connect == "timeout" or probe.speaks == "silent":
        return "timeout"
    if probe.http_status:
        return f"HTTP {probe.http_status}"
    if probe.speaks == "tls" and probe.error:
        return "TLS certificate not trusted"
    if probe.answered:
        return "gRPC UNAVAILABLE"  # from the collector: distinct from "connection refused"
    if probe.grpc_code and probe.grpc_code != "UNAVAILABLE":
        return f"gRPC {probe.grpc_code}"
    text = " ".join(_texts(evidence))
    if probe.grpc_code or any(word in text for word in _TRANSPORT):
        return "connection failed"
    return None


def diagnose_failure(settings, evidence: Sequence[object], probe_timeout_s: float = 1.0) -> tuple[str, Check]:
    """The short cause of a failed export and the check naming what is wrong (with its fix).

    ``settings``: the agent's configuration (protocol, endpoint, TLS). When the failure
    cannot tell what the port speaks, the port is asked (bounded by ``probe_timeout_s``
    per exchange), as the doctor asks it.
    """
    target = Target(settings.endpoint, tls=uses_tls(settings))
    probe = failure_probe(evidence, settings.timeout_s)
    kind = failure_kind(probe, evidence) or "the exporter reported a failure"
    if kind == "connection failed":
        probe.speaks = speaks(target, probe_timeout_s)
        if probe.speaks == "silent":
            probe.error = "the connection was closed without an answer"
        if target.tls and probe.speaks == "tls":
            probe.other_accepts = _other_protocol_accepts(
                settings.protocol, target, settings.headers, probe_timeout_s, settings.certificate
            )
    from ..config import source_of

    return kind, classify(settings.protocol, target, probe, str(source_of("endpoint", os.environ)))
