"""A direct OTLP span encoder: ``ExportTraceServiceRequest`` bytes without protobuf objects.

The SDK's encoder builds one protobuf message object per span, attribute and value
(about 90 us per span), on the batch processor's thread, which holds the GIL while the
application's threads wait. This one writes the protobuf wire format directly and
caches what repeats: the encoded resource and scope of each batch (immutable, few),
and the encoded key-value of frequent (key, value) pairs.

It emits what the SDK encoder (``opentelemetry-exporter-otlp-proto-common``) emits,
field for field: the tests compare the parsed result with the SDK's message. Where the
SDK leaves something out (a link's ``trace_state``), so does this. An attribute the SDK
cannot encode (an unsupported type, an int outside int64) is skipped, as the SDK does.

A light span's encoding at its end (:func:`encode_light`) is compiled when the optional
extension ``autotrace._speedups`` (autotrace/_speedups.c) was built in this install: C for
the common case, this module's Python for the rest (and wherever the extension is not
built). The Python code is the reference; the tests compare both, byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import import_module
from struct import Struct
from time import sleep
from types import MappingProxyType
from typing import Any

from opentelemetry.trace import Status, StatusCode

__all__ = ["encode_span", "encode_light", "encode_request", "encode_spans", "COMPILED"]

_pack_fixed64 = Struct("<Q").pack
_pack_fixed32 = Struct("<I").pack
_pack_double = Struct("<d").pack

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_UINT64 = 1 << 64

_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _tag(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# Field numbers of opentelemetry/proto (checked against the generated modules in the tests).
# ExportTraceServiceRequest
T_REQUEST_RESOURCE_SPANS = _tag(1, _LEN)
# ResourceSpans
T_RS_RESOURCE = _tag(1, _LEN)
T_RS_SCOPE_SPANS = _tag(2, _LEN)
T_RS_SCHEMA_URL = _tag(3, _LEN)
# Resource
T_RESOURCE_ATTRIBUTES = _tag(1, _LEN)
# ScopeSpans
T_SS_SCOPE = _tag(1, _LEN)
T_SS_SPANS = _tag(2, _LEN)
T_SS_SCHEMA_URL = _tag(3, _LEN)
# InstrumentationScope
T_SCOPE_NAME = _tag(1, _LEN)
T_SCOPE_VERSION = _tag(2, _LEN)
T_SCOPE_ATTRIBUTES = _tag(3, _LEN)
# Span
T_SPAN_TRACE_ID = _tag(1, _LEN)
T_SPAN_SPAN_ID = _tag(2, _LEN)
T_SPAN_TRACE_STATE = _tag(3, _LEN)
T_SPAN_PARENT_SPAN_ID = _tag(4, _LEN)
T_SPAN_NAME = _tag(5, _LEN)
T_SPAN_KIND = _tag(6, _VARINT)
T_SPAN_START = _tag(7, _I64)
T_SPAN_END = _tag(8, _I64)
T_SPAN_ATTRIBUTES = _tag(9, _LEN)
T_SPAN_DROPPED_ATTRIBUTES = _tag(10, _VARINT)
T_SPAN_EVENTS = _tag(11, _LEN)
T_SPAN_DROPPED_EVENTS = _tag(12, _VARINT)
T_SPAN_LINKS = _tag(13, _LEN)
T_SPAN_DROPPED_LINKS = _tag(14, _VARINT)
T_SPAN_STATUS = _tag(15, _LEN)
T_SPAN_FLAGS = _tag(16, _I32)
# Span.Event
T_EVENT_TIME = _tag(1, _I64)
T_EVENT_NAME = _tag(2, _LEN)
T_EVENT_ATTRIBUTES = _tag(3, _LEN)
T_EVENT_DROPPED_ATTRIBUTES = _tag(4, _VARINT)
# Span.Link
T_LINK_TRACE_ID = _tag(1, _LEN)
T_LINK_SPAN_ID = _tag(2, _LEN)
T_LINK_ATTRIBUTES = _tag(4, _LEN)
T_LINK_DROPPED_ATTRIBUTES = _tag(5, _VARINT)
T_LINK_FLAGS = _tag(6, _I32)
# Status
T_STATUS_MESSAGE = _tag(2, _LEN)
T_STATUS_CODE = _tag(3, _VARINT)
# KeyValue
T_KV_KEY = _tag(1, _LEN)
T_KV_VALUE = _tag(2, _LEN)
# AnyValue
T_ANY_STRING = _tag(1, _LEN)
T_ANY_BOOL = _tag(2, _VARINT)
T_ANY_INT = _tag(3, _VARINT)
T_ANY_DOUBLE = _tag(4, _I64)
T_ANY_ARRAY = _tag(5, _LEN)
T_ANY_KVLIST = _tag(6, _LEN)
T_ANY_BYTES = _tag(7, _LEN)
# ArrayValue, KeyValueList
T_LIST_VALUES = _tag(1, _LEN)

# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, plus ..._IS_REMOTE_MASK for a remote parent.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_FLAGS_LOCAL = T_SPAN_FLAGS + _pack_fixed32(_HAS_IS_REMOTE)
_FLAGS_REMOTE = T_SPAN_FLAGS + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
_LINK_FLAGS_LOCAL = T_LINK_FLAGS + _pack_fixed32(_HAS_IS_REMOTE)
_LINK_FLAGS_REMOTE = T_LINK_FLAGS + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)

_ANY_EMPTY = T_KV_VALUE + b"\x00"  # a None value: an empty AnyValue, as the SDK sends


def _kind_map() -> dict[Any, bytes]:
    from opentelemetry.trace import SpanKind

    # OTLP's SpanKind is the API's value + 1 (0 is SPAN_KIND_UNSPECIFIED).
    return {kind: T_SPAN_KIND + _varint(kind.value + 1) for kind in SpanKind}


_KIND = _kind_map()
_KIND_BY_VALUE = {kind.value: encoded for kind, encoded in _KIND.items()}


def _any_value(value: Any) -> bytes:
    """The AnyValue message body for ``value`` (same type tests, in the same order, as the SDK)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return T_ANY_BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _ld(T_ANY_STRING, value.encode("utf-8"))
    if isinstance(value, int):
        if value < 0:
            if value < _INT64_MIN:
                raise ValueError(f"int {value} out of int64 range")
            return T_ANY_INT + _varint(value + _UINT64)
        if value > _INT64_MAX:
            raise ValueError(f"int {value} out of int64 range")
        return T_ANY_INT + _varint(value)
    if isinstance(value, float):
        return T_ANY_DOUBLE + _pack_double(value)
    if isinstance(value, bytes):
        return _ld(T_ANY_BYTES, value)
    if isinstance(value, Sequence):
        return _ld(T_ANY_ARRAY, b"".join([_ld(T_LIST_VALUES, _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _ld(
            T_ANY_KVLIST,
            b"".join([_ld(T_LIST_VALUES, _key_value(str(k), v)) for k, v in value.items()]),
        )
    raise TypeError(f"invalid type {type(value)} of value {value!r}")


def _key_value(key: str, value: Any) -> bytes:
    # An empty key is left out, as protobuf leaves out a string field at its default.
    return (_ld(T_KV_KEY, key.encode("utf-8")) if key else b"") + _ld(T_KV_VALUE, _any_value(value))


# Encoded KeyValue fields (with their tag) of frequent scalar attributes, keyed by
# (key, type, value): True and 1 are equal keys otherwise. Not floats: -0.0 == 0.0 (two
# encodings), and NaN is never equal to itself.
_KV_CACHE: dict[tuple[str, type, Any], bytes] = {}
_KV_CACHE_MAX = 4096
_CACHEABLE = frozenset((str, bool, int))


def _items(attributes: Any) -> Any:
    """The items of an attribute mapping, read from the plain dict inside when there is one.

    The SDK's ``BoundedAttributes`` is a ``MutableMapping`` whose generic ``items()``
    calls a Python ``__getitem__`` per key; its values live in a plain dict, ``_dict``.
    Read-only use, and only when it is that plain dict; otherwise the public way.
    """
    inner = getattr(attributes, "_dict", None)
    if type(inner) is dict:
        return inner.items()
    return attributes.items()


def _attributes(tag: bytes, attributes: Any) -> bytes:
    """The repeated KeyValue fields (each with ``tag``) of an attribute mapping."""
    if not attributes:
        return b""
    cache = _KV_CACHE
    out = []
    for key, value in _items(attributes):
        cls = value.__class__
        if cls in _CACHEABLE and tag is T_SPAN_ATTRIBUTES:
            ckey = (key, cls, value)
            encoded = cache.get(ckey)
            if encoded is None:
                try:
                    encoded = _ld(tag, _key_value(key, value))
                except Exception:  # noqa: BLE001 - the SDK skips what it cannot encode
                    continue
                if len(cache) >= _KV_CACHE_MAX:
                    cache.clear()
                cache[ckey] = encoded
            out.append(encoded)
            continue
        try:
            out.append(_ld(tag, _key_value(key, value)))
        except Exception:  # noqa: BLE001 - the SDK skips what it cannot encode
            continue
    return b"".join(out)


# Encoded attribute fields of whole plain attribute dicts (a light span's: str, bool, int and
# float values), keyed by their items and their values' types: a hook's spans repeat the
# same few sets (a connection's, a statement's, a route's). Not with a float value (see
# _CACHEABLE), nor beyond _BLOCK_MAX bytes.
_BLOCKS: dict[tuple[tuple[Any, ...], tuple[type, ...]], bytes] = {}
_BLOCKS_MAX = 1024
_BLOCK_MAX = 1024


def _plain_attributes(attributes: dict[str, Any]) -> bytes:
    """:func:`_attributes` of a span's plain dict (values of plain types), cached whole."""
    types = tuple(map(type, attributes.values()))
    if float in types:
        return _attributes(T_SPAN_ATTRIBUTES, attributes)
    key = (tuple(attributes.items()), types)
    block = _BLOCKS.get(key)
    if block is None:
        block = _attributes(T_SPAN_ATTRIBUTES, attributes)
        if len(block) <= _BLOCK_MAX:
            if len(_BLOCKS) >= _BLOCKS_MAX:
                _BLOCKS.clear()
            _BLOCKS[key] = block
    return block


# Resources and scopes are immutable; their encodings are kept by identity. The entry
# holds the object, so its id cannot be reused while the entry lives.
_RESOURCE_CACHE: dict[int, tuple[Any, bytes, bytes]] = {}
_SCOPE_CACHE: dict[int, tuple[Any, bytes, bytes]] = {}
_OBJ_CACHE_MAX = 256


def _resource_parts(resource: Any) -> tuple[bytes, bytes]:
    """(the ``resource`` field, the ``schema_url`` field) of a ResourceSpans."""
    entry = _RESOURCE_CACHE.get(id(resource))
    if entry is not None and entry[0] is resource:
        return entry[1], entry[2]
    head = _ld(T_RS_RESOURCE, _attributes(T_RESOURCE_ATTRIBUTES, resource.attributes))
    schema_url = resource.schema_url
    tail = _ld(T_RS_SCHEMA_URL, schema_url.encode("utf-8")) if schema_url else b""
    if len(_RESOURCE_CACHE) >= _OBJ_CACHE_MAX:
        _RESOURCE_CACHE.clear()
    _RESOURCE_CACHE[id(resource)] = (resource, head, tail)
    return head, tail


def _scope_parts(scope: Any) -> tuple[bytes, bytes]:
    """(the ``scope`` field, the ``schema_url`` field) of a ScopeSpans."""
    if scope is None:
        return T_SS_SCOPE + b"\x00", b""
    entry = _SCOPE_CACHE.get(id(scope))
    if entry is not None and entry[0] is scope:
        return entry[1], entry[2]
    body = []
    if scope.name:
        body.append(_ld(T_SCOPE_NAME, scope.name.encode("utf-8")))
    if scope.version:
        body.append(_ld(T_SCOPE_VERSION, scope.version.encode("utf-8")))
    body.append(_attributes(T_SCOPE_ATTRIBUTES, scope.attributes))
    head = _ld(T_SS_SCOPE, b"".join(body))
    schema_url = scope.schema_url
    tail = _ld(T_SS_SCHEMA_URL, schema_url.encode("utf-8")) if schema_url else b""
    if len(_SCOPE_CACHE) >= _OBJ_CACHE_MAX:
        _SCOPE_CACHE.clear()
    _SCOPE_CACHE[id(scope)] = (scope, head, tail)
    return head, tail


def _trace_state(trace_state: Any) -> str:
    if not trace_state:
        return ""
    return ",".join([f"{key}={value}" for key, value in trace_state.items()])


def _span(span: Any) -> bytes:
    ctx = span.get_span_context()
    out = [
        b"\x0a\x10",  # trace_id, 16 bytes
        ctx.trace_id.to_bytes(16, "big"),
        b"\x12\x08",  # span_id, 8 bytes
        ctx.span_id.to_bytes(8, "big"),
    ]
    trace_state = ctx.trace_state
    if trace_state:
        state = _trace_state(trace_state)
        if state:
            out.append(_ld(T_SPAN_TRACE_STATE, state.encode("utf-8")))
    parent = span.parent
    if parent:
        out.append(b"\x22\x08")  # parent_span_id, 8 bytes
        out.append(parent.span_id.to_bytes(8, "big"))
    name = span.name
    if name:
        out.append(_ld(T_SPAN_NAME, name.encode("utf-8")))
    out.append(_KIND[span.kind])
    start = span.start_time
    if start:
        out.append(T_SPAN_START + _pack_fixed64(start))
    end = span.end_time
    if end:
        out.append(T_SPAN_END + _pack_fixed64(end))
    # The span's own attribute mapping, not the read-only proxy of ``span.attributes``
    # (see _items); the public property when the SDK's layout is not the expected one.
    attributes = getattr(span, "_attributes", None)
    if attributes is None or type(attributes) is MappingProxyType:
        attributes = span.attributes
    if attributes:
        out.append(_attributes(T_SPAN_ATTRIBUTES, attributes))
    dropped = span.dropped_attributes
    if dropped:
        out.append(T_SPAN_DROPPED_ATTRIBUTES + _varint(dropped))
    out.append(_span_tail(span, parent))
    return _ld(T_SS_SPANS, b"".join(out))


def _span_tail(span: Any, parent: Any) -> bytes:
    """A span's fields from its events on: events, links, their dropped counts, status, flags."""
    out = []
    events = span.events
    if events:
        for event in events:
            body = []
            ts = event.timestamp
            if ts:
                body.append(T_EVENT_TIME + _pack_fixed64(ts))
            if event.name:
                body.append(_ld(T_EVENT_NAME, event.name.encode("utf-8")))
            body.append(_attributes(T_EVENT_ATTRIBUTES, event.attributes))
            dropped = event.dropped_attributes
            if dropped:
                body.append(T_EVENT_DROPPED_ATTRIBUTES + _varint(dropped))
            out.append(_ld(T_SPAN_EVENTS, b"".join(body)))
    dropped = span.dropped_events
    if dropped:
        out.append(T_SPAN_DROPPED_EVENTS + _varint(dropped))
    links = span.links
    if links:
        for link in links:
            lctx = link.context
            body = [
                b"\x0a\x10",
                lctx.trace_id.to_bytes(16, "big"),
                b"\x12\x08",
                lctx.span_id.to_bytes(8, "big"),
                _attributes(T_LINK_ATTRIBUTES, link.attributes),
            ]
            dropped = link.dropped_attributes
            if dropped:
                body.append(T_LINK_DROPPED_ATTRIBUTES + _varint(dropped))
            body.append(_LINK_FLAGS_REMOTE if lctx.is_remote else _LINK_FLAGS_LOCAL)
            out.append(_ld(T_SPAN_LINKS, b"".join(body)))
    dropped = span.dropped_links
    if dropped:
        out.append(T_SPAN_DROPPED_LINKS + _varint(dropped))
    status = span.status
    if status is not None:
        out.append(_status(status))
    out.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(out)


def _status(status: Any) -> bytes:
    """The ``status`` field of a span."""
    message = status.description
    code = status.status_code.value
    body = b""
    if message:
        body = _ld(T_STATUS_MESSAGE, message.encode("utf-8"))
    if code:
        body += T_STATUS_CODE + _varint(code)
    return _ld(T_SPAN_STATUS, body)


_STATUS_UNSET = _ld(T_SPAN_STATUS, b"")
# The status of every span until one is set: a light span's, and its encoding's shortcut.
UNSET_STATUS = Status(StatusCode.UNSET)


def _encode_light_py(span: Any) -> bytes:
    """:func:`encode_span` of a light span (:class:`autotrace.light_span.LightSpan`), read
    from its state directly: the same bytes, without the ``ReadableSpan`` properties'
    calls and copies. The span's attributes are a plain dict (cached whole) until the app
    sets one; its events and links an empty tuple until the first."""
    ctx = span._context  # noqa: SLF001 - a SpanContext: (trace_id, span_id, is_remote, flags, state, valid)
    parent = span._parent  # noqa: SLF001
    name = span._name  # noqa: SLF001
    start = span._start_time  # noqa: SLF001
    end = span._end_time  # noqa: SLF001
    attributes = span._attributes  # noqa: SLF001
    trace_state = ctx[4]
    if type(attributes) is dict:
        encoded_attributes = _plain_attributes(attributes) if attributes else b""
    else:  # the SDK's BoundedAttributes, once the app set one
        encoded_attributes = _attributes(T_SPAN_ATTRIBUTES, attributes) if attributes else b""
        if attributes.dropped:
            encoded_attributes += T_SPAN_DROPPED_ATTRIBUTES + _varint(attributes.dropped)
    if name:
        name_bytes = name.encode("utf-8")
        n = len(name_bytes)
        name_field = T_SPAN_NAME + (_SMALL[n] if n < 0x80 else _varint(n)) + name_bytes
    else:
        name_field = b""
    head = b"".join(
        (
            b"\x0a\x10",  # trace_id, 16 bytes
            ctx[0].to_bytes(16, "big"),
            b"\x12\x08",  # span_id, 8 bytes
            ctx[1].to_bytes(8, "big"),
            _ld(T_SPAN_TRACE_STATE, _trace_state(trace_state).encode("utf-8")) if trace_state and _trace_state(trace_state) else b"",
            b"\x22\x08" + parent[1].to_bytes(8, "big") if parent else b"",  # parent_span_id, 8 bytes
            name_field,
            _KIND_BY_VALUE[span._kind._value_],  # noqa: SLF001 - not a dict look-up: an Enum's hash is a Python call
            T_SPAN_START + _pack_fixed64(start) if start else b"",
            T_SPAN_END + _pack_fixed64(end) if end else b"",
            encoded_attributes,
        )
    )
    events = span._events  # noqa: SLF001
    links = span._links  # noqa: SLF001
    if events or links or type(events) is not tuple or type(links) is not tuple:
        # Events or links (or their bounded lists): the general way, from the property on.
        body = head + _span_tail(span, parent)
    else:
        status = span._status  # noqa: SLF001
        body = b"".join(
            (
                head,
                _STATUS_UNSET if status is UNSET_STATUS else _status(status),
                _FLAGS_REMOTE if parent is not None and parent[2] else _FLAGS_LOCAL,
            )
        )
    n = len(body)
    return T_SS_SPANS + (_SMALL[n] if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7)) if n < 0x4000 else _varint(n)) + body


def _load_speedups() -> Any:
    """The compiled encoder (autotrace/_speedups.c), configured; None when not built here
    (or hidden: ``sys.modules["autotrace._speedups"] = None``), or when it refuses this SDK."""
    try:
        _speedups = import_module("autotrace._speedups")
    except ImportError:
        return None
    from opentelemetry.trace import SpanContext, SpanKind
    from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

    from .propagation.tracecontext import W3CTraceState

    try:
        _speedups.configure(
            SpanContext,
            DEFAULT_TRACE_STATE,
            UNSET_STATUS,
            Status,
            tuple((kind, _KIND[kind]) for kind in SpanKind),
            tuple((code, code.value) for code in StatusCode),
            _encode_light_py,
            # Trace states whose members (a plain dict, in the order items() gives) C reads.
            ((TraceState, "_dict"), (W3CTraceState, "_members")),
        )
    except Exception:  # noqa: BLE001 - an SDK of another layout: the Python way
        return None
    return _speedups


speedups = _load_speedups()
# Whether the light span's encoding (and the queue's light end) is the compiled one.
COMPILED = speedups is not None

if speedups is not None:
    # The C encoder for the common case (a plain attribute dict, no events, links or
    # trace state); it calls _encode_light_py for anything else. The same bytes either way.
    encode_light = speedups.encode_light
else:
    encode_light = _encode_light_py


# How the export thread lets request threads run while it encodes a batch: a pause of
# PAUSE_S after every PAUSE_EVERY spans (about 100 us of work). A thread holding the GIL
# gives it up only every 5 ms (sys.getswitchinterval) when another asks for it, so a
# request thread would wait up to that long behind a batch (hundreds of spans, some
# milliseconds of work): the p99 latency of a busy server. A pause long enough for the
# waiting thread to take the GIL bounds that wait to one slice; ``sleep(0)`` would not,
# as the thread that releases the GIL usually takes it back first. (The agent's own
# export encodes each span when it ends, see :mod:`autotrace.span_queue`: its batches
# are joined, not encoded, and need no pause.)
PAUSE_EVERY = 16
PAUSE_S = 0.0001


def encode_span(span: Any) -> bytes:
    """One span's ``ScopeSpans.spans`` field (tag, length, ``Span`` message), as the SDK encodes it.

    :func:`encode_request` joins such fields, with the span's resource and scope, into
    the request :func:`encode_spans` makes of the same spans.
    """
    return _span(span)


def encode_request(entries: Iterable[tuple[Any, Any, bytes]]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of encoded spans.

    ``entries``: (resource, instrumentation scope, :func:`encode_span`'s bytes) of each span,
    in order. Spans are grouped by resource, then by instrumentation scope, in order of
    first appearance, with the SDK's notion of equal resources and scopes (``==``).
    """
    if speedups is not None and type(entries) is list and entries:
        # The usual batch, one resource and one scope object: its spans joined in C.
        resource, scope, _ = entries[0]
        joined = speedups.join_spans(entries, resource, scope)
        if joined is not None:
            head, tail = _resource_parts(resource)
            scope_head, scope_tail = _scope_parts(scope or None)
            return _ld(T_REQUEST_RESOURCE_SPANS, head + _ld(T_RS_SCOPE_SPANS, scope_head + joined + scope_tail) + tail)
    # resource object id -> its group; distinct but equal objects share a group
    by_id: dict[int, dict[Any, list[bytes]]] = {}
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    scope_lists: dict[tuple[int, int], list[bytes]] = {}
    for resource, scope, encoded in entries:
        scope = scope or None
        key = (id(resource), id(scope))
        spans_out = scope_lists.get(key)
        if spans_out is None:
            group = by_id.get(id(resource))
            if group is None:
                group = groups.get(resource)
                if group is None:
                    group = groups[resource] = {}
                by_id[id(resource)] = group
            spans_out = group.get(scope)
            if spans_out is None:
                spans_out = group[scope] = []
            scope_lists[key] = spans_out
        spans_out.append(encoded)
    out = []
    for resource, scopes in groups.items():
        head, tail = _resource_parts(resource)
        body = [head]
        for scope, encoded_spans in scopes.items():
            scope_head, scope_tail = _scope_parts(scope)
            body.append(_ld(T_RS_SCOPE_SPANS, scope_head + b"".join(encoded_spans) + scope_tail))
        body.append(tail)
        out.append(_ld(T_REQUEST_RESOURCE_SPANS, b"".join(body)))
    return b"".join(out)


def _entries(spans: Sequence[Any], pause: bool) -> Iterator[tuple[Any, Any, bytes]]:
    countdown = PAUSE_EVERY if pause else -1
    for span in spans:
        countdown -= 1
        if countdown == 0:
            sleep(PAUSE_S)
            countdown = PAUSE_EVERY
        yield span.resource, span.instrumentation_scope, _span(span)


def encode_spans(spans: Sequence[Any], pause: bool = False) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` of ``spans``, as the SDK encoder makes it.

    With ``pause`` (an export thread encoding a batch), it pauses briefly every
    ``PAUSE_EVERY`` spans.
    """
    return encode_request(_entries(spans, pause))
