"""redis-py: one CLIENT span per command, one per pipeline, against a real Redis server.

In process, with the in-memory exporter and the hook applied to redis.client,
redis.asyncio.client, redis.cluster and redis.asyncio.cluster as the registry would.
The same calls under ``autotrace run`` are in integration/test_db_redis_agent.py.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import db, patching
from autotrace.hooks import redis as redis_hook
from db_checks import db_env  # noqa: F401 (a fixture)


@pytest.fixture
def traced(spans, db_env):
    """The redis hooks applied (as under the agent), the originals put back after; the exporter."""
    mark = len(patching.history)
    redis_hook.patch(redis.client)
    redis_hook.patch_asyncio(redis.asyncio.client)
    redis_hook.patch_cluster(redis.cluster)
    redis_hook.patch_asyncio_cluster(redis.asyncio.cluster)
    yield spans
    patching.undo(mark)


def no_retry():
    """A client's retry policy that does not retry (an error is at once the app's)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


@pytest.fixture
def client(redis_server):
    connection = redis.Redis(host=redis_server.host, port=redis_server.port, db=0, retry=no_retry())
    yield connection
    connection.close()


def key(prefix: str = "k") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


def redis_spans(exporter) -> list:
    return [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == "autotrace.db.redis"]


def assert_command_span(span, operation: str, text: str | None, port: int, database: str = "0") -> None:
    assert span.name == operation
    assert span.kind is SpanKind.CLIENT
    expected = {
        "db.system.name": "redis",
        "db.namespace": database,
        "server.address": "127.0.0.1",
        "server.port": port,
        "db.operation.name": operation,
    }
    if text is not None:
        expected["db.query.text"] = text
    assert dict(span.attributes) == expected


def test_each_command_is_a_client_span_under_the_request(traced, client, redis_server, parent):
    name = key("user")
    before = context.get_current()
    assert client.set(name, "secret-value") is True
    assert client.get(name) == b"secret-value"
    assert client.delete(name) == 1
    assert context.get_current() is before

    spans = redis_spans(traced)
    assert [s.name for s in spans] == ["SET", "GET", "DEL"]
    set_span, get_span, del_span = spans
    assert_command_span(set_span, "SET", f"SET {name} ?", redis_server.port)
    assert_command_span(get_span, "GET", f"GET {name}", redis_server.port)
    assert_command_span(del_span, "DEL", f"DEL {name}", redis_server.port)
    for span in spans:
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == parent.get_span_context().trace_id
        assert span.status.status_code is StatusCode.UNSET
        assert "secret-value" not in str(dict(span.attributes))
    assert len(traced.get_finished_spans()) == 3


def test_values_are_dropped_by_default_every_argument_after_the_key(traced, client, parent):
    name = key()
    client.set(name, "v", ex=60, nx=True)
    client.hset(name + "h", mapping={"field": "value", "other": "x"})
    client.mget(name, name + "x")
    client.publish(name + "chan", "a message")
    texts = [s.attributes["db.query.text"] for s in redis_spans(traced)]
    assert texts == [
        f"SET {name} ? ? ? ?",
        f"HSET {name}h ? ? ? ?",
        f"MGET {name} ?",
        f"PUBLISH {name}chan ?",
    ]
    assert [s.name for s in redis_spans(traced)] == ["SET", "HSET", "MGET", "PUBLISH"]
    client.delete(name, name + "h")


def test_raw_keeps_every_argument_and_off_records_no_text(traced, client, parent, db_env):
    name = key()
    db_env(AUTOTRACE_DB_STATEMENT="raw")
    client.set(name, "the-value")
    client.set(name, b"\xffbytes", ex=5)
    db_env(AUTOTRACE_DB_STATEMENT="off")
    client.get(name)
    first, second, third = redis_spans(traced)
    assert first.attributes["db.query.text"] == f"SET {name} the-value"
    assert second.attributes["db.query.text"] == f"SET {name} \ufffdbytes EX 5"
    assert "db.query.text" not in third.attributes
    assert third.attributes["db.operation.name"] == "GET"
    client.delete(name)


def test_the_text_is_capped(traced, client, parent, db_env):
    name = key()
    db_env(AUTOTRACE_DB_STATEMENT="raw")
    client.set(name, "x" * 100_000)
    [span] = redis_spans(traced)
    text = span.attributes["db.query.text"]
    assert len(text) == 2048 and text.startswith(f"SET {name} xxx") and text.endswith("...[truncated]")
    client.delete(name)


@pytest.mark.parametrize("mode", ["sanitized", "raw"])
def test_secrets_are_never_recorded(traced, client, parent, db_env, mode):
    db_env(AUTOTRACE_DB_STATEMENT=mode)
    with pytest.raises(redis.exceptions.RedisError):
        client.execute_command("AUTH", "someone", "hunter2")
    with pytest.raises(redis.exceptions.RedisError):
        client.execute_command("CONFIG", "SET", "no-such-parameter", "hunter2")  # never change the shared server
    texts = [s.attributes["db.query.text"] for s in redis_spans(traced)]
    assert texts == ["AUTH ? ?", "CONFIG ? ? ?"]
    assert all("hunter2" not in str(dict(s.attributes)) for s in redis_spans(traced))


def test_lower_case_commands_are_named_in_upper_case(traced, client, parent):
    assert client.execute_command("ping") is True
    [span] = redis_spans(traced)
    assert span.name == "PING" and span.attributes["db.operation.name"] == "PING"
    assert span.attributes["db.query.text"] == "PING"


def test_an_error_reply_is_recorded_and_the_apps_exception_reraised_untouched(traced, client, parent):
    name = key()
    client.rpush(name, "a")
    with pytest.raises(redis.exceptions.ResponseError) as raised:
        client.get(name)
    assert str(raised.value).startswith("WRONGTYPE")
    with pytest.raises(redis.exceptions.ResponseError) as unknown:
        client.execute_command("NOSUCHCOMMAND", name)
    client.delete(name)

    _, wrongtype, unknown_span, _ = redis_spans(traced)
    assert wrongtype.status.status_code is StatusCode.ERROR
    assert wrongtype.attributes["error.type"] == "redis.exceptions.ResponseError"
    assert wrongtype.attributes["db.response.status_code"] == "WRONGTYPE"
    [event] = wrongtype.events
    assert event.name == "exception"
    assert unknown_span.name == "NOSUCHCOMMAND"
    assert unknown_span.attributes["db.response.status_code"] == "ERR"
    assert "unknown command" in str(unknown.value)


def test_a_connection_error_has_no_status_code(traced, parent):
    from ports import free_port

    closed = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=2, retry=no_retry())
    with pytest.raises(redis.exceptions.ConnectionError):
        closed.get("k")
    [span] = redis_spans(traced)
    assert span.attributes["error.type"] == "redis.exceptions.ConnectionError"
    assert "db.response.status_code" not in span.attributes


def test_pipeline_is_one_span_with_its_size(traced, client, redis_server, parent):
    name = key()
    with client.pipeline(transaction=False) as pipe:
        pipe.set(name, "value").incr(name + "n").get(name)
        assert pipe.execute() == [True, 1, b"value"]
    with client.pipeline() as pipe:  # a transaction by default: MULTI ... EXEC
        pipe.get(name).delete(name, name + "n")
        assert pipe.execute() == [b"value", 2]

    plain, transaction = redis_spans(traced)
    assert plain.name == "PIPELINE" and transaction.name == "MULTI"
    assert plain.attributes["db.operation.name"] == "PIPELINE"
    assert plain.attributes["db.operation.batch.size"] == 3
    assert plain.attributes["db.query.text"] == f"SET {name} ?\nINCRBY {name}n ?\nGET {name}"
    assert plain.attributes["server.port"] == redis_server.port
    assert transaction.attributes["db.operation.name"] == "MULTI"
    assert transaction.attributes["db.operation.batch.size"] == 2
    assert transaction.attributes["db.query.text"] == f"GET {name}\nDEL {name} ?"
    for span in (plain, transaction):
        assert span.parent.span_id == parent.get_span_context().span_id


def test_empty_pipeline_sends_nothing_and_has_no_span(traced, client, parent):
    with client.pipeline() as pipe:
        assert pipe.execute() == []
    assert redis_spans(traced) == []


def test_one_command_pipeline_has_no_batch_size(traced, client, parent):
    with client.pipeline(transaction=False) as pipe:
        pipe.ping()
        pipe.execute()
    [span] = redis_spans(traced)
    assert span.name == "PIPELINE" and "db.operation.batch.size" not in span.attributes


def test_failing_pipeline_command(traced, client, parent):
    name = key()
    client.rpush(name, "a")
    with client.pipeline() as pipe:
        pipe.set(name + "x", "1").get(name)
        with pytest.raises(redis.exceptions.ResponseError):
            pipe.execute()
    with client.pipeline(transaction=False) as pipe:
        pipe.get(name)
        [result] = pipe.execute(raise_on_error=False)
        assert isinstance(result, redis.exceptions.ResponseError)  # the app's results, untouched
    client.delete(name, name + "x")
    _, failed, not_raised, _ = redis_spans(traced)
    assert failed.name == "MULTI" and failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["db.response.status_code"] == "WRONGTYPE"
    assert not_raised.status.status_code is StatusCode.UNSET


def test_watch_commands_are_spans_then_the_transaction_is_one(traced, client, parent):
    name = key()
    client.set(name, "1")
    with client.pipeline() as pipe:
        pipe.watch(name)
        current = int(pipe.get(name))
        pipe.multi()
        pipe.set(name, current + 1)
        assert pipe.execute() == [True]
    assert client.get(name) == b"2"
    client.delete(name)
    names = [s.name for s in redis_spans(traced)]
    assert names == ["SET", "WATCH", "GET", "MULTI", "GET", "DEL"]
    multi = redis_spans(traced)[3]
    assert multi.attributes["db.query.text"] == f"SET {name} ?"


def test_no_span_outside_a_trace_unless_root_spans_are_asked_for(traced, client, db_env, monkeypatch):
    texts = []
    real_text = redis_hook.command_text
    monkeypatch.setattr(redis_hook, "command_text", lambda *args: texts.append(args) or real_text(*args))
    name = key()
    client.set(name, "v")
    with client.pipeline() as pipe:
        pipe.get(name).execute()
    assert redis_spans(traced) == []
    assert texts == []  # a command never traced costs no text (a worker's broker traffic)
    db_env(AUTOTRACE_DB_ROOT_SPANS="true")
    client.get(name)
    [span] = redis_spans(traced)
    assert span.parent is None and span.name == "GET"
    assert len(texts) == 1
    client.delete(name)


def test_no_span_when_suppressed(traced, client, parent, suppressed):
    client.ping()
    assert redis_spans(traced) == []


def test_database_index_and_unix_socket_targets(traced, redis_server, parent):
    other = redis.Redis(host=redis_server.host, port=redis_server.port, db=3)
    try:
        other.ping()
    finally:
        other.close()
    [span] = redis_spans(traced)
    assert span.attributes["db.namespace"] == "3"

    pool = redis.ConnectionPool(connection_class=redis.UnixDomainSocketConnection, path="/run/redis.sock", db=2)
    target = redis_hook.pool_target(pool)
    assert target.attributes == {
        "db.system.name": "redis",
        "db.namespace": "2",
        "server.address": "/run/redis.sock",
        "network.transport": "unix",
    }


def test_target_is_made_once_per_pool(traced, client, parent):
    client.ping()
    target = client.connection_pool.__dict__[redis_hook.TARGET_ATTRIBUTE]
    client.ping()
    assert client.connection_pool.__dict__[redis_hook.TARGET_ATTRIBUTE] is target
    shared = redis.Redis(connection_pool=client.connection_pool)
    shared.ping()
    assert shared.connection_pool.__dict__[redis_hook.TARGET_ATTRIBUTE] is target


def test_a_hook_failure_leaves_the_command_working(traced, client, parent, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("hook bug")

    monkeypatch.setattr(redis_hook, "command_text", broken)
    assert client.ping() is True
    assert redis_spans(traced) == []


# -- asyncio ----------------------------------------------------------------------------


async def close(client) -> None:
    """``aclose()`` (redis-py 5 and later), ``close()`` before."""
    await (client.aclose() if hasattr(client, "aclose") else client.close())


def test_asyncio_commands_and_pipelines_are_spans_of_their_tasks_request(traced, redis_server):
    tracer = trace.get_tracer("test")
    name = key()

    async def request(label: str, client: redis.asyncio.Redis) -> None:
        with tracer.start_as_current_span(f"request {label}"):
            await client.set(f"{name}:{label}", label)
            await asyncio.sleep(0)
            assert await client.get(f"{name}:{label}") == label.encode()
            async with client.pipeline() as pipe:
                pipe.incr(f"{name}:{label}:n").delete(f"{name}:{label}", f"{name}:{label}:n")
                assert await pipe.execute() == [1, 2]

    async def main() -> None:
        client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
        try:
            await asyncio.gather(request("a", client), request("b", client))
            await client.get(name)  # outside any request: no span
        finally:
            await close(client)

    asyncio.run(main())
    finished = traced.get_finished_spans()
    requests = {s.name: s for s in finished if s.name.startswith("request ")}
    spans = redis_spans(traced)
    assert len(spans) == 6
    for label in ("a", "b"):
        request_span = requests[f"request {label}"]
        mine = [s for s in spans if s.parent.span_id == request_span.context.span_id]
        assert [s.name for s in mine] == ["SET", "GET", "MULTI"]
        assert mine[0].attributes["db.query.text"] == f"SET {name}:{label} ?"
        assert mine[2].attributes["db.operation.batch.size"] == 2
        assert mine[0].attributes["server.port"] == redis_server.port


def test_asyncio_error_reraised_untouched(traced, redis_server, parent):
    name = key()

    async def main() -> BaseException:
        client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
        try:
            await client.rpush(name, "a")
            try:
                await client.get(name)
            except redis.exceptions.ResponseError as exc:
                return exc
            finally:
                await client.delete(name)
        finally:
            await close(client)
        raise AssertionError("no error")

    error = asyncio.run(main())
    assert str(error).startswith("WRONGTYPE")
    failed = redis_spans(traced)[1]
    assert failed.name == "GET" and failed.attributes["db.response.status_code"] == "WRONGTYPE"


# -- cluster ----------------------------------------------------------------------------


def test_cluster_commands_and_pipeline_are_one_span_each(traced, redis_cluster_server, db_env):
    cluster = redis.cluster.RedisCluster(host=redis_cluster_server.host, port=redis_cluster_server.port)
    name = key("{user}")
    try:
        with trace.get_tracer("test").start_as_current_span("request") as request:
            assert cluster.set(name, "v") is True
            assert cluster.get(name) == b"v"
            with cluster.pipeline() as pipe:
                pipe.get(name).delete(name)
                assert pipe.execute() == [b"v", 1]
    finally:
        cluster.close()
    spans = redis_spans(traced)
    assert [s.name for s in spans] == ["SET", "GET", "PIPELINE"]
    for span in spans:
        assert span.parent.span_id == request.get_span_context().span_id
        assert span.attributes["db.system.name"] == "redis" and span.attributes["db.namespace"] == "0"
    assert spans[0].attributes["db.query.text"] == f"SET {name} ?"
    assert spans[2].attributes["db.operation.batch.size"] == 2
    assert spans[2].attributes["db.query.text"] == f"GET {name}\nDEL {name}"


def test_asyncio_cluster_commands_and_pipeline_are_one_span_each(traced, redis_cluster_server):
    name = key("{user}")

    async def main() -> None:
        cluster = redis.asyncio.cluster.RedisCluster(host=redis_cluster_server.host, port=redis_cluster_server.port)
        try:
            with trace.get_tracer("test").start_as_current_span("request"):
                await cluster.set(name, "v")
                assert await cluster.get(name) == b"v"
                async with cluster.pipeline() as pipe:
                    pipe.get(name).delete(name)
                    assert await pipe.execute() == [b"v", 1]
        finally:
            await close(cluster)

    asyncio.run(main())
    spans = redis_spans(traced)
    assert [s.name for s in spans] == ["SET", "GET", "PIPELINE"]
    assert spans[2].attributes["db.operation.batch.size"] == 2
    assert spans[2].attributes["db.query.text"] == f"GET {name}\nDEL {name}"


# -- pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "raw", "expected"),
    [
        (("GET", "k"), False, "GET k"),
        (("SET", b"k\xff", b"v"), False, "SET k\ufffd ?"),
        (("SET", "k", 5), True, "SET k 5"),
        (("INCRBYFLOAT", "k", 1.5), True, "INCRBYFLOAT k 1.5"),
        (("PING",), False, "PING"),
        (("AUTH", "pw"), True, "AUTH ?"),
        (("HELLO", 3, "AUTH", "u", "pw"), False, "HELLO ? ? ? ?"),
        (("EVAL", "return 1", 0), False, "EVAL ? ?"),
        (("SET", object(), "v"), True, "SET ? v"),
    ],
)
def test_command_text(args, raw, expected):
    name, hidden = redis_hook.command_name(args[0])
    assert redis_hook.command_text(name, args, hidden, raw) == expected


def test_status_code_of_versions_that_strip_the_prefix():
    from redis.exceptions import ExecAbortError, ResponseError, WatchError

    assert db.status_code_of(ResponseError("WRONGTYPE Operation against a key")) == "WRONGTYPE"
    assert db.status_code_of(ResponseError("unknown command 'X'")) == "ERR"
    assert db.status_code_of(ExecAbortError("Transaction discarded")) == "EXECABORT"
    assert db.status_code_of(ResponseError("Command # 1 (GET k) of pipeline caused error: WRONGTYPE x")) == "WRONGTYPE"
    assert db.status_code_of(WatchError("watched key changed")) is None
    assert db.status_code_of(ValueError("x")) is None


# -- the span of a command, kept by the target ----------------------------------------------


def test_a_commands_span_is_kept_under_its_arguments_only_when_they_make_its_text(traced, client, parent):
    first, second = key("user"), key("user")
    client.set(first, "v1")
    client.set(first, "v2")
    client.get(first)
    client.get(second)
    client.get(first)
    texts = [s.attributes["db.query.text"] for s in redis_spans(traced)]
    assert texts == [f"SET {first} ?", f"SET {first} ?", f"GET {first}", f"GET {second}", f"GET {first}"]
    target = client.connection_pool.__dict__[redis_hook.TARGET_ATTRIBUTE]
    assert target.kept(("GET", first))[1]["db.query.text"] == f"GET {first}"
    assert target.kept(("GET", second))[1]["db.query.text"] == f"GET {second}"
    assert target.kept(("SET", first, "v1")) is None  # its values are in the arguments: never kept
    assert target.kept("GET") == ("GET", {**target.attributes, "db.operation.name": "GET"})  # the command's own


def test_no_secret_or_non_text_argument_is_kept(traced, parent):
    target = db.Target("redis", "0")
    for args in (("AUTH", "pw"), ("GET", 1), ("GET", True), ("GET", 1.0), ("GET", "k")):
        call = db.start_cached("redis", target, args, redis_hook.command_span)
        call.close()
    texts = [s.attributes["db.query.text"] for s in redis_spans(traced)]
    assert texts == ["AUTH ?", "GET 1", "GET True", "GET 1.0", "GET k"]  # 1 == True == 1.0: each its own
    assert [key for key in target._spans if isinstance(key, tuple)] == [("GET", "k")]  # noqa: SLF001


def test_kept_commands_are_bounded_and_follow_the_settings(traced, parent, db_env):
    target = db.Target("redis", "0")
    for i in range(db.SPANS_KEPT * 3):
        db.start_cached("redis", target, ("GET", f"k{i}"), redis_hook.command_span).close()
        assert len(target._spans) <= db.SPANS_KEPT  # noqa: SLF001
    assert [s.attributes["db.query.text"] for s in redis_spans(traced)] == [f"GET k{i}" for i in range(db.SPANS_KEPT * 3)]
    db_env(AUTOTRACE_DB_STATEMENT="off")
    db.start_cached("redis", target, ("GET", "k1"), redis_hook.command_span).close()
    db_env(AUTOTRACE_DB_STATEMENT="raw")
    db.start_cached("redis", target, ("SET", "k1", "v"), redis_hook.command_span).close()
    off, raw = redis_spans(traced)[-2:]
    assert "db.query.text" not in off.attributes and off.name == "GET"
    assert raw.attributes["db.query.text"] == "SET k1 v"
