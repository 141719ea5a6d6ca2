"""The viewer's span store: SQLite from the standard library, in WAL mode.

One writer (a lock around one connection) commits each batch in one transaction before the
receiver answers, so an acknowledged batch survives ``kill -9``. Readers use connections of
their own (WAL lets them read while a batch is written); ``:memory:`` has one connection, so
there every access takes the lock.

Tables, shaped for the searches of the UI and the Jaeger API:

* ``spans``: one row a span; attributes, events and links as OTLP JSON; the resource and
  scope by id into ``resources`` and ``scopes`` (each distinct one stored once). A rowid
  table with a unique (trace, span) index: a batch's rows are appended, and only the small
  index entries land at the random places trace ids lead to (measured: keyed by trace id,
  a batch of 512 spans wrote 3.8 MB to the WAL, now 2.5 MB). A store made before, whose
  ``spans`` is keyed by (trace, span) without rowid, is used as it is: same columns, same
  queries, without the gain.
* ``traces``: one row a trace, recomputed from its spans when a batch touches it: start,
  end, span and error counts, the root's service and name (the earliest span when the root
  never arrived) and when the trace was last received, which retention orders by.
* ``span_attrs``: (key, value, trace) for every scalar attribute of a span or its resource,
  once a trace: the ``key=value`` search on any span of a trace is one index look-up.
  It has no index by trace (measured: a second index cost 15% of the write time);
  retention recomputes a dropped trace's rows from its spans and deletes them by key.
  A store made before drops that index when opened.
* ``operations``: (service, name, kind) seen, for the service and operation lists.

Retention drops the traces received longest ago, whole: by age (``retention_days``) and by
span count (``max_spans``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..patching import unwrapped
from .otlp import SpanRecord

ERROR = 2  # OTLP STATUS_CODE_ERROR
MAX_INDEXED_VALUE = 1024  # longer attribute values are stored but not indexed for search
WRITER_CACHE_KIB = 64 * 1024  # the writer connection's page cache
WAL_CHECKPOINT_PAGES = 10_000
_AGE_CHECK_EVERY_S = 60.0
_CHUNK = 500  # ids per "IN (...)" statement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS scopes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    status_message TEXT NOT NULL,
    trace_state TEXT NOT NULL,
    flags INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    links TEXT NOT NULL,
    resource_id INTEGER NOT NULL,
    scope_id INTEGER NOT NULL,
    UNIQUE (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_service ON spans (service, name, duration_ns);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    span_count INTEGER NOT NULL,
    error_count INTEGER NOT NULL,
    root_service TEXT NOT NULL,
    root_name TEXT NOT NULL,
    received_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_received ON traces (received_ns);
CREATE TABLE IF NOT EXISTS span_attrs (
    key TEXT NOT NULL, value TEXT NOT NULL, trace_id TEXT NOT NULL,
    PRIMARY KEY (key, value, trace_id)
) WITHOUT ROWID;
DROP INDEX IF EXISTS span_attrs_trace;
CREATE TABLE IF NOT EXISTS operations (
    service TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,
    PRIMARY KEY (service, name, kind)
) WITHOUT ROWID;
"""

_SPAN_COLUMNS = (
    "s.trace_id, s.span_id, s.parent_span_id, s.service, s.name, s.kind, s.start_ns, s.end_ns, "
    "s.status_code, s.status_message, s.trace_state, s.flags, s.attributes, s.events, s.links, "
    "r.body, c.body"
)

_UPDATE_TRACE = """
INSERT OR REPLACE INTO traces
    (trace_id, start_ns, end_ns, span_count, error_count, root_service, root_name, received_ns)
SELECT ?1, min(start_ns), max(end_ns), count(*), sum(status_code = 2),
    (SELECT service FROM spans WHERE trace_id = ?1 ORDER BY parent_span_id != '', start_ns LIMIT 1),
    (SELECT name FROM spans WHERE trace_id = ?1 ORDER BY parent_span_id != '', start_ns LIMIT 1),
    ?2
FROM spans WHERE trace_id = ?1
"""


@dataclass
class TraceQuery:
    """A trace search; every given condition must hold. Times and durations in ns."""

    service: str = ""
    operation: str = ""
    tags: dict = field(default_factory=dict)  # key -> text value, on any span of the trace
    errors_only: bool = False
    start_ns: int | None = None  # of the trace
    end_ns: int | None = None
    min_duration_ns: int | None = None  # of a span matching service/operation
    max_duration_ns: int | None = None
    trace_ids: Sequence[str] = ()
    limit: int = 20
    offset: int = 0


@dataclass
class TraceSummary:
    trace_id: str
    root_service: str
    root_name: str
    start_ns: int
    duration_ns: int
    span_count: int
    error_count: int
    services: list


class Store:
    """Spans in SQLite (``path`` a file, or ``":memory:"`` to keep nothing)."""

    def __init__(self, path: str, retention_days: float | None = None, max_spans: int | None = None) -> None:
        self.path = path
        self.memory = path == ":memory:"
        self.retention_days = retention_days
        self.max_spans = max_spans
        self._lock = threading.Lock()
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (it is in the WAL
        # file); only an OS crash or power loss can lose the last transactions.
        self._writer.execute("PRAGMA synchronous=NORMAL")
        # Measured (benchmarks/view.py): the span and attribute indexes take random inserts,
        # which with SQLite's 2 MB default cache re-read pages at every batch; and a
        # checkpoint every 1,000 WAL pages ran at almost every commit. 64 MB of cache for
        # the writer, and a checkpoint every 10,000 pages (about 40 MB of WAL), write faster.
        self._writer.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        self._writer.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self._writer.executescript(_SCHEMA)
        self._readers: list[sqlite3.Connection] = []
        self._resource_ids: dict[str, int] = {}
        self._scope_ids: dict[str, int] = {}
        self._span_total = self._writer.execute("SELECT total(span_count) FROM traces").fetchone()[0]
        self._span_total = int(self._span_total)
        self._age_checked = 0.0
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # sqlite3.connect as it was before the agent's hook wrapped it (a viewer run in a
        # traced process): the store's own queries are never traced.
        connection = unwrapped(sqlite3.connect)(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    # -- writing ----------------------------------------------------------------------

    def write(self, records: Sequence[SpanRecord]) -> int:
        """Store a batch in one transaction; returns when it is committed. Spans already
        stored (same trace and span id) are kept as they were."""
        if not records:
            return 0
        now = time.time_ns()
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            db = self._writer
            touched = sorted({r.trace_id for r in records})
            # The records of one request share their resource and scope objects: each is
            # encoded and looked up once a batch (ids of objects alive for the whole call).
            resource_ids: dict[int, int] = {}
            scope_ids: dict[int, int] = {}

            def resource_id(obj: dict) -> int:
                found = resource_ids[id(obj)] = self._id_of(db, "resources", self._resource_ids, obj)
                return found

            def scope_id(obj: dict) -> int:
                found = scope_ids[id(obj)] = self._id_of(db, "scopes", self._scope_ids, obj)
                return found

            db.execute("BEGIN IMMEDIATE")
            try:
                before = self._counts(db, touched)
                db.executemany(
                    "INSERT OR IGNORE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            r.trace_id, r.span_id, r.parent_span_id, r.service, r.name, r.kind,
                            r.start_ns, r.end_ns, max(0, r.end_ns - r.start_ns), r.status_code,
                            r.status_message, r.trace_state, r.flags,
                            _dumps(r.attributes), _dumps(r.events), _dumps(r.links),
                            resource_ids.get(id(r.resource)) or resource_id(r.resource),
                            scope_ids.get(id(r.scope)) or scope_id(r.scope),
                        )
                        for r in records
                    ],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO span_attrs VALUES (?,?,?)",
                    _index_rows(
                        (r.trace_id, r.attributes, id(r.resource), r.resource.get("attributes", ())) for r in records
                    ),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO operations VALUES (?,?,?)",
                    {(r.service, r.name, r.kind) for r in records},
                )
                db.executemany(_UPDATE_TRACE, [(trace_id, now) for trace_id in touched])
                after = self._counts(db, touched)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._resource_ids.clear()  # ids of the rolled-back rows are void
                self._scope_ids.clear()
                raise
            self._span_total += sum(after.values()) - sum(before.values())
            self._retain_locked(now)
        return len(records)

    @staticmethod
    def _counts(db: sqlite3.Connection, trace_ids: list[str]) -> dict[str, int]:
        counts = {}
        for chunk in _chunks(trace_ids):
            marks = ",".join("?" * len(chunk))
            counts.update(db.execute(f"SELECT trace_id, span_count FROM traces WHERE trace_id IN ({marks})", chunk))
        return counts

    @staticmethod
    def _id_of(db: sqlite3.Connection, table: str, cache: dict[str, int], obj: dict) -> int:
        body = _dumps_sorted(obj)
        found = cache.get(body)
        if found is None:
            db.execute(f"INSERT OR IGNORE INTO {table} (body) VALUES (?)", (body,))
            found = cache[body] = db.execute(f"SELECT id FROM {table} WHERE body = ?", (body,)).fetchone()[0]
        return found

    def retain(self) -> int:
        """Apply retention now; returns how many traces were dropped."""
        with self._lock:
            self._age_checked = 0.0
            return self._retain_locked(time.time_ns())

    def _retain_locked(self, now_ns: int) -> int:
        doomed: list[str] = []
        db = self._writer
        if self.retention_days is not None and time.monotonic() - self._age_checked >= min(
            _AGE_CHECK_EVERY_S, self.retention_days * 86400 / 10
        ):
            self._age_checked = time.monotonic()
            cutoff = now_ns - int(self.retention_days * 86400e9)
            doomed += [row[0] for row in db.execute("SELECT trace_id FROM traces WHERE received_ns < ?", (cutoff,))]
        if self.max_spans is not None and self._span_total > self.max_spans:
            excess = self._span_total - self.max_spans
            seen = set(doomed)
            for trace_id, count in db.execute("SELECT trace_id, span_count FROM traces ORDER BY received_ns, start_ns"):
                if excess <= 0:
                    break
                if trace_id not in seen:
                    doomed.append(trace_id)
                    excess -= count
        if doomed:
            self._drop_locked(doomed)
        return len(doomed)

    def _drop_locked(self, trace_ids: list[str]) -> None:
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            dropped = 0
            resources: dict[int, list] = {}
            for chunk in _chunks(trace_ids):
                marks = ",".join("?" * len(chunk))
                dropped += db.execute(f"SELECT total(span_count) FROM traces WHERE trace_id IN ({marks})", chunk).fetchone()[0]
                spans = db.execute(
                    f"SELECT trace_id, attributes, resource_id FROM spans WHERE trace_id IN ({marks})", chunk
                ).fetchall()
                for resource in {row[2] for row in spans} - resources.keys():
                    body = db.execute("SELECT body FROM resources WHERE id = ?", (resource,)).fetchone()[0]
                    resources[resource] = json.loads(body).get("attributes", [])
                rows = _index_rows(
                    (trace_id, json.loads(attributes), resource, resources[resource])
                    for trace_id, attributes, resource in spans
                )
                db.executemany("DELETE FROM span_attrs WHERE key = ? AND value = ? AND trace_id = ?", rows)
                for table in ("spans", "traces"):
                    db.execute(f"DELETE FROM {table} WHERE trace_id IN ({marks})", chunk)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._span_total -= int(dropped)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for connection in self._readers:
                connection.close()
            self._readers.clear()
            if not self.memory:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._writer.close()

    # -- reading ----------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable = ()) -> list[tuple]:
        if self.memory:
            with self._lock:
                return self._writer.execute(sql, tuple(params)).fetchall()
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            connection = self._readers.pop() if self._readers else None
        if connection is None:
            connection = self._connect()
        try:
            return connection.execute(sql, tuple(params)).fetchall()
        finally:
            with self._lock:
                if self._closed or len(self._readers) >= 8:
                    connection.close()
                else:
                    self._readers.append(connection)

    @property
    def span_count(self) -> int:
        return self._span_total

    def services(self) -> list[str]:
        return [row[0] for row in self._read("SELECT DISTINCT service FROM operations ORDER BY service")]

    def operations(self, service: str, kind: int | None = None) -> list[tuple[str, int]]:
        sql = "SELECT name, kind FROM operations WHERE service = ?"
        params: list = [service]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return self._read(sql + " ORDER BY name, kind", params)

    def search(self, query: TraceQuery) -> tuple[list[str], int]:
        """Ids of the matching traces, newest first (one page), and how many match."""
        where, params = ["1"], []
        if query.start_ns is not None:
            where.append("t.start_ns >= ?")
            params.append(query.start_ns)
        if query.end_ns is not None:
            where.append("t.start_ns <= ?")
            params.append(query.end_ns)
        if query.errors_only:
            where.append("t.error_count > 0")
        if query.trace_ids:
            where.append(f"t.trace_id IN ({','.join('?' * len(query.trace_ids))})")
            params.extend(t.lower() for t in query.trace_ids)
        span_conditions, span_params = [], []
        for column, value, op in (
            ("service", query.service, "="),
            ("name", query.operation, "="),
            ("duration_ns", query.min_duration_ns, ">="),
            ("duration_ns", query.max_duration_ns, "<="),
        ):
            if value not in (None, ""):
                span_conditions.append(f"{column} {op} ?")
                span_params.append(value)
        if span_conditions and (query.tags or query.trace_ids):
            # A narrower set (an attribute's traces, given ids) drives: each of its traces is
            # checked through the spans' primary key ("+" keeps the planner off the service
            # index, which would scan every span of the service for each trace).
            checks = " AND ".join(f"+s.{condition}" for condition in span_conditions)
            where.append(f"EXISTS (SELECT 1 FROM spans s WHERE s.trace_id = t.trace_id AND {checks})")
            params.extend(span_params)
        elif span_conditions:
            where.append(f"t.trace_id IN (SELECT trace_id FROM spans WHERE {' AND '.join(span_conditions)})")
            params.extend(span_params)
        for key, value in query.tags.items():
            where.append("t.trace_id IN (SELECT trace_id FROM span_attrs WHERE key = ? AND value = ?)")
            params.extend((key, value))
        condition = " AND ".join(where)
        total = self._read(f"SELECT count(*) FROM traces t WHERE {condition}", params)[0][0]
        rows = self._read(
            f"SELECT t.trace_id FROM traces t WHERE {condition} ORDER BY t.start_ns DESC, t.trace_id LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        )
        return [row[0] for row in rows], total

    def spans(self, trace_ids: Sequence[str]) -> list[SpanRecord]:
        """Every stored span of these traces, by trace then start time."""
        records = []
        for chunk in _chunks([t.lower() for t in trace_ids]):
            marks = ",".join("?" * len(chunk))
            rows = self._read(
                f"SELECT {_SPAN_COLUMNS} FROM spans s JOIN resources r ON r.id = s.resource_id "
                f"JOIN scopes c ON c.id = s.scope_id WHERE s.trace_id IN ({marks}) ORDER BY s.trace_id, s.start_ns",
                chunk,
            )
            records.extend(
                SpanRecord(*row[:12], json.loads(row[12]), json.loads(row[13]), json.loads(row[14]),
                           json.loads(row[15]), json.loads(row[16]))
                for row in rows
            )
        return records

    def summaries(self, trace_ids: Sequence[str]) -> list[TraceSummary]:
        """One summary a trace, in the order of ``trace_ids`` (unknown ids left out)."""
        found: dict[str, TraceSummary] = {}
        for chunk in _chunks(list(trace_ids)):
            marks = ",".join("?" * len(chunk))
            for row in self._read(
                "SELECT trace_id, root_service, root_name, start_ns, end_ns - start_ns, span_count, error_count "
                f"FROM traces WHERE trace_id IN ({marks})",
                chunk,
            ):
                found[row[0]] = TraceSummary(*row, services=[])
            for trace_id, service in self._read(
                f"SELECT DISTINCT trace_id, service FROM spans WHERE trace_id IN ({marks}) ORDER BY trace_id, service",
                chunk,
            ):
                found[trace_id].services.append(service)
        return [found[t] for t in trace_ids if t in found]

    def dependencies(self, start_ns: int, end_ns: int) -> list[tuple[str, str, int, int]]:
        """(caller, callee, calls, errors): a CLIENT or PRODUCER span and the SERVER or
        CONSUMER span it caused in another service, in the window."""
        return self._read(
            "SELECT c.service, s.service, count(*), sum(s.status_code = 2) FROM spans s "
            "JOIN spans c ON c.trace_id = s.trace_id AND c.span_id = s.parent_span_id "
            "WHERE s.kind IN (2, 5) AND c.kind IN (3, 4) AND c.service != s.service "
            "AND s.start_ns >= ? AND s.start_ns <= ? GROUP BY 1, 2 ORDER BY 1, 2",
            (start_ns, end_ns),
        )

    def durations(self, start_ns: int, end_ns: int) -> list[tuple[str, str, int, int]]:
        """(service, name, duration_ns, status_code) of the spans started in the window,
        ordered by service, name and duration (for per-operation percentiles)."""
        return self._read(
            "SELECT service, name, duration_ns, status_code FROM spans WHERE start_ns >= ? AND start_ns <= ? "
            "ORDER BY service, name, duration_ns",
            (start_ns, end_ns),
        )


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one a call
_dumps_sorted = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _dumps(value: object) -> str:
    return _encode(value) if value else "[]"  # events and links are mostly empty lists


def _chunks(items: list) -> Iterable[list]:
    for at in range(0, len(items), _CHUNK):
        yield items[at : at + _CHUNK]


def attribute_text(value: dict) -> str | None:
    """The text a ``key=value`` search matches a scalar OTLP JSON value against."""
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return "true" if value["boolValue"] else "false"
    if "intValue" in value:
        return value["intValue"]
    if "doubleValue" in value:
        return repr(value["doubleValue"]) if isinstance(value["doubleValue"], float) else str(value["doubleValue"])
    return None


def _index_rows(spans: Iterable[tuple[str, list, object, list]]) -> set[tuple[str, str, str]]:
    """The ``span_attrs`` rows of spans given as (trace id, attributes, resource identity,
    resource attributes): each scalar attribute of a span or its resource, once a trace."""
    rows = set()
    resources_done: set[tuple[object, str]] = set()
    for trace_id, attributes, resource, resource_attributes in spans:
        attribute_lists = [attributes]
        key = (resource, trace_id)
        if key not in resources_done:
            resources_done.add(key)
            attribute_lists.append(resource_attributes)
        for attribute_list in attribute_lists:
            for kv in attribute_list:
                text = attribute_text(kv["value"])
                if text is not None and len(text) <= MAX_INDEXED_VALUE:
                    rows.add((kv["key"], text, trace_id))
    return rows
