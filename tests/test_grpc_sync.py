"""grpc (sync): a SERVER span per RPC handled, a CLIENT span per RPC sent, for the four call shapes.

In process: a real ``grpc.server()`` on 127.0.0.1 serving ``pkg.Echo`` (bytes in and out,
a generic handler, no generated code) and real channels, both made after the hook is
applied (it replaces ``grpc.server`` and the channel functions). Servers are stopped and
channels closed at the end of each test; waits are bounded.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import patching
from grpc_checks import Serializer
from ports import free_port

SERVICE = "pkg.Echo"
SHAPES = ["Unary", "ServerStream", "ClientStream", "BidiStream"]
HAND_TRACEPARENT = "00-11111111111111111111111111111111-2222222222222222-01"


@contextlib.contextmanager
def hooked():
    """The grpc hook applied (as the registry applies it); the originals put back after."""
    from autotrace.hooks import grpc as hook

    mark = len(patching.history)
    hook.patch(grpc)
    try:
        yield
    finally:
        patching.undo(mark)


@pytest.fixture
def hook(spans):
    with hooked():
        yield spans


# -- the service -----------------------------------------------------------------------


class Echo:
    """The handlers of pkg.Echo; each call notes what it saw (metadata, current span)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.release = threading.Event()  # lets a handler that waits go on
        self.waiting = threading.Event()  # a handler waits for release
        self.finished: list[str] = []  # handlers (and streams) that ran to their end

    def note(self, method: str, ctx) -> None:
        self.seen.append(
            {
                "method": method,
                "metadata": [(m.key, m.value) for m in ctx.invocation_metadata()],
                "span": trace.get_current_span().get_span_context(),
            }
        )

    def act(self, request: bytes, ctx) -> None:
        if request == b"abort":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such echo")
        if request == b"raise":
            raise ValueError("boom")
        if request == b"wait":  # past the client's deadline: the handler goes on after it
            self.waiting.set()
            self.release.wait(5)
            self.finished.append("wait")

    def unary(self, request, ctx):
        self.note("Unary", ctx)
        self.act(request, ctx)
        if request == b"code":
            ctx.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            ctx.set_details("bad echo")
            return b""
        return request

    def endless(self, ctx):
        """Responses until the client cancels (bounded)."""
        for i in range(500):
            if not ctx.is_active():
                break
            yield b"%d" % i
            time.sleep(0.01)
        self.finished.append("endless")

    def server_stream(self, request, ctx):
        self.note("ServerStream", ctx)
        if request == b"endless":
            yield from self.endless(ctx)
            return
        for i in range(3):
            self.act(request, ctx)
            yield request + b"%d" % i
            # The stream's messages are made under the SERVER span too.
            self.seen[-1].setdefault("stream spans", []).append(trace.get_current_span().get_span_context())

    def client_stream(self, requests, ctx):
        self.note("ClientStream", ctx)
        received = []
        for request in requests:
            self.act(request, ctx)
            received.append(request)
        return b"".join(received)

    def bidi_stream(self, requests, ctx):
        self.note("BidiStream", ctx)
        for request in requests:
            if request == b"endless":
                yield from self.endless(ctx)
                return
            self.act(request, ctx)
            yield request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "BidiStream": grpc.stream_stream_rpc_method_handler(self.bidi_stream),
            },
        )


class Running:
    """A started server with its Echo, and a channel to it."""

    def __init__(self, server_interceptors=(), client_interceptors=()) -> None:
        self.echo = Echo()
        self.pool = futures.ThreadPoolExecutor(max_workers=8)
        self.server = grpc.server(self.pool, handlers=[self.echo.handler()], interceptors=list(server_interceptors) or None)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"
        self.base_channel = grpc.insecure_channel(self.target)
        self.channel = grpc.intercept_channel(self.base_channel, *client_interceptors) if client_interceptors else self.base_channel

    def call(self, shape: str, request: bytes = b"hi", **kwargs):
        """Call ``shape`` as a blocking call; the responses, as a list for response streams."""
        method = f"/{SERVICE}/{shape}"
        kwargs.setdefault("timeout", 5)
        if shape == "Unary":
            return self.channel.unary_unary(method)(request, **kwargs)
        if shape == "ServerStream":
            return list(self.channel.unary_stream(method)(request, **kwargs))
        if shape == "ClientStream":
            return self.channel.stream_unary(method)(iter([request, b"!"]), **kwargs)
        return list(self.channel.stream_stream(method)(iter([request, b"!"]), **kwargs))

    def close(self) -> None:
        self.echo.release.set()
        self.channel.close()
        self.server.stop(None).wait(5)
        self.pool.shutdown(wait=True)


@pytest.fixture
def running(hook):
    service = Running()
    service.spans = hook
    try:
        yield service
    finally:
        service.close()


@contextlib.contextmanager
def serving(**kwargs):
    service = Running(**kwargs)
    try:
        yield service
    finally:
        service.close()


def finished(exporter, count: int, timeout: float = 5.0) -> list:
    """The spans ended, once there are ``count`` (the last ones end in grpc's threads)."""
    deadline = time.monotonic() + timeout
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return list(exporter.get_finished_spans())


def of_kind(spans, kind) -> list:
    return [s for s in spans if s.kind == kind]


def one_rpc(exporter, extra: int = 0, timeout: float = 5.0):
    """The CLIENT and SERVER span of the one RPC made (and ``extra`` other spans)."""
    spans = finished(exporter, 2 + extra, timeout)
    [client] = of_kind(spans, SpanKind.CLIENT)
    [server] = of_kind(spans, SpanKind.SERVER)
    return client, server


def expected(shape: str, request: bytes = b"hi"):
    return {
        "Unary": request,
        "ServerStream": [request + b"0", request + b"1", request + b"2"],
        "ClientStream": request + b"!",
        "BidiStream": [request, b"!"],
    }[shape]


def traceparent_of(seen: dict) -> list[str]:
    return [v for k, v in seen["metadata"] if k == "traceparent"]


def names(value: str, span) -> bool:
    """Whether a ``traceparent`` value names ``span`` (its trace and span ids)."""
    _, trace_id, span_id, _ = value.split("-")
    return (int(trace_id, 16), int(span_id, 16)) == (span.context.trace_id, span.context.span_id)


# -- spans and propagation -------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_one_client_and_one_server_span_per_call_in_the_callers_trace(running, shape):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent:
        assert running.call(shape, metadata=(("x-caller", "yes"),)) == expected(shape)
        assert trace.get_current_span() is parent
    client, server = one_rpc(running.spans, extra=1)
    name = f"{SERVICE}/{shape}"
    assert client.name == server.name == name
    assert client.parent.span_id == parent.get_span_context().span_id
    assert client.context.trace_id == parent.get_span_context().trace_id
    assert server.parent.span_id == client.context.span_id and server.parent.is_remote
    assert server.context.trace_id == client.context.trace_id

    [seen] = running.echo.seen
    [value] = traceparent_of(seen)
    assert names(value, client)
    assert ("x-caller", "yes") in seen["metadata"]  # the caller's own entries are kept
    assert seen["span"] == server.context  # the handler runs with the SERVER span current
    for span_context in seen.get("stream spans", []):
        assert span_context == server.context

    assert client.attributes == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": shape,
        "server.address": "127.0.0.1",
        "server.port": running.port,
        "rpc.grpc.status_code": 0,
    }
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == SERVICE
    assert server.attributes["rpc.method"] == shape
    assert server.attributes["client.address"] == "127.0.0.1"
    assert isinstance(server.attributes["client.port"], int)
    assert server.attributes["server.address"] == "127.0.0.1"  # the server's one port
    assert server.attributes["server.port"] == running.port
    assert server.attributes["rpc.grpc.status_code"] == 0
    for span in (client, server):
        assert span.status.status_code == StatusCode.UNSET
        assert span.end_time is not None
    assert client.start_time <= server.start_time and server.end_time <= client.end_time


def test_future_and_with_call_forms(running):
    multi = running.channel.unary_unary(f"/{SERVICE}/Unary")
    with trace.get_tracer("test").start_as_current_span("parent") as parent:
        assert multi.future(b"f", timeout=5).result(5) == b"f"
        response, call = multi.with_call(b"w", timeout=5)
        assert response == b"w" and call.code() == grpc.StatusCode.OK
    spans = finished(running.spans, 5)
    clients = of_kind(spans, SpanKind.CLIENT)
    servers = of_kind(spans, SpanKind.SERVER)
    assert len(clients) == len(servers) == 2
    assert {c.parent.span_id for c in clients} == {parent.get_span_context().span_id}
    assert {s.parent.span_id for s in servers} == {c.context.span_id for c in clients}


def test_a_call_outside_any_span_starts_a_trace(running):
    assert running.call("Unary") == b"hi"
    client, server = one_rpc(running.spans)
    assert client.parent is None
    assert server.parent.span_id == client.context.span_id


def test_a_traceparent_the_caller_set_is_replaced_by_the_client_spans(running):
    assert running.call("Unary", metadata=(("traceparent", HAND_TRACEPARENT),)) == b"hi"
    client, server = one_rpc(running.spans)
    [value] = traceparent_of(running.echo.seen[0])
    assert names(value, client)
    assert server.parent.span_id == client.context.span_id


def test_the_server_takes_its_parent_from_a_plain_grpc_client(spans):
    # A server made under the hook; a client without the agent sending a traceparent.
    with hooked():
        service = Running()
    try:
        plain = grpc.insecure_channel(service.target)  # the hook is undone: a plain channel
        with plain:
            assert plain.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5, metadata=(("traceparent", HAND_TRACEPARENT),)) == b"x"
        [server] = finished(spans, 1)
        assert server.kind == SpanKind.SERVER
        assert server.context.trace_id == 0x11111111111111111111111111111111
        assert server.parent.span_id == 0x2222222222222222
    finally:
        service.close()


# -- statuses and errors ---------------------------------------------------------------


def rpc_error(service: Running, shape: str, request: bytes, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        service.call(shape, request, **kwargs)
    return caught.value


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "request_, code, error_type, details",
    [
        (b"abort", 5, "NOT_FOUND", "no such echo"),
        (b"raise", 2, "UNKNOWN", "Exception calling application: boom"),
    ],
)
def test_errors_are_recorded_and_the_app_gets_the_same_rpc_error(spans, shape, request_, code, error_type, details):
    with serving() as plain:
        without = rpc_error(plain, shape, request_)
    spans.clear()
    with hooked(), serving() as traced:
        got = rpc_error(traced, shape, request_)
        client, server = one_rpc(spans)
    assert (got.code(), got.details()) == (without.code(), without.details())
    assert got.code().value[0] == code
    for span in (client, server):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["rpc.grpc.status_code"] == code
        assert span.attributes["error.type"] == error_type
    assert client.status.description == got.details()
    if request_ == b"raise":
        assert [e.name for e in server.events] == ["exception"]
        assert server.events[0].attributes["exception.type"] == "ValueError"
    else:
        assert server.events == ()  # context.abort: a status, not an error of the app's
        assert server.status.description == details


def test_a_code_the_handler_sets_is_recorded(running):
    error = rpc_error(running, "Unary", b"code")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "bad echo"
    client, server = one_rpc(running.spans)
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == 3
        assert span.attributes["error.type"] == "INVALID_ARGUMENT"
        assert span.status.status_code == StatusCode.ERROR


def test_an_unknown_method_is_unimplemented_on_both_spans(running):
    with pytest.raises(grpc.RpcError) as caught:
        running.channel.unary_unary(f"/{SERVICE}/Missing")(b"x", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    client, server = one_rpc(running.spans)
    assert server.parent.span_id == client.context.span_id and server.parent.is_remote
    for span in (client, server):
        assert span.name == f"{SERVICE}/Missing"
        assert span.attributes["rpc.grpc.status_code"] == 12
        assert span.attributes["error.type"] == "UNIMPLEMENTED"
        assert span.status.status_code == StatusCode.ERROR
    assert server.attributes["server.port"] == running.port
    time.sleep(0.05)
    assert len(running.spans.get_finished_spans()) == 2


class RefusingInterceptor(grpc.ServerInterceptor):
    """Raises in ``intercept_service`` itself: grpc answers UNKNOWN without running a handler."""

    def intercept_service(self, continuation, details):
        raise PermissionError("go away")


def test_an_app_server_interceptor_that_raises_is_recorded_and_the_client_gets_what_it_would(spans):
    with serving(server_interceptors=[RefusingInterceptor()]) as plain:
        without = rpc_error(plain, "Unary", b"x")
    spans.clear()
    with hooked(), serving(server_interceptors=[RefusingInterceptor()]) as traced:
        got = rpc_error(traced, "Unary", b"x")
        client, server = one_rpc(spans)
    assert (got.code(), got.details()) == (without.code(), without.details())
    assert got.code() == grpc.StatusCode.UNKNOWN
    assert server.parent.span_id == client.context.span_id
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == 2
        assert span.status.status_code == StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in server.events] == ["PermissionError"]


def test_an_unreachable_server_is_recorded_on_the_client_span(hook):
    port = free_port()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    [client] = finished(hook, 1)
    assert client.kind == SpanKind.CLIENT
    assert client.attributes["error.type"] == "UNAVAILABLE"
    assert client.attributes["server.port"] == port
    assert client.status.status_code == StatusCode.ERROR


# -- deadlines and cancellation --------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_deadline_exceeded_ends_both_spans_while_the_handler_still_runs(running, shape):
    started = time.monotonic()
    error = rpc_error(running, shape, b"wait", timeout=0.2)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    client, server = one_rpc(running.spans, timeout=2)
    assert time.monotonic() - started < 2
    assert running.echo.finished == []  # the handler has not returned: the span ended at the RPC's end
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == 4
        assert span.attributes["error.type"] == "DEADLINE_EXCEEDED"
    running.echo.release.set()
    deadline = time.monotonic() + 5
    while not running.echo.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.echo.finished == ["wait"]
    time.sleep(0.05)
    assert len(running.spans.get_finished_spans()) == 2  # the handler's return ends nothing more


@pytest.mark.parametrize("shape", ["ServerStream", "BidiStream"])
def test_client_cancelling_a_response_stream_ends_both_spans(running, shape):
    method = f"/{SERVICE}/{shape}"
    if shape == "ServerStream":
        call = running.channel.unary_stream(method)(b"endless", timeout=10)
    else:
        gate = threading.Event()

        def requests():
            yield b"endless"
            gate.wait(5)  # the client's stream stays open until the call is cancelled

        call = running.channel.stream_stream(method)(requests(), timeout=10)
    assert next(call) == b"0"
    assert call.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    client, server = one_rpc(running.spans, timeout=3)
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == 1
        assert span.attributes["error.type"] == "CANCELLED"
    if shape == "BidiStream":
        gate.set()


@pytest.mark.parametrize("shape", ["Unary", "ClientStream"])
def test_client_cancelling_a_future_ends_both_spans(running, shape):
    """A unary call's future, and a request stream's (cancelled while the handler waits)."""
    gate = threading.Event()

    def requests():
        yield b"wait"
        gate.wait(5)  # the client's stream stays open until the call is cancelled

    method = f"/{SERVICE}/{shape}"
    try:
        if shape == "Unary":
            future = running.channel.unary_unary(method).future(b"wait", timeout=10)
        else:
            future = running.channel.stream_unary(method).future(requests(), timeout=10)
        assert running.echo.waiting.wait(5)
        assert future.cancel()
        with pytest.raises(grpc.FutureCancelledError):
            future.result(5)
        client, server = one_rpc(running.spans, timeout=3)
    finally:
        gate.set()
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == 1
        assert span.attributes["error.type"] == "CANCELLED"
        assert span.end_time is not None


@pytest.mark.parametrize("single_threaded", [False, True], ids=["multi-threaded", "single-threaded"])
def test_a_response_stream_the_app_drops_is_cancelled_as_without_the_agent(running, single_threaded):
    """grpc cancels a call collected unfinished; the agent holds no reference that would keep it going.

    The handler streams for 5 s unless the call is cancelled, and the call's deadline is
    10 s: the SERVER span ends within 3 s only if the server saw the cancellation.
    """
    import grpc.experimental

    options = [(grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1)] if single_threaded else []
    with grpc.insecure_channel(running.target, options=options) as channel:
        stream = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"endless", timeout=10)
        assert next(stream) == b"0"
        del stream
        gc.collect()
        client, server = one_rpc(running.spans, timeout=3)
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == 1
        assert span.attributes["error.type"] == "CANCELLED"
    assert server.parent.span_id == client.context.span_id


# -- the response serializer -------------------------------------------------------------


def serialized_handler(serializer: Serializer) -> grpc.GenericRpcHandler:
    def stream(request, ctx):
        yield b"ok"
        yield request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(lambda request, ctx: request, response_serializer=serializer),
            "ServerStream": grpc.unary_stream_rpc_method_handler(stream, response_serializer=serializer),
        },
    )


@contextlib.contextmanager
def served(handler: grpc.GenericRpcHandler, address: str = "127.0.0.1:0"):
    """A started server with ``handler`` and a channel to it: (channel, port)."""
    pool = futures.ThreadPoolExecutor(max_workers=4)
    server = grpc.server(pool, handlers=[handler])
    port = server.add_insecure_port(address)
    server.start()
    try:
        with grpc.insecure_channel(address.replace(":0", f":{port}")) as channel:
            yield channel, port
    finally:
        server.stop(None).wait(5)
        pool.shutdown()


def serialized_call(channel, shape: str, request: bytes):
    method = f"/{SERVICE}/{shape}"
    if shape == "Unary":
        return channel.unary_unary(method)(request, timeout=5)
    return list(channel.unary_stream(method)(request, timeout=5))


@pytest.mark.parametrize("shape", ["Unary", "ServerStream"])
def test_a_response_the_serializer_refuses_is_recorded_with_the_code_the_client_gets(spans, shape):
    with served(serialized_handler(Serializer())) as (channel, _):
        with pytest.raises(grpc.RpcError) as plain:
            serialized_call(channel, shape, b"bad")
    spans.clear()
    with hooked(), served(serialized_handler(Serializer())) as (channel, _):
        with pytest.raises(grpc.RpcError) as traced:
            serialized_call(channel, shape, b"bad")
        client, server = one_rpc(spans)
    assert (traced.value.code(), traced.value.details()) == (plain.value.code(), plain.value.details())
    assert traced.value.code() == grpc.StatusCode.INTERNAL
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == 13
        assert span.attributes["error.type"] == "INTERNAL"
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == traced.value.details()
    assert [e.attributes["exception.type"] for e in server.events] == ["ValueError"]


def test_a_unary_responses_span_ends_once_it_is_serialized(hook):
    serializer = Serializer()
    with served(serialized_handler(serializer)) as (channel, _):
        assert serialized_call(channel, "Unary", b"fine") == b"fine"
        client, server = one_rpc(hook)
    [serialized_at] = serializer.ran_at
    assert server.end_time >= serialized_at
    assert server.attributes["rpc.grpc.status_code"] == 0 and server.status.status_code == StatusCode.UNSET


# -- the server's address --------------------------------------------------------------


def server_span_of_a_call(hook, server, channel) -> object:
    assert channel.unary_unary(f"/{SERVICE}/Unary")(b"x", timeout=5) == b"x"
    [span] = of_kind(finished(hook, 2), SpanKind.SERVER)
    return span


@pytest.mark.parametrize("ports", [["127.0.0.1:0", "127.0.0.1:0"], ["[::]:0"], ["localhost:0"]])
def test_server_address_and_port_come_from_the_servers_one_port(hook, ports):
    pool = futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.server(pool, handlers=[Echo().handler()])
    bound = [server.add_insecure_port(address) for address in ports]
    assert all(isinstance(port, int) and port > 0 for port in bound)  # grpc's own answers
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{bound[0]}") as channel:
            span = server_span_of_a_call(hook, server, channel)
    finally:
        server.stop(None).wait(5)
        pool.shutdown()
    if len(ports) > 1:  # which one the call came to is not known
        assert "server.address" not in span.attributes and "server.port" not in span.attributes
    elif ports == ["[::]:0"]:  # every interface: no address a client would use
        assert "server.address" not in span.attributes and span.attributes["server.port"] == bound[0]
    else:
        assert (span.attributes["server.address"], span.attributes["server.port"]) == ("localhost", bound[0])


def test_a_unix_socket_is_the_address_on_both_spans(hook, tmp_path):
    path = str(tmp_path / "grpc.sock")
    with served(Echo().handler(), f"unix:{path}") as (channel, _):
        assert channel.unary_unary(f"/{SERVICE}/Unary")(b"u", timeout=5) == b"u"
        client, server = one_rpc(hook)
    for span in (client, server):
        assert span.attributes["server.address"] == path
        assert "server.port" not in span.attributes


@pytest.mark.parametrize(
    "target, expected",
    [
        ("unix:/tmp/s.sock", ("/tmp/s.sock", None)),
        ("unix:///tmp/s.sock", ("/tmp/s.sock", None)),
        ("unix:relative.sock", ("relative.sock", None)),
        ("unix-abstract:name", ("name", None)),
        ("dns:///example.com:443", ("example.com", 443)),
        ("[::1]:50051", ("::1", 50051)),
    ],
)
def test_split_target(target, expected):
    from autotrace import rpc_span

    assert rpc_span.split_target(target) == expected


def test_a_port_grpc_refuses_raises_as_without_the_agent(hook):
    pool = futures.ThreadPoolExecutor(max_workers=1)
    server = grpc.server(pool)
    try:
        with pytest.raises(RuntimeError):
            server.add_insecure_port("no-such-scheme:/x:1")
    finally:
        server.stop(None)
        pool.shutdown()


# -- the app's interceptors ------------------------------------------------------------


class AppServerInterceptor(grpc.ServerInterceptor):
    """Wraps each behavior (the usual kind): notes the span current while it runs."""

    def __init__(self, log: list) -> None:
        self.log = log

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        behavior = handler.unary_unary

        def wrapped(request, ctx):
            self.log.append(("server interceptor", trace.get_current_span().get_span_context()))
            return behavior(request, ctx)

        return grpc.unary_unary_rpc_method_handler(wrapped, handler.request_deserializer, handler.response_serializer)


class AppClientInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds metadata; calls on ``attempts`` times (a retry); notes the span current."""

    def __init__(self, log: list, attempts: int = 1) -> None:
        self.log = log
        self.attempts = attempts

    def _details(self, details):
        metadata = [*(details.metadata or ()), ("x-app", "interceptor")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        self.log.append(("client interceptor", trace.get_current_span().get_span_context()))
        for _ in range(self.attempts):
            outcome = continuation(self._details(details), request)
        return outcome

    def intercept_stream_stream(self, continuation, details, request_iterator):
        self.log.append(("client interceptor", trace.get_current_span().get_span_context()))
        return continuation(self._details(details), request_iterator)


def test_the_apps_interceptors_run_in_the_documented_order(hook):
    log: list = []
    with serving(server_interceptors=[AppServerInterceptor(log)], client_interceptors=[AppClientInterceptor(log)]) as service:
        with trace.get_tracer("test").start_as_current_span("parent") as parent:
            assert service.call("Unary", metadata=(("x-caller", "yes"),)) == b"hi"
            assert service.call("BidiStream") == [b"hi", b"!"]
        spans = finished(hook, 5)
        seen = service.echo.seen
    clients = of_kind(spans, SpanKind.CLIENT)
    servers = of_kind(spans, SpanKind.SERVER)
    assert len(clients) == len(servers) == 2
    unary_client = next(c for c in clients if c.name.endswith("Unary"))
    unary_server = next(s for s in servers if s.name.endswith("Unary"))
    # Client: the app's interceptor is outside ours (it runs before the CLIENT span starts);
    # its metadata is kept, and ours is added: one traceparent, naming the CLIENT span.
    assert log[0] == ("client interceptor", parent.get_span_context())
    for entry in seen:
        assert ("x-app", "interceptor") in entry["metadata"]
        assert len(traceparent_of(entry)) == 1
    assert ("x-caller", "yes") in seen[0]["metadata"]
    [value] = traceparent_of(seen[0])
    assert value.split("-")[2] == f"{unary_client.context.span_id:016x}"
    # Server: ours is outermost: the app's wrapper of the behavior runs under the SERVER span.
    assert ("server interceptor", unary_server.context) in log
    assert seen[0]["span"] == unary_server.context
    assert unary_server.parent.span_id == unary_client.context.span_id


def test_an_app_interceptor_that_calls_on_twice_makes_two_client_spans(hook):
    log: list = []
    with serving(client_interceptors=[AppClientInterceptor(log, attempts=2)]) as service:
        with trace.get_tracer("test").start_as_current_span("parent"):
            assert service.call("Unary") == b"hi"
        spans = finished(hook, 5)
        seen = service.echo.seen
    clients = of_kind(spans, SpanKind.CLIENT)
    assert len(clients) == 2 and len(of_kind(spans, SpanKind.SERVER)) == 2
    assert sorted(traceparent_of(s)[0].split("-")[2] for s in seen) == sorted(f"{c.context.span_id:016x}" for c in clients)


def test_the_apps_interceptors_are_kept_positionally_too(hook):
    log: list = []
    echo = Echo()
    pool = futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.server(pool, [echo.handler()], [AppServerInterceptor(log)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"p", timeout=5) == b"p"
        [server_span] = of_kind(finished(hook, 2), SpanKind.SERVER)
        assert log == [("server interceptor", server_span.context)]
    finally:
        server.stop(None).wait(5)
        pool.shutdown()


# -- the channel, suppression, context -------------------------------------------------


def test_the_channel_keeps_grpcs_interface(hook):
    with serving() as service:
        with grpc.secure_channel(service.target, grpc.local_channel_credentials()) as channel:
            grpc.channel_ready_future(channel).result(timeout=5)  # subscribe, unsubscribe
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"s", timeout=5) == b"s"
        client, server = one_rpc(hook)
        assert client.attributes["server.port"] == service.port
        assert server.parent.span_id == client.context.span_id
    with pytest.raises(ValueError):
        channel.unary_unary(f"/{SERVICE}/Unary")(b"closed", timeout=1)


def test_target_given_by_name(hook):
    with serving() as service:
        with grpc.insecure_channel(target=f"dns:///localhost:{service.port}") as channel:
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"n", timeout=5) == b"n"
        client, _ = one_rpc(hook)
    assert client.attributes["server.address"] == "localhost"
    assert client.attributes["server.port"] == service.port


def test_suppressed_instrumentation_sends_no_traceparent_and_makes_no_client_span(running):
    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        for shape in SHAPES:
            assert running.call(shape) == expected(shape)
    finally:
        context.detach(token)
    spans = finished(running.spans, 4)
    assert of_kind(spans, SpanKind.CLIENT) == []
    for seen in running.echo.seen:
        assert traceparent_of(seen) == []
    assert all(s.parent is None for s in spans)  # the server, not suppressed, starts traces


@pytest.mark.parametrize("format_, key", [("b3", "b3"), ("b3multi", "x-b3-spanid"), ("jaeger", "uber-trace-id")])
def test_the_configured_formats_carry_the_context(running, format_, key):
    """Not only ``traceparent``: the propagators configured (OTEL_PROPAGATORS) write and read the metadata."""
    from opentelemetry import propagate

    from autotrace import api
    from autotrace.propagation import build

    api.load()  # the agent installs its propagators once, at the first span: before ours
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(build([format_]))
    try:
        assert running.call("ClientStream") == b"hi!"
    finally:
        propagate.set_global_textmap(before)
    client, server = one_rpc(running.spans)
    metadata = dict(running.echo.seen[0]["metadata"])
    assert key in metadata and "traceparent" not in metadata
    assert f"{client.context.span_id:016x}" in metadata[key]
    assert server.parent.span_id == client.context.span_id and server.parent.is_remote
    assert server.context.trace_id == client.context.trace_id


class UpperCasePropagator:
    """W3C trace context plus what a third-party propagator may write: an upper-case key, a non-ASCII value."""

    def __init__(self) -> None:
        from autotrace.propagation import build

        self.inner = build(["tracecontext"])
        self.extracted: list = []

    def inject(self, carrier, context=None, setter=None):
        self.inner.inject(carrier, context=context)
        carrier["X-Upper-Id"] = "u-1"
        carrier["x-accented"] = "caf\u00e9"

    def extract(self, carrier, context=None, getter=None):
        self.extracted.append(getter.get(carrier, "X-Upper-Id"))
        return self.inner.extract(carrier, context=context, getter=getter)

    @property
    def fields(self):
        return {"traceparent", "X-Upper-Id", "x-accented"}


def test_propagation_fields_grpc_would_refuse_never_fail_the_call(running, warnings):
    from opentelemetry import propagate

    from autotrace import api

    api.load()  # the agent installs its propagators once, at the first span: before ours
    propagator = UpperCasePropagator()
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(propagator)
    try:
        assert running.call("Unary") == b"hi"
        assert running.call("BidiStream") == [b"hi", b"!"]
    finally:
        propagate.set_global_textmap(before)
    spans = finished(running.spans, 4)
    for seen in running.echo.seen:
        assert ("x-upper-id", "u-1") in seen["metadata"]  # lower-cased, as gRPC wants
        assert "x-accented" not in dict(seen["metadata"])  # grpc would fail the call with it
    assert propagator.extracted == [["u-1"], ["u-1"]]  # read back under the name the propagator uses
    for server in of_kind(spans, SpanKind.SERVER):
        assert server.parent is not None and server.parent.is_remote
    [warning] = warnings()
    assert "'x-accented'" in warning and "OTEL_PROPAGATORS" in warning


def test_no_context_is_left_current(running):
    before = context.get_current()
    for shape in SHAPES:
        running.call(shape)
    rpc_error(running, "Unary", b"raise")
    rpc_error(running, "BidiStream", b"abort")
    assert context.get_current() is before
    with trace.get_tracer("test").start_as_current_span("parent"):
        inside = context.get_current()
        running.call("Unary")
        assert context.get_current() is inside
    assert context.get_current() is before


def test_the_server_pool_threads_are_left_with_no_span(running):
    running.call("Unary")
    running.call("ServerStream")
    seen: list = []
    for _ in range(8):
        running.pool.submit(lambda: seen.append(trace.get_current_span().get_span_context().is_valid)).result(5)
    assert seen == [False] * 8


def test_patch_replaces_the_module_functions_once(hook):
    from autotrace.hooks import grpc as hook_module

    server, insecure, secure = grpc.server, grpc.insecure_channel, grpc.secure_channel
    hook_module.patch(grpc)
    assert (grpc.server, grpc.insecure_channel, grpc.secure_channel) == (server, insecure, secure)
    assert grpc.server.__wrapped__ is not None and grpc.server.__name__ == "server"


def test_behavior_attributes_grpc_reads_are_kept(hook):
    """``experimental_thread_pool`` and ``experimental_non_blocking`` reach grpc through our wrapper."""
    own_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="own-pool")
    threads: list = []

    def unary(request, ctx):
        threads.append(threading.current_thread().name)
        return request

    unary.experimental_thread_pool = own_pool

    def pushed(request, ctx, send):
        threads.append(trace.get_current_span().get_span_context())
        send(request + b"1")
        send(request + b"2")
        send(None)

    pushed.experimental_non_blocking = True
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Pushed": grpc.unary_stream_rpc_method_handler(pushed),
        },
    )
    pool = futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.server(pool, handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary(f"/{SERVICE}/Unary")(b"u", timeout=5) == b"u"
            assert list(channel.unary_stream(f"/{SERVICE}/Pushed")(b"p", timeout=5)) == [b"p1", b"p2"]
        spans = finished(hook, 4)
    finally:
        server.stop(None).wait(5)
        pool.shutdown()
        own_pool.shutdown()
    assert threads[0].startswith("own-pool")
    [pushed_server] = [s for s in of_kind(spans, SpanKind.SERVER) if s.name.endswith("Pushed")]
    assert threads[1] == pushed_server.context
    assert pushed_server.attributes["rpc.grpc.status_code"] == 0
    assert len(of_kind(spans, SpanKind.CLIENT)) == 2
