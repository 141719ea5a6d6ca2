"""The SQL sanitizer and the summary: examples, properties over random SQL (hypothesis), 1 MB statements.

Properties (no deadline: nothing here is timed): it never raises; no value written as a literal (strings of every quoting,
numbers, comments' contents) survives; placeholders and identifiers are kept as written;
sanitizing twice changes nothing. The 1 MB statements are shapes that make a scanner
that looks back or re-scans quadratic (doubled quotes, backslash runs, unclosed
dollar quotes, unclosed IN lists, thousands of tables): at 1 MB a quadratic scan would
not finish in any test run, so finishing is the check (no timing is asserted).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotrace import config, db

SECRET = "SEKRIT"  # in every generated literal: it must never reach the output
SECRET_NUMBER = "8675309"


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    for name in ("AUTOTRACE_DB_STATEMENT", "AUTOTRACE_SQL_COMMENT", "AUTOTRACE_DB_ROOT_SPANS"):
        monkeypatch.delenv(name, raising=False)
    config.reset_db_settings()
    yield
    config.reset_db_settings()


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("SELECT * FROM t WHERE a = 'x' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("SELECT 'it''s', E'it\\'s', e'\\\\', N'n', X'0aF', B'0101', x'ff'", "SELECT ?, ?, ?, ?, ?, ?, ?"),
        ("SELECT $$a 'b' c$$, $fn$ x $$ y $fn$, $1", "SELECT ?, ?, $1"),
        ("SELECT 1, 1.5, .5, 1e10, 1.5E-3, 0x1F, -7", "SELECT ?, ?, ?, ?, ?, ?, -?"),
        ("SELECT TRUE, false, NULL, null", "SELECT TRUE, false, NULL, null"),
        ("SELECT * FROM t WHERE id IN (1, 2, 3) AND n NOT IN ('a','b')", "SELECT * FROM t WHERE id IN (?) AND n NOT IN (?)"),
        ("SELECT * FROM t WHERE id IN (%s, %s)", "SELECT * FROM t WHERE id IN (%s, %s)"),
        ("SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = 1)", "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE x = ?)"),
        ("SELECT %s, %(name)s, $2, ?, ?3, :name, @v", "SELECT %s, %(name)s, $2, ?, ?3, :name, @v"),
        ("SELECT a::int, '1'::text", "SELECT a::int, ?::text"),
        ("SELECT 1 -- a note 'x'\nFROM t", "SELECT ? FROM t"),
        ("SELECT /* 42 /* nested */ 'x' */ 1", "SELECT ?"),
        ("SELECT t1.c2, \"Weird \"\"Name\"\"\", `tick` FROM s.t1", "SELECT t1.c2, \"Weird \"\"Name\"\"\", `tick` FROM s.t1"),
        ("SELECT a FROM t WHERE b = 'unterminated AND c = 5", "SELECT a FROM t WHERE b = ?"),
        ("SELECT a FROM t WHERE b = $q$ never closed", "SELECT a FROM t WHERE b = ?"),
        ('SELECT "unbalanced FROM t', "SELECT ?"),
        ("SELECT a$b FROM t", "SELECT a$b FROM t"),
        ("", ""),
    ],
)
def test_examples(sql, expected):
    assert db.sanitize(sql) == expected


def test_mysql_examples():
    assert db.sanitize('SELECT "a", \'b\\\'c\' # note 42\nFROM `t`', "mysql") == "SELECT ?, ? FROM `t`"
    assert db.sanitize("SELECT $$x$$", "mariadb") == "SELECT $$x$$"  # no dollar quoting in MySQL


@pytest.mark.parametrize(
    "sql, operation, collection, summary",
    [
        ("SELECT * FROM users WHERE id = 1", "SELECT", "users", "SELECT users"),
        ("select a, b from public.users u where u.id = 1", "SELECT", "public.users", "SELECT public.users"),
        ('SELECT "auth_user"."id" FROM "auth_user" WHERE "auth_user"."id" = %s', "SELECT", '"auth_user"', 'SELECT "auth_user"'),
        ("SELECT * FROM a JOIN b ON a.id = b.a_id LEFT OUTER JOIN c ON c.id = b.c", "SELECT", None, "SELECT a b c"),
        ("SELECT * FROM a x, b AS y WHERE x.id = y.id", "SELECT", None, "SELECT a b"),
        ("INSERT INTO orders (a, b) VALUES (%s, %s) RETURNING id", "INSERT", "orders", "INSERT orders"),
        ("INSERT OR REPLACE INTO kv VALUES (?, ?)", "INSERT", "kv", "INSERT kv"),
        ("REPLACE INTO kv VALUES (1, 2)", "REPLACE", "kv", "REPLACE kv"),
        ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2", "INSERT", "t", "INSERT t"),
        ("INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = 2", "INSERT", "t", "INSERT t"),
        ("UPDATE inventory SET n = n - 1 WHERE id = 3", "UPDATE", "inventory", "UPDATE inventory"),
        ("UPDATE OR IGNORE t SET a = 1", "UPDATE", "t", "UPDATE t"),
        ("DELETE FROM sessions WHERE expires < now()", "DELETE", "sessions", "DELETE sessions"),
        ("SELECT * FROM t WHERE id = 1 FOR UPDATE", "SELECT", "t", "SELECT t"),
        ("CREATE TABLE IF NOT EXISTS shop.items (id int)", "CREATE TABLE", "shop.items", "CREATE TABLE shop.items"),
        ("CREATE TEMPORARY TABLE tmp (id int)", "CREATE TABLE", "tmp", "CREATE TABLE tmp"),
        ("DROP TABLE old", "DROP TABLE", "old", "DROP TABLE old"),
        ("ALTER TABLE t ADD COLUMN c int", "ALTER TABLE", "t", "ALTER TABLE t"),
        ("CREATE UNIQUE INDEX i ON t (a)", "CREATE INDEX", None, "CREATE INDEX"),
        ("TRUNCATE TABLE logs", "TRUNCATE", "logs", "TRUNCATE logs"),
        ("COPY t FROM STDIN", "COPY", "t", "COPY t"),
        ("COPY shop.t (id, name) TO STDOUT WITH (FORMAT csv)", "COPY", "shop.t", "COPY shop.t"),
        ("COPY (SELECT name FROM t WHERE id > $1) TO STDOUT", "COPY", "t", "COPY SELECT t"),
        ("COPY (SELECT * FROM a JOIN b ON a.id = b.id) TO STDOUT", "COPY", None, "COPY SELECT a b"),
        ("CREATE PROCEDURE p (IN a INT) BEGIN SELECT a FROM t; END", "CREATE PROCEDURE", None, "CREATE PROCEDURE p"),
        ("CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", "CREATE FUNCTION", None, "CREATE FUNCTION f"),
        ("DROP PROCEDURE IF EXISTS shop.p", "DROP PROCEDURE", None, "DROP PROCEDURE shop.p"),
        ("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent", "SELECT", None, "SELECT orders SELECT recent"),
        ("INSERT INTO archive SELECT * FROM orders", "INSERT", None, "INSERT archive SELECT orders"),
        ("SELECT * FROM t WHERE id IN (SELECT t_id FROM u)", "SELECT", None, "SELECT t SELECT u"),
        ("SELECT EXTRACT(YEAR FROM created) FROM t", "SELECT", "t", "SELECT t"),
        ("SELECT a IS DISTINCT FROM b FROM t", "SELECT", "t", "SELECT t"),
        ("SELECT * FROM generate_series(1, 10)", "SELECT", None, "SELECT"),
        ("SELECT * FROM (SELECT * FROM t) sub", "SELECT", "t", "SELECT SELECT t"),
        ("SELECT 1", "SELECT", None, "SELECT"),
        ("BEGIN", "BEGIN", None, "BEGIN"),
        ("PRAGMA journal_mode=WAL", "PRAGMA", None, "PRAGMA"),
        ("SELECT 1; SELECT 2", None, None, "SELECT SELECT"),
        ("/* leading */ SELECT x FROM t", "SELECT", "t", "SELECT t"),
        ("frobnicate everything", None, None, None),
        ("", None, None, None),
    ],
)
def test_summary(sql, operation, collection, summary):
    found = db.statement(sql)
    assert (found.operation, found.collection, found.summary) == (operation, collection, summary)


def test_summary_is_capped_at_whole_words():
    sql = "SELECT * FROM " + ", ".join(f"table_{i}" for i in range(100))
    summary = db.statement(sql).summary
    assert len(summary) <= db.MAX_SUMMARY and summary.startswith("SELECT table_0 table_1")
    assert summary.split()[-1].startswith("table_")


# -- properties ---------------------------------------------------------------------------

_word = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(lambda w: SECRET not in w.upper())
_keyword = st.sampled_from(["SELECT", "FROM", "WHERE", "AND", "IN", "NOT", "INSERT", "INTO", "VALUES", "UPDATE", "SET", "NULL", "TRUE", "JOIN", "ON", "AS"])
_punct = st.sampled_from([",", "(", ")", "=", "<", ">", "*", ".", ";", "::", "+", "-", "||"])
_placeholder = st.sampled_from(["%s", "%(name)s", "$1", "$23", "?", "?2", ":name"])
_filler = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="'\\$*/-\n"), max_size=6)


@st.composite
def _literal(draw) -> str:
    inner = draw(_filler)
    secret = SECRET + inner
    shape = draw(st.sampled_from(["plain", "doubled", "e", "dollar", "tag", "n", "number", "hex", "decimal", "exp"]))
    if shape == "plain":
        return "'" + secret.replace("'", "''") + "'"
    if shape == "doubled":
        return "'" + secret + "''" + secret + "'"
    if shape == "e":
        return "E'" + secret + "\\'" + secret + "\\\\'"
    if shape == "dollar":
        return "$$" + secret + "'" + "$$"
    if shape == "tag":
        return "$tag$" + secret + "$$" + "$tag$"
    if shape == "n":
        return "N'" + secret + "'"
    if shape == "number":
        return SECRET_NUMBER
    if shape == "hex":
        return "0x" + SECRET_NUMBER
    if shape == "decimal":
        return SECRET_NUMBER + "." + SECRET_NUMBER
    return SECRET_NUMBER + "e+" + SECRET_NUMBER


_comment = st.builds(lambda body: "/* " + body + " */", st.sampled_from([SECRET, SECRET_NUMBER, "'" + SECRET, "x /* " + SECRET + " */ y"])) | st.builds(
    lambda body: "-- " + body + "\n", st.sampled_from([SECRET, "'" + SECRET, SECRET_NUMBER])
)
_unbalanced = st.sampled_from(["'", "E'", "$$", "$q$", '"', "`"]).map(lambda opener: opener + SECRET + " " + SECRET_NUMBER)

_part = st.one_of(_keyword, _word, _punct, _placeholder, _literal(), _comment)
_sql = st.lists(_part, max_size=30).map(" ".join)
# After the unbalanced quote, nothing that could close it: words, numbers, the secret.
_tail = st.lists(st.one_of(_keyword, _word, st.just(SECRET), st.just(SECRET_NUMBER), st.sampled_from([",", "(", ")", "="])), max_size=10).map(" ".join)
_sql_unbalanced = st.tuples(_sql, _unbalanced, _tail)


def _no_secret(text: str) -> bool:
    return SECRET not in text.upper() and SECRET_NUMBER not in text


@given(_sql)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_literal_or_comment_survives(sql):
    assert _no_secret(db.sanitize(sql))


@given(_sql_unbalanced)
@settings(max_examples=300, deadline=None)
def test_an_unbalanced_quote_makes_the_rest_one_placeholder(parts):
    head, unbalanced, tail = parts
    out = db.sanitize(f"{head} {unbalanced} {tail}")
    assert _no_secret(out)
    assert out == (db.sanitize(head) + " ?").strip()


@given(st.lists(st.one_of(_keyword, _word, _punct, _placeholder, _literal()), max_size=30))
@settings(max_examples=300, deadline=None)
def test_placeholders_and_words_are_kept_in_order(parts):
    out = db.sanitize(" ".join(parts)).split()
    kept = [p for p in parts if not p.startswith(("'", "E'", "N'", "$$", "$tag$", "0x")) and not p[:1].isdigit()]
    # Every word, keyword, placeholder and punctuation token is there, in order (a list
    # of literals in IN (...) became "(?)": compare with that folded away).
    folded = " ".join(out).replace("(?)", "( )")
    position = 0
    for part in kept:
        found = folded.find(part, position)
        if part in "()" and found < 0:
            continue
        assert found >= 0, (part, parts, out)
        position = found + len(part) if part not in "()" else position


@given(st.text(max_size=200))
@settings(max_examples=500, deadline=None)
def test_any_text_never_raises_and_sanitizing_twice_changes_nothing(text):
    for system in (None, "mysql"):
        once = db.sanitize(text, system)
        assert db.sanitize(once, system) == once
        found = db.statement(text, system)
        assert found is not None and isinstance(found.text, str)


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_bytes_give_a_statement(data):
    assert db.statement(data) is not None


@given(_sql)
@settings(max_examples=200, deadline=None)
def test_summary_holds_no_literal(sql):
    found = db.statement(sql)
    for value in (found.summary, found.collection, found.operation):
        assert value is None or _no_secret(value)


# -- 1 MB statements ----------------------------------------------------------------------

MB = 1 << 20


@pytest.mark.parametrize(
    "shape",
    [
        "INSERT INTO t (a, b, c) VALUES " + ", ".join(["('it''s', 1.5e3, $$x$$)"] * (MB // 24)),
        "SELECT '" + "''" * (MB // 2) + "'",  # one string of doubled quotes
        "SELECT E'" + "\\\\" * (MB // 2) + "'",  # one string of escaped backslashes
        "SELECT E'" + "\\" * MB,  # backslashes, never closed
        "SELECT '" + "x" * MB,  # never closed
        "SELECT $a$" + "$a" * (MB // 2),  # a dollar quote never closed, its tag half-repeated
        "SELECT /*" + "/*" * (MB // 2),  # nested comments never closed
        "SELECT * FROM t WHERE a IN (" + "1, " * (MB // 3),  # an IN list never closed
        "SELECT * FROM t WHERE a IN (" + "1, " * (MB // 3) + ")",
        "SELECT * FROM " + ", ".join(f"t{i}" for i in range(MB // 8)),
        "(" * MB,
        "SELECT 1; " * (MB // 10),
        "-- " + "x" * MB,
    ],
    ids=lambda shape: shape[:24],
)
def test_a_1_mb_statement_is_read_in_one_pass(shape):
    found = db.statement(shape)
    assert found is not None
    assert len(found.text) <= db.MAX_QUERY_TEXT
    assert _no_secret(found.text)
    if found.summary is not None:
        assert len(found.summary) <= db.MAX_SUMMARY


def test_a_1_mb_insert_keeps_its_summary():
    sql = "INSERT INTO t (a) VALUES " + ", ".join(["('v')"] * (MB // 6))
    found = db.statement(sql)
    assert (found.operation, found.collection, found.summary) == ("INSERT", "t", "INSERT t")
    assert found.text.startswith("INSERT INTO t (a) VALUES (?), (?)") and found.text.endswith(db.TRUNCATED)


def test_the_lexers_expressions_cannot_backtrack():
    """Each regular expression is a single pass: no quantified group holding a quantifier."""
    import re

    for name in dir(db):
        value = getattr(db, name)
        if isinstance(value, re.Pattern):
            assert not re.search(r"\((?:[^()\\]|\\.)*[*+}](?:[^()\\]|\\.)*\)[*+{]", value.pattern), (name, value.pattern)
