"""The viewer's SQLite store: batches, searches, retention of whole traces, reopening."""

from __future__ import annotations

import time

import pytest
from view_checks import body, kvs, new_span_id, new_trace_id, span

from autotrace.view.otlp import decode_json
from autotrace.view.store import Store, TraceQuery


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    store = Store(":memory:" if request.param == "memory" else str(tmp_path / "view.db"))
    yield store
    store.close()


def put(store: Store, spans: list, **kwargs) -> None:
    store.write(decode_json(body(spans, **kwargs)))


def trace(service: str = "front", start_ns: int | None = None, spans: int = 2, **root_kwargs) -> tuple[str, list]:
    trace_id, root = new_trace_id(), new_span_id()
    start_ns = start_ns or time.time_ns()
    out = [span(trace_id, "GET /", span_id=root, start_ns=start_ns, **root_kwargs)]
    out += [span(trace_id, f"child {i}", parent=root, kind=3, start_ns=start_ns + i + 1) for i in range(spans - 1)]
    return trace_id, out


def test_a_trace_across_batches_and_services_is_one_trace(store):
    trace_id, root = new_trace_id(), new_span_id()
    now = time.time_ns()
    put(store, [span(trace_id, "call", parent=root, kind=3, start_ns=now + 10)], service="front")
    summary, = store.summaries([trace_id])
    assert (summary.root_service, summary.root_name) == ("front", "call")  # the root has not arrived
    put(store, [span(trace_id, "GET /", span_id=root, start_ns=now, duration_ns=5000)], service="back")
    put(store, [span(trace_id, "GET /", span_id=root, start_ns=now, duration_ns=5000)], service="back")  # again
    summary, = store.summaries([trace_id])
    assert (summary.root_service, summary.root_name, summary.span_count) == ("back", "GET /", 2)
    assert summary.services == ["back", "front"]
    assert store.span_count == 2
    assert [r.name for r in store.spans([trace_id])] == ["GET /", "call"]
    assert store.services() == ["back", "front"]
    assert store.operations("front") == [("call", 3)]


def test_search_conditions(store):
    base = time.time_ns() - 10_000_000_000
    slow, spans = trace("shop", base, duration_ns=900_000_000, attributes={"http.route": "/cart", "user": 7})
    put(store, spans, service="shop")
    failed, spans = trace("shop", base + 1_000_000_000, status=2)
    put(store, spans, service="shop")
    other, spans = trace("ledger", base + 2_000_000_000)
    put(store, spans, service="ledger", resource={"deployment.environment": "dev"})

    def ids(**kwargs):
        found, total = store.search(TraceQuery(**kwargs))
        assert total == len(found)
        return found

    assert ids() == [other, failed, slow]  # newest first
    assert ids(service="shop") == [failed, slow]
    assert ids(service="shop", operation="child 0") == [failed, slow]
    assert ids(errors_only=True) == [failed]
    assert ids(min_duration_ns=500_000_000) == [slow]
    assert ids(service="shop", max_duration_ns=500_000_000) == [failed, slow]  # the children are short
    assert ids(tags={"http.route": "/cart"}) == [slow]
    assert ids(tags={"user": "7"}) == [slow]
    assert ids(tags={"deployment.environment": "dev"}) == [other]  # resource attributes too
    assert ids(tags={"http.route": "/cart", "user": "8"}) == []
    assert ids(start_ns=base + 500_000_000) == [other, failed]
    assert ids(end_ns=base + 500_000_000) == [slow]
    assert ids(trace_ids=[failed.upper()]) == [failed]
    page, total = store.search(TraceQuery(limit=1, offset=1))
    assert (page, total) == ([failed], 3)


def test_search_of_an_attribute_with_span_conditions(store):
    """An attribute (or trace id) with service, operation or duration conditions: one span
    of the trace must meet all of those, another may carry the attribute."""
    base = time.time_ns() - 10_000_000_000
    slow, spans = trace("shop", base, duration_ns=900_000_000, attributes={"user": 7})
    put(store, spans, service="shop")
    quick, spans = trace("shop", base + 1_000_000_000, duration_ns=1_000, attributes={"user": 7})
    put(store, spans, service="shop")
    elsewhere, spans = trace("ledger", base + 2_000_000_000, duration_ns=900_000_000, attributes={"user": 7})
    put(store, spans, service="ledger")

    def ids(**kwargs):
        found, total = store.search(TraceQuery(**kwargs))
        assert total == len(found)
        return found

    assert ids(tags={"user": "7"}) == [elsewhere, quick, slow]
    assert ids(tags={"user": "7"}, service="shop") == [quick, slow]
    assert ids(tags={"user": "7"}, service="shop", min_duration_ns=500_000_000) == [slow]
    assert ids(tags={"user": "7"}, min_duration_ns=500_000_000) == [elsewhere, slow]
    assert ids(tags={"user": "7"}, service="shop", operation="child 0") == [quick, slow]  # on another span
    assert ids(tags={"user": "7"}, service="shop", operation="GET /", max_duration_ns=5_000) == [quick]
    assert ids(tags={"user": "8"}, service="shop") == []
    assert ids(trace_ids=[slow, elsewhere], service="ledger") == [elsewhere]


def test_retention_by_span_count_drops_the_oldest_traces_whole(tmp_path):
    store = Store(str(tmp_path / "view.db"), max_spans=10)
    try:
        traces = []
        for _ in range(5):
            trace_id, spans = trace(spans=3)
            put(store, spans)
            traces.append(trace_id)
        # 15 spans over 10: the two oldest traces went, whole.
        assert store.span_count == 9
        found, total = store.search(TraceQuery())
        assert sorted(found) == sorted(traces[2:]) and total == 3
        assert store.spans(traces[:2]) == []
        assert all(len(store.spans([t])) == 3 for t in traces[2:])
        assert store.search(TraceQuery(tags={"user": "x"}))[1] == 0
    finally:
        store.close()


def test_retention_deletes_the_attribute_rows_of_dropped_traces(tmp_path):
    # span_attrs has no index by trace: retention recomputes a trace's rows from its spans.
    store = Store(str(tmp_path / "view.db"), max_spans=4)
    try:
        traces = []
        for n in range(4):
            trace_id = new_trace_id()
            spans = [span(trace_id, "GET /", attributes={"user": f"u{n}", "n": n, "ok": True, "big": "x" * 2000})]
            spans.append(span(trace_id, "child", parent=spans[0]["spanId"], attributes={"user": f"u{n}", "pi": 3.5}))
            put(store, spans, resource={"host.name": f"h{n % 2}"})
            traces.append(trace_id)
        kept = {row[0] for row in store._writer.execute("SELECT DISTINCT tn FROM span_attrs")}
        stored = dict(store._writer.execute("SELECT tn, trace_id FROM traces"))
        assert kept == stored.keys() and set(stored.values()) == set(traces[2:])
        assert store.search(TraceQuery(tags={"user": "u3"}))[0] == [traces[3]]
        assert store.search(TraceQuery(tags={"host.name": "h0"}))[0] == [traces[2]]
    finally:
        store.close()


# The layouts keyed by trace id (PRAGMA user_version 0): spans keyed by (trace, span) without
# rowid and span_attrs indexed by trace as first merged; then spans a rowid table.
_OLD_SPANS = (
    "CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL,"
    " service TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL, start_ns INTEGER NOT NULL,"
    " end_ns INTEGER NOT NULL, duration_ns INTEGER NOT NULL, status_code INTEGER NOT NULL,"
    " status_message TEXT NOT NULL, trace_state TEXT NOT NULL, flags INTEGER NOT NULL, attributes TEXT NOT NULL,"
    " events TEXT NOT NULL, links TEXT NOT NULL, resource_id INTEGER NOT NULL, scope_id INTEGER NOT NULL, {key}"
)
_OLD_REST = """
CREATE INDEX spans_service ON spans (service, name, duration_ns);
CREATE INDEX spans_start ON spans (start_ns);
CREATE TABLE resources (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);
CREATE TABLE scopes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);
CREATE TABLE traces (trace_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL, error_count INTEGER NOT NULL, root_service TEXT NOT NULL,
    root_name TEXT NOT NULL, received_ns INTEGER NOT NULL);
CREATE INDEX traces_start ON traces (start_ns);
CREATE INDEX traces_received ON traces (received_ns);
CREATE TABLE span_attrs (key TEXT NOT NULL, value TEXT NOT NULL, trace_id TEXT NOT NULL,
    PRIMARY KEY (key, value, trace_id)) WITHOUT ROWID;
CREATE TABLE operations (service TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,
    PRIMARY KEY (service, name, kind)) WITHOUT ROWID;
"""


def old_store(path: str, spans_key: str, attrs_index: bool) -> tuple[str, str]:
    """A store of a layout keyed by trace id holding two traces (user a, b); their ids."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute(_OLD_SPANS.format(key=spans_key))
    db.executescript(_OLD_REST + ("CREATE INDEX span_attrs_trace ON span_attrs (trace_id);" if attrs_index else ""))
    db.execute("""INSERT INTO resources VALUES (1, '{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}}]}')""")
    db.execute("""INSERT INTO scopes VALUES (1, '{"name":"s","version":""}')""")
    db.execute("INSERT INTO operations VALUES ('shop', 'GET /', 2)")
    ids = []
    for n, user in enumerate("ab"):
        trace_id, start = new_trace_id(), time.time_ns() + n
        attributes = f'[{{"key":"user","value":{{"stringValue":"{user}"}}}}]'
        for span_id, parent in (("1" * 16, ""), ("2" * 16, "1" * 16)):
            db.execute(
                "INSERT INTO spans VALUES (?,?,?,'shop','GET /',2,?,?,1000,0,'','',1,?,'[]','[]',1,1)",
                (trace_id, span_id, parent, start, start + 1000, attributes),
            )
        db.execute("INSERT INTO traces VALUES (?,?,?,2,0,'shop','GET /',?)", (trace_id, start, start + 1000, start))
        db.executemany("INSERT INTO span_attrs VALUES (?,?,?)", [("user", user, trace_id), ("service.name", "shop", trace_id)])
        ids.append(trace_id)
    db.commit()
    db.close()
    return ids[0], ids[1]


@pytest.mark.parametrize(
    "spans_key, attrs_index",
    [("PRIMARY KEY (trace_id, span_id)) WITHOUT ROWID", True), ("UNIQUE (trace_id, span_id))", False)],
    ids=["first", "rowid-spans"],
)
def test_a_store_of_an_earlier_layout_is_migrated_when_opened(tmp_path, spans_key, attrs_index):
    path = str(tmp_path / "view.db")
    first, second = old_store(path, spans_key, attrs_index)
    store = Store(path, max_spans=4)
    try:
        assert store._writer.execute("PRAGMA user_version").fetchone()[0] == 2
        names = {row[0] for row in store._writer.execute("SELECT name FROM sqlite_master")}
        assert "span_attrs_trace" not in names and not any(name.startswith("old_") for name in names)
        assert store.span_count == 4
        assert [(r.span_id, r.attributes) for r in store.spans([first])] == [
            ("1" * 16, [{"key": "user", "value": {"stringValue": "a"}}]),
            ("2" * 16, [{"key": "user", "value": {"stringValue": "a"}}]),
        ]
        assert store.search(TraceQuery(tags={"user": "b"}, service="shop"))[0] == [second]
        summary, = store.summaries([first])
        assert (summary.root_service, summary.span_count, summary.services) == ("shop", 2, ["shop"])
        # Written to after: the oldest trace goes whole, its attribute rows with it.
        third, spans = trace(spans=2, attributes={"user": "c"})
        put(store, spans, service="shop")
        assert store.span_count == 4 and store.spans([first]) == []
        assert store.search(TraceQuery(tags={"user": "a"}))[1] == 0
        assert store.search(TraceQuery(tags={"service.name": "shop"}))[0] == [third, second]
    finally:
        store.close()


def test_a_store_with_only_an_old_spans_table_opens(tmp_path):
    import sqlite3

    path = str(tmp_path / "view.db")
    old = sqlite3.connect(path)
    old.execute(_OLD_SPANS.format(key="PRIMARY KEY (trace_id, span_id)) WITHOUT ROWID"))
    old.close()
    store = Store(path, max_spans=3)
    try:
        first, spans = trace(spans=2, attributes={"user": "a"})
        put(store, spans)
        put(store, spans)  # the same spans again are kept once
        second, spans = trace(spans=2, attributes={"user": "b"})
        put(store, spans)
        assert store.span_count == 2 and store.spans([first]) == []
        assert store.search(TraceQuery(tags={"user": "b"}))[0] == [second]
    finally:
        store.close()


def test_retention_by_age_drops_traces_received_before_the_cutoff(tmp_path):
    store = Store(str(tmp_path / "view.db"), retention_days=1)
    try:
        old, spans = trace()
        put(store, spans)
        store._writer.execute("UPDATE traces SET received_ns = received_ns - 2 * 86400 * 1000000000 WHERE trace_id = ?", (old,))
        new, spans = trace()
        put(store, spans)
        assert store.retain() == 1
        assert store.search(TraceQuery())[0] == [new]
        assert store.spans([old]) == [] and store.span_count == 2
    finally:
        store.close()


def test_a_committed_batch_is_there_after_reopening(tmp_path):
    path = str(tmp_path / "view.db")
    store = Store(path)
    trace_id, spans = trace(spans=4)
    put(store, spans)
    store.close()
    again = Store(path, max_spans=100)
    try:
        assert len(again.spans([trace_id])) == 4 and again.span_count == 4
    finally:
        again.close()


def test_dependencies_and_durations(store):
    trace_id, root, client = new_trace_id(), new_span_id(), new_span_id()
    now = time.time_ns()
    put(store, [span(trace_id, "GET /", span_id=root, start_ns=now),
                span(trace_id, "GET back", span_id=client, parent=root, kind=3, start_ns=now + 1),
                span(trace_id, "inner", parent=root, kind=3, start_ns=now + 2)], service="front")
    put(store, [span(trace_id, "GET back", parent=client, kind=2, start_ns=now + 3, status=2)], service="back")
    assert store.dependencies(now - 1, now + 10) == [("front", "back", 1, 1)]
    assert store.dependencies(now + 10, now + 20) == []
    assert [row[:2] for row in store.durations(now - 1, now + 10)] == [
        ("back", "GET back"), ("front", "GET /"), ("front", "GET back"), ("front", "inner")]


def test_attributes_of_every_type_come_back_as_they_were_sent(store):
    # Plain values are stored as one JSON object, others as the OTLP JSON list: both read
    # back the same, and the scalar ones are found by a search.
    trace_id, root = new_trace_id(), new_span_id()
    plain = kvs({"s": "text", "i": -7, "b": False, "d": 2.5, "big": 2**62, "u": "ü \"q\""})
    mixed = plain + [
        {"key": "a", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "x"}]}}},
        {"key": "m", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": True}}]}}},
        {"key": "raw", "value": {"bytesValue": "AAE="}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "none", "value": {}},
    ]
    repeated = kvs({"k": "first"}) + kvs({"k": "second"})
    spans = [span(trace_id, "plain", span_id=root, attributes=None, start_ns=1_000)]
    spans[0]["attributes"] = plain
    for n, attributes in enumerate((mixed, repeated, [])):
        spans.append(span(trace_id, f"child {n}", parent=root, start_ns=1_001 + n))
        spans[-1]["attributes"] = attributes
    sent = decode_json(body(spans))
    store.write(sent)
    assert [r.attributes for r in store.spans([trace_id])] == [r.attributes for r in sent]
    assert [r.attributes for r in sent] == [plain, mixed, repeated, []]
    for key, text in (("i", "-7"), ("b", "false"), ("d", "2.5"), ("big", str(2**62)), ("u", 'ü "q"'), ("k", "second")):
        assert store.search(TraceQuery(tags={key: text}))[0] == [trace_id], key


def _write_at_once(store: Store, batches: list) -> tuple[list, list]:
    """Write the batches from one thread each while the writer's lock is held, so that all
    are queued, then let go: (what each call raised or None, the SQL the writer ran)."""
    import threading

    statements: list[str] = []
    outcomes: list = [None] * len(batches)
    seen: list = [None] * len(batches)

    def write(n: int) -> None:
        records = batches[n] if isinstance(batches[n], list) else decode_json(batches[n])
        try:
            store.write(records)
            seen[n] = len(store.spans([records[0].trace_id]))  # committed when it returned
        except Exception as exc:  # noqa: BLE001 - checked by the caller
            outcomes[n] = exc

    threads = [threading.Thread(target=write, args=(n,)) for n in range(len(batches))]
    with store._lock:
        store._writer.set_trace_callback(statements.append)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(store._queue) < len(batches) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(store._queue) == len(batches)
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    store._writer.set_trace_callback(None)
    return outcomes, seen, statements


def test_batches_waiting_together_are_committed_in_one_transaction(store):
    traces = [trace(spans=n + 2, attributes={"user": f"u{n}"}) for n in range(3)]
    outcomes, seen, statements = _write_at_once(store, [body(spans) for _, spans in traces])
    assert outcomes == [None] * 3 and seen == [2, 3, 4]
    assert statements.count("COMMIT") == 1
    assert store.span_count == 9
    for n, (trace_id, _) in enumerate(traces):
        assert store.search(TraceQuery(tags={"user": f"u{n}"}))[0] == [trace_id]
        summary, = store.summaries([trace_id])
        assert summary.span_count == n + 2


def test_a_trace_in_two_batches_of_one_group_is_one_trace(store):
    trace_id, spans = trace(spans=4)
    outcomes, seen, _ = _write_at_once(store, [body(spans[:2], service="a"), body(spans[1:], service="b")])
    assert outcomes == [None, None]
    summary, = store.summaries([trace_id])
    assert (summary.span_count, summary.root_service, summary.services) == (4, "a", ["a", "b"])
    assert store.span_count == 4 and len(store.search(TraceQuery())[0]) == 1


def test_a_batch_that_fails_in_a_group_fails_alone(store):
    # SQLite takes no integer past 2^63 - 1 (the decoders refuse such times: records made
    # here stand for any batch SQLite refuses): that batch fails alone, the receiver
    # answers 503, and the others waiting with it are committed.
    good, spans = trace(spans=2)
    bad, bad_spans = trace(spans=2)
    bad_records = [r._replace(start_ns=2**63, end_ns=2**63 + 1) for r in decode_json(body(bad_spans))]
    later, later_spans = trace(spans=3)
    outcomes, seen, statements = _write_at_once(store, [body(spans), bad_records, body(later_spans)])
    assert outcomes[0] is None and outcomes[2] is None and isinstance(outcomes[1], OverflowError)
    assert (seen[0], seen[2]) == (2, 3)
    assert store.spans([bad]) == [] and store.span_count == 5
    assert sorted(store.search(TraceQuery())[0]) == sorted([good, later])
    assert "ROLLBACK" in statements


def test_a_search_answers_while_a_batch_is_being_committed(tmp_path):
    # A file store's readers have connections of their own (WAL): a search does not wait
    # for the writer, which holds its lock for a whole group's transaction.
    import threading

    store = Store(str(tmp_path / "view.db"))
    try:
        trace_id, spans = trace(spans=2)
        put(store, spans)
        found: list = []
        with store._lock:  # as during a commit
            searcher = threading.Thread(target=lambda: found.append(store.search(TraceQuery())))
            searcher.start()
            searcher.join(10)
            assert not searcher.is_alive()
        assert found == [([trace_id], 1)]
    finally:
        store.close()


def test_a_span_sent_twice_in_one_batch_is_kept_as_first_sent(store):
    trace_id, root = new_trace_id(), new_span_id()
    put(store, [span(trace_id, "zeta", span_id=root), span(trace_id, "alpha", span_id=root)])
    assert [r.name for r in store.spans([trace_id])] == ["zeta"]
    summary, = store.summaries([trace_id])
    assert (summary.root_name, summary.span_count, store.span_count) == ("zeta", 1, 1)


def test_protobuf_decoded_for_the_store_reads_back_as_otlp_json(store):
    # The receivers decode protobuf straight to the stored form (a dict of plain values
    # where it can hold them): what comes back is what the OTLP JSON decoding gives.
    from autotrace.view.otlp import decode_protobuf
    from view_checks import protobuf

    trace_id, root = new_trace_id(), new_span_id()
    spans = [span(trace_id, "plain", span_id=root, start_ns=1_000,
                  attributes={"s": "text", "i": -7, "b": True, "d": 0.1, "big": -(2**63)})]
    for n, attributes in enumerate((
        kvs({"s": "x"}) + [{"key": "a", "value": {"arrayValue": {"values": [{"intValue": "1"}]}}}],
        kvs({"k": "first"}) + kvs({"k": "second"}),
        kvs({"nan": 1.0}) + [{"key": "inf", "value": {"doubleValue": "Infinity"}}],
        [],
    )):
        spans.append(span(trace_id, f"child {n}", parent=root, start_ns=1_001 + n))
        spans[-1]["attributes"] = attributes
    from_json = decode_json(body(spans))
    request = protobuf(spans)  # (makes the span dicts' ids base64)
    stored = decode_protobuf(request, plain=True)
    assert type(stored[0].attributes) is dict and all(type(r.attributes) is list for r in stored[1:4])
    store.write(stored)
    assert store.spans([trace_id]) == decode_protobuf(request) == from_json
    for key, text in (("i", "-7"), ("b", "true"), ("d", "0.1"), ("big", str(-(2**63))), ("s", "x"), ("k", "second")):
        assert store.search(TraceQuery(tags={key: text}))[0] == [trace_id], key


def test_two_stores_on_one_file_number_their_traces_apart(tmp_path):
    # Two viewers on the same file (each its own writer): neither reuses the other's numbers.
    path = str(tmp_path / "view.db")
    first, second = Store(path), Store(path)
    try:
        ids = []
        for store in (first, second, first, second):
            trace_id, spans = trace(spans=2, attributes={"user": f"u{len(ids)}"})
            put(store, spans)
            ids.append(trace_id)
        for store in (first, second):
            assert sorted(store.search(TraceQuery())[0]) == sorted(ids)
            assert all(len(store.spans([t])) == 2 for t in ids)
            assert store.search(TraceQuery(tags={"user": "u2"}))[0] == [ids[2]]
    finally:
        first.close()
        second.close()
