"""``autotrace doctor``: check the configuration, the collector and the environment.

Every check yields one :class:`Check` (OK / WARN / FAIL, a message and, for WARN and
FAIL, the fix in plain words). The exit status is 0 when spans can be delivered.
Nothing here imports an instrumented library; every network wait is bounded.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time

OK, WARN, FAIL = "OK", "WARN", "FAIL"

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
NO_CONFLICT = "no other tracing agent found"
MAX_TIMEOUT_S = 60.0
REMOTE_TIMEOUT_S = 20.0  # the library and conflict checks in the command's interpreter


def parse_timeout(text: object) -> float:
    """``--timeout``: a finite number of seconds above 0, capped at 60."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"--timeout {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--timeout {text!r} must be a finite number of seconds above 0")
    return min(value, MAX_TIMEOUT_S)


def redact(text: str) -> str:
    """A URL (or text holding one) with user info and secret query values hidden."""
    from urllib.parse import urlsplit

    from .config import redact_url
    from .redact import redact_query

    url = redact_url(text)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return parts._replace(query=redact_query(parts.query)).geturl() if parts.query else url


def secrets_of(url: str) -> list[str]:
    """The secret parts of ``url`` (user info, sensitive query values), to scrub from any text."""
    from urllib.parse import unquote, urlsplit

    from .redact import is_sensitive

    try:
        parts = urlsplit(url)
    except ValueError:
        return [url.rsplit("@", 1)[0]] if "@" in url else []
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        found += [userinfo, *userinfo.split(":", 1)]
    for part in parts.query.split("&"):
        key, sep, value = part.partition("=")
        if sep and value and is_sensitive(key):
            found.append(value)
    found += [unquote(s) for s in found]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def scrub(checks: list[Check], secrets: list[str]) -> list[Check]:
    """Every check with the given secrets replaced (an exception's text may quote the URL)."""
    if not secrets:
        return checks
    for check in checks:
        for secret in secrets:
            check.message = check.message.replace(secret, "REDACTED")
            check.fix = check.fix.replace(secret, "REDACTED")
    return checks


class Check:
    __slots__ = ("fix", "message", "name", "status")

    def __init__(self, status: str, name: str, message: str, fix: str = "") -> None:
        self.status, self.name, self.message, self.fix = status, name, message, fix

    def as_dict(self) -> dict:
        return {"status": self.status, "name": self.name, "message": self.message, "fix": self.fix}

    def __repr__(self) -> str:
        return f"Check({self.status!r}, {self.name!r}, {self.message!r}, {self.fix!r})"


# -- configuration -------------------------------------------------------------------

# Setting -> (the run option that sets it, the variables read for it, first wins).
_SOURCES = (
    ("service.name", "service_name", ("OTEL_SERVICE_NAME",)),
    ("exporters", "exporter", ("OTEL_TRACES_EXPORTER",)),
    ("protocol", "protocol", ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")),
    ("endpoint", "endpoint", ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")),
    ("headers", None, ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")),
    ("timeout", None, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")),
    ("compression", None, ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")),
    ("insecure", None, ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")),
    ("sampler", None, ("OTEL_TRACES_SAMPLER",)),
    ("propagators", None, ("OTEL_PROPAGATORS",)),
    ("resource", None, ("OTEL_RESOURCE_ATTRIBUTES",)),
    ("sdk_disabled", None, ("OTEL_SDK_DISABLED",)),
    ("disabled hooks", None, ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",)),
    ("log level", "debug", ("OTEL_LOG_LEVEL",)),
)


def source_of(setting: str, args, environ) -> str:
    """Where ``setting`` came from: ``flag``, ``variable NAME`` or ``default``.

    ``environ`` is the environment before the options were applied.
    """
    for name, option, variables in _SOURCES:
        if name != setting:
            continue
        if option and args is not None and getattr(args, option, None):
            return "flag --" + option.replace("_", "-")
        for variable in variables:
            if (environ.get(variable) or "").strip():
                return "variable " + variable
        return "default"
    return "default"


class Warnings(list):
    """The configuration's warnings as text; ``rejected``: variable -> its refused value."""

    def __init__(self) -> None:
        super().__init__()
        self.rejected: dict[str, str] = {}


_REJECTED = "%s=%r is not valid"


def load_settings(environ) -> tuple[object, Warnings]:
    """``config.load(environ)`` with its warnings captured instead of printed."""
    from . import _log, config

    warnings = Warnings()
    original = _log.warn_once

    def capture(key: str, message: str, *args: object) -> None:
        warnings.append(message % args if args else message)
        if message.startswith(_REJECTED) and len(args) >= 2:
            warnings.rejected[str(args[0])] = str(args[1])

    _log.warn_once = capture
    try:
        settings = config.load(environ)
    finally:
        _log.warn_once = original
    return settings, warnings


def _set_by(source: str, variables: tuple[str, ...]) -> tuple[str, str] | None:
    """(the variable holding the value, how the user wrote it) for a flag or variable source.

    A flag reaches the configuration through the last variable of its setting (see
    ``launcher.build_environment``), so a value refused there was the flag's.
    """
    if source.startswith("variable "):
        variable = source.split(" ", 1)[1]
        return variable, variable
    if source.startswith("flag "):
        return variables[-1], source.split(" ", 1)[1]
    return None


def configuration_checks(settings, warnings: list[str], args, environ) -> list[Check]:
    checks = []
    values = dict(settings.describe())  # already redacted: header names only
    rejected = getattr(warnings, "rejected", {})
    flags: dict[str, str] = {}  # variable -> the flag that set it
    for name, _option, variables in _SOURCES:
        value = values.get(name, "")
        source = source_of(name, args, environ)
        holder = _set_by(source, variables)
        if holder is not None and source.startswith("flag "):
            flags[holder[0]] = holder[1]
        if holder is not None and holder[0] in rejected:
            variable, written = holder
            refused = redact(rejected[variable])
            shown = f"{written}={refused!r}" if written == variable else f"{written} {refused!r}"
            checks.append(
                Check(
                    WARN,
                    "config " + name,
                    f"{value or '(none)'} (default ({shown} was rejected))",
                    f"correct or unset {variable}" if written == variable else f"correct {written}",
                )
            )
            continue
        if name == "protocol" and source == "default" and settings.protocol == "grpc":
            source = "derived from the endpoint's port 4317"
        if name == "service.name" and not settings.service_name:
            continue  # its own check below
        if source == "default" and name in ("headers", "resource", "disabled hooks") and not value:
            continue
        checks.append(Check(OK, "config " + name, f"{value or '(none)'} ({source})"))
    for text in warnings:
        variable = text.split("=", 1)[0].split(" ", 1)[0]
        fix = f"correct {flags[variable]}" if variable in flags else f"correct or unset {variable}"
        checks.append(Check(WARN, "config " + variable, text, fix + "; until then the default applies"))
    if settings.sdk_disabled:
        checks.append(
            Check(FAIL, "config sdk_disabled", "OTEL_SDK_DISABLED=true: the agent does nothing", "unset OTEL_SDK_DISABLED")
        )
    return checks


def service_name_check(settings, command: list[str], args=None) -> Check:
    if settings.service_name:
        origin = "--service-name" if getattr(args, "service_name", None) else "OTEL_SERVICE_NAME"
        return Check(OK, "service name", f"{settings.service_name} (from {origin})")
    attribute = settings.resource_attributes.get("service.name")
    if attribute:
        return Check(OK, "service name", f"{attribute} (from service.name in OTEL_RESOURCE_ATTRIBUTES)")
    if command:
        from . import entrypoint

        entry = entrypoint.parse(list(command))
        status = WARN if entry.weak else OK
        return Check(
            status,
            "service name",
            f"{entry.service_name} (derived from the {entry.source})",
            "set OTEL_SERVICE_NAME (or --service-name) to choose the name" if entry.weak else "",
        )
    return Check(
        WARN,
        "service name",
        "no command given: the name will be derived from the app's command line",
        "set OTEL_SERVICE_NAME (or --service-name), or give the command: autotrace doctor -- python app.py",
    )


# What the exporters' transports accept: an HTTP header name is a token (RFC 9110), its
# value Latin-1 without control characters or leading blank (requests' rule); gRPC
# metadata as the agent's own gRPC hooks check it (:mod:`autotrace.rpc_span`; a ``-bin``
# key wants bytes, which a variable cannot give).
_HTTP_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_problem(name: str, value: str, protocol: str) -> str:
    """Why ``name`` cannot be sent with ``protocol`` ("" when it can). Never quotes the value."""
    if protocol == "grpc":
        from .rpc_span import is_metadata_key, is_metadata_value

        if not is_metadata_key(name):
            return "is not a valid gRPC metadata key (lower-case letters, digits, '-', '_' and '.')"
        if name.endswith("-bin"):
            return "is a binary (-bin) gRPC metadata key, which the exporter cannot send from a variable"
        if not is_metadata_value(value):
            return "has a value that is not printable ASCII, which gRPC metadata requires"
        return ""
    if not name or not set(name) <= _HTTP_TOKEN:
        return "is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
    if value[:1] in (" ", "\t") or any(c in value for c in "\r\n\0"):
        return "has a value with a leading blank or a control character (CR, LF, NUL)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "has a value with characters outside Latin-1, which HTTP headers cannot carry"
    return ""


def unsendable_headers(headers, protocol: str) -> dict[str, str]:
    """The headers the exporter cannot send, each with the reason."""
    found = {}
    for name, value in dict(headers).items():
        problem = _header_problem(str(name), str(value), protocol)
        if problem:
            found[str(name)] = problem
    return found


def headers_check(unsendable: dict[str, str], source: str) -> Check:
    where = source.split(" ", 1)[1] if source.startswith("variable ") else "OTEL_EXPORTER_OTLP_HEADERS"
    problems = "; ".join(f"header {name!r} {why}" for name, why in unsendable.items())
    return Check(
        FAIL,
        "headers",
        f"{where}: {problems}: every export would fail",
        f"correct {where}: key=value pairs, values URL-encoded ASCII (e.g. authorization=Bearer%20TOKEN)",
    )


# -- the endpoint --------------------------------------------------------------------


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


def certificate_file(environ) -> str | None:
    """The CA file the exporter trusts (OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE), if set."""
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"):
        value = (environ.get(variable) or "").strip()
        if value:
            return value
    return None


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


def probe_endpoint(settings, timeout: float, environ=None, headers=None) -> tuple[Target, Probe]:
    """Resolve, connect, export an empty request with the configured protocol; if that
    fails, find out what the port speaks. ``headers``: those to send (default: all)."""
    target = Target(settings.endpoint, tls=uses_tls(settings))
    headers = settings.headers if headers is None else headers
    cafile = certificate_file(environ if environ is not None else os.environ)
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
    else:
        probe.http_status, probe.error = _http_export(target, headers, timeout, cafile)
        probe.accepted = probe.http_status is not None and 200 <= probe.http_status < 300
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


# -- the test span -------------------------------------------------------------------


def failure_fix(kind: str, hint: str) -> str:
    """The fix for a failed test span, from the agent's own classification of the failure."""
    text = f"{kind} {hint}".lower()
    if "certificate" in text or kind == "SSLError":
        return CERTIFICATE_FIX
    if kind == "connection refused":
        return "start the collector, or point --endpoint at where it listens"
    if kind == "timeout":
        return "check that the collector is reachable from here, or raise OTEL_EXPORTER_OTLP_TIMEOUT"
    if kind in ("HTTP 401", "HTTP 403", "gRPC UNAUTHENTICATED", "gRPC PERMISSION_DENIED"):
        return "set the credentials in OTEL_EXPORTER_OTLP_HEADERS"
    if kind == "HTTP 404":
        return "check the endpoint's path: the collector's OTLP/HTTP traces path is /v1/traces"
    if kind == "gRPC UNAVAILABLE":
        return "check the endpoint's port and TLS (https:// or OTEL_EXPORTER_OTLP_INSECURE) against the collector's"
    return "check that the endpoint is the collector's OTLP receiver and the protocol matches it"


def _verdict_class():
    from .export_report import ExportFailures

    class Verdict(ExportFailures):
        """Keeps the classified cause of a failed export instead of logging it."""

        kind = hint = ""

        def failed(self, kind: str, hint: str, spans: int) -> None:
            self.kind, self.hint = kind, hint

        def succeeded(self) -> None:
            pass

        def close(self) -> None:
            pass

    return Verdict


def test_span_check(settings, service_name: str, timeout: float) -> Check:
    """Send one real span through the agent's own exporter, synchronously and bounded.

    The export runs through :class:`autotrace.exporters.ExporterHandle`, so a failure is
    classified exactly as the agent classifies it
    (:func:`autotrace.export_report.classify_failure`).
    """
    import logging
    import threading

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    from . import export_report, exporters

    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # the doctor reports it
    settings.timeout_s = min(settings.timeout_s, timeout)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    spans = []

    class Keep(SpanProcessor):
        def on_end(self, span):
            spans.append(span)

    provider.add_span_processor(Keep())
    with provider.get_tracer("autotrace.doctor").start_as_current_span("autotrace doctor test span"):
        pass
    verdict = _verdict_class()(f"to {redact(settings.endpoint)}")
    result: list[object] = []

    def send() -> None:
        try:
            handle = exporters.ExporterHandle("otlp", exporters.otlp_factory(settings), failures=verdict)
            try:
                result.append(handle.export(spans))
            finally:
                handle.shutdown()
        except Exception as exc:  # noqa: BLE001
            result.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    thread.join(timeout + 2.0)
    took = time.monotonic() - started
    outcome = result[0] if result else None
    shown = redact(settings.endpoint)
    if outcome == SpanExportResult.SUCCESS:
        return Check(OK, "test span", f"accepted by {shown} in {took * 1000:.0f} ms")
    if outcome is None:
        kind, hint = "timeout", f" (no answer within {timeout:g}s)"
    elif isinstance(outcome, Exception):
        kind, hint = export_report.classify_failure([outcome])
    elif verdict.kind:
        kind, hint = verdict.kind, verdict.hint
    else:
        kind, hint = "the exporter could not be created", ""
    return Check(
        FAIL,
        "test span",
        f"not accepted by {shown} after {took * 1000:.0f} ms: {kind}{hint}",
        failure_fix(kind, hint),
    )


# -- libraries and conflicts ---------------------------------------------------------


def _installed_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a broken dist-info
        return None


def library_checks(disabled=frozenset(), version_of=_installed_version) -> list[Check]:
    from .registry import HOOKS, version_position

    checks = []
    stdlib = [h.name for h in HOOKS if h.distribution is None and h.name not in disabled]
    if stdlib:
        checks.append(Check(OK, "libraries", "standard library covered: " + ", ".join(stdlib)))
    by_distribution: dict[str, list] = {}
    for hook in HOOKS:
        if hook.distribution:
            by_distribution.setdefault(hook.distribution, []).append(hook)
    missing = []
    for distribution, hooks in by_distribution.items():
        version = version_of(distribution)
        if version is None:
            missing.append(distribution)
            continue
        names = ", ".join(h.name for h in hooks)
        hook = hooks[0]
        if all(h.name in disabled for h in hooks):
            checks.append(
                Check(
                    WARN,
                    "libraries",
                    f"{distribution} {version} installed, hook disabled ({names})",
                    "remove it from OTEL_PYTHON_DISABLED_INSTRUMENTATIONS to trace it",
                )
            )
            continue
        position = version_position(hook, version)
        low = ".".join(map(str, hook.min_version)) or "0"
        if position < 0:
            checks.append(
                Check(
                    WARN,
                    "libraries",
                    f"{distribution} {version} installed but not covered: the hook needs {low} or newer",
                    f"upgrade {distribution} to {low} or newer to trace it",
                )
            )
        elif position > 0:
            high = ".".join(map(str, hook.below_version or ()))
            checks.append(
                Check(
                    WARN,
                    "libraries",
                    f"{distribution} {version} installed but not covered: the hook supports below {high}",
                    f"use {distribution} below {high} to trace it",
                )
            )
        else:
            checks.append(Check(OK, "libraries", f"{distribution} {version} covered ({names})"))
    if missing:
        checks.append(Check(OK, "libraries", "not installed: " + ", ".join(missing)))
    return checks


def _own_site_dir() -> str:
    try:
        from .launcher import sitecustomize_dir

        return sitecustomize_dir()
    except Exception:  # noqa: BLE001
        return ""


def search_path(environ) -> list[str]:
    """Where the app's ``site`` will look for ``sitecustomize``: PYTHONPATH, then ours."""
    entries = [p for p in (environ.get("PYTHONPATH") or "").split(os.pathsep) if p]
    return entries + [p for p in sys.path if p and p not in entries]


def conflict_checks(paths: list[str], distributions, own_dir: str | None = None) -> list[Check]:
    """Other agents on the path or installed. ``distributions``: installed names."""
    checks = []
    own = os.path.normcase(os.path.realpath(own_dir if own_dir is not None else _own_site_dir()))
    found = []
    for entry in paths:
        directory = os.path.normcase(os.path.realpath(entry or os.getcwd()))
        if directory == own:
            continue
        candidate = os.path.join(entry or os.getcwd(), "sitecustomize.py")
        if os.path.isfile(candidate) and candidate not in found:
            found.append(candidate)
    for index, path in enumerate(found):
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                text = file.read(65536)
        except OSError:
            text = ""
        where = os.path.realpath(path).replace(os.sep, "/") + "\n" + text
        agent = ""
        if "auto_instrumentation" in where:
            agent = "opentelemetry-instrument's sitecustomize"
        elif "ddtrace/bootstrap" in where or "ddtrace.bootstrap" in where:
            agent = "ddtrace's sitecustomize (ddtrace-run)"
        if agent and index == 0:  # autotrace chains the first one after its own: it runs
            checks.append(
                Check(
                    FAIL,
                    "conflicts",
                    f"{path} is {agent}: autotrace runs it after itself, so a second tracer "
                    "patches the same libraries (spans doubled or broken)",
                    "remove its directory from PYTHONPATH; run the app with autotrace only",
                )
            )
        elif agent:
            checks.append(
                Check(
                    WARN,
                    "conflicts",
                    f"{path} is {agent}, hidden behind {found[0]} (it does not run)",
                    "remove its directory from PYTHONPATH, so it cannot run if the other one goes",
                )
            )
        elif index == 0:
            checks.append(Check(OK, "conflicts", f"your sitecustomize {path} will run first (chained)"))
    names = {_normalize(d) for d in distributions}
    for name, what in (("ddtrace", "ddtrace (Datadog)"), ("jaeger-client", "jaeger-client")):
        if name in names:
            checks.append(
                Check(
                    WARN,
                    "conflicts",
                    f"{what} is installed: if the app starts it too, requests are traced twice",
                    f"do not start {name} in the app, or uninstall it",
                )
            )
    instrumentations = sorted(
        n for n in names if n.startswith("opentelemetry-instrumentation-")
    )
    if instrumentations:
        checks.append(
            Check(
                WARN,
                "conflicts",
                "installed: " + ", ".join(instrumentations),
                "if the app calls these instrumentors itself, its spans double: remove those calls "
                "(or disable the matching autotrace hook with OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)",
            )
        )
    if not checks:
        checks.append(Check(OK, "conflicts", NO_CONFLICT))
    return checks


def _normalize(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> list[str]:
    from importlib import metadata

    names = []
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except Exception:  # noqa: BLE001
            name = None
        if name:
            names.append(name)
    return names


# -- the command ---------------------------------------------------------------------


def run_checks(args, environ) -> list[Check]:
    from .launcher import build_environment

    timeout = parse_timeout(getattr(args, "timeout", 3.0) or 3.0)
    command = list(getattr(args, "command", None) or [])
    if command and command[0] == "--":
        command = command[1:]
    env = build_environment(args, environ)
    settings, warnings = load_settings(env)
    checks = configuration_checks(settings, warnings, args, environ)
    name_check = service_name_check(settings, command, args)
    checks.append(name_check)
    checks.extend(command_checks(command, env))
    derived = name_check.message.split(" (", 1)[0] if command and name_check.status != FAIL else ""
    unsendable = unsendable_headers(settings.headers, settings.protocol)
    if settings.sdk_disabled:
        pass
    elif not settings.exporters:
        checks.append(
            Check(
                FAIL,
                "exporter",
                "no exporter: spans are dropped (OTEL_TRACES_EXPORTER=none)",
                "use --exporter otlp (OTEL_TRACES_EXPORTER=otlp) to send spans to a collector",
            )
        )
    elif "otlp" not in settings.exporters:
        shown = ", ".join(settings.exporters)
        checks.append(
            Check(
                WARN,
                "exporter",
                f"exporter {shown}: no span leaves the process",
                "use --exporter otlp (OTEL_TRACES_EXPORTER=otlp) to send spans to a collector",
            )
        )
    else:
        if unsendable:
            checks.append(headers_check(unsendable, source_of("headers", args, environ)))
        sendable = {k: v for k, v in settings.headers.items() if k not in unsendable}
        target, probe = probe_endpoint(settings, timeout, env, sendable)
        endpoint = classify(settings.protocol, target, probe, source_of("endpoint", args, environ))
        checks.append(endpoint)
        if endpoint.status == FAIL or unsendable:
            failed = "endpoint" if endpoint.status == FAIL else "headers"
            checks.append(
                Check(FAIL, "test span", f"not sent: the {failed} check failed", f"fix the {failed} problem above")
            )
        else:
            service = (
                settings.service_name
                or settings.resource_attributes.get("service.name")
                or derived
                or "autotrace-doctor"
            )
            checks.append(test_span_check(settings, service, timeout))
    checks.extend(environment_checks(command, env, settings.disabled_hooks))
    if any(c.name == "conflicts" and c.status != OK for c in checks):  # the command's own, above
        checks = [c for c in checks if not (c.name == "conflicts" and c.message == NO_CONFLICT)]
    # Header values are secrets (tokens): an exception's text must not show one either.
    header_values = [v for v in settings.headers.values() if len(v) >= 6]
    return scrub(checks, secrets_of(settings.endpoint) + _raw_endpoint_secrets(env) + header_values)


# Launchers of other agents: in front of the app's command, they start a second tracer.
_OTHER_LAUNCHERS = {
    "opentelemetry-instrument": "opentelemetry-instrument (OpenTelemetry's zero-code agent)",
    "ddtrace-run": "ddtrace-run (Datadog's agent)",
}


def command_checks(command: list[str], env) -> list[Check]:
    """What ``autotrace run`` would make of the command itself (arguments never echoed)."""
    if not command:
        return []
    from . import config, entrypoint

    checks = []
    launcher = os.path.basename(command[0])
    if launcher in _OTHER_LAUNCHERS:
        checks.append(
            Check(
                FAIL,
                "conflicts",
                f"the command starts {_OTHER_LAUNCHERS[launcher]}: a second tracer patches the same "
                "libraries (spans doubled or broken)",
                f"drop {launcher} from the command and run the app with autotrace only",
            )
        )
    program = entrypoint.parse(list(command)).program
    if program in config.deny_list(env):
        where = "AUTOTRACE_DENY" if env.get("AUTOTRACE_DENY") is not None else "the default AUTOTRACE_DENY list"
        checks.append(
            Check(
                FAIL,
                "command",
                f"{program} is on {where}: autotrace run does not trace it",
                "set AUTOTRACE_DENY to the programs not to trace, without this one (empty: trace everything)",
            )
        )
    return checks + instrumentor_checks(command)


# An OpenTelemetry instrumentor the app calls itself: FlaskInstrumentor().instrument(),
# FastAPIInstrumentor.instrument_app(app), GrpcInstrumentorClient().instrument(), ...
_INSTRUMENTOR_CALL = r"\b(\w*Instrumentor(?:Client|Server)?)\s*(?:\(\s*\))?\s*\.\s*instrument(?:_app)?\s*\("
_APP_FILE_LIMIT = 1 << 20  # bytes read of each of the app's files


def app_files(command: list[str], cwd: str) -> list[str]:
    """The app's own source files the command names: a script, a ``-m`` module, a server's
    ``module:attr`` application, when they exist under ``cwd``."""
    import re

    found: list[str] = []
    for index, arg in enumerate(command[1:], 1):
        if arg.endswith(".py"):
            path = arg
        elif command[index - 1] == "-m" or re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]", arg):
            path = arg.split(":", 1)[0].replace(".", os.sep) + ".py"
        else:
            continue
        full = os.path.join(cwd, path)
        if os.path.isfile(full) and full not in found:
            found.append(full)
    return found[:4]


def instrumentor_checks(command: list[str], cwd: str | None = None) -> list[Check]:
    """OpenTelemetry instrumentors the app's files call: with autotrace, spans double."""
    import re

    checks = []
    for path in app_files(command, cwd or os.getcwd()):
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                text = file.read(_APP_FILE_LIMIT)
        except OSError:
            continue
        names = sorted(set(re.findall(_INSTRUMENTOR_CALL, text)))
        if names:
            checks.append(
                Check(
                    WARN,
                    "conflicts",
                    f"{path} calls {', '.join(names)} itself: autotrace instruments the same libraries, "
                    "so their spans double",
                    "remove those calls (autotrace needs none), or disable the matching autotrace hooks "
                    "in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
                )
            )
    return checks


def _raw_endpoint_secrets(env) -> list[str]:
    found: list[str] = []
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        found += secrets_of(env.get(variable) or "")
    return found


def local_environment_checks(paths: list[str], disabled, own_dir: str | None = None) -> list[Check]:
    """The library and conflict checks for the Python running this function."""
    return library_checks(frozenset(disabled)) + conflict_checks(paths, installed_distributions(), own_dir)


def remote_main() -> None:
    """Entry point in the command's interpreter: its checks as JSON on stdout."""
    request = json.loads(sys.stdin.read() or "{}")
    checks = local_environment_checks(
        search_path({"PYTHONPATH": request.get("pythonpath", "")}), request.get("disabled", []), request.get("own")
    )
    sys.stdout.write(json.dumps([c.as_dict() for c in checks]))


def environment_checks(command: list[str], env, disabled) -> list[Check]:
    """Libraries and conflicts as the command's interpreter sees them (bounded subprocess)."""
    from .launcher import foreign_python

    paths = search_path(env)
    interpreter = foreign_python(command, env)  # the command's, when another environment's
    if interpreter is None:
        return local_environment_checks(paths, disabled)
    import subprocess

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "AUTOTRACE_ENABLED")}
    child_env["PYTHONPATH"] = package_root  # this autotrace, without arming the agent there
    child_env["PYTHONSAFEPATH"] = "1"  # nor the current directory's modules
    request = json.dumps(
        {"pythonpath": env.get("PYTHONPATH", ""), "disabled": sorted(disabled), "own": _own_site_dir()}
    )
    try:
        result = subprocess.run(
            [interpreter, "-c", "from autotrace.doctor import remote_main; remote_main()"],
            input=request,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=REMOTE_TIMEOUT_S,
        )
        rows = json.loads(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        rows, result = None, exc
    if not isinstance(rows, list):
        why = getattr(result, "stderr", "") or str(result)
        why = (why.strip().splitlines() or ["no answer"])[-1]
        return [
            Check(
                WARN,
                "interpreter",
                f"cannot inspect the command's Python {interpreter} ({why}); "
                f"the library and conflict checks below are for {sys.executable}",
                "install autotrace into that environment and run its autotrace doctor",
            )
        ] + local_environment_checks(paths, disabled)
    header = Check(OK, "interpreter", f"libraries and conflicts checked in the command's Python {interpreter}")
    return [header] + [Check(r["status"], r["name"], r["message"], r.get("fix", "")) for r in rows]


def exit_code(checks: list[Check]) -> int:
    if any(c.status == FAIL for c in checks):
        return 1
    if any(c.name == "test span" for c in checks):
        return 0  # accepted (a failure is a FAIL above)
    return 0 if any(c.name == "exporter" for c in checks) else 1


def render_text(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        fix = f"; fix: {check.fix}" if check.fix and check.status != OK else ""
        lines.append(f"{check.status:<4} {check.name}: {check.message}{fix}")
    code = exit_code(checks)
    if code:
        lines.append("spans cannot be delivered")
    elif any(c.name == "test span" for c in checks):
        lines.append("spans can be delivered")
    else:
        lines.append("no exporter sends spans out of the process (nothing to deliver)")
    return "\n".join(lines) + "\n"


def render_json(checks: list[Check]) -> str:
    code = exit_code(checks)
    return json.dumps(
        {"ok": code == 0, "exit_code": code, "checks": [c.as_dict() for c in checks]}, indent=2
    ) + "\n"


def main(args) -> int:
    environ = dict(os.environ)
    # gRPC's C core would print "Handshake failed" lines for the TLS probes: the report says it.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        checks = run_checks(args, environ)
    except ValueError as exc:  # a bad --timeout given programmatically
        sys.stderr.write(f"autotrace doctor: {exc}\n")
        return 2
    _write(render_json(checks) if getattr(args, "json", False) else render_text(checks))
    return exit_code(checks)


def _write(text: str) -> None:
    """The report on stdout, whatever the stream: characters it cannot encode are escaped,
    and a stdout that cannot be written (closed pipe, full disk) costs one line on stderr."""
    out = sys.stdout
    try:
        if out is None:
            return
        encoding = getattr(out, "encoding", None) or "utf-8"
        out.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))
        out.flush()
    except (OSError, ValueError, LookupError) as exc:
        try:
            # What is still buffered goes nowhere: Python's own flush at exit cannot fail again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        try:
            sys.stderr.write(f"autotrace doctor: cannot write the report: {exc}\n")
        except (OSError, ValueError, AttributeError):
            pass
