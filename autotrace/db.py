"""Database and cache calls: the CLIENT span every database hook starts, and what SQL text yields.

A hook builds a :class:`Target` once per connection (the system, database name, server
address), a :class:`Statement` per SQL text with :func:`statement` (cached by text), and
wraps each call the app makes::

    from autotrace import db

    def execute(self, sql, parameters=()):
        found = db.statement(sql)
        return db.call("sqlite3", target_of(self), found, original, (self, sql, parameters), {})

A hook on a hot path (a cursor's ``execute``, a Redis command) starts the usual call, a
statement alone, in one call: :func:`start_cached` (``db.start_cached(library, target,
sql, db.query_span)``). Whether a call made in a context gets a span is decided once per
context and kept (the last context asked about: a request's queries all ask in the
request's context), so a call that gets none costs a context look-up and nothing more (its
statement is not read); the span's name and attributes are made once per text (or key)
and connection, and kept by its :class:`Target` (:meth:`Target.keep`, bounded); the
settings are read once per process (:func:`settings`), not per query. Other calls (a
batch, overridden attributes) ask :func:`call_parent` first, then :func:`start`. A sync
wrapper calls :data:`compiled_call` first where the extension is built: the same usual
call, the driver's method and the close in one C call (:data:`NOT_HANDLED` otherwise).

:func:`start` returns None, and the call runs untraced, when:

- instrumentation is suppressed (the agent's own exporter runs so);
- a database call is in progress in this context already (:data:`autotrace.api.IN_DB_CALL`):
  the outer layer (SQLAlchemy, Django, ``executemany`` calling ``execute``, a pool
  calling its connection) has the span, so each logical operation gets one;
- no span is current and ``AUTOTRACE_DB_ROOT_SPANS`` is not true: a background job's
  thousands of queries would otherwise each be a trace of their own;
- the span could not be started (one warning line).

Span content follows the stable database semantic conventions: name ``db.query.summary``
(``"SELECT users"``), else ``"{db.operation.name} {db.collection.name}"``, else the
operation, else ``db.system.name``; kind CLIENT; ``db.query.text`` as
``AUTOTRACE_DB_STATEMENT`` says (literals replaced by ``?`` by default, see
:func:`sanitize`), capped at :data:`MAX_QUERY_TEXT` characters.

Nothing here raises into the app: the app's own exceptions are recorded and re-raised
untouched by the hook (:func:`call` does it), a failure of ours is one warning line.
"""

from __future__ import annotations

import re
import threading
import weakref

from . import api, config, spans
from .spans import SpanHandle

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Mapping

    from opentelemetry import context, trace

TRACER_PREFIX = "autotrace.db."  # instrumentation scope: "autotrace.db.psycopg2" ...

MAX_QUERY_TEXT = 2048  # db.query.text is cut to this many characters, marker included
TRUNCATED = " ...[truncated]"  # the marker that ends a cut db.query.text
MAX_SUMMARY = 255  # db.query.summary: whole words, at most this long (as semconv advises)

# Systems whose SQL reads "..." as a string and \ as an escape in strings (MySQL's
# defaults); everywhere else "..." is a quoted identifier and '' the only escape.
MYSQL_SYSTEMS = frozenset(("mysql", "mariadb"))


def _present(*pairs: tuple[str, object]) -> dict[str, object]:
    """Span attributes from (key, value) pairs, the None values left out."""
    return {key: value for key, value in pairs if value is not None}


class Target:
    """A connection's facts, built once per connection by a hook and reused for every call.

    :attr:`attributes` is the prebuilt dict of ``db.system.name``, ``db.namespace``,
    ``server.address``, ``server.port``, ``network.peer.address`` (and ``extra``), Nones
    left out: every span of the connection starts from a copy of it.

    A target also keeps the name and attributes of the spans its calls had (:meth:`keep`,
    :meth:`span_of`, :func:`start_cached`): at most :data:`SPANS_KEPT` of them, forgotten
    with every settings reset (:func:`clear_cache`).
    """

    __slots__ = ("system", "namespace", "server_address", "server_port", "peer_address", "attributes", "_spans", "__weakref__")

    def __init__(
        self,
        system: str,
        namespace: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
        peer_address: str | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        self.system = system
        self.namespace = namespace
        self.server_address = server_address
        self.server_port = server_port
        self.peer_address = peer_address
        self.attributes = _present(
            ("db.system.name", system),
            ("db.namespace", namespace),
            ("server.address", server_address),
            ("server.port", server_port),
            ("network.peer.address", peer_address),
            *(extra.items() if extra else ()),
        )
        # Span name and attributes by key: a Statement, a SQL text (start_cached), a
        # hook's own key (a Redis command's arguments).
        self._spans: dict[object, tuple[str, dict[str, object]]] = {}
        _targets.add(self)

    def keep(self, key: object, found: tuple[str, dict[str, object]]) -> None:
        """Keep ``found``, a span's name and attributes, under ``key`` (hashable; equal
        keys must give equal spans). At most :data:`SPANS_KEPT`: then they are all dropped."""
        spans_kept = self._spans
        if len(spans_kept) >= SPANS_KEPT:
            spans_kept.clear()
        spans_kept[key] = found

    def kept(self, key: object) -> tuple[str, dict[str, object]] | None:
        """What :meth:`keep` kept under ``key``, if it still is (None for an unhashable key)."""
        try:
            return self._spans.get(key)
        except TypeError:
            return None

    def span_of(self, statement: Statement) -> tuple[str, dict[str, object]]:
        """The name and attributes of a span of ``statement`` on this target, made at its
        first use and kept (:meth:`keep`): the target's attributes, then the statement's.
        The dict is the tracer's input, never changed after it is made (the SDK and the
        light span copy it)."""
        found = self._spans.get(statement)
        if found is None:
            found = _span_of(self, statement, None, None, None, None, None, None)
            self.keep(statement, found)
        return found

    def __repr__(self) -> str:
        return f"Target({self.attributes!r})"


# Every Target, so that a settings reset drops what they keep (weak: a target lives as
# long as its connection).
_targets: weakref.WeakSet[Target] = weakref.WeakSet()

SPANS_KEPT = 64  # the statements a Target keeps its spans' name and attributes for


class Statement:
    """What one SQL text yields, computed once per distinct text (see :func:`statement`).

    - ``text``: the ``db.query.text`` value as ``AUTOTRACE_DB_STATEMENT`` says (sanitized
      by default, raw, or None for off), capped at :data:`MAX_QUERY_TEXT` characters;
    - ``operation``: ``db.operation.name`` (``"SELECT"``, ``"CREATE TABLE"``) when the
      text is one statement that starts with one;
    - ``collection``: ``db.collection.name`` when the statement names exactly one table,
      as written (``public.users``, ``"Users"``); None when unsure;
    - ``summary``: ``db.query.summary``: operations and tables in order of appearance
      (``"SELECT users orders"``), None when the text gives none;
    - ``attributes``: the four above as span attributes (Nones left out).
    """

    __slots__ = ("text", "operation", "collection", "summary", "attributes")

    def __init__(self, text: str | None, operation: str | None, collection: str | None, summary: str | None) -> None:
        self.text = text
        self.operation = operation
        self.collection = collection
        self.summary = summary
        self.attributes = _present(
            ("db.query.text", text),
            ("db.operation.name", operation),
            ("db.collection.name", collection),
            ("db.query.summary", summary),
        )

    def __repr__(self) -> str:
        return f"Statement(text={self.text!r}, operation={self.operation!r}, collection={self.collection!r}, summary={self.summary!r})"


# -- statements ---------------------------------------------------------------------------

# Statements by text, one cache for standard SQL and one for MySQL's. Bounded in entries
# and in characters held; the oldest entry goes first. Texts longer than _CACHED_CHARS are
# analysed at each call (linear time) rather than held.
_CACHE_ENTRIES = 2048
_CACHE_CHARS = 4_000_000
_CACHED_CHARS = 65_536
_caches: tuple[dict[object, Statement], dict[object, Statement]] = ({}, {})
_cache_chars = [0, 0]
_cache_lock = threading.Lock()


def statement(sql: object, system: str | None = None) -> Statement | None:
    """The :class:`Statement` of ``sql``: a str, or bytes (decoded as UTF-8, bad bytes replaced).

    Anything else gives None (a hook turns its library's SQL objects into text itself:
    their ``str()`` may be a repr holding values, or compile a query). ``system``:
    ``"mysql"`` or ``"mariadb"`` lex MySQL's way (``"..."`` strings, backslash escapes,
    ``#`` comments). Never raises. Cached by text.
    """
    mysql = 1 if system in MYSQL_SYSTEMS else 0
    cache = _caches[mysql]
    try:
        found = cache.get(sql)  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001 - unhashable (a bytearray, a list): not cached
        found = None
    if found is not None:
        return found
    try:
        if isinstance(sql, str):
            text = sql
        elif isinstance(sql, (bytes, bytearray, memoryview)):
            text = bytes(sql).decode("utf-8", "replace")
        else:
            return None
        found = _make_statement(text, bool(mysql))
        size = len(text)
        if size <= _CACHED_CHARS and isinstance(sql, (str, bytes)):
            with _cache_lock:
                while cache and (len(cache) >= _CACHE_ENTRIES or _cache_chars[mysql] + size > _CACHE_CHARS):
                    oldest = next(iter(cache))
                    _cache_chars[mysql] -= len(oldest)
                    del cache[oldest]
                if sql not in cache:
                    cache[sql] = found
                    _cache_chars[mysql] += size
        return found
    except Exception as exc:  # noqa: BLE001 - never fail a query
        spans.report(exc, "a database statement", "the query", "db-statement")
        return None


def clear_cache() -> None:
    """Forget every cached :class:`Statement` and the settings they were made with (a setting changed; tests)."""
    global _settings, _decided
    with _cache_lock:
        _settings = None
        _decided = _UNDECIDED
        for index, cache in enumerate(_caches):
            cache.clear()
            _cache_chars[index] = 0
        for target in list(_targets):
            target._spans.clear()  # noqa: SLF001 - this module's class


config.on_db_settings_reset(clear_cache)

# The database settings, read once (at the first query) and kept here, so that a query
# reads a module global, not a function's result; dropped with the cache on a reset.
_settings: config.DbSettings | None = None


def settings() -> config.DbSettings:
    """The database settings (:func:`autotrace.config.db_settings`), read once."""
    global _settings
    found = _settings
    if found is None:
        found = _settings = config.db_settings()
    return found


def _make_statement(text: str, mysql: bool) -> Statement:
    mode = (_settings or settings()).statement
    sanitized, operation, collection, summary = analyse(text, mysql)
    if mode == "sanitized":
        query_text: str | None = cap(sanitized)
    elif mode == "raw":
        query_text = cap(text)
    else:
        query_text = None
    return Statement(query_text, operation, collection, summary)


def cap(text: str, limit: int = MAX_QUERY_TEXT) -> str:
    """``text``, cut to ``limit`` characters with :data:`TRUNCATED` at its end when longer."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATED)] + TRUNCATED


def sanitize(sql: str, system: str | None = None) -> str:
    """``sql`` with its literals replaced by ``?``; linear time, never raises.

    Strings (``'..'`` with ``''`` escapes, ``E'..'`` with backslash escapes, ``N'..'``,
    ``X'..'``, ``B'..'``, PostgreSQL's ``$tag$..$tag$``) and numbers (integers, decimals,
    exponents, ``0x..``) become ``?``; a list of literals in ``IN (...)`` becomes
    ``IN (?)``. Comments are dropped (they may carry values: other tools' sqlcommenter
    tags, notes). Placeholders (``%s``, ``%(name)s``, ``$1``, ``?``, ``:name``), keywords
    (``TRUE``, ``FALSE``, ``NULL``), identifiers (quoted too) are kept as written. From
    an unbalanced quote on, the rest of the text is one ``?``. Not capped (see :func:`cap`).
    """
    try:
        return analyse(sql, system in MYSQL_SYSTEMS)[0]
    except Exception:  # noqa: BLE001 - never reached by design; a text we cannot read is not recorded
        return "?"


# The lexer: each step reads one token at position i with str.find or an anchored regular
# expression whose alternatives cannot backtrack into each other, so a text is read in
# time linear in its length, whatever it holds.
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[^\W\d][\w$]*")  # a$b is one identifier (PostgreSQL, MySQL)
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_PERCENT = re.compile(r"%\([^()\s]{1,64}\)[sdfb]|%[sdfb]")  # %s, %(name)s: the pyformat placeholders
_DOLLAR = re.compile(r"\$(?:\d+|(?:[^\W\d]\w*)?\$)")  # $1, or a $tag$ opening a dollar-quoted string
_COLON = re.compile(r":[^\W\d]\w*")  # :name
_QMARK = re.compile(r"\?\d*")  # ?, ?1
_PREFIXES = frozenset("eEnNxXbB")  # E'..', N'..', X'..', B'..'

# Token kinds for the summary pass.
_W, _Q, _P = "w", "q", "p"  # word, quoted identifier, punctuation
_L, _H = "l", "h"  # literal, placeholder


def analyse(text: str, mysql: bool = False) -> tuple[str, str | None, str | None, str | None]:
    """The sanitized text, operation, collection and summary of ``text`` (one pass, then one over its tokens)."""
    out: list[str] = []  # the sanitized text, in pieces
    tokens: list[tuple[str, str]] = []  # what the summary is made from
    n = len(text)
    i = 0
    # IN (...) lists of literals: 0 none, 1 after IN, 2 inside the parenthesis.
    in_state = 0
    in_start = 0
    in_literal = False
    while i < n:
        c = text[i]
        kind = None
        if c.isspace():
            m = _SPACE.match(text, i)
            j = m.end() if m else i + 1
            if not (out and out[-1][-1:].isspace()):  # after a comment's blank: one is enough
                out.append(text[i:j])
            i = j
            continue
        if c == "-" and text.startswith("--", i) or c == "#" and mysql:
            j = text.find("\n", i)
            i = n if j < 0 else j
            _gap(out)
            continue
        if c == "/" and text.startswith("/*", i):
            i = _comment_end(text, i + 2, not mysql)
            _gap(out)
            continue
        if c == "'":
            i = _string_end(text, i + 1, "'", mysql)
            kind = _L
        elif c == '"':
            if mysql:
                i = _string_end(text, i + 1, '"', True)
                kind = _L
            else:
                j = _string_end(text, i + 1, '"', False)
                if j > n:  # unbalanced: the rest is one ?
                    i, kind = j, _L
                else:
                    out.append(text[i:j])
                    tokens.append((_Q, text[i:j]))
                    i = j
                    in_state = 0
                    continue
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                i, kind = n + 1, _L
            else:
                out.append(text[i : j + 1])
                tokens.append((_Q, text[i : j + 1]))
                i = j + 1
                in_state = 0
                continue
        elif "0" <= c <= "9" or c == "." and "0" <= text[i + 1 : i + 2] <= "9" and i + 1 < n:
            i = _NUMBER.match(text, i).end()
            kind = _L
        elif c == "$":
            m = _DOLLAR.match(text, i)
            if m is None:
                kind = _P
                piece = c
                i += 1
            elif m.group().endswith("$") and not mysql:  # $tag$ ... $tag$
                delimiter = m.group()
                j = text.find(delimiter, m.end())
                i = n + 1 if j < 0 else j + len(delimiter)
                kind = _L
            else:
                kind, piece, i = _H, m.group(), m.end()
        elif c == "%":
            m = _PERCENT.match(text, i)
            kind, piece = (_H, m.group()) if m else (_P, c)
            i = m.end() if m else i + 1
        elif c == ":":
            m = _COLON.match(text, i)
            kind, piece = (_H, m.group()) if m else (_P, c)
            i = m.end() if m else i + 1
        elif c == "?":
            m = _QMARK.match(text, i)
            kind, piece, i = _H, m.group(), m.end()
        else:
            m = _WORD.match(text, i)
            if m is None:
                kind, piece = _P, c
                i += 1
            else:
                word = m.group()
                j = m.end()
                if j < n and text[j] == "'" and len(word) == 1 and word in _PREFIXES:
                    i = _string_end(text, j + 1, "'", mysql or word in "eE")
                    kind = _L
                else:
                    out.append(word)
                    tokens.append((_W, word))
                    i = j
                    if in_state == 2 or len(word) != 2 or word.upper() != "IN":
                        in_state = 0
                    else:
                        in_state = 1
                    continue
        # A literal, a placeholder or punctuation.
        if kind == _L:
            out.append("?")
            tokens.append((_L, "?"))
            if in_state == 2:
                in_literal = True
            else:
                in_state = 0
            continue
        out.append(piece)
        tokens.append((kind, piece))
        if in_state == 1:
            if piece == "(":
                in_state, in_start, in_literal = 2, len(out) - 1, False
            else:
                in_state = 0
        elif in_state == 2:
            if piece == ")":
                if in_literal:
                    del out[in_start:]
                    out.append("(?)")
                in_state = 0
            elif kind != _H and piece not in (",", "-", "+"):
                in_state = 0
    sanitized = "".join(out).strip()
    return (sanitized, *_summarize(tokens))


def _gap(out: list[str]) -> None:
    """Where a comment was: a blank, so the tokens on either side stay apart."""
    if out and not out[-1][-1:].isspace():
        out.append(" ")


_COMMENT_MARK = re.compile(r"/\*|\*/")


def _comment_end(text: str, start: int, nested: bool) -> int:
    """The index after the ``*/`` that closes a comment opened before ``start`` (the end if none).

    With ``nested`` (PostgreSQL's rule) an inner ``/* */`` pair is part of the comment.
    """
    if not nested:
        j = text.find("*/", start)
        return len(text) if j < 0 else j + 2
    depth = 1
    for mark in _COMMENT_MARK.finditer(text, start):
        depth += 1 if mark.group() == "/*" else -1
        if depth == 0:
            return mark.end()
    return len(text)


def _string_end(text: str, start: int, quote: str, backslash: bool) -> int:
    """The index after the quote that closes a string opened before ``start``; past the end (len + 1) if none.

    A doubled quote is part of the string; with ``backslash``, so is a quote after an
    odd number of backslashes. Linear: each character is looked at a bounded number of times.
    """
    j = start
    find = text.find
    while True:
        k = find(quote, j)
        if k < 0:
            return len(text) + 1
        if backslash:
            b = k
            while b > j and text[b - 1] == "\\":
                b -= 1
            if (k - b) % 2:  # escaped
                j = k + 1
                continue
        if text.startswith(quote, k + 1):  # doubled
            j = k + 2
            continue
        return k + 1


# -- the summary ------------------------------------------------------------------------

# Words that start a statement and name its operation.
_OPERATIONS = frozenset(
    """SELECT INSERT UPDATE DELETE MERGE UPSERT REPLACE CREATE DROP ALTER TRUNCATE CALL EXEC
    EXECUTE BEGIN START COMMIT ROLLBACK SAVEPOINT RELEASE END SET SHOW PRAGMA VACUUM ANALYZE
    EXPLAIN GRANT REVOKE LOCK COPY DO DECLARE FETCH MOVE CLOSE PREPARE DEALLOCATE LISTEN
    NOTIFY UNLISTEN REINDEX CLUSTER COMMENT ATTACH DETACH USE DESCRIBE VALUES TABLE LOAD
    RESET DISCARD CHECKPOINT REFRESH OPTIMIZE REPAIR FLUSH KILL HANDLER""".split()
)
# Data operations that also count inside a statement (INSERT ... SELECT, a CTE's body).
_NESTED = frozenset(("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"))
# After these words, UPDATE or DELETE is a clause, not an operation (ON CONFLICT DO
# UPDATE, ON DUPLICATE KEY UPDATE, FOR UPDATE, ON DELETE CASCADE, a trigger's event).
_CLAUSE_BEFORE = frozenset(("DO", "KEY", "FOR", "ON", "OF", "BEFORE", "AFTER", "INSTEAD", "OR", "NO", "THEN"))
_DDL_VERBS = frozenset(("CREATE", "DROP", "ALTER"))
_DDL_MODIFIERS = frozenset(
    ("OR", "REPLACE", "TEMP", "TEMPORARY", "UNIQUE", "UNLOGGED", "GLOBAL", "LOCAL", "VIRTUAL", "MATERIALIZED", "RECURSIVE", "IF", "NOT", "EXISTS", "DEFINER", "ONLINE", "CONCURRENTLY")
)
_DDL_OBJECTS = frozenset(
    ("TABLE", "INDEX", "VIEW", "SEQUENCE", "SCHEMA", "DATABASE", "FUNCTION", "PROCEDURE", "TRIGGER", "TYPE", "EXTENSION", "ROLE", "USER", "DOMAIN", "POLICY", "RULE", "EVENT")
)
# Objects whose name follows the operation in the summary (CREATE PROCEDURE p), not a table.
_ROUTINES = frozenset(("FUNCTION", "PROCEDURE", "TRIGGER", "EVENT"))
# Words skipped before a table name (UPDATE OR REPLACE t, FROM ONLY t, TABLE IF NOT EXISTS t).
_NAME_SKIP = frozenset(("ONLY", "OR", "REPLACE", "IGNORE", "ROLLBACK", "ABORT", "FAIL", "LOW_PRIORITY", "IF", "NOT", "EXISTS", "TABLE"))
# Words that cannot be a table name (or an alias) where one may be.
_KEYWORDS = frozenset(
    """SELECT FROM WHERE JOIN INNER LEFT RIGHT FULL OUTER CROSS NATURAL ON USING GROUP ORDER
    LIMIT OFFSET HAVING UNION EXCEPT INTERSECT WINDOW FOR SET VALUES VALUE RETURNING FETCH
    STRAIGHT_JOIN LATERAL DEFAULT WITH USE FORCE IGNORE TABLESAMPLE AS INTO PARTITION QUALIFY
    LOCK INDEXED NOT AND OR IN IS LIKE BETWEEN CASE WHEN THEN ELSE END EXISTS ANY ALL SOME
    DISTINCT BY DO CONFLICT DUPLICATE KEY UPDATE DELETE INSERT""".split()
)
# Words after which "(" opens a subquery or a list, not a function's arguments.
_NOT_FUNCTIONS = _KEYWORDS | frozenset(("TABLE", "ARRAY", "ROW"))


def _summarize(tokens: list[tuple[str, str]]) -> tuple[str | None, str | None, str | None]:
    """Operation, collection and summary from the tokens of one or more statements."""
    parts: list[str] = []
    collections: set[str] = set()
    operation: str | None = None
    statements = 0
    at_start = True
    previous = ""  # the previous token, upper-case when a word
    functions: list[bool] = []  # the open parentheses: True for a function's arguments
    n = len(tokens)
    i = 0
    while i < n:
        kind, text = tokens[i]
        if kind == _P:
            if text == ";":
                at_start = True
            elif text == "(":
                functions.append(_opens_function(tokens, i))
            elif text == ")" and functions:
                functions.pop()
            previous = text
            i += 1
            continue
        if kind != _W:
            if at_start:
                at_start = False
                statements += 1
            previous = text
            i += 1
            continue
        word = text.upper()
        if at_start:
            at_start = False
            statements += 1
            if word in _DDL_VERBS or word == "TRUNCATE":
                done, i = _ddl(tokens, i, word, parts, collections)
                operation = operation or done
                previous = ""
                continue
            if word == "COPY":
                operation = operation or word
                parts.append(word)
                i = _copy(tokens, i + 1, parts, collections)
                previous = word
                if i < n and tokens[i] == (_P, "("):  # COPY (query) TO ...: a subquery
                    functions.append(False)
                    previous = "("
                    i += 1
                continue
            if word in _OPERATIONS and word not in _NESTED:
                operation = operation or word
                parts.append(word)
                previous = word
                i += 1
                continue
        in_function = bool(functions) and functions[-1]
        if word in _NESTED and previous not in _CLAUSE_BEFORE and not in_function:
            operation = operation or word
            parts.append(word)
            i += 1
            if word == "UPDATE":
                i = _names(tokens, i, parts, collections, listing=False)
        elif word in ("FROM", "JOIN", "STRAIGHT_JOIN") and not in_function and previous != "DISTINCT":
            i = _names(tokens, i + 1, parts, collections, listing=word == "FROM", functions_ok=False)
        elif word == "INTO" and not in_function:
            i = _names(tokens, i + 1, parts, collections, listing=False)
        else:
            i += 1
        previous = word
    if len(parts) > 0:
        summary = _join_capped(parts)
    else:
        summary = None
    single = statements == 1
    collection = next(iter(collections)) if single and len(collections) == 1 else None
    return (operation if single else None), collection, summary


def _opens_function(tokens: list[tuple[str, str]], i: int) -> bool:
    """Whether the "(" at ``i`` opens a function's arguments (a word not a keyword before it)."""
    if i == 0:
        return False
    kind, text = tokens[i - 1]
    return kind == _W and text.upper() not in _NOT_FUNCTIONS


def _ddl(tokens, i: int, verb: str, parts: list[str], collections: set[str]) -> tuple[str, int]:
    """CREATE/DROP/ALTER [modifiers] OBJECT [name], TRUNCATE [TABLE] name: the operation, and where it ends."""
    n = len(tokens)
    j = i + 1
    if verb == "TRUNCATE":
        parts.append(verb)
        return verb, _names(tokens, j, parts, collections, listing=False)
    while j < n and tokens[j][0] == _W and tokens[j][1].upper() in _DDL_MODIFIERS:
        j += 1
    if j < n and tokens[j][0] == _W and tokens[j][1].upper() in _DDL_OBJECTS:
        obj = tokens[j][1].upper()
        operation = f"{verb} {obj}"
        parts.append(operation)
        if obj == "TABLE":
            return operation, _names(tokens, j + 1, parts, collections, listing=False)
        if obj in _ROUTINES:
            # The routine's name (not a table); a CREATE's body is not read: its
            # statements (BEGIN SELECT ...; END) run when it is called, not now.
            j = _names(tokens, j + 1, parts, set(), listing=False)
            return operation, n if verb == "CREATE" else j
        return operation, j + 1
    parts.append(verb)
    return verb, j


def _copy(tokens, i: int, parts: list[str], collections: set[str]) -> int:
    """After COPY: ``COPY t [(columns)] FROM STDIN / TO STDOUT ...`` names table ``t`` and
    the rest of the statement none (``STDIN`` is no table); ``COPY (SELECT ...) TO ...``
    is read on (its query's operations and tables). Returns where reading goes on."""
    n = len(tokens)
    if i < n and tokens[i] == (_P, "("):
        return i
    i = _names(tokens, i, parts, collections, listing=False)
    while i < n and tokens[i] != (_P, ";"):
        i += 1
    return i


def _names(tokens, i: int, parts: list[str], collections: set[str], listing: bool, functions_ok: bool = True) -> int:
    """Read the table name at ``i`` (after FROM, JOIN, INTO, UPDATE, TABLE); with ``listing``,
    the comma-separated ones after it (``FROM a x, b y``). Returns where reading stopped."""
    n = len(tokens)
    while True:
        while i < n and tokens[i][0] == _W and tokens[i][1].upper() in _NAME_SKIP:
            i += 1
        start = i
        pieces: list[str] = []
        while i < n:
            kind, text = tokens[i]
            if kind == _Q or kind == _W and text.upper() not in _KEYWORDS:
                pieces.append(text)
                i += 1
                if i + 1 < n and tokens[i] == (_P, ".") and tokens[i + 1][0] in (_W, _Q):
                    pieces.append(".")
                    i += 1
                    continue
            break
        if not pieces:
            return start
        if not functions_ok and i < n and tokens[i] == (_P, "("):
            return i  # a function in FROM (generate_series(...)): not a table
        name = "".join(pieces)
        parts.append(name)
        collections.add(name)
        if not listing:
            return i
        # An alias ([AS] name), then a comma and another table.
        if i < n and tokens[i][0] == _W and tokens[i][1].upper() == "AS":
            i += 1
        if i < n and (tokens[i][0] == _Q or tokens[i][0] == _W and tokens[i][1].upper() not in _KEYWORDS):
            i += 1
        if i < n and tokens[i] == (_P, ","):
            i += 1
            continue
        return i


def _join_capped(parts: list[str]) -> str:
    summary = parts[0][:MAX_SUMMARY]
    for part in parts[1:]:
        if len(summary) + 1 + len(part) > MAX_SUMMARY:
            break
        summary += " " + part
    return summary


# -- spans ------------------------------------------------------------------------------


class DbCall(SpanHandle):
    """One database or cache call's CLIENT span; its methods never raise.

    ``comment``: whether the hook is to append the sqlcommenter comment to the statement
    it sends (``AUTOTRACE_SQL_COMMENT=true``, read once: see :func:`with_comment`), so a
    hook pays nothing for it when it is off.

    A started call does not keep its context (``context`` is None): the context holds the
    call (:data:`autotrace.api.IN_DB_CALL`), and without that cycle the call and its span
    are freed at once when it closes (:meth:`SpanHandle.close`), not by the garbage
    collector (whose passes a query would then pay for).
    """

    __slots__ = ("library", "comment")
    WHAT = "a database span"

    def __init__(self, span: trace.Span, ctx: context.Context, library: str) -> None:
        self.span = span  # SpanHandle.__init__, inline: one call less a query
        self.context = ctx
        self._token = None
        self._ended = False
        self.library = library
        self.comment = False

    def fail(self, exc: BaseException, status_code: str | None = None) -> None:  # type: ignore[override]
        """Record an exception that ended the call: status ERROR, ``error.type``, the
        exception event, ``db.response.status_code`` (``status_code``, else :func:`status_code_of`)."""
        if self._ended:
            return
        super().fail(exc, spans.error_type(exc))
        try:
            code = status_code or status_code_of(exc)
            if code:
                self.span.set_attribute("db.response.status_code", code)
        except Exception as error:  # noqa: BLE001
            self.report(error)


_tracer_names: dict[str, str] = {}
_new_call = object.__new__  # a DbCall without __init__'s frame: start() sets its slots


def start(
    library: str,
    target: Target,
    statement: Statement | None = None,
    *,
    name: str | None = None,
    operation: str | None = None,
    collection: str | None = None,
    query_text: str | None = None,
    batch_size: int | None = None,
    attributes: Mapping[str, object] | None = None,
    parent: context.Context | None = None,
) -> DbCall | None:
    """Start the CLIENT span of a database call, made current; None when not to trace (see the module).

    ``library`` names the hook's library (``"sqlite3"``, ``"psycopg2"`` ...; the tracer is
    ``autotrace.db.<library>``). ``name``, ``operation``, ``collection`` and
    ``query_text`` override what ``statement`` says. ``batch_size`` (``executemany``, a
    pipeline) is recorded when it is 2 or more, and then the statement's operation is
    ``"BATCH <operation>"``, as semconv says. ``parent``: what :func:`call_parent` gave
    the hook just before (not asked again). Never raises.

    A statement alone (the usual query) takes the span's name and attributes its target
    keeps for it (:meth:`Target.span_of`): made once per statement and connection.
    """
    try:
        if parent is None:
            parent = call_parent()
            if parent is None:
                return None
        if (
            statement is not None
            and name is None
            and operation is None
            and collection is None
            and query_text is None
            and attributes is None
            and (batch_size is None or batch_size < 2)
        ):
            name, span_attributes = target.span_of(statement)
        else:
            name, span_attributes = _span_of(target, statement, name, operation, collection, query_text, batch_size, attributes)
        return _started(library, name, span_attributes, parent)
    except Exception as exc:  # noqa: BLE001 - never fail the app's query
        spans.report(exc, DbCall.WHAT, "the query", "db-span")
        return None


def start_statement(library: str, target: Target, statement: Statement, parent: context.Context) -> DbCall | None:
    """:func:`start` of a statement alone (the usual query: no batch, nothing overridden)
    under ``parent``, what :func:`call_parent` just gave (not None). Never raises."""
    try:
        name, span_attributes = target.span_of(statement)
        return _started(library, name, span_attributes, parent)
    except Exception as exc:  # noqa: BLE001 - never fail the app's query
        spans.report(exc, DbCall.WHAT, "the query", "db-span")
        return None


def _started(library: str, name: str, span_attributes: dict[str, object], parent: context.Context) -> DbCall:
    """The call's span started under ``parent`` and made current. Raises what the SDK raises."""
    tracer = _tracer_names.get(library) or _tracer_name(library)
    span = spans.new_span(tracer, name, api.SpanKind.CLIENT, parent, span_attributes)
    # DbCall.__init__, inline.
    call = _new_call(DbCall)
    call.span = span
    call._ended = False  # noqa: SLF001 - this module's class
    call.library = library
    call.comment = (_settings or settings()).sql_comment
    call.context = None  # not kept: it holds the call (a cycle)
    # One context: the span current, the call marked as in progress; then one attach.
    call._token = api.set_current(api.with_span(span, parent, api.IN_DB_CALL, call))  # noqa: SLF001
    return call


def _span_of(
    target: Target,
    statement: Statement | None,
    name: str | None,
    operation: str | None,
    collection: str | None,
    query_text: str | None,
    batch_size: int | None,
    attributes: Mapping[str, object] | None,
) -> tuple[str, dict[str, object]]:
    """The span's name and attributes (see :func:`start`)."""
    span_attributes = dict(target.attributes)
    summary = None
    if statement is not None:
        span_attributes.update(statement.attributes)
        summary = statement.summary
        if operation is None:
            operation = statement.operation
            if operation is not None and batch_size is not None and batch_size >= 2:
                operation = "BATCH " + operation
                span_attributes["db.operation.name"] = operation
        if collection is None:
            collection = statement.collection
    if operation is not None:
        span_attributes["db.operation.name"] = operation
    if collection is not None:
        span_attributes["db.collection.name"] = collection
    if query_text is not None:
        span_attributes["db.query.text"] = query_text if len(query_text) <= MAX_QUERY_TEXT else cap(query_text)
    if batch_size is not None and batch_size >= 2:
        span_attributes["db.operation.batch.size"] = batch_size
    if attributes:
        span_attributes.update(attributes)
    if name is None:
        if summary is not None:
            name = summary
        elif operation is not None:
            name = f"{operation} {collection}" if collection is not None else operation
        else:
            name = target.system
    return name, span_attributes


# The last context a call was asked about, whether a call made in it gets a span, and
# whether its statement gets the sqlcommenter comment: (context, bool, bool). A context never changes once made (a span or a mark makes a
# new one), so the answer holds as long as the settings (AUTOTRACE_DB_ROOT_SPANS) do:
# the queries of a request, all made in the request's context, ask once. The one context
# kept is the last asked about (it lives on until another is asked about, or a reset).
_UNDECIDED: tuple[object, bool, bool] = (object(), False, False)
_decided = _UNDECIDED


def _decide(parent: context.Context) -> tuple[object, bool, bool]:
    """Whether a database call made in ``parent`` gets a span (see :func:`start`), kept
    as the last decision (:data:`_decided`). Raises what the API raises."""
    global _decided, _CLIENT
    _CLIENT = api.SpanKind.CLIENT
    if parent.get(api.IN_DB_CALL) is not None:
        # The lower layer of a call in progress (a driver under SQLAlchemy): not kept, so
        # the context the outer layer asked about just before stays the one kept.
        return (parent, False, False)
    traced = True
    found = _settings or settings()
    if parent.get(api.SUPPRESS_INSTRUMENTATION):
        traced = False
    elif not found.root_spans:
        # Whether a trace is current: get_current_span(parent)'s context is valid.
        key = api.SPAN_KEY
        if key is None:
            traced = api.trace.get_current_span(parent).get_span_context().is_valid
        else:
            span = parent.get(key)
            try:
                traced = span is not None and span.get_span_context().is_valid
            except AttributeError:  # not a span: get_current_span would give the invalid one
                traced = False
    decided = _decided = (parent, bool(traced), found.sql_comment)
    return decided


_CLIENT = None  # api.SpanKind.CLIENT, once the API is loaded (set by _decide)


def call_parent() -> context.Context | None:
    """The context a database call made here and now is started in (its span's parent),
    or None when it gets no span (suppressed, under another call, outside a trace without
    ``AUTOTRACE_DB_ROOT_SPANS``). A hook asks first when it has work only a span needs (a
    Redis command's text), so that calls never traced (a worker's broker traffic) cost
    next to nothing, and hands the answer to :func:`start`. Never raises (None on error)."""
    try:
        if not api.loaded:
            api.load()
            if not api.loaded:
                return None
        parent = api.get_current()
        decided = _decided
        if decided[0] is not parent:
            decided = _decide(parent)
        return parent if decided[1] else None
    except Exception as exc:  # noqa: BLE001 - the call goes untraced
        spans.report(exc, DbCall.WHAT, "the query", "db-span")
        return None


def start_cached(
    library: str, target: Target, key: object, make: Callable[[Target, Any], tuple[str, dict[str, object]]]
) -> DbCall | None:
    """Start the CLIENT span of a call whose name and attributes ``target`` keeps under
    ``key``; None when not to trace (see the module). Never raises.

    ``make(target, key)`` gives them when ``target`` does not have them (the first call,
    an unhashable key) and keeps them with :meth:`Target.keep` if it may (equal keys
    must give the same span). :func:`query_span` is the one for a SQL text alone (no
    batch, nothing overridden): ``start_cached(library, target, sql, db.query_span)``.

    The usual query's one call: whether to trace (:func:`call_parent`'s decision, kept
    for the context), the span's name and attributes, the span started and made current.
    """
    try:
        if not api.loaded and call_parent() is None:  # loads the API
            return None
        parent = api.get_current()
        decided = _decided
        if decided[0] is not parent:
            decided = _decide(parent)
        if not decided[1]:
            return None
        try:
            found = target._spans.get(key)  # noqa: SLF001 - this module's class
        except TypeError:  # unhashable
            found = None
        name, span_attributes = found or make(target, key)
        tracer = _tracer_names.get(library) or _tracer_name(library)
        span = spans.new_span(tracer, name, _CLIENT, parent, span_attributes)
        # DbCall.__init__, inline.
        call = _new_call(DbCall)
        call.span = span
        call._ended = False  # noqa: SLF001 - this module's class
        call.library = library
        call.comment = decided[2]
        call.context = None  # not kept: it holds the call (a cycle)
        # One context: the span current, the call marked as in progress; then one attach.
        call._token = api.set_current(api.with_span(span, parent, api.IN_DB_CALL, call))  # noqa: SLF001
        return call
    except Exception as exc:  # noqa: BLE001 - never fail the app's query
        spans.report(exc, DbCall.WHAT, "the query", "db-span")
        return None


# SQL texts a Target keeps the span of under the text itself (start_cached); a longer one
# is kept under its Statement (Target.span_of), whose cache holds texts of any length.
KEPT_TEXT_CHARS = 4096


def query_span(target: Target, sql: object) -> tuple[str, dict[str, object]]:
    """The name and attributes of the span of a statement ``sql`` alone (a str or bytes,
    see :func:`statement`) on ``target``: ``make`` for :func:`start_cached`. Kept under
    the text when it is a str or bytes of at most :data:`KEPT_TEXT_CHARS` characters.
    Longer texts are kept under their :class:`Statement` while it is cached; others (an
    unhashable bytearray, a text longer than the statement cache holds) not at all.
    Raises what :func:`_span_of` raises."""
    found = statement(sql, target.system)
    if found is None:
        return target.system, target.attributes  # as start() makes it without a statement
    kind = sql.__class__
    if kind is str or kind is bytes:
        size = len(sql)  # type: ignore[arg-type]
        if size <= KEPT_TEXT_CHARS:
            made = _span_of(target, found, None, None, None, None, None, None)
            target.keep(sql, made)
            return made
        if size <= _CACHED_CHARS:  # its Statement is cached: the same object for the same text
            return target.span_of(found)
    return _span_of(target, found, None, None, None, None, None, None)  # not kept


def _tracer_name(library: str) -> str:
    name = _tracer_names[library] = TRACER_PREFIX + library
    if not _compiled_tried:
        _load_compiled()
    return name


# The compiled usual call (autotrace._speedups.db_call, where it is built): what a sync
# hook's wrapper calls first, ``compiled_call(library, target, key, original, self, args,
# kwargs)``. It does :func:`start_cached`'s work when everything is known already (this
# context's decision, the span's name and attributes kept by ``target`` under ``key``, the
# tracer, the compiled span start; no sqlcommenter comment), runs ``original(self, *args,
# **kwargs)`` in the span and closes the call (:meth:`DbCall.fail` for an exception, which
# goes on untouched), or runs ``original`` alone when the decision is "no span". Anything
# else returns :data:`NOT_HANDLED` before ``original`` is called: the hook then takes the
# Python way (start_cached, then the call; the reference, which fills what was missing).
# None until the first span of a database library, and where the extension is not built.
compiled_call: Callable[..., Any] | None = None
NOT_HANDLED: object = object()
_compiled_tried = False


def _load_compiled() -> None:
    global compiled_call, _compiled_tried
    _compiled_tried = True
    try:
        from .otlp_encode import speedups

        register = getattr(speedups, "register_db_call", None)
        if register is not None and register(globals(), vars(api), vars(spans), DbCall, SpanHandle, Target, NOT_HANDLED):
            compiled_call = speedups.db_call
    except Exception as exc:  # noqa: BLE001 - the Python way serves
        spans.report(exc, DbCall.WHAT, "the query", "db-compiled")


def current() -> DbCall | None:
    """The database call in progress in this context, if a hook started one (or a message
    send, :func:`autotrace.messaging.send`: the broker's commands under it are its lower layer)."""
    if not api.loaded:
        return None
    return api.get_current().get(api.IN_DB_CALL)


# Modules whose exceptions carry a MySQL error number as their first argument.
MYSQL_MODULES = frozenset(("pymysql", "MySQLdb", "mysql", "aiomysql", "asyncmy"))


def status_code_of(exc: BaseException) -> str | None:
    """``db.response.status_code`` of a database error, None if it carries none.

    A MySQL driver's error number (``args[0]`` of PyMySQL's, mysqlclient's ...: MySQL's
    semantic conventions want the number, not the SQLSTATE newer drivers also carry), the
    SQLSTATE (``sqlstate`` of psycopg 3 and asyncpg, ``pgcode`` of psycopg2), SQLite's
    error name (``sqlite_errorname``, Python 3.11+), the prefix of a Redis error reply
    (``WRONGTYPE``, ``NOSCRIPT``); for an exception that carries none, that of the driver
    error it wraps (SQLAlchemy's ``orig``, Django's ``__cause__``). Never raises.
    """
    code = _own_status_code(exc)
    if code is None:
        # An ORM's exception wrapping the driver's: SQLAlchemy's ``orig``, Django's cause.
        cause = getattr(exc, "orig", None) or exc.__cause__
        if isinstance(cause, BaseException) and cause is not exc:
            code = _own_status_code(cause)
    return code


def _own_status_code(exc: BaseException) -> str | None:
    try:
        top = (type(exc).__module__ or "").partition(".")[0]
        if top in MYSQL_MODULES:
            args = exc.args
            if args and isinstance(args[0], int) and not isinstance(args[0], bool):
                return str(args[0])
        for attribute in ("sqlstate", "pgcode", "sqlite_errorname"):
            value = getattr(exc, attribute, None)
            if isinstance(value, str) and value:
                return value
        if top in ("redis", "valkey"):
            return _redis_status_code(exc)
    except Exception:  # noqa: BLE001 - an exception whose attributes fail
        pass
    return None


# Error classes redis-py makes of a reply whose prefix it strips from the message
# (versions without ``status_code`` on the exception).
_REDIS_PREFIX_OF_CLASS = {
    "ExecAbortError": "EXECABORT",
    "NoScriptError": "NOSCRIPT",
    "ReadOnlyError": "READONLY",
    "BusyLoadingError": "LOADING",
    "OutOfMemoryError": "OOM",
    "NoPermissionError": "NOPERM",
    "MovedError": "MOVED",
    "AskError": "ASK",
    "TryAgainError": "TRYAGAIN",
    "ClusterDownError": "CLUSTERDOWN",
    "ClusterCrossSlotError": "CROSSSLOT",
    "MasterDownError": "MASTERDOWN",
}
# A Redis error reply's prefix: an upper-case word (``WRONGTYPE``, ``ERR``, ``NOSCRIPT``).
_REDIS_ERROR_PREFIX = re.compile(r"[A-Z][A-Z0-9_-]*\Z")


def _redis_status_code(exc: BaseException) -> str | None:
    """A Redis error reply's prefix (``WRONGTYPE``, ``ERR``); None for an error with no
    reply (a connection error, a timeout, ``WatchError``)."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    names = [cls.__name__ for cls in type(exc).__mro__]
    if "ResponseError" not in names:
        return None
    prefix = _REDIS_PREFIX_OF_CLASS.get(names[0])
    if prefix is not None:
        return prefix
    message = str(exc)
    if "of pipeline caused error: " in message:  # redis-py's note on a pipeline's failed command
        message = message.rpartition("of pipeline caused error: ")[2]
    first = message.partition(" ")[0]
    return first if _REDIS_ERROR_PREFIX.match(first) else "ERR"  # redis-py strips "ERR " from the rest


# -- sqlcommenter ---------------------------------------------------------------------


def with_comment(sql: str, call: DbCall | None, *, percent_format: bool = False) -> str:
    """``sql`` with the span's context appended as a sqlcommenter comment, when asked.

    Only with ``AUTOTRACE_SQL_COMMENT=true`` and a ``call``: ``sql + " /*traceparent='00-...'*/"``
    (and ``tracestate`` when the span has one): keys sorted, values URL-encoded and
    quoted, as the sqlcommenter spec says; before a final ``;``. A statement that holds a
    comment already is left as it is (the spec: it may be a hint). Otherwise ``sql``
    itself is returned (the same object). ``str`` and ``bytes`` statements (the same type
    back); anything else is returned as it is. Never raises.

    ``percent_format``: the driver will %-format the text (``pyformat`` drivers given
    parameters: psycopg, PyMySQL, mysqlclient): a ``%`` of the comment (a URL-encoded
    ``tracestate``) is written ``%%``, so the server gets the comment as made.

    Not for a statement that must stay byte-identical (a prepared statement reused, a
    driver's statement cache, ``executemany``): the comment makes each text unique.
    """
    if call is None or not (_settings or settings()).sql_comment:
        return sql
    try:
        if isinstance(sql, bytes):
            text = sql.decode("utf-8")
        elif isinstance(sql, str):
            text = sql
        else:
            return sql
        if "/*" in text or "--" in text:
            return sql
        comment = _comment(call)
        if comment is None:
            return sql
        if percent_format:
            comment = comment.replace("%", "%%")
        body = text.rstrip()
        if body.endswith(";"):
            commented = f"{body[:-1].rstrip()} {comment};"
        else:
            commented = f"{body} {comment}"
        return commented.encode("utf-8") if isinstance(sql, bytes) else commented
    except Exception as exc:  # noqa: BLE001 - the statement goes as written
        call.report(exc)
        return sql


def _comment(call: DbCall) -> str | None:
    from urllib.parse import quote

    context = call.span.get_span_context()
    if not context.is_valid:
        return None
    pairs = {"traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags) & 0xFF:02x}"}
    state = context.trace_state
    if state:
        pairs["tracestate"] = state.to_header()
    fields = []
    for key in sorted(pairs):
        value = quote(pairs[key], safe="").replace("'", "\\'")
        fields.append(f"{quote(key, safe='')}='{value}'")
    return "/*" + ",".join(fields) + "*/"


# -- wrapping a call ------------------------------------------------------------------


# run(call, original, *args, **kwargs): ``original`` run inside a started call (see spans.run).
run = spans.run


async def run_async(db_call: DbCall, original: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """:func:`run` for a coroutine function: awaited inside ``db_call``."""
    try:
        result = await original(*args, **kwargs)
    except BaseException as exc:
        db_call.fail(exc)
        db_call.close()
        raise
    db_call.close()
    return result


def connect(
    library: str,
    target: Target,
    original: Callable[..., Any],
    args: tuple,
    kwargs: Mapping[str, Any],
    connected: Callable[[Any], Target | None] | None = None,
    failed: Callable[[], Target | None] | None = None,
) -> Any:
    """Run a driver's connect, ``original(*args, **kwargs)``, in a span named ``connect``
    (:func:`start`: only under a current span), ``target`` what is known before it. Once
    connected, the span takes the attributes of ``connected(result)`` (the server's address
    and database as the connection says them); when the connect fails, of ``failed()`` (what
    the parameters name). The result or exception untouched."""
    db_call = start(library, target, name="connect")
    if db_call is None:
        return original(*args, **kwargs)
    try:
        result = original(*args, **kwargs)
    except BaseException as exc:
        _set_target(db_call, failed)
        db_call.fail(exc)
        db_call.close()
        raise
    _set_target(db_call, connected, result)
    db_call.close()
    return result


async def connect_async(
    library: str,
    target: Target,
    original: Callable[..., Awaitable[Any]],
    args: tuple,
    kwargs: Mapping[str, Any],
    connected: Callable[[Any], Target | None] | None = None,
    failed: Callable[[], Target | None] | None = None,
) -> Any:
    """:func:`connect` for a coroutine function."""
    db_call = start(library, target, name="connect")
    if db_call is None:
        return await original(*args, **kwargs)
    try:
        result = await original(*args, **kwargs)
    except BaseException as exc:
        _set_target(db_call, failed)
        db_call.fail(exc)
        db_call.close()
        raise
    _set_target(db_call, connected, result)
    db_call.close()
    return result


def _set_target(db_call: DbCall, target_of: Callable[..., Target | None] | None, *args: Any) -> None:
    if target_of is None:
        return
    try:
        made = target_of(*args)
        if made is not None:
            db_call.set_attributes(made.attributes)
    except Exception as exc:  # noqa: BLE001 - the span keeps what it has
        db_call.report(exc)


class Recording:
    """``with db.recording(call):``: see :func:`recording`."""

    __slots__ = ("call", "ok")

    def __init__(self, call: DbCall | None, ok: tuple[type[BaseException], ...] = ()) -> None:
        self.call = call
        self.ok = ok

    def __enter__(self) -> DbCall | None:
        return self.call

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> bool:
        call = self.call
        if call is not None:
            if exc is not None and not isinstance(exc, self.ok):
                call.fail(exc)
            call.close()
        return False  # the exception goes on, untouched


def recording(call: DbCall | None, ok: tuple[type[BaseException], ...] = ()) -> Recording:
    """A context manager: the block runs inside ``call`` (started), its exception recorded
    (:meth:`DbCall.fail`; not those of the ``ok`` types, e.g. ``StopAsyncIteration`` for a
    fetch that found no rows) and re-raised untouched, the call closed when the block ends.
    Nothing for None. For what :func:`run` cannot wrap: a driver's context manager (a COPY
    that lasts a ``with`` block), a generator's first row."""
    return Recording(call, ok)


def call(
    library: str,
    target: Target,
    statement: Statement | None,
    original: Callable[..., Any],
    args: tuple,
    kwargs: Mapping[str, Any],
    **start_kwargs: Any,
) -> Any:
    """Run ``original(*args, **kwargs)`` in a span (:func:`start`): its result or exception, untouched."""
    db_call = start(library, target, statement, **start_kwargs)
    if db_call is None:
        return original(*args, **kwargs)
    return run(db_call, original, *args, **kwargs)


async def call_async(
    library: str,
    target: Target,
    statement: Statement | None,
    original: Callable[..., Awaitable[Any]],
    args: tuple,
    kwargs: Mapping[str, Any],
    **start_kwargs: Any,
) -> Any:
    """:func:`call` for a coroutine function: awaited in the span."""
    db_call = start(library, target, statement, **start_kwargs)
    if db_call is None:
        return await original(*args, **kwargs)
    return await run_async(db_call, original, *args, **kwargs)


def batch_size(rows: object) -> int | None:
    """``db.operation.batch.size`` of an ``executemany``'s parameter sets: how many there
    are when the sequence says it (``len``); None for an iterator (never consumed to count it)."""
    try:
        return len(rows)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001
        return None


def statement_of(query: object, connection: object) -> Statement | None:
    """:func:`statement` of a query as the app gave it: a str or bytes, or a composed SQL
    object with ``as_string(connection)`` (psycopg's and psycopg2's ``sql.SQL``,
    ``sql.Composed``: the text the driver sends; it quotes with the connection but talks to
    no server). None when ``as_string`` fails (the driver's execute says what is wrong)."""
    if query.__class__ is str:
        return statement(query)
    as_string = getattr(query, "as_string", None)
    if as_string is None:
        return statement(query)
    try:
        return statement(as_string(connection))
    except Exception:  # noqa: BLE001
        return None


def suppress() -> object:
    """Suppress instrumentation in this context: no span starts (:func:`start` gives None)
    until :func:`autotrace.api.detach` of the token returned (None if that failed). Never raises.

    For work a library does for itself around the app's call (a pool's workers, its reset
    or ping queries, a connection's housekeeping), which would otherwise be spans of the
    request that happened to start it.
    """
    try:
        if not api.loaded:
            api.load()
            if not api.loaded:
                return None
        return api.attach(api.context.set_value(api.SUPPRESS_INSTRUMENTATION, True))
    except Exception:  # noqa: BLE001 - it runs regardless
        return None


def wrap_suppressed(original: Callable[..., Any]) -> Callable[..., Any]:
    """A wrapper (for :func:`autotrace.patching.wrap_function`): ``original`` run with
    instrumentation suppressed (:func:`suppress`)."""

    def suppressed(*args: Any, **kwargs: Any) -> Any:
        token = suppress()
        try:
            return original(*args, **kwargs)
        finally:
            api.detach(token)

    return suppressed


def wrap_suppressed_async(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """:func:`wrap_suppressed` for a coroutine function."""

    async def suppressed(*args: Any, **kwargs: Any) -> Any:
        token = suppress()
        try:
            return await original(*args, **kwargs)
        finally:
            api.detach(token)

    return suppressed
