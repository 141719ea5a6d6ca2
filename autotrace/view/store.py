"""The viewer's span store: SQLite from the standard library, in WAL mode.

One writer (a lock around one connection) commits each batch in one transaction before the
receiver answers, so an acknowledged batch survives ``kill -9``. Readers use connections of
their own (WAL lets them read while a batch is written); ``:memory:`` has one connection, so
there every access takes the lock.

Tables, shaped for the searches of the UI and the Jaeger API, and so that a batch mostly
appends: every table but ``traces`` refers to a trace by its number ``tn``, given in order
of arrival, not by its random id (measured: keyed by trace id, a 512-span batch wrote 1 to
4 MB of scattered index pages to the WAL, more as the store grew):

* ``traces``: one row a trace, numbered (``tn``), with a unique index on its id: start,
  end, span and error counts, the root's service and name (the earliest span when the root
  never arrived) and when the trace was last received, which retention orders by. A new
  trace's row is computed from its batch; a trace that had spans is recomputed from them.
* ``spans``: one row a span (unique by trace number and span id); its attributes as one
  JSON object of plain values when each is a string, integer, bool or finite double under
  distinct keys (half the text of OTLP JSON), else as the OTLP JSON list; events and links
  as OTLP JSON; the resource and scope by id into ``resources`` and ``scopes`` (each
  distinct one stored once).
* ``span_attrs``: (key, value, trace number) for every scalar attribute of a span or its
  resource, once a trace: the ``key=value`` search on any span of a trace is one index
  look-up. Retention recomputes a dropped trace's rows from its spans and deletes them by key.
* ``operations``: (service, name, kind) seen, for the service and operation lists.

A store of the earlier layouts (keyed by trace id; ``PRAGMA user_version`` 0) is migrated
in one transaction when opened, then vacuumed.

Retention drops the traces received longest ago, whole: by age (``retention_days``) and by
span count (``max_spans``).

Writing is a group commit (:meth:`Store.write`): each request's batch is made ready outside
the writer's lock, and every batch waiting when the lock is free goes in one transaction.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import operator
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
SCHEMA_VERSION = 2  # PRAGMA user_version; 0 is the layout keyed by trace id
MULTI_ROW_MAX = 256  # rows a statement of Store._insert
GROUP_MAX_SPANS = 16_384  # spans committed in one transaction at most (several requests' batches)
_AGE_CHECK_EVERY_S = 60.0
_CHUNK = 500  # ids per "IN (...)" statement
_TN_SPAN = operator.itemgetter(0, 1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS scopes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS traces (
    tn INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL UNIQUE,
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
CREATE TABLE IF NOT EXISTS spans (
    tn INTEGER NOT NULL,
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
    UNIQUE (tn, span_id)
);
CREATE INDEX IF NOT EXISTS spans_service ON spans (service, name, tn, duration_ns);
CREATE INDEX IF NOT EXISTS spans_start ON spans (start_ns);
CREATE TABLE IF NOT EXISTS span_attrs (
    key TEXT NOT NULL, value TEXT NOT NULL, tn INTEGER NOT NULL,
    PRIMARY KEY (key, value, tn)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS operations (
    service TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,
    PRIMARY KEY (service, name, kind)
) WITHOUT ROWID;
"""

# A store keyed by trace id (user_version 0): its tables are renamed, the current schema
# made, the rows copied over with their trace's number, and the old tables dropped.
_OLD_INDEXES = ("spans_service", "spans_start", "traces_start", "traces_received", "span_attrs_trace")
_MIGRATE = """
INSERT INTO traces (trace_id, start_ns, end_ns, span_count, error_count, root_service, root_name, received_ns)
    SELECT trace_id, start_ns, end_ns, span_count, error_count, root_service, root_name, received_ns
    FROM old_traces ORDER BY received_ns, start_ns;
INSERT OR IGNORE INTO spans
    SELECT t.tn, s.span_id, s.parent_span_id, s.service, s.name, s.kind, s.start_ns, s.end_ns, s.duration_ns,
        s.status_code, s.status_message, s.trace_state, s.flags, s.attributes, s.events, s.links,
        s.resource_id, s.scope_id
    FROM old_spans s JOIN traces t ON t.trace_id = s.trace_id ORDER BY t.tn;
INSERT OR IGNORE INTO span_attrs
    SELECT a.key, a.value, t.tn FROM old_span_attrs a JOIN traces t ON t.trace_id = a.trace_id
    ORDER BY a.key, a.value, t.tn;
"""

_SPAN_COLUMNS = (
    "t.trace_id, s.span_id, s.parent_span_id, s.service, s.name, s.kind, s.start_ns, s.end_ns, "
    "s.status_code, s.status_message, s.trace_state, s.flags, s.attributes, s.events, s.links, "
    "r.body, c.body"
)

# Traces that had spans before this transaction: recomputed from all of them (one
# statement for all, the numbers after the received time).
_UPDATE_TRACES = """
UPDATE traces SET
    (start_ns, end_ns, span_count, error_count) = (
        SELECT min(s.start_ns), max(s.end_ns), count(*), sum(s.status_code = 2) FROM spans s WHERE s.tn = traces.tn),
    (root_service, root_name) = (
        SELECT s.service, s.name FROM spans s WHERE s.tn = traces.tn ORDER BY s.parent_span_id != '', s.start_ns LIMIT 1),
    received_ns = ?
WHERE tn IN ({marks})
"""
# The attribute rows of dropped traces, deleted a few statements at a time: SQLite looks each
# up by the primary key ("MULTI-INDEX OR"; a row-value IN list would scan a (key, value) range).
_DELETE_ATTRS_ROWS = 64


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
        self._lock = threading.Lock()  # the writer connection's (and, in memory, every access's)
        self._queue: collections.deque[_Batch] = collections.deque()  # batches waiting for a commit
        self._queue_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (it is in the WAL
        # file); only an OS crash or power loss can lose the last transactions.
        self._writer.execute("PRAGMA synchronous=NORMAL")
        # Measured (benchmarks/view.py): with SQLite's 2 MB default cache the writer re-read
        # index pages at every batch, and a checkpoint every 1,000 WAL pages ran at almost
        # every commit. 64 MB of cache, and a checkpoint every 10,000 pages (about 40 MB of WAL).
        self._writer.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        self._writer.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        self._open_schema(self._writer)
        self._readers: list[sqlite3.Connection] = []  # idle reader connections (file stores)
        self._readers_lock = threading.Lock()
        self._resource_ids: dict[str, int] = {}
        self._scope_ids: dict[str, int] = {}
        self._variables = _variable_limit(self._writer)
        self._span_total = int(self._writer.execute("SELECT total(span_count) FROM traces").fetchone()[0])
        self._next_tn = self._writer.execute("SELECT coalesce(max(tn), 0) + 1 FROM traces").fetchone()[0]
        self._age_checked = 0.0
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        # sqlite3.connect as it was before the agent's hook wrapped it (a viewer run in a
        # traced process): the store's own queries are never traced.
        connection = unwrapped(sqlite3.connect)(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    @staticmethod
    def _open_schema(db: sqlite3.Connection) -> None:
        """Make the schema, migrating a store of the layout keyed by trace id."""
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        old = "spans" in tables and any(row[1] == "trace_id" for row in db.execute("PRAGMA table_info(spans)"))
        if not old:
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        from .server import log

        log(f"migrating {db.execute('PRAGMA database_list').fetchone()[2]} to the current layout (once) ...")
        started = time.monotonic()
        db.execute("BEGIN IMMEDIATE")
        try:
            for index in _OLD_INDEXES:
                db.execute(f"DROP INDEX IF EXISTS {index}")
            for table in ("spans", "traces", "span_attrs"):
                if table in tables:
                    db.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if {"traces", "span_attrs"} <= tables:
                for statement in _MIGRATE.split(";"):
                    if statement.strip():
                        db.execute(statement)
            for table in ("spans", "traces", "span_attrs"):
                if table in tables:
                    db.execute(f"DROP TABLE old_{table}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # The old tables' pages are free now: give them back (measured, 1M spans: the
        # migration 51 s and this 9 s; the file 1.7 GB before, 0.8 GB after).
        db.execute("VACUUM")
        log(f"migrated in {time.monotonic() - started:.0f} s")

    # -- writing ----------------------------------------------------------------------

    def write(self, records: Sequence[SpanRecord]) -> int:
        """Store a batch; returns when it is committed. Spans already stored (same trace and
        span id) are kept as they were.

        Group commit: the batch is made ready outside the writer's lock (the Python work, which
        can run while another batch is in SQLite, which releases the GIL), then queued; the
        thread that next holds the lock commits every queued batch (up to
        :data:`GROUP_MAX_SPANS`) in one transaction, and each call returns once its own batch
        is committed. A failed group is retried batch by batch, so one bad batch fails alone.
        """
        if not records:
            return 0
        batch = _prepare(records)
        with self._queue_lock:
            self._queue.append(batch)
        with self._lock:
            while batch.outcome is None:
                if self._closed:
                    raise RuntimeError("the store is closed")
                self._commit_group(self._take_group())
        if batch.outcome is not True:
            raise batch.outcome
        return len(records)

    def _take_group(self) -> list[_Batch]:
        """The oldest queued batches, up to GROUP_MAX_SPANS spans (at least one)."""
        group: list[_Batch] = []
        spans = 0
        with self._queue_lock:
            while self._queue and (not group or spans + self._queue[0].size <= GROUP_MAX_SPANS):
                batch = self._queue.popleft()
                spans += batch.size
                group.append(batch)
        return group

    def _commit_group(self, group: list[_Batch]) -> None:
        """Commit the batches in one transaction; if that fails, each in its own. Every batch
        of the group has its outcome when this returns or raises."""
        try:
            try:
                self._commit(group)
            except Exception as exc:  # noqa: BLE001 - handed to the batch's caller
                if len(group) == 1:
                    group[0].outcome = exc
                    return
                for batch in group:
                    try:
                        self._commit([batch])
                    except Exception as alone:  # noqa: BLE001
                        batch.outcome = alone
                    else:
                        batch.outcome = True
            else:
                for batch in group:
                    batch.outcome = True
        finally:
            for batch in group:
                if batch.outcome is None:
                    batch.outcome = RuntimeError("the store's writer was interrupted")

    def _commit(self, group: list[_Batch]) -> None:
        """Write the batches in one transaction (under the lock) and commit it."""
        now = time.time_ns()
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may write to the same file: numbers go on from the file's.
            next_tn = max(self._next_tn, db.execute("SELECT coalesce(max(tn), 0) + 1 FROM traces").fetchone()[0])
            numbers = self._numbers(db, {trace_id for batch in group for trace_id in batch.traces})
            # A trace stored before is recomputed from its spans after the insert; so is one
            # new here that more than one batch of the group holds.
            recompute = set(numbers.values())
            new_rows = {}
            for batch in group:
                for trace_id, summary in batch.traces.items():
                    tn = numbers.get(trace_id)
                    if tn is None:
                        tn = numbers[trace_id] = next_tn
                        next_tn += 1
                        new_rows[trace_id] = (tn, trace_id, *summary, now)
                    elif trace_id in new_rows:
                        recompute.add(tn)
            rows, index, operations = [], [], set()
            for batch in group:
                resource_ids = {body: self._id_of(db, "resources", self._resource_ids, body) for body in batch.resources}
                scope_ids = {body: self._id_of(db, "scopes", self._scope_ids, body) for body in batch.scopes}
                rows += [
                    (numbers[r[0]], *r[1:16], resource_ids[r[16]], scope_ids[r[17]]) for r in batch.rows
                ]
                index += [(key, value, numbers[trace_id]) for key, value, trace_id in batch.index]
                operations |= batch.operations
            rows.sort(key=_TN_SPAN)  # stable: of a span sent twice, the first is kept
            index.sort()
            added = self._insert("INSERT OR IGNORE INTO spans", rows)
            self._insert("INSERT OR IGNORE INTO span_attrs", index)
            self._insert("INSERT OR IGNORE INTO operations", sorted(operations))
            self._insert("INSERT INTO traces", list(new_rows.values()))
            for chunk in _chunks(sorted(recompute)):
                db.execute(_UPDATE_TRACES.format(marks=",".join("?" * len(chunk))), [now, *chunk])
            # Retention in the same transaction: one commit a group.
            _, dropped = self._retain_in(db, now, self._span_total + added)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._resource_ids.clear()  # ids of the rolled-back rows are void
            self._scope_ids.clear()
            raise
        self._next_tn = next_tn
        self._span_total += added - dropped

    def _insert(self, head: str, rows: Sequence[tuple]) -> int:
        """``head VALUES (...), (...), ...``: the rows in a few statements of many rows, not
        one statement a row; returns the rows inserted.

        Measured: besides the Python call a row saved, the sqlite3 module lets go of the GIL
        around every statement, and a thread that lets go of it while another thread runs
        Python (a request being decoded) waits up to the switch interval to get it back."""
        added = 0
        if rows:
            width = len(rows[0])
            for part in _parts(rows, max(1, min(MULTI_ROW_MAX, self._variables // width))):
                added += self._writer.execute(
                    _values_sql(head, width, len(part)), list(itertools.chain.from_iterable(part))
                ).rowcount
        return added

    @staticmethod
    def _numbers(db: sqlite3.Connection, trace_ids: Iterable[str]) -> dict[str, int]:
        """trace id -> number, of those stored."""
        numbers: dict[str, int] = {}
        for chunk in _chunks(sorted(trace_ids)):
            marks = ",".join("?" * len(chunk))
            numbers.update(db.execute(f"SELECT trace_id, tn FROM traces WHERE trace_id IN ({marks})", chunk))
        return numbers

    @staticmethod
    def _id_of(db: sqlite3.Connection, table: str, cache: dict[str, int], body: str) -> int:
        found = cache.get(body)
        if found is None:
            db.execute(f"INSERT OR IGNORE INTO {table} (body) VALUES (?)", (body,))
            found = cache[body] = db.execute(f"SELECT id FROM {table} WHERE body = ?", (body,)).fetchone()[0]
        return found

    def retain(self) -> int:
        """Apply retention now; returns how many traces were dropped."""
        with self._lock:
            self._age_checked = 0.0
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                traces, spans = self._retain_in(db, time.time_ns(), self._span_total)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._span_total -= spans
            return traces

    def _retain_in(self, db: sqlite3.Connection, now_ns: int, span_total: int) -> tuple[int, int]:
        """Drop what retention says, in the open transaction: (traces, spans) dropped."""
        doomed: list[int] = []
        if self.retention_days is not None and time.monotonic() - self._age_checked >= min(
            _AGE_CHECK_EVERY_S, self.retention_days * 86400 / 10
        ):
            self._age_checked = time.monotonic()
            cutoff = now_ns - int(self.retention_days * 86400e9)
            doomed += [row[0] for row in db.execute("SELECT tn FROM traces WHERE received_ns < ?", (cutoff,))]
        if self.max_spans is not None and span_total > self.max_spans:
            excess = span_total - self.max_spans
            seen = set(doomed)
            for tn, count in db.execute("SELECT tn, span_count FROM traces ORDER BY received_ns, start_ns"):
                if excess <= 0:
                    break
                if tn not in seen:
                    doomed.append(tn)
                    excess -= count
        return len(doomed), self._drop(db, doomed) if doomed else 0

    @staticmethod
    def _drop(db: sqlite3.Connection, numbers: list[int]) -> int:
        """Delete these traces, their spans and attribute rows; returns the spans dropped."""
        dropped = 0
        resources: dict[int, list] = {}
        for chunk in _chunks(numbers):
            marks = ",".join("?" * len(chunk))
            dropped += db.execute(f"SELECT total(span_count) FROM traces WHERE tn IN ({marks})", chunk).fetchone()[0]
            spans = db.execute(f"SELECT tn, attributes, resource_id FROM spans WHERE tn IN ({marks})", chunk).fetchall()
            for resource in {row[2] for row in spans} - resources.keys():
                body = db.execute("SELECT body FROM resources WHERE id = ?", (resource,)).fetchone()[0]
                resources[resource] = json.loads(body).get("attributes", [])
            rows: set[tuple[str, str, int]] = set()
            resources_done: set[tuple[int, int]] = set()
            for tn, attributes, resource in spans:
                stored_index_rows(attributes, tn, rows)
                if (resource, tn) not in resources_done:
                    resources_done.add((resource, tn))
                    add_index_rows(resources[resource], tn, rows)
            for part in _parts(sorted(rows), _DELETE_ATTRS_ROWS):
                db.execute(_delete_attrs_sql(len(part)), list(itertools.chain.from_iterable(part)))
            for table in ("spans", "traces"):
                db.execute(f"DELETE FROM {table} WHERE tn IN ({marks})", chunk)
        return int(dropped)

    def close(self) -> None:
        with self._lock, self._readers_lock:
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
        # The pool has a lock of its own: a search does not wait for a commit in progress.
        with self._readers_lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            connection = self._readers.pop() if self._readers else None
        if connection is None:
            connection = self._connect()
        try:
            return connection.execute(sql, tuple(params)).fetchall()
        finally:
            with self._readers_lock:
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
            # checked through its spans' (tn, span id) index ("+" keeps the planner off the
            # service index, which would scan every span of the service for each trace).
            checks = " AND ".join(f"+s.{condition}" for condition in span_conditions)
            where.append(f"EXISTS (SELECT 1 FROM spans s WHERE s.tn = t.tn AND {checks})")
            params.extend(span_params)
        elif span_conditions:
            where.append(f"t.tn IN (SELECT tn FROM spans WHERE {' AND '.join(span_conditions)})")
            params.extend(span_params)
        for key, value in query.tags.items():
            where.append("t.tn IN (SELECT tn FROM span_attrs WHERE key = ? AND value = ?)")
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
                f"SELECT {_SPAN_COLUMNS} FROM traces t JOIN spans s ON s.tn = t.tn "
                "JOIN resources r ON r.id = s.resource_id JOIN scopes c ON c.id = s.scope_id "
                f"WHERE t.trace_id IN ({marks}) ORDER BY t.trace_id, s.start_ns",
                chunk,
            )
            records.extend(
                SpanRecord(*row[:12], load_attributes(row[12]), json.loads(row[13]), json.loads(row[14]),
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
                "SELECT DISTINCT t.trace_id, s.service FROM traces t JOIN spans s ON s.tn = t.tn "
                f"WHERE t.trace_id IN ({marks}) ORDER BY t.trace_id, s.service",
                chunk,
            ):
                found[trace_id].services.append(service)
        return [found[t] for t in trace_ids if t in found]

    def dependencies(self, start_ns: int, end_ns: int) -> list[tuple[str, str, int, int]]:
        """(caller, callee, calls, errors): a CLIENT or PRODUCER span and the SERVER or
        CONSUMER span it caused in another service, in the window."""
        return self._read(
            "SELECT c.service, s.service, count(*), sum(s.status_code = 2) FROM spans s "
            "JOIN spans c ON c.tn = s.tn AND c.span_id = s.parent_span_id "
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


def _compact_encoder():
    """``json.dumps(value, separators=(",", ":"))`` for the stored JSON: the C encoder made
    once (``JSONEncoder.encode`` makes one a call, measured a third of its time) where the
    json module has it."""
    from json import encoder

    if encoder.c_make_encoder is None:
        return json.JSONEncoder(separators=(",", ":")).encode
    made = encoder.c_make_encoder(
        None, json.JSONEncoder().default, encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )  # markers (no cycle check: decoded data), default, strings, indent, separators, sort_keys, skipkeys, allow_nan
    join = "".join
    return lambda value: join(made(value, 0))


_encode = _compact_encoder()
_dumps_sorted = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _dumps(value: object) -> str:
    return _encode(value) if value else "[]"  # events and links are mostly empty lists


class _Batch:
    """A request's spans made ready for the store outside its lock: rows keyed by trace id
    (the number is given in the transaction), each new trace's summary, the attribute
    index rows, and ``outcome`` (None until committed, then True or the exception)."""

    __slots__ = ("size", "rows", "traces", "index", "operations", "resources", "scopes", "outcome")

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: list[tuple] = []
        self.traces: dict[str, tuple] = {}
        self.index: list[tuple[str, str, str]] = []
        self.operations: set[tuple[str, str, int]] = set()
        self.resources: dict[str, None] = {}  # bodies, in order
        self.scopes: dict[str, None] = {}
        self.outcome: object = None


def _prepare(records: Sequence[SpanRecord]) -> _Batch:
    """The store's rows of a batch, computed without the database."""
    batch = _Batch(len(records))
    # The records of one request share their resource and scope objects: each is encoded
    # once a batch (ids of objects alive for the whole call).
    resources: dict[int, tuple[str, set]] = {}
    scopes: dict[int, str] = {}
    distinct: dict[str, dict[str, SpanRecord]] = {}  # trace id -> span id -> its first record
    index: set[tuple[str, str, str]] = set()  # (key, value, trace id)
    resources_done: set[tuple[str, int]] = set()
    rows = batch.rows
    for r in records:
        trace_id = r.trace_id
        spans = distinct.get(trace_id)
        if spans is None:
            spans = distinct[trace_id] = {}
        if r.span_id not in spans:
            spans[r.span_id] = r
        resource = resources.get(id(r.resource))
        if resource is None:
            pairs: set = set()
            add_index_rows(r.resource.get("attributes", ()), None, pairs)
            resource = resources[id(r.resource)] = (_dumps_sorted(r.resource), pairs)
            batch.resources[resource[0]] = None
        if (trace_id, id(r.resource)) not in resources_done:  # the resource's attributes, once a trace
            resources_done.add((trace_id, id(r.resource)))
            index.update([(key, value, trace_id) for key, value, _ in resource[1]])
        scope = scopes.get(id(r.scope))
        if scope is None:
            scope = scopes[id(r.scope)] = _dumps_sorted(r.scope)
            batch.scopes[scope] = None
        rows.append((
            trace_id, r.span_id, r.parent_span_id, r.service, r.name, r.kind,
            r.start_ns, r.end_ns, max(0, r.end_ns - r.start_ns), r.status_code,
            r.status_message, r.trace_state, r.flags,
            stored_attributes(r.attributes, trace_id, index), _dumps(r.events), _dumps(r.links),
            resource[0], scope,
        ))
        batch.operations.add((r.service, r.name, r.kind))
    for trace_id, spans in distinct.items():
        batch.traces[trace_id] = _trace_summary(list(spans.values()))
    batch.index = sorted(index)
    return batch


# A span's attributes are stored as a JSON object of plain values ({"http.route": "/a",
# "http.response.status_code": 200}) when each is a string, bool, int or finite double and no
# key repeats: half the text of the OTLP JSON list, and quicker to encode. Others (arrays,
# maps, bytes, NaN, a repeated key) are stored as the OTLP JSON list, as stores made before.
_NOT_PLAIN = object()


def stored_attributes(attributes: list | dict, owner: object, index: set) -> str:
    """The stored text of a span's attributes (the OTLP JSON list, or a dict of plain
    values from ``decode_protobuf(plain=True)``); adds their ``span_attrs`` rows to ``index``
    as (key, value, ``owner``): the trace's number, or its id until it has one."""
    if not attributes:
        return "[]"
    if type(attributes) is dict:
        for key, item in attributes.items():
            text = item if type(item) is str else plain_text(item)
            if len(text) <= MAX_INDEXED_VALUE:
                index.add((key, text, owner))
        return _encode(attributes)
    plain = {}
    for kv in attributes:
        key, value = kv["key"], kv["value"]
        text = value.get("stringValue")
        if text is None:
            text = attribute_text(value)
            plain[key] = _plain(value)
        else:
            plain[key] = text
        if text is not None and len(text) <= MAX_INDEXED_VALUE:
            index.add((key, text, owner))
    if len(plain) == len(attributes) and _NOT_PLAIN not in plain.values():
        return _encode(plain)
    return _encode(attributes)  # a repeated key, or a value that is not plain


def plain_text(item: object) -> str:
    """The text a ``key=value`` search matches a plain stored value (not a string) against."""
    if type(item) is bool:
        return "true" if item else "false"
    return repr(item) if type(item) is float else str(item)


def _plain(value: dict) -> object:
    """The plain JSON value of a one-field OTLP JSON value other than a string, or _NOT_PLAIN."""
    if len(value) == 1:
        if type(value.get("boolValue")) is bool:
            return value["boolValue"]
        if type(value.get("doubleValue")) is float:
            return value["doubleValue"]  # finite: NaN and the infinities are strings in OTLP JSON
        number = value.get("intValue")
        if type(number) is str:
            try:
                if str(int(number)) == number:
                    return int(number)
            except ValueError:
                pass
    return _NOT_PLAIN


def load_attributes(text: str) -> list:
    """A span's stored attributes as OTLP JSON KeyValues (either stored form)."""
    loaded = json.loads(text)
    if type(loaded) is list:
        return loaded
    return [{"key": key, "value": _otlp_value(item)} for key, item in loaded.items()]


def _otlp_value(item: object) -> dict:
    if type(item) is str:
        return {"stringValue": item}
    if type(item) is bool:
        return {"boolValue": item}
    if type(item) is int:
        return {"intValue": str(item)}
    return {"doubleValue": item}


def _parts(rows: Sequence[tuple], per: int) -> Iterable[Sequence[tuple]]:
    """``rows`` in parts of ``per``, the rest in parts of powers of two: statements of a few
    distinct lengths, which the statement caches keep."""
    at = 0
    while at < len(rows):
        left = len(rows) - at
        size = per if left >= per else 1 << (left.bit_length() - 1)
        yield rows[at : at + size]
        at += size


@functools.lru_cache(maxsize=None)
def _values_sql(head: str, width: int, rows: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([row] * rows)}"


@functools.lru_cache(maxsize=None)
def _delete_attrs_sql(rows: int) -> str:
    return "DELETE FROM span_attrs WHERE " + " OR ".join(["(key = ? AND value = ? AND tn = ?)"] * rows)


def _variable_limit(db: sqlite3.Connection) -> int:
    """How many ``?`` a statement may hold (999 before SQLite 3.32 and where Python cannot tell)."""
    try:
        return db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # Python 3.11+
    except AttributeError:
        return 999


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


def stored_index_rows(text: str, owner: object, rows: set) -> None:
    """Adds the ``span_attrs`` rows of a span's stored attributes (as :meth:`Store.write`
    made them) to ``rows``."""
    loaded = json.loads(text)
    if type(loaded) is list:
        return add_index_rows(loaded, owner, rows)
    for key, item in loaded.items():
        text = item if type(item) is str else plain_text(item)
        if len(text) <= MAX_INDEXED_VALUE:
            rows.add((key, text, owner))


def add_index_rows(attributes: Iterable[dict], owner: object, rows: set) -> None:
    for kv in attributes:
        text = attribute_text(kv["value"])
        if text is not None and len(text) <= MAX_INDEXED_VALUE:
            rows.add((kv["key"], text, owner))


def _trace_summary(spans: list[SpanRecord]) -> tuple:
    """The ``traces`` columns from start to root name of a trace new in a batch, from its
    (distinct) spans."""
    root = min(spans, key=lambda r: (r.parent_span_id != "", r.start_ns))
    return (
        min(r.start_ns for r in spans), max(r.end_ns for r in spans), len(spans),
        sum(r.status_code == ERROR for r in spans), root.service, root.name,
    )
