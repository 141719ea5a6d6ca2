"""The query API: Jaeger's HTTP API (``/api/...``, the JSON shapes Jaeger's UI and Grafana's
Jaeger data source read) and the viewer's own endpoints (``/api/autotrace/...``).

Spans become Jaeger spans as the Collector's OTLP-to-Jaeger translator maps them: times in
microseconds, the parent as the first ``CHILD_OF`` reference and links as ``FOLLOWS_FROM``,
the span kind, status and scope as tags (``span.kind``, ``otel.status_code``,
``otel.status_description``, ``error``, ``otel.scope.name``, ``otel.scope.version``), events
as logs with an ``event`` field, and each distinct resource as a process.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, unquote

from .otlp import SpanRecord, encode_json
from .store import Store, TraceQuery

KIND_NAMES = {0: "", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_KIND_NUMBERS = {name: number for number, name in KIND_NAMES.items() if name}
DEFAULT_LIMIT = 20
MAX_LIMIT = 1500
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")
_UNIT_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "μs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9, "d": 86400e9}


class BadRequest(ValueError):
    """A parameter the API cannot use (answered 400 with Jaeger's error shape)."""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


def parse_duration_ns(text: str) -> int:
    """A Go-style duration (``100ms``, ``1.5s``, ``1h30m``, ``250us``) in nanoseconds."""
    text = text.strip()
    at, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != at:
            break
        total += float(match.group(1)) * _UNIT_NS[match.group(2)]
        at = match.end()
    if not text or at != len(text):
        raise BadRequest(f"bad duration {text!r} (examples: 250us, 100ms, 1.5s, 1h)")
    return int(total)


def normalize_trace_id(text: str) -> str:
    """32 lowercase hex digits (Jaeger accepts ids without their leading zeros)."""
    text = text.strip().lower()
    if not text or len(text) > 32 or any(c not in "0123456789abcdef" for c in text):
        raise BadRequest(f"bad trace id {text!r}: up to 32 hex digits")
    return text.rjust(32, "0")


# -- Jaeger JSON ------------------------------------------------------------------------


def jaeger_value(value: dict) -> tuple[str, Any]:
    """(Jaeger tag type, value) of an OTLP JSON AnyValue."""
    if "stringValue" in value:
        return "string", value["stringValue"]
    if "boolValue" in value:
        return "bool", value["boolValue"]
    if "intValue" in value:
        return "int64", int(value["intValue"])
    if "doubleValue" in value:
        return "float64", value["doubleValue"]
    if "bytesValue" in value:
        return "binary", value["bytesValue"]  # base64, as Go writes a []byte
    if not value:
        return "string", ""
    return "string", json.dumps(plain_value(value), separators=(",", ":"))


def plain_value(value: dict) -> Any:
    """An OTLP JSON AnyValue as a plain JSON value (arrays and maps included)."""
    if "arrayValue" in value:
        return [plain_value(v) for v in value["arrayValue"].get("values", ())]
    if "kvlistValue" in value:
        return {kv["key"]: plain_value(kv.get("value", {})) for kv in value["kvlistValue"].get("values", ())}
    if "intValue" in value:
        return int(value["intValue"])
    return next(iter(value.values()), None)


def _kv(key: str, value: dict) -> dict:
    kind, item = jaeger_value(value)
    return {"key": key, "type": kind, "value": item}


def _tags(attributes: list) -> list:
    return [_kv(kv["key"], kv.get("value", {})) for kv in attributes]


def jaeger_span(record: SpanRecord, process_id: str) -> dict:
    references = []
    if record.parent_span_id:
        references.append({"refType": "CHILD_OF", "traceID": record.trace_id, "spanID": record.parent_span_id})
    for link in record.links:
        references.append({"refType": "FOLLOWS_FROM", "traceID": link["traceId"], "spanID": link["spanId"]})
    tags = _tags(record.attributes)
    if record.scope.get("name"):
        tags.append({"key": "otel.scope.name", "type": "string", "value": record.scope["name"]})
    if record.scope.get("version"):
        tags.append({"key": "otel.scope.version", "type": "string", "value": record.scope["version"]})
    if KIND_NAMES.get(record.kind):
        tags.append({"key": "span.kind", "type": "string", "value": KIND_NAMES[record.kind]})
    if record.status_code == 1:
        tags.append({"key": "otel.status_code", "type": "string", "value": "OK"})
    elif record.status_code == 2:
        tags = [tag for tag in tags if tag["key"] != "error"]  # ERROR's tag overrides the span's own
        tags.append({"key": "otel.status_code", "type": "string", "value": "ERROR"})
        tags.append({"key": "error", "type": "bool", "value": True})
    if record.status_message:
        tags.append({"key": "otel.status_description", "type": "string", "value": record.status_message})
    if record.trace_state:
        tags.append({"key": "w3c.tracestate", "type": "string", "value": record.trace_state})
    logs = []
    for event in record.events:
        fields = _tags(event.get("attributes", ()))
        if not any(f["key"] == "event" for f in fields):
            fields.insert(0, {"key": "event", "type": "string", "value": event.get("name", "")})
        logs.append({"timestamp": int(event.get("timeUnixNano", 0)) // 1000, "fields": fields})
    return {
        "traceID": record.trace_id,
        "spanID": record.span_id,
        "operationName": record.name,
        "references": references,
        "startTime": record.start_ns // 1000,
        "duration": max(0, record.end_ns - record.start_ns) // 1000,
        "tags": tags,
        "logs": logs,
        "processID": process_id,
        "warnings": None,
        "flags": 1,
    }


def jaeger_traces(records: Sequence[SpanRecord]) -> list[dict]:
    """Jaeger traces of records ordered by trace (as :meth:`Store.spans` returns them)."""
    traces: dict[str, dict] = {}
    processes: dict[str, dict[str, str]] = {}  # trace -> resource JSON -> process id
    for record in records:
        trace = traces.get(record.trace_id)
        if trace is None:
            trace = traces[record.trace_id] = {"traceID": record.trace_id, "spans": [], "processes": {}, "warnings": None}
            processes[record.trace_id] = {}
        ids = processes[record.trace_id]
        resource_key = json.dumps(record.resource, sort_keys=True)
        process_id = ids.get(resource_key)
        if process_id is None:
            process_id = ids[resource_key] = f"p{len(ids) + 1}"
            trace["processes"][process_id] = {
                "serviceName": record.service,
                "tags": [kv for kv in _tags(record.resource.get("attributes", ())) if kv["key"] != "service.name"],
            }
        trace["spans"].append(jaeger_span(record, process_id))
    return list(traces.values())


# -- the endpoints ----------------------------------------------------------------------


def _envelope(data: Any, total: int | None = None, limit: int = 0, offset: int = 0, status: int = 200) -> Response:
    body = {
        "data": data,
        "total": len(data) if total is None and isinstance(data, list) else (total or 0),
        "limit": limit,
        "offset": offset,
        "errors": None,
    }
    return Response(status, json.dumps(body, separators=(",", ":")).encode())


def error_response(status: int, message: str) -> Response:
    body = {"data": None, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": status, "msg": message}]}
    return Response(status, json.dumps(body, separators=(",", ":")).encode())


class QueryAPI:
    """Answers ``GET /api/...`` from a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._routes: list[tuple[re.Pattern, Callable[..., Response]]] = [
            (re.compile(r"/api/services"), self.services),
            (re.compile(r"/api/services/([^/]+)/operations"), self.service_operations),
            (re.compile(r"/api/operations"), self.operations),
            (re.compile(r"/api/traces"), self.traces),
            (re.compile(r"/api/traces/([^/]+)"), self.trace),
            (re.compile(r"/api/dependencies"), self.dependencies),
            (re.compile(r"/api/autotrace/stats"), self.stats),
            (re.compile(r"/api/autotrace/summaries"), self.summaries),
            (re.compile(r"/api/autotrace/traces/([^/]+)/otlp"), self.otlp),
        ]

    def handle(self, path: str, query_string: str) -> Response:
        params = parse_qs(query_string, keep_blank_values=True)
        for pattern, handler in self._routes:
            match = pattern.fullmatch(path.rstrip("/") or "/")
            if match:
                try:
                    return handler(params, *(unquote(group) for group in match.groups()))
                except BadRequest as exc:
                    return error_response(400, str(exc))
        return error_response(404, f"no such endpoint: {path}")

    def services(self, params: dict) -> Response:
        return _envelope(self.store.services())

    def service_operations(self, params: dict, service: str) -> Response:
        return _envelope(sorted({name for name, _ in self.store.operations(service)}))

    def operations(self, params: dict) -> Response:
        service = _one(params, "service")
        if not service:
            raise BadRequest("parameter 'service' is required")
        kind_name = _one(params, "spanKind")
        if kind_name and kind_name not in _KIND_NUMBERS:
            raise BadRequest(f"bad spanKind {kind_name!r}")
        rows = self.store.operations(service, _KIND_NUMBERS[kind_name] if kind_name else None)
        return _envelope([{"name": name, "spanKind": KIND_NAMES.get(kind, "")} for name, kind in rows])

    def traces(self, params: dict) -> Response:
        query = trace_query(params)
        ids, total = self.store.search(query)
        found = {trace["traceID"]: trace for trace in jaeger_traces(self.store.spans(ids))}
        return _envelope([found[i] for i in ids if i in found], total, query.limit, query.offset)

    def trace(self, params: dict, trace_id: str) -> Response:
        records = self.store.spans([normalize_trace_id(trace_id)])
        if not records:
            return error_response(404, "trace not found")
        return _envelope(jaeger_traces(records))

    def summaries(self, params: dict) -> Response:
        query = trace_query(params)
        ids, total = self.store.search(query)
        data = [
            {
                "traceID": s.trace_id,
                "rootService": s.root_service,
                "rootOperation": s.root_name,
                "startTime": s.start_ns // 1000,
                "duration": s.duration_ns // 1000,
                "spanCount": s.span_count,
                "services": s.services,
                "errors": s.error_count,
            }
            for s in self.store.summaries(ids)
        ]
        return _envelope(data, total, query.limit, query.offset)

    def otlp(self, params: dict, trace_id: str) -> Response:
        trace_id = normalize_trace_id(trace_id)
        records = self.store.spans([trace_id])
        if not records:
            return error_response(404, "trace not found")
        return Response(
            200,
            json.dumps(encode_json(records), separators=(",", ":")).encode(),
            headers={"Content-Disposition": f'attachment; filename="trace-{trace_id}.json"'},
        )

    def dependencies(self, params: dict) -> Response:
        # Jaeger's parameters here are in milliseconds.
        end_ms = _int(params, "endTs", int(time.time() * 1000))
        lookback_ms = _int(params, "lookback", 86_400_000)
        rows = self.store.dependencies((end_ms - lookback_ms) * 1_000_000, end_ms * 1_000_000)
        return _envelope(
            [{"parent": parent, "child": child, "callCount": calls, "errorCount": errors or 0}
             for parent, child, calls, errors in rows]
        )

    def stats(self, params: dict) -> Response:
        start_ns, end_ns = _window(params, default_lookback="1h")
        data: list[dict] = []
        group: list[int] = []
        errors = 0
        last = None
        for service, name, duration, status in [*self.store.durations(start_ns, end_ns), (None, None, 0, 0)]:
            if (service, name) != last and last is not None:
                data.append(
                    {
                        "service": last[0],
                        "operation": last[1],
                        "count": len(group),
                        "errors": errors,
                        "p50": _percentile(group, 50) // 1000,
                        "p95": _percentile(group, 95) // 1000,
                        "p99": _percentile(group, 99) // 1000,
                    }
                )
                group, errors = [], 0
            last = (service, name)
            group.append(duration)
            errors += status == 2
        return Response(200, json.dumps({"data": data}, separators=(",", ":")).encode())


def trace_query(params: dict) -> TraceQuery:
    """A :class:`TraceQuery` from ``/api/traces`` parameters (Jaeger's, plus offset and traceID)."""
    query = TraceQuery(
        service=_one(params, "service"),
        operation=_one(params, "operation"),
        limit=min(max(_int(params, "limit", DEFAULT_LIMIT) or DEFAULT_LIMIT, 1), MAX_LIMIT),
        offset=max(_int(params, "offset", 0), 0),
        trace_ids=[normalize_trace_id(t) for t in params.get("traceID", ()) if t],
    )
    tags: dict = {}
    for text in params.get("tags", ()):
        if not text:
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            raise BadRequest("tags must be a JSON object of strings") from None
        if not isinstance(obj, dict):
            raise BadRequest("tags must be a JSON object of strings")
        tags.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()})
    for text in params.get("tag", ()):  # Jaeger's other form: tag=key:value
        key, sep, value = text.partition(":")
        if not sep:
            raise BadRequest(f"bad tag {text!r}: key:value")
        tags[key] = value
    if "error" in tags:
        query.errors_only = tags.pop("error") == "true"
    query.tags = tags
    if _one(params, "start") or _one(params, "lookback") or _one(params, "end"):
        query.start_ns, query.end_ns = _window(params, default_lookback=None)
    if _one(params, "minDuration"):
        query.min_duration_ns = parse_duration_ns(_one(params, "minDuration"))
    if _one(params, "maxDuration"):
        query.max_duration_ns = parse_duration_ns(_one(params, "maxDuration"))
    return query


def _window(params: dict, default_lookback: str | None) -> tuple[int | None, int | None]:
    """(start, end) in ns from ``start``/``end`` (us) or ``lookback`` (a duration, before end)."""
    end_us = _int(params, "end", 0) or None
    start_us = _int(params, "start", 0) or None
    end_ns = end_us * 1000 if end_us else None
    if start_us:
        return start_us * 1000, end_ns
    lookback = _one(params, "lookback") or default_lookback
    if lookback and lookback != "custom":
        anchor = end_ns or time.time_ns()
        return anchor - parse_duration_ns(lookback), end_ns if end_ns else anchor
    return None, end_ns


def _percentile(sorted_values: list[int], percent: int) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(1, -(-percent * len(sorted_values) // 100))
    return sorted_values[rank - 1]


def _one(params: dict, name: str) -> str:
    values = params.get(name)
    return values[-1] if values else ""


def _int(params: dict, name: str, default: int) -> int:
    text = _one(params, name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"parameter {name!r} must be an integer, not {text!r}") from None

