"""OTLP trace data in and out of the viewer's one span shape, :class:`SpanRecord`.

Both wire formats the receivers accept (protobuf, and the OTLP JSON mapping: hex ids, enum
numbers, 64-bit integers as strings) decode to the same records, whose attributes, events,
links, resource and scope are kept in the OTLP JSON form. That form is what the store keeps
and what :func:`encode_json` writes back, so a downloaded trace is the OTLP JSON that
``--import`` and the Collector's file exporter read.

Anything that does not fit the format raises :class:`BadData` with a short reason: the
receiver answers 400 (or INVALID_ARGUMENT) and stores nothing of that request.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Iterable, NamedTuple

UNKNOWN_SERVICE = "unknown_service"
MAX_DEPTH = 16  # nesting of array/kvlist attribute values

_KINDS = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


# A span's start and end are stored as SQLite integers (signed 64-bit): a time at or past
# 2**63 ns (the year 2262) is refused at decode, as bad data (a 4xx the sender does not
# retry), not at the insert (a 503 it would retry for ever).
TIME_LIMIT_NS = 2**63
_TIME_MESSAGE = "span start and end times must be under 2**63 ns since the epoch"


class BadData(ValueError):
    """A request that is not valid OTLP trace data (the whole request is refused)."""


class SpanRecord(NamedTuple):
    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex
    parent_span_id: str  # 16 lowercase hex, "" for a root
    service: str  # the resource's service.name
    name: str
    kind: int  # OTLP SpanKind number
    start_ns: int
    end_ns: int
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    trace_state: str
    flags: int
    attributes: list  # OTLP JSON KeyValue dicts (a dict of plain values: see decode_protobuf)
    events: list  # OTLP JSON Event dicts
    links: list  # OTLP JSON Link dicts
    resource: dict  # OTLP JSON Resource
    scope: dict  # OTLP JSON InstrumentationScope


# -- protobuf ---------------------------------------------------------------------------


def decode_protobuf(body: bytes, plain: bool = False) -> list[SpanRecord]:
    """The spans of a serialized ``ExportTraceServiceRequest``.

    With ``plain`` (the receivers, whose records go to :meth:`Store.write` only), a span's
    attributes that are all strings, integers, booleans and finite doubles under distinct
    keys come as one dict ``{key: value}``, the form the store keeps, instead of the OTLP JSON
    list: measured, building and then converting the list was a quarter of a batch's work.
    """
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BadData(f"malformed protobuf: {exc}") from None
    return records_of_request(request, plain)


def records_of_request(request: Any, plain: bool = False) -> list[SpanRecord]:
    """The spans of a parsed ``ExportTraceServiceRequest`` message (HTTP and gRPC)."""
    span_attributes = _pb_plain if plain else _pb_attributes
    records = []
    trace_ids: dict[bytes, str] = {}  # the spans of a trace share its id's text
    for resource_spans in request.resource_spans:
        resource = {"attributes": _pb_attributes(resource_spans.resource.attributes)}
        if resource_spans.resource.dropped_attributes_count:
            resource["droppedAttributesCount"] = resource_spans.resource.dropped_attributes_count
        service = _service_of(resource["attributes"])
        for scope_spans in resource_spans.scope_spans:
            pb_scope = scope_spans.scope
            scope = {"name": pb_scope.name, "version": pb_scope.version}
            if pb_scope.attributes:
                scope["attributes"] = _pb_attributes(pb_scope.attributes)
            for span in scope_spans.spans:
                raw = span.trace_id
                trace_id = trace_ids.get(raw)
                if trace_id is None:
                    trace_id = trace_ids[raw] = _pb_id(raw, 16, "traceId")
                status = span.status
                if span.start_time_unix_nano >= TIME_LIMIT_NS or span.end_time_unix_nano >= TIME_LIMIT_NS:
                    raise BadData(_TIME_MESSAGE)
                records.append(
                    SpanRecord(
                        trace_id,
                        _pb_id(span.span_id, 8, "spanId"),
                        _pb_id(span.parent_span_id, 8, "parentSpanId") if span.parent_span_id else "",
                        service,
                        span.name,
                        span.kind,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        status.code,
                        status.message,
                        span.trace_state,
                        span.flags,
                        span_attributes(span.attributes),
                        [
                            _compact(
                                {
                                    "timeUnixNano": str(event.time_unix_nano),
                                    "name": event.name,
                                    "attributes": _pb_attributes(event.attributes),
                                }
                            )
                            for event in span.events
                        ] if span.events else [],
                        [
                            _compact(
                                {
                                    "traceId": _pb_id(link.trace_id, 16, "link traceId"),
                                    "spanId": _pb_id(link.span_id, 8, "link spanId"),
                                    "traceState": link.trace_state,
                                    "attributes": _pb_attributes(link.attributes),
                                }
                            )
                            for link in span.links
                        ] if span.links else [],
                        resource,
                        scope,
                    )
                )
    return records


def _pb_id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size or not any(raw):
        raise BadData(f"{what} must be {size} bytes, not all zero (got {len(raw)} bytes)")
    return raw.hex()


def _pb_attributes(kvs: Iterable[Any]) -> list:
    # Measured: most values are strings; they skip the _pb_value call (a third of decoding).
    out = []
    for kv in kvs:
        value = kv.value
        if value.WhichOneof("value") == "string_value":
            out.append({"key": kv.key, "value": {"stringValue": value.string_value}})
        else:
            out.append({"key": kv.key, "value": _pb_value(value, 0)})
    return out


def _pb_plain(kvs: Any) -> dict | list:
    """Attributes as ``{key: plain value}``, or the OTLP JSON list when that cannot hold them."""
    out = {}
    for kv in kvs:
        value = kv.value
        which = value.WhichOneof("value")
        if which == "string_value":
            out[kv.key] = value.string_value
        elif which == "int_value":
            out[kv.key] = value.int_value
        elif which == "bool_value":
            out[kv.key] = value.bool_value
        elif which == "double_value" and math.isfinite(value.double_value):
            out[kv.key] = value.double_value
        else:
            return _pb_attributes(kvs)
    return out if len(out) == len(kvs) else _pb_attributes(kvs)


def _pb_value(value: Any, depth: int) -> dict:
    which = value.WhichOneof("value")
    if which == "string_value":
        return {"stringValue": value.string_value}
    if which == "int_value":
        return {"intValue": str(value.int_value)}
    if which == "bool_value":
        return {"boolValue": value.bool_value}
    if which == "double_value":
        return {"doubleValue": _json_double(value.double_value)}
    if which == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode("ascii")}
    if depth >= MAX_DEPTH:
        raise BadData("attribute values nested too deep")
    if which == "array_value":
        return {"arrayValue": {"values": [_pb_value(v, depth + 1) for v in value.array_value.values]}}
    if which == "kvlist_value":
        return {
            "kvlistValue": {
                "values": [{"key": kv.key, "value": _pb_value(kv.value, depth + 1)} for kv in value.kvlist_value.values]
            }
        }
    return {}


def _json_double(number: float) -> Any:
    """A double as proto3 JSON writes it: NaN and the infinities as strings."""
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


def _compact(obj: dict) -> dict:
    """Leave out empty fields, as the OTLP JSON encoders do."""
    return {k: v for k, v in obj.items() if v not in ("", [], None, "0") or k == "name"}


def _service_of(attributes: list) -> str:
    for kv in attributes:
        if kv["key"] == "service.name":
            value = kv["value"].get("stringValue")
            if value:
                return value
    return UNKNOWN_SERVICE


# -- OTLP JSON --------------------------------------------------------------------------


def decode_json(body: bytes | str) -> list[SpanRecord]:
    """The spans of an ``ExportTraceServiceRequest`` in the OTLP JSON mapping."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadData(f"malformed JSON: {exc}") from None
    return records_of_document(document)


def records_of_document(document: Any) -> list[SpanRecord]:
    """The spans of a decoded OTLP JSON document (``{"resourceSpans": [...]}``)."""
    records = []
    for resource_spans in _list(_object(document, "request"), "resourceSpans"):
        resource_spans = _object(resource_spans, "resourceSpans")
        raw_resource = _object(resource_spans.get("resource") or {}, "resource")
        resource = {"attributes": _json_attributes(raw_resource, "resource")}
        dropped = _uint(raw_resource.get("droppedAttributesCount", 0), "droppedAttributesCount")
        if dropped:
            resource["droppedAttributesCount"] = dropped
        service = _service_of(resource["attributes"])
        for scope_spans in _list(resource_spans, "scopeSpans"):
            scope_spans = _object(scope_spans, "scopeSpans")
            raw_scope = _object(scope_spans.get("scope") or {}, "scope")
            scope = {"name": _str(raw_scope, "name"), "version": _str(raw_scope, "version")}
            if raw_scope.get("attributes"):
                scope["attributes"] = _json_attributes(raw_scope, "scope")
            for span in _list(scope_spans, "spans"):
                span = _object(span, "span")
                status = _object(span.get("status") or {}, "status")
                parent = span.get("parentSpanId") or ""
                records.append(
                    SpanRecord(
                        _hex_id(span.get("traceId"), 16, "traceId"),
                        _hex_id(span.get("spanId"), 8, "spanId"),
                        _hex_id(parent, 8, "parentSpanId") if parent else "",
                        service,
                        _str(span, "name"),
                        _enum(span.get("kind", 0), _KINDS, "kind"),
                        _time(span.get("startTimeUnixNano", 0), "startTimeUnixNano"),
                        _time(span.get("endTimeUnixNano", 0), "endTimeUnixNano"),
                        _enum(status.get("code", 0), _STATUS_CODES, "status.code"),
                        _str(status, "message"),
                        _str(span, "traceState"),
                        _uint(span.get("flags", 0), "flags"),
                        _json_attributes(span, "span"),
                        [_json_event(event) for event in _list(span, "events")],
                        [_json_link(link) for link in _list(span, "links")],
                        resource,
                        scope,
                    )
                )
    return records


def _json_event(event: Any) -> dict:
    event = _object(event, "event")
    return _compact(
        {
            "timeUnixNano": str(_uint(event.get("timeUnixNano", 0), "event timeUnixNano")),
            "name": _str(event, "name"),
            "attributes": _json_attributes(event, "event"),
        }
    )


def _json_link(link: Any) -> dict:
    link = _object(link, "link")
    return _compact(
        {
            "traceId": _hex_id(link.get("traceId"), 16, "link traceId"),
            "spanId": _hex_id(link.get("spanId"), 8, "link spanId"),
            "traceState": _str(link, "traceState"),
            "attributes": _json_attributes(link, "link"),
        }
    )


def _json_attributes(holder: dict, what: str, depth: int = 0) -> list:
    attributes = []
    for kv in _list(holder, "attributes" if depth == 0 else "values"):
        kv = _object(kv, f"{what} attribute")
        key = kv.get("key")
        if not isinstance(key, str):
            raise BadData(f"{what} attribute without a string key")
        attributes.append({"key": key, "value": _json_value(kv.get("value") or {}, depth)})
    return attributes


def _json_value(value: Any, depth: int) -> dict:
    value = _object(value, "attribute value")
    if not value:
        return {}
    if len(value) != 1:
        raise BadData(f"an attribute value has one field, not {sorted(value)}")
    ((field, item),) = value.items()
    if field == "stringValue" and isinstance(item, str):
        return value
    if field == "boolValue" and isinstance(item, bool):
        return value
    if field == "intValue":
        return {"intValue": str(_int(item, "intValue"))}
    if field == "doubleValue":
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return {"doubleValue": _json_double(float(item))}
        if item in ("NaN", "Infinity", "-Infinity"):
            return value
    if field == "bytesValue" and isinstance(item, str):
        try:
            base64.b64decode(item, validate=True)
        except binascii.Error:
            raise BadData("bytesValue is not base64") from None
        return value
    if depth >= MAX_DEPTH and field in ("arrayValue", "kvlistValue"):
        raise BadData("attribute values nested too deep")
    if field == "arrayValue":
        holder = _object(item, "arrayValue")
        return {"arrayValue": {"values": [_json_value(v, depth + 1) for v in _list(holder, "values")]}}
    if field == "kvlistValue":
        holder = _object(item, "kvlistValue")
        return {"kvlistValue": {"values": _json_attributes(holder, "kvlist", depth + 1)}}
    raise BadData(f"bad attribute value field {field!r}")


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadData(f"{what} must be a JSON object")
    return value


def _list(holder: dict, field: str) -> list:
    return _field(holder, field, list, "a JSON array")


def _str(holder: dict, field: str) -> str:
    return _field(holder, field, str, "a string")


def _field(holder: dict, field: str, kind: type, what: str) -> Any:
    """``holder[field]`` if of type ``kind``, empty if absent or null."""
    value = holder.get(field)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise BadData(f"{field} must be {what}")
    return value


def _int(value: Any, what: str) -> int:
    """A 64-bit integer, which OTLP JSON writes as a string (numbers are accepted too)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadData(f"{what} must be an integer or a decimal string")
    try:
        number = int(value)
    except ValueError:
        raise BadData(f"{what} must be an integer or a decimal string") from None
    if not -(2**63) <= number < 2**64:
        raise BadData(f"{what} out of range")
    return number


def _uint(value: Any, what: str) -> int:
    number = _int(value, what)
    if number < 0:
        raise BadData(f"{what} must not be negative")
    return number


def _time(value: Any, what: str) -> int:
    number = _uint(value, what)
    if number >= TIME_LIMIT_NS:
        raise BadData(_TIME_MESSAGE)
    return number


def _enum(value: Any, names: dict, what: str) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    raise BadData(f"bad {what}: {value!r}")


def _hex_id(value: Any, size: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise BadData(f"{what} must be {2 * size} hex digits")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise BadData(f"{what} must be {2 * size} hex digits") from None
    if not any(raw):
        raise BadData(f"{what} must not be all zero")
    return value.lower()


def decode_file(text: str) -> list[SpanRecord]:
    """An OTLP JSON file: one document, or one document per line (the Collector's file exporter)."""
    try:
        return decode_json(text)
    except BadData as whole:
        records = []
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            raise whole
        for number, line in enumerate(lines, 1):
            try:
                records.extend(decode_json(line))
            except BadData as exc:
                raise BadData(f"line {number}: {exc}") from None
        return records


# -- out --------------------------------------------------------------------------------


def encode_json(records: Iterable[SpanRecord]) -> dict:
    """Records as one OTLP JSON document, grouped by resource and scope as they came."""
    groups: dict[str, dict] = {}
    scopes: dict[tuple[str, str], list] = {}
    for record in records:
        resource_key = json.dumps(record.resource, sort_keys=True)
        group = groups.get(resource_key)
        if group is None:
            group = groups[resource_key] = {"resource": record.resource, "scopeSpans": []}
        scope_key = (resource_key, json.dumps(record.scope, sort_keys=True))
        spans = scopes.get(scope_key)
        if spans is None:
            spans = scopes[scope_key] = []
            group["scopeSpans"].append({"scope": record.scope, "spans": spans})
        span = {
            "traceId": record.trace_id,
            "spanId": record.span_id,
            "traceState": record.trace_state,
            "parentSpanId": record.parent_span_id,
            "flags": record.flags,
            "name": record.name,
            "kind": record.kind,
            "startTimeUnixNano": str(record.start_ns),
            "endTimeUnixNano": str(record.end_ns),
            "attributes": record.attributes,
            "events": record.events,
            "links": record.links,
            "status": {k: v for k, v in (("code", record.status_code), ("message", record.status_message)) if v},
        }
        spans.append({k: v for k, v in span.items() if v not in ("", [], 0) or k in ("name", "status")})
    return {"resourceSpans": list(groups.values())}
