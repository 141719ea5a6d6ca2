"""OTLP decoding (protobuf and the OTLP JSON mapping) and encoding of the viewer."""

from __future__ import annotations

import json

import pytest
from view_checks import body, document, new_span_id, new_trace_id, protobuf, span

from autotrace.view.otlp import BadData, decode_file, decode_json, decode_protobuf, encode_json


def test_protobuf_and_json_decode_to_the_same_records():
    trace_id, root = new_trace_id(), new_span_id()
    spans = [
        span(trace_id, "GET /x", span_id=root, attributes={"http.route": "/x", "n": 3, "ok": True, "f": 1.5}),
        span(trace_id, "SELECT", parent=root, kind=3, status=2,
             events=[{"timeUnixNano": "5", "name": "exception", "attributes": [{"key": "a", "value": {"stringValue": "b"}}]}]),
    ]
    from_json = decode_json(body(spans, service="shop"))
    from_pb = decode_protobuf(protobuf(spans, service="shop"))
    assert from_json == from_pb
    first, second = from_json
    assert (first.trace_id, first.span_id, first.parent_span_id, first.service) == (trace_id, root, "", "shop")
    assert {kv["key"]: kv["value"] for kv in first.attributes}["n"] == {"intValue": "3"}
    assert (second.kind, second.status_code, second.parent_span_id) == (3, 2, root)
    assert second.events[0]["name"] == "exception"
    assert first.scope == {"name": "tests", "version": "1.0"}


def test_json_accepts_enum_names_numbers_as_strings_and_upper_case_hex():
    trace_id = new_trace_id().upper()
    doc = document([span(trace_id, kind="SPAN_KIND_CLIENT", status=0, startTimeUnixNano=1000, endTimeUnixNano="2000",
                         attributes={})])
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = [{"key": "i", "value": {"intValue": 7}}]
    (record,) = decode_json(json.dumps(doc))
    assert (record.trace_id, record.kind, record.start_ns, record.end_ns) == (trace_id.lower(), 3, 1000, 2000)
    assert record.attributes == [{"key": "i", "value": {"intValue": "7"}}]


@pytest.mark.parametrize(
    "change",
    [
        {"traceId": "abc"},
        {"traceId": "0" * 32},
        {"spanId": "12345678"},
        {"parentSpanId": "zz" * 8},
        {"startTimeUnixNano": "soon"},
        {"endTimeUnixNano": str(2**63)},
        {"kind": "SPAN_KIND_WHATEVER"},
        {"attributes": [{"key": "k", "value": {"intValue": "x"}}]},
        {"attributes": [{"key": "k", "value": {"stringValue": 1}}]},
        {"links": [{"traceId": "00", "spanId": "11" * 8}]},
    ],
)
def test_json_that_does_not_fit_is_refused(change):
    doc = document([{**span(new_trace_id()), **change}])
    with pytest.raises(BadData):
        decode_json(json.dumps(doc))


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"resourceSpans": 3}', b"[" * 100000, b"\xff\xfe"])
def test_malformed_json_is_refused(raw):
    with pytest.raises(BadData):
        decode_json(raw)


def test_malformed_protobuf_and_wrong_id_lengths_are_refused():
    with pytest.raises(BadData):
        decode_protobuf(b"\x0a\xff\xff\xff\xff\x0f")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(trace_id=b"\x01" * 8, span_id=b"\x02" * 8)
    with pytest.raises(BadData, match="traceId must be 16 bytes"):
        decode_protobuf(request.SerializeToString())


@pytest.mark.parametrize("start_ns, duration_ns", [(2**63, 5), (2**63 - 10, 20)])
def test_times_sqlite_cannot_hold_are_refused_at_decode(start_ns, duration_ns):
    # Past 2**63 ns an insert would fail (a 503, retried by the sender for ever): bad data instead.
    with pytest.raises(BadData, match=r"2\*\*63"):
        decode_protobuf(protobuf([span(new_trace_id(), start_ns=start_ns, duration_ns=duration_ns)]))
    with pytest.raises(BadData, match=r"2\*\*63"):
        decode_json(body([span(new_trace_id(), start_ns=start_ns, duration_ns=duration_ns)]))


def test_the_last_time_sqlite_holds_is_accepted():
    (record,) = decode_protobuf(protobuf([span(new_trace_id(), start_ns=2**63 - 10, duration_ns=9)]))
    assert record.end_ns == 2**63 - 1


def test_deeply_nested_values_are_refused():
    nested: dict = {"stringValue": "x"}
    for _ in range(40):
        nested = {"arrayValue": {"values": [nested]}}
    doc = document([span(new_trace_id())])
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = [{"key": "deep", "value": nested}]
    with pytest.raises(BadData):
        decode_json(json.dumps(doc))


def test_encode_json_is_read_back_as_the_same_records():
    trace_id = new_trace_id()
    spans = [span(trace_id, "a", attributes={"x": [1, 2]}, links=[{"traceId": new_trace_id(), "spanId": new_span_id()}]),
             span(trace_id, "b", status=2)]
    records = decode_json(body(spans, service="one")) + decode_json(body([span(trace_id, "c")], service="two"))
    encoded = encode_json(records)
    assert [rs["resource"]["attributes"][0]["value"]["stringValue"] for rs in encoded["resourceSpans"]] == ["one", "two"]
    assert decode_json(json.dumps(encoded)) == records


def test_a_file_is_one_document_or_one_document_a_line():
    one, two = body([span(new_trace_id())]).decode(), body([span(new_trace_id())]).decode()
    assert len(decode_file(one)) == 1
    assert len(decode_file(one + "\n" + two + "\n")) == 2
    with pytest.raises(BadData, match="line 2"):
        decode_file(one + "\n{oops\n")
