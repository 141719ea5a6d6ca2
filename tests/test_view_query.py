"""The Jaeger query API and the viewer's own endpoints, on a store, without HTTP."""

from __future__ import annotations

import json
import time
from urllib.parse import urlencode

import pytest
from view_checks import body, new_span_id, new_trace_id, span

from autotrace.view.otlp import decode_json
from autotrace.view.query import BadRequest, QueryAPI, normalize_trace_id, parse_duration_ns
from autotrace.view.store import Store


@pytest.fixture
def api():
    store = Store(":memory:")
    yield QueryAPI(store)
    store.close()


def get(api: QueryAPI, path: str, status: int = 200, **params) -> dict:
    response = api.handle(path, urlencode(params, doseq=True))
    assert response.status == status, response.body
    return json.loads(response.body)


def shop_trace(api: QueryAPI) -> tuple[str, str, str, int]:
    trace_id, root, client = new_trace_id(), new_span_id(), new_span_id()
    now = time.time_ns() // 1000 * 1000
    api.store.write(decode_json(body([
        span(trace_id, "GET /cart", span_id=root, start_ns=now, duration_ns=3_000_000,
             attributes={"http.route": "/cart", "n": 2, "ok": True, "ratio": 0.5, "list": ["a", 1]}),
        span(trace_id, "GET /stock", span_id=client, parent=root, kind=3, start_ns=now + 1000, status=2,
             events=[{"timeUnixNano": str(now + 2000), "name": "exception",
                      "attributes": [{"key": "exception.message", "value": {"stringValue": "boom"}}]}],
             links=[{"traceId": "ab" * 16, "spanId": "cd" * 8}], traceState="k=v"),
    ], service="front", resource={"host.name": "h1"})))
    api.store.write(decode_json(body([
        span(trace_id, "GET /stock", parent=client, kind=2, start_ns=now + 1500, status=1),
    ], service="stock")))
    return trace_id, root, client, now


def test_services_and_operations(api):
    shop_trace(api)
    assert get(api, "/api/services") == {"data": ["front", "stock"], "total": 2, "limit": 0, "offset": 0, "errors": None}
    assert get(api, "/api/services/front/operations")["data"] == ["GET /cart", "GET /stock"]
    assert get(api, "/api/operations", service="front", spanKind="client")["data"] == [
        {"name": "GET /stock", "spanKind": "client"}]


def test_a_trace_in_jaeger_json_field_by_field(api):
    trace_id, root, client, now = shop_trace(api)
    reply = get(api, f"/api/traces/{trace_id}")
    assert (reply["total"], reply["errors"]) == (1, None)
    (trace,) = reply["data"]
    assert set(trace) == {"traceID", "spans", "processes", "warnings"}
    assert trace["processes"] == {
        "p1": {"serviceName": "front", "tags": [{"key": "host.name", "type": "string", "value": "h1"}]},
        "p2": {"serviceName": "stock", "tags": []},
    }
    first, second, third = trace["spans"]
    assert first == {
        "traceID": trace_id, "spanID": root, "operationName": "GET /cart", "references": [],
        "startTime": now // 1000, "duration": 3000,
        "tags": [
            {"key": "http.route", "type": "string", "value": "/cart"},
            {"key": "n", "type": "int64", "value": 2},
            {"key": "ok", "type": "bool", "value": True},
            {"key": "ratio", "type": "float64", "value": 0.5},
            {"key": "list", "type": "string", "value": '["a",1]'},
            {"key": "otel.scope.name", "type": "string", "value": "tests"},
            {"key": "otel.scope.version", "type": "string", "value": "1.0"},
            {"key": "span.kind", "type": "string", "value": "server"},
        ],
        "logs": [], "processID": "p1", "warnings": None, "flags": 1,
    }
    assert second["references"] == [
        {"refType": "CHILD_OF", "traceID": trace_id, "spanID": root},
        {"refType": "FOLLOWS_FROM", "traceID": "ab" * 16, "spanID": "cd" * 8},
    ]
    assert second["tags"][-4:] == [
        {"key": "span.kind", "type": "string", "value": "client"},
        {"key": "otel.status_code", "type": "string", "value": "ERROR"},
        {"key": "error", "type": "bool", "value": True},
        {"key": "w3c.tracestate", "type": "string", "value": "k=v"},
    ]
    assert second["logs"] == [{"timestamp": now // 1000 + 2, "fields": [
        {"key": "event", "type": "string", "value": "exception"},
        {"key": "exception.message", "type": "string", "value": "boom"}]}]
    assert third["processID"] == "p2"
    assert {"key": "otel.status_code", "type": "string", "value": "OK"} in third["tags"]


def test_missing_and_bad_trace_ids(api):
    assert get(api, f"/api/traces/{new_trace_id()}", 404) == {
        "data": None, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": 404, "msg": "trace not found"}]}
    assert get(api, "/api/traces/xyz", 400)["errors"][0]["code"] == 400
    assert normalize_trace_id("ABC") == "0" * 29 + "abc"


def test_search_parameters(api):
    trace_id, *_ = shop_trace(api)
    other, *_ = shop_trace(api)
    assert [t["traceID"] for t in get(api, "/api/traces", service="front")["data"]] == [other, trace_id]
    reply = get(api, "/api/traces", service="front", limit=1, offset=1)
    assert ([t["traceID"] for t in reply["data"]], reply["total"], reply["limit"], reply["offset"]) == ([trace_id], 2, 1, 1)
    assert len(get(api, "/api/traces", tags=json.dumps({"error": "true", "http.route": "/cart"}))["data"]) == 2
    assert get(api, "/api/traces", tags='{"http.route": "/nope"}')["data"] == []
    assert get(api, "/api/traces", tag="http.route:/cart", minDuration="2ms", lookback="1h")["total"] == 2
    assert get(api, "/api/traces", minDuration="1s")["total"] == 0
    assert get(api, "/api/traces", traceID=[trace_id])["total"] == 1
    assert get(api, "/api/traces", minDuration="fast", status=400)["errors"][0]["msg"].startswith("bad duration")
    summaries = get(api, "/api/autotrace/summaries", service="stock")
    assert summaries["total"] == 2
    first = summaries["data"][0]
    assert {k: first[k] for k in ("traceID", "rootService", "rootOperation", "spanCount", "services", "errors")} == {
        "traceID": other, "rootService": "front", "rootOperation": "GET /cart", "spanCount": 3,
        "services": ["front", "stock"], "errors": 1}
    assert first["duration"] == 3000


def test_dependencies_stats_and_the_otlp_download(api):
    trace_id, *_ = shop_trace(api)
    assert get(api, "/api/dependencies", endTs=int(time.time() * 1000) + 1000, lookback=3_600_000)["data"] == [
        {"parent": "front", "child": "stock", "callCount": 1, "errorCount": 0}]
    stats = get(api, "/api/autotrace/stats", lookback="1h")["data"]
    assert [(s["service"], s["operation"], s["count"], s["errors"]) for s in stats] == [
        ("front", "GET /cart", 1, 0), ("front", "GET /stock", 1, 1), ("stock", "GET /stock", 1, 0)]
    assert stats[0]["p50"] == stats[0]["p99"] == 3000
    response = api.handle(f"/api/autotrace/traces/{trace_id}/otlp", "")
    assert response.headers["Content-Disposition"] == f'attachment; filename="trace-{trace_id}.json"'
    assert len(decode_json(response.body)) == 3
    assert get(api, "/api/nothing", 404)["errors"][0]["code"] == 404


@pytest.mark.parametrize("text, ns", [("250us", 250_000), ("100ms", 100_000_000), ("1.5s", 1_500_000_000),
                                      ("1h30m", 5_400_000_000_000), ("2µs", 2000)])
def test_durations(text, ns):
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "5", "ms", "1x", "1s2"])
def test_bad_durations(text):
    with pytest.raises(BadRequest):
        parse_duration_ns(text)
