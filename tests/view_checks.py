"""Helpers of the viewer's tests: OTLP JSON documents and protobuf requests made by hand."""

from __future__ import annotations

import base64
import json
import os
import time


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def span(
    trace_id: str,
    name: str = "op",
    parent: str = "",
    span_id: str | None = None,
    kind: int = 2,
    start_ns: int | None = None,
    duration_ns: int = 1_000_000,
    status: int = 0,
    attributes: dict | None = None,
    **extra,
) -> dict:
    """One OTLP JSON span; attributes given as plain Python values."""
    start_ns = time.time_ns() if start_ns is None else start_ns
    doc = {
        "traceId": trace_id,
        "spanId": span_id or new_span_id(),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(start_ns + duration_ns),
        "attributes": kvs(attributes or {}),
        "status": {"code": status} if status else {},
    }
    if parent:
        doc["parentSpanId"] = parent
    doc.update(extra)
    return doc


def value(item) -> dict:
    if isinstance(item, bool):
        return {"boolValue": item}
    if isinstance(item, int):
        return {"intValue": str(item)}
    if isinstance(item, float):
        return {"doubleValue": item}
    if isinstance(item, (list, tuple)):
        return {"arrayValue": {"values": [value(v) for v in item]}}
    return {"stringValue": str(item)}


def kvs(attributes: dict) -> list:
    return [{"key": k, "value": value(v)} for k, v in attributes.items()]


def document(spans: list, service: str = "svc", resource: dict | None = None, scope: str = "tests") -> dict:
    """An ExportTraceServiceRequest in OTLP JSON with one resource and one scope."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": kvs({"service.name": service, **(resource or {})})},
                "scopeSpans": [{"scope": {"name": scope, "version": "1.0"}, "spans": spans}],
            }
        ]
    }


def body(spans: list, **kwargs) -> bytes:
    return json.dumps(document(spans, **kwargs)).encode()


def protobuf(spans: list, **kwargs) -> bytes:
    """The same request serialized as protobuf (through the proto classes' JSON parser)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    doc = document(spans, **kwargs)
    # The protobuf JSON parser reads ids as base64: convert the OTLP JSON hex ids.
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for field in ("traceId", "spanId", "parentSpanId"):
                    if s.get(field):
                        s[field] = base64.b64encode(bytes.fromhex(s[field])).decode()
    return json_format.ParseDict(doc, ExportTraceServiceRequest()).SerializeToString()
