"""The SERVER and CLIENT spans of RPCs (gRPC), shared by the sync and asyncio hooks.

A server hook calls :func:`start_server` with the full method name (``/pkg.Service/Method``)
and the call's incoming metadata; the parent is extracted from the metadata with the
configured propagators, as ``AUTOTRACE_INCOMING_CONTEXT`` says (see
:func:`autotrace.server_span.extract_incoming`). A client hook calls :func:`start_client`
and sends the metadata :meth:`RpcSpan.outgoing_metadata` gives (the caller's own entries kept;
the propagation fields lower-cased, one grpc would refuse left out). Both end with
the call's status code (:meth:`RpcSpan.set_code`) or the exception that ended it
(:meth:`RpcSpan.fail`), then :meth:`RpcSpan.end`. Nothing here raises into the app.
Status codes are grpc's numbers (:data:`STATUS_NAMES`, :func:`status_code`), so nothing
here imports grpc; what else the two hooks share (server wrapping, ports, cancellation)
is in :mod:`autotrace.grpc_common`.

Span content follows the RPC semantic conventions: name ``"{package.Service}/{Method}"``,
``rpc.system=grpc``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``,
``server.address``, ``server.port``, ``error.type`` (the status code's name). Status
ERROR for every code but OK. A SERVER span has ``server.address``/``server.port`` when
its server was given exactly one port (:class:`~autotrace.grpc_common.ServerPorts`,
noted by :func:`~autotrace.grpc_common.note_ports`): the address the app passed (none for a wildcard such as
``[::]`` or ``0.0.0.0``; the path for a Unix socket) and the port grpc bound.
"""

from __future__ import annotations

import re

from . import _log, api, spans
from .propagation.fields import bounded_values
from .server_span import extract_incoming
from .spans import SpanHandle, mark_error, set_known

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Sequence

    from opentelemetry import context, trace

    from .grpc_common import ServerPorts

    Metadata = Sequence[tuple[str, "str | bytes"]]

SERVER_TRACER = "autotrace.grpc.server"
CLIENT_TRACER = "autotrace.grpc.client"

# grpc.StatusCode values by number (grpc's enum holds (number, name) tuples), so the
# core needs no grpc import.
STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
# The codes the hooks name.
OK, CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL = 0, 1, 2, 4, 12, 13


def status_code(code: object) -> tuple[int | None, str]:
    """(number, name) of a grpc.StatusCode or a number; (None, "") for anything else."""
    if code is None:
        return None, ""
    value = getattr(code, "value", code)  # grpc.StatusCode.X.value == (number, "name")
    if isinstance(value, tuple):
        value = value[0]
    if isinstance(value, int):
        return value, STATUS_NAMES.get(value, str(value))
    return None, ""


class RpcSpan(SpanHandle):
    """One RPC's span; its methods never raise, and end() is idempotent."""

    __slots__ = ("_coded",)
    WHAT = "an RPC span"

    def __init__(self, span: trace.Span, ctx: context.Context) -> None:
        super().__init__(span, ctx)  # the context: the span current
        self._coded = False

    def outgoing_metadata(self, metadata: Metadata | None) -> list[tuple[str, str | bytes]]:
        """The caller's metadata (a new list) with this span's propagation entries.

        Entries the caller set under the same keys are replaced, so the call carries
        exactly one ``traceparent``.
        """
        carrier: dict[str, str] = {}
        try:
            api.propagate.inject(carrier, context=self.context)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
        carrier = _valid_metadata(carrier)
        kept = [(k, v) for k, v in (metadata or ()) if not (isinstance(k, str) and k.lower() in carrier)]
        if len(kept) != len(metadata or ()) and _log.debug_enabled():
            _log.logger.debug("grpc: metadata the application set under %s is replaced by the CLIENT span's", ", ".join(sorted(carrier)))
        kept.extend(carrier.items())
        return kept

    def set_peer(self, peer: str | None) -> None:
        """Record ``client.address``/``client.port`` from ``ServicerContext.peer()`` (``ipv4:127.0.0.1:5000``)."""
        try:
            attributes = _with_address({}, "client", _split_peer(peer))
            if attributes:
                set_known(self.span, attributes)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)

    def set_server(self, ports: ServerPorts) -> None:
        """Record ``server.address``/``server.port`` of a SERVER span, when its server's port is known."""
        attributes = ports.attributes
        if attributes:
            try:
                set_known(self.span, attributes)
            except Exception as exc:  # noqa: BLE001
                self.report(exc)

    def set_code(self, code: object, details: str | None = None) -> None:
        """Record the call's status code (a grpc.StatusCode, or its number)."""
        try:
            number, name = status_code(code)
            if number is None:
                return
            self._coded = True
            span = self.span
            set_known(span, {"rpc.grpc.status_code": number})
            if number != 0:
                mark_error(span, name, details or None)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)

    def fail(self, exc: BaseException, code: object = None) -> None:  # type: ignore[override]
        """Record an exception that ended the call; ``code`` when it maps to a status (UNKNOWN otherwise)."""
        try:
            if self.ended:
                return
            if code is not None or not self._coded:
                self.set_code(code if code is not None else UNKNOWN)
            self.span.record_exception(exc)
        except Exception as error:  # noqa: BLE001
            self.report(error)


# The text metadata grpc accepts (anything else fails the call: INTERNAL, "Invalid
# metadata"): keys of lower-case letters, digits, "-", "_" and "."; printable ASCII values.
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")


def is_metadata_key(name: str) -> bool:
    """Whether grpc accepts ``name`` as a text metadata key."""
    return _METADATA_KEY.fullmatch(name) is not None


def is_metadata_value(value: str) -> bool:
    """Whether grpc accepts ``value`` as a text metadata value (printable ASCII)."""
    return value.isascii() and value.isprintable()


def _valid_metadata(carrier: dict[str, str]) -> dict[str, str]:
    """The propagation fields gRPC can carry: keys lower-cased, an entry it would refuse left out (one warning).

    The built-in formats write only valid entries; a propagator loaded from an entry
    point may write ``X-Amzn-Trace-Id`` (lower-cased here) or a value grpc refuses.
    """
    valid: dict[str, str] = {}
    for key, value in carrier.items():
        name = key.lower() if isinstance(key, str) else ""
        if is_metadata_key(name) and isinstance(value, str) and is_metadata_value(value):
            valid[name] = value
        else:
            _log.warn_once(
                "rpc-metadata:" + str(key),
                "grpc: the field %r a propagator of OTEL_PROPAGATORS writes is not valid gRPC metadata; RPCs are sent without it",
                key,
            )
    return valid


class _MetadataGetter:
    """Reads propagation fields from gRPC metadata (a sequence of (key, value) pairs).

    As the HTTP servers' getter: the raw values are counted first (a repeated
    ``traceparent`` is invalid even when a copy is oversized), then a value over its
    field's limit makes the whole field invalid
    (:func:`autotrace.propagation.fields.bounded_values`).
    """

    names_in_any_case = True  # get() lower-cases the name: propagators need not scan the keys

    def get(self, carrier: Metadata, key: str):
        key = key.lower()  # gRPC metadata keys are lower-case; a propagator may ask for X-Amzn-Trace-Id
        return bounded_values(key, (v for k, v in carrier if k == key))

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def start_server(full_method: str, metadata: Metadata | None, peer: str | None = None, attach: bool = True) -> RpcSpan | None:
    """Start an incoming RPC's SERVER span (parent from the metadata), or None when suppressed."""
    try:
        if _current() is None:
            return None
        attributes = _with_address(_method_attributes(full_method), "client", _split_peer(peer))
        # From the metadata only, not over the current context: a server's call runs in a
        # task or thread that may have inherited the context the server was started in.
        # AUTOTRACE_INCOMING_CONTEXT applies as for HTTP (server_span.extract_incoming).
        parent, links = extract_incoming(list(metadata or ()), _GETTER, api.context.Context())
        return _start(SERVER_TRACER, full_method, api.SpanKind.SERVER, parent, attributes, links or None, attach)
    except Exception as exc:  # noqa: BLE001 - never fail a call
        report(exc)
        return None


def start_client(full_method: str, target: str | None, attach: bool = False) -> RpcSpan | None:
    """Start an outgoing RPC's CLIENT span under the current context, or None when suppressed.

    ``target`` is the channel's target (``host:port``, ``dns:///host:port`` ...).
    """
    try:
        parent = _current()
        if parent is None:  # the exporter's own calls
            return None
        attributes = _with_address(_method_attributes(full_method), "server", split_target(target))
        return _start(CLIENT_TRACER, full_method, api.SpanKind.CLIENT, parent, attributes, None, attach)
    except Exception as exc:  # noqa: BLE001
        report(exc)
        return None


def _current() -> context.Context | None:
    """The current context (the API loaded first), or None when instrumentation is suppressed there."""
    if not api.loaded:
        api.load()
    current = api.context.get_current()
    return None if api.suppressed(current) else current


def _start(tracer: str, full_method: str, kind: trace.SpanKind, parent: context.Context, attributes: dict, links, attach: bool) -> RpcSpan:
    call = RpcSpan(*spans.new(tracer, _span_name(full_method), kind, parent, attributes, links))
    if attach:
        call.attach()
    return call


def _span_name(full_method: str) -> str:
    return full_method[1:] if full_method.startswith("/") else full_method


def _method_attributes(full_method: str) -> dict[str, object]:
    attributes: dict[str, object] = {"rpc.system": "grpc"}
    service, _, method = _span_name(full_method).rpartition("/")
    if service:
        attributes["rpc.service"] = service
    if method:
        attributes["rpc.method"] = method
    return attributes


def _with_address(attributes: dict[str, object], prefix: str, address_port: tuple[str | None, int | None]) -> dict[str, object]:
    """``attributes`` with ``{prefix}.address`` and ``{prefix}.port``, those known."""
    address, port = address_port
    if address:
        attributes[prefix + ".address"] = address
    if port is not None:
        attributes[prefix + ".port"] = port
    return attributes


def split_target(target: str | None) -> tuple[str | None, int | None]:
    """Host and port of a channel target: ``host:port``, ``dns:///host:port``, ``ipv4:a.b.c.d:p``, ``[::1]:p``."""
    if not target:
        return None, None
    rest = target
    for scheme in ("unix-abstract:", "unix:"):
        if rest.startswith(scheme):
            path = rest[len(scheme) :]
            if scheme == "unix:" and path.startswith("//"):
                path = path[2:]  # unix:///absolute/path
            return path or None, None
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
            if rest.startswith("//"):
                rest = rest[2:].partition("/")[2]  # dns://authority/host:port
            rest = rest.split(",")[0]  # ipv4:a:p,b:p: the first address
            break
    return _split_host_port(rest)


def _split_peer(peer: str | None) -> tuple[str | None, int | None]:
    """Address and port of ``ServicerContext.peer()`` (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    if not peer:
        return None, None
    for scheme in ("ipv4:", "ipv6:"):
        if peer.startswith(scheme):
            return _split_host_port(peer[len(scheme) :])
    return None, None


def _split_host_port(value: str) -> tuple[str | None, int | None]:
    from urllib.parse import unquote

    value = unquote(value)
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, ""  # no port, or a bare IPv6 address
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        port = None
    return host or None, port


def report(exc: BaseException) -> None:
    """The one warning line for a failure to record an RPC span (the call goes on)."""
    spans.report(exc, RpcSpan.WHAT, "the call", "rpc-span")
