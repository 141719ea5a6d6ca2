"""grpc.aio: a SERVER span per RPC handled, a CLIENT span per RPC sent, for the four call shapes.

In process: a real ``grpc.aio.server()`` on 127.0.0.1 serving ``pkg.Echo`` (bytes in and
out, async behaviors) and real ``grpc.aio`` channels, made after the hook is applied.
Each test runs its own ``asyncio.run`` (bounded), which checks that no context is left
current; servers are stopped at the end of each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from concurrent import futures

import grpc
import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import patching
from grpc_checks import Serializer

SERVICE = "pkg.Echo"
SHAPES = ["Unary", "ServerStream", "ClientStream", "BidiStream"]
ALL_SHAPES = [*SHAPES, "WriterStream"]  # WriterStream: a response stream written with context.write()
HAND_TRACEPARENT = "00-11111111111111111111111111111111-2222222222222222-01"


@pytest.fixture
def hook(spans):
    """The grpc.aio hook applied (as the registry applies it); the originals put back after."""
    from autotrace.hooks import grpc_aio

    mark = len(patching.history)
    grpc_aio.patch(grpc.aio)
    yield spans
    patching.undo(mark)


@contextlib.contextmanager
def hooked():
    from autotrace.hooks import grpc_aio

    mark = len(patching.history)
    grpc_aio.patch(grpc.aio)
    try:
        yield
    finally:
        patching.undo(mark)


def run(main, timeout: float = 10.0):
    """``asyncio.run(main())``, bounded; the context current before is current after."""

    async def bounded():
        before = context.get_current()
        try:
            return await asyncio.wait_for(main(), timeout)
        finally:
            assert context.get_current() is before

    return asyncio.run(bounded())


# -- the service -----------------------------------------------------------------------


class Echo:
    """The handlers of pkg.Echo; each call notes what it saw (metadata, current span)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.finished: list[str] = []  # "method:how" when a handler's stream ends

    def note(self, method: str, ctx) -> None:
        self.seen.append(
            {
                "method": method,
                "metadata": [(m.key, m.value) for m in ctx.invocation_metadata()],
                "span": trace.get_current_span().get_span_context(),
                "tenant": baggage.get_baggage("tenant"),
            }
        )

    async def act(self, request: bytes, ctx) -> None:
        if request == b"abort":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, "no such echo")
        if request == b"raise":
            raise ValueError("boom")
        if request == b"sleep":
            await asyncio.sleep(10)

    async def unary(self, request, ctx):
        self.note("Unary", ctx)
        await self.act(request, ctx)
        if request == b"code":
            ctx.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            ctx.set_details("bad echo")
            return b""
        return request

    async def server_stream(self, request, ctx):
        self.note("ServerStream", ctx)
        try:
            if request == b"flood":  # until the client cancels: grpc blocks writing (flow control)
                while True:
                    yield b"x" * 1_000_000
            for i in range(3):
                yield request + b"%d" % i
                await self.act(request, ctx)
        finally:
            self.finished.append("ServerStream")

    async def writer_stream(self, request, ctx):
        self.note("WriterStream", ctx)
        for i in range(3):
            await ctx.write(request + b"%d" % i)
            await self.act(request, ctx)

    async def client_stream(self, requests, ctx):
        self.note("ClientStream", ctx)
        received = [r async for r in requests]
        await self.act(received[0] if received else b"", ctx)
        return b"".join(received)

    async def bidi_stream(self, requests, ctx):
        self.note("BidiStream", ctx)
        async for request in requests:
            yield request
            await self.act(request, ctx)

    def handler(self):
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "WriterStream": grpc.unary_stream_rpc_method_handler(self.writer_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "BidiStream": grpc.stream_stream_rpc_method_handler(self.bidi_stream),
            },
        )


@contextlib.asynccontextmanager
async def serving(*handlers, interceptors=None, **server_kwargs):
    """A started grpc.aio server on 127.0.0.1; yields its port; stopped after."""
    server = grpc.aio.server(handlers=list(handlers), interceptors=interceptors, **server_kwargs)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def requests_of(*messages):
    for message in messages:
        yield message


async def call(channel, shape: str, request: bytes = b"hi", **kwargs):
    """One call of ``shape``: the response (a list of them for a response stream)."""
    method = f"/{SERVICE}/{shape}"
    if shape == "Unary":
        return await channel.unary_unary(method)(request, **kwargs)
    if shape in ("ServerStream", "WriterStream"):
        return [r async for r in channel.unary_stream(method)(request, **kwargs)]
    if shape == "ClientStream":
        return await channel.stream_unary(method)(requests_of(request, b"!"), **kwargs)
    return [r async for r in channel.stream_stream(method)(requests_of(request, b"!"), **kwargs)]


EXPECTED = {
    "Unary": b"hi",
    "ServerStream": [b"hi0", b"hi1", b"hi2"],
    "WriterStream": [b"hi0", b"hi1", b"hi2"],
    "ClientStream": b"hi!",
    "BidiStream": [b"hi", b"!"],
}


async def rpc_spans(exporter, count: int, timeout: float = 5.0) -> tuple[list, list]:
    """(CLIENT spans, SERVER spans) once ``count`` have ended (each side ends in its own time)."""
    deadline = time.monotonic() + timeout
    while True:
        finished = [s for s in exporter.get_finished_spans() if s.kind in (SpanKind.CLIENT, SpanKind.SERVER)]
        if len(finished) >= count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # and no more come
    finished = [s for s in exporter.get_finished_spans() if s.kind in (SpanKind.CLIENT, SpanKind.SERVER)]
    return [s for s in finished if s.kind == SpanKind.CLIENT], [s for s in finished if s.kind == SpanKind.SERVER]


def traceparent_of(metadata) -> list[str]:
    return [value for key, value in metadata if key == "traceparent"]


def ids(value: str) -> tuple[int, int]:
    _, trace_id, span_id, _ = value.split("-")
    return int(trace_id, 16), int(span_id, 16)


def assert_rpc(client, server, shape: str, port: int, code: int = 0) -> None:
    """The pair of one call: names, kinds, parentage and attributes."""
    assert client.name == server.name == f"{SERVICE}/{shape}"
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.context.trace_id == client.context.trace_id
    assert {k: v for k, v in client.attributes.items() if k != "error.type"} == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": shape,
        "server.address": "127.0.0.1",
        "server.port": port,
        "rpc.grpc.status_code": code,
    }
    server_attributes = {k: v for k, v in server.attributes.items() if k not in ("error.type", "client.port")}
    assert server_attributes == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": shape,
        "client.address": "127.0.0.1",
        "server.address": "127.0.0.1",  # the server's one port
        "server.port": port,
        "rpc.grpc.status_code": code,
    }
    assert isinstance(server.attributes["client.port"], int) and server.attributes["client.port"] != port
    for span in (client, server):
        if code == 0:
            assert span.status.status_code == StatusCode.UNSET
            assert "error.type" not in span.attributes
        else:
            assert span.status.status_code == StatusCode.ERROR
            assert span.attributes["error.type"] == grpc.StatusCode(_status_code(code)).name


def _status_code(number: int):
    return next(c.value for c in grpc.StatusCode if c.value[0] == number)


# -- the four shapes -------------------------------------------------------------------


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_a_call_is_one_client_span_and_one_server_span_under_it(hook, parent, shape):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                response = await call(channel, shape, metadata=[("x-caller", "mine"), ("x-bin", b"\x00\x01")])
            return port, response, await rpc_spans(hook, 2)

    port, response, ([client], [server]) = run(main)
    assert response == EXPECTED[shape]
    assert_rpc(client, server, shape, port)
    assert client.parent.span_id == parent.get_span_context().span_id
    assert client.context.trace_id == parent.get_span_context().trace_id
    [seen] = echo.seen
    [traceparent] = traceparent_of(seen["metadata"])
    assert ids(traceparent) == (client.context.trace_id, client.context.span_id)
    assert ("x-caller", "mine") in seen["metadata"] and ("x-bin", b"\x00\x01") in seen["metadata"]
    assert seen["span"].span_id == server.context.span_id  # the handler ran under the SERVER span


def test_metadata_given_as_a_metadata_object_and_a_traceparent_of_the_callers_own(hook):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                metadata = grpc.aio.Metadata(("x-caller", "a"), ("x-caller", "b"), ("traceparent", HAND_TRACEPARENT))
                await call(channel, "Unary", metadata=metadata)
                assert list(metadata) == [("x-caller", "a"), ("x-caller", "b"), ("traceparent", HAND_TRACEPARENT)]
            return await rpc_spans(hook, 2)

    [client], [server] = run(main)
    [seen] = echo.seen
    assert [v for k, v in seen["metadata"] if k == "x-caller"] == ["a", "b"]
    [traceparent] = traceparent_of(seen["metadata"])  # exactly one: the CLIENT span's
    assert ids(traceparent) == (client.context.trace_id, client.context.span_id)
    assert server.parent.span_id == client.context.span_id
    assert client.parent is None  # the caller's own traceparent is not a parent: it is replaced


def test_calls_in_a_row_and_at_once_each_have_their_spans(hook, parent):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for shape in SHAPES:
                    await call(channel, shape)
                await asyncio.gather(*(call(channel, shape) for shape in SHAPES * 3))
            return await rpc_spans(hook, 32)

    clients, servers = run(main)
    assert len(clients) == len(servers) == 16
    by_id = {c.context.span_id: c for c in clients}
    for server in servers:
        client = by_id.pop(server.parent.span_id)
        assert client.name == server.name
        assert client.parent.span_id == parent.get_span_context().span_id
    assert not by_id
    assert len(echo.seen) == 16


# -- statuses ----------------------------------------------------------------------------


ERRORS = [
    ("Unary", b"abort", 5),
    ("Unary", b"raise", 2),
    ("Unary", b"code", 3),  # set_code() and return
    ("ServerStream", b"abort", 5),
    ("ServerStream", b"raise", 2),
    ("WriterStream", b"abort", 5),
    ("ClientStream", b"raise", 2),
    ("BidiStream", b"abort", 5),
]


async def failed_call(shape: str, request: bytes) -> tuple:
    """(code, details) of the AioRpcError the call raised."""
    echo = Echo()
    async with serving(echo.handler()) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(channel, shape, request)
    return port, raised.value.code(), raised.value.details()


@pytest.mark.parametrize("shape,request_,code", ERRORS)
def test_an_error_status_is_on_both_spans_and_the_app_sees_the_same_error(spans, shape, request_, code):
    _, *without_agent = run(lambda: failed_call(shape, request_))

    async def main():
        with hooked():
            result = await failed_call(shape, request_)
        return result, await rpc_spans(spans, 2)

    (port, *with_agent), ([client], [server]) = run(main)
    assert with_agent == without_agent
    assert with_agent[0].value[0] == code
    assert_rpc(client, server, shape, port, code)
    assert client.status.description == with_agent[1]
    if request_ == b"raise":
        assert [e.attributes["exception.type"] for e in server.events] == ["ValueError"]
    else:
        assert server.status.description == with_agent[1]
        assert not server.events


def test_an_unknown_method_is_unimplemented_on_both_spans(hook):
    async def main():
        async with serving(Echo().handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await channel.unary_unary(f"/{SERVICE}/Nothing")(b"hi")
            return raised.value.code(), await rpc_spans(hook, 2)

    code, ([client], [server]) = run(main)
    assert code == grpc.StatusCode.UNIMPLEMENTED
    for span in (client, server):
        assert span.name == f"{SERVICE}/Nothing"
        assert span.attributes["rpc.grpc.status_code"] == 12
        assert span.attributes["error.type"] == "UNIMPLEMENTED"
    assert server.parent.span_id == client.context.span_id


@pytest.mark.parametrize("shape", SHAPES)
def test_a_deadline_exceeded_ends_both_spans(hook, shape):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(channel, shape, b"sleep", timeout=0.3)
            return port, raised.value.code(), await rpc_spans(hook, 2)

    port, code, ([client], [server]) = run(main)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_rpc(client, server, shape, port, 4)


@pytest.mark.parametrize("request_", [b"sleep", b"flood"])
def test_the_client_cancelling_a_response_stream_ends_both_spans(hook, request_):
    """``sleep``: the handler is cancelled in its own code; ``flood``: in grpc's write."""
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stream = channel.unary_stream(f"/{SERVICE}/ServerStream")(request_)
                first = await stream.read()
                await asyncio.sleep(0.1)  # the server is in its sleep, or blocked writing
                assert stream.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await stream.read()
                assert await stream.code() == grpc.StatusCode.CANCELLED
                result = await rpc_spans(hook, 2)
                deadline = time.monotonic() + 5
                while not echo.finished and time.monotonic() < deadline:  # flood: closed by the loop later
                    await asyncio.sleep(0.01)
            return port, first, result

    port, first, ([client], [server]) = run(main)
    assert first.startswith(b"sleep" if request_ == b"sleep" else b"x")
    assert_rpc(client, server, "ServerStream", port, 1)
    assert echo.finished == ["ServerStream"]


def test_a_response_stream_left_unread_ends_both_spans_when_the_channel_closes(hook):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stream = channel.unary_stream(f"/{SERVICE}/ServerStream")(b"sleep")
                await stream.read()
                del stream
                gc.collect()
                await asyncio.sleep(0.1)
                assert await rpc_spans(hook, 1, timeout=0.1) == ([], [])  # the call is still open
            return port, await rpc_spans(hook, 2)  # closing the channel cancelled it

    port, ([client], [server]) = run(main)
    assert_rpc(client, server, "ServerStream", port, 1)


def test_the_client_cancelling_a_unary_call_ends_both_spans(hook):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                pending = channel.unary_unary(f"/{SERVICE}/Unary")(b"sleep")
                task = asyncio.ensure_future(pending)
                while not echo.seen:
                    await asyncio.sleep(0.01)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                return port, await rpc_spans(hook, 2)

    port, ([client], [server]) = run(main)
    assert_rpc(client, server, "Unary", port, 1)


@pytest.mark.parametrize("shape", ["ClientStream", "BidiStream"])
def test_the_client_cancelling_a_request_stream_ends_both_spans(hook, shape):
    """Cancelled while the handler sleeps on the first request (the request stream still open)."""
    echo = Echo()
    gate = asyncio.Event()

    async def requests():
        yield b"sleep"
        await gate.wait()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                method = f"/{SERVICE}/{shape}"
                if shape == "ClientStream":
                    pending = channel.stream_unary(method)(requests())
                else:
                    pending = channel.stream_stream(method)(requests())
                first = await pending.read() if shape == "BidiStream" else None
                deadline = time.monotonic() + 5
                while not echo.seen and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)  # the handler is in its sleep
                assert pending.cancel()
                assert await pending.code() == grpc.StatusCode.CANCELLED
                gate.set()
                return port, first, await rpc_spans(hook, 2)

    port, first, ([client], [server]) = run(main)
    assert first == (b"sleep" if shape == "BidiStream" else None)
    assert_rpc(client, server, shape, port, 1)


# -- the response serializer ----------------------------------------------------------------


def serialized_handler(serializer: Serializer):
    async def unary(request, ctx):
        return request

    async def stream(request, ctx):
        yield b"ok"
        yield request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, response_serializer=serializer),
            "ServerStream": grpc.unary_stream_rpc_method_handler(stream, response_serializer=serializer),
        },
    )


async def serialized_call(shape: str, request: bytes, serializer: Serializer):
    async with serving(serialized_handler(serializer)) as port:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            if shape == "Unary":
                return await channel.unary_unary(f"/{SERVICE}/Unary")(request, timeout=5)
            return [r async for r in channel.unary_stream(f"/{SERVICE}/ServerStream")(request, timeout=5)]


async def refused(shape: str) -> tuple:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await serialized_call(shape, b"bad", Serializer())
    return raised.value.code(), raised.value.details()


@pytest.mark.parametrize("shape", ["Unary", "ServerStream"])
def test_a_response_the_serializer_refuses_is_recorded_with_the_code_the_client_gets(spans, shape):
    without_agent = run(lambda: refused(shape))

    async def main():
        with hooked():
            result = await refused(shape)
        return result, await rpc_spans(spans, 2)

    with_agent, ([client], [server]) = run(main)
    assert with_agent == without_agent
    code = with_agent[0].value[0]
    assert code != 0
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == code
        assert span.status.status_code == StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in server.events] == ["ValueError"]


def test_a_unary_responses_span_ends_once_it_is_serialized(hook):
    serializer = Serializer()

    async def main():
        return await serialized_call("Unary", b"fine", serializer), await rpc_spans(hook, 2)

    response, ([client], [server]) = run(main)
    assert response == b"fine"
    [serialized_at] = serializer.ran_at
    assert server.end_time >= serialized_at
    assert server.attributes["rpc.grpc.status_code"] == 0 and server.status.status_code == StatusCode.UNSET


# -- the app's interceptors ---------------------------------------------------------------


class AppServerInterceptor(grpc.aio.ServerInterceptor):
    """Notes what it sees; ``tenant``: leaves baggage current for the handler (grpc.aio runs it in the same context)."""

    def __init__(self, name: str, log: list, tenant: str | None = None) -> None:
        self.name, self.log, self.tenant = name, log, tenant

    async def intercept_service(self, continuation, details):
        self.log.append((self.name, trace.get_current_span().get_span_context(), traceparent_of(details.invocation_metadata)))
        if self.tenant:
            context.attach(baggage.set_baggage("tenant", self.tenant))
        return await continuation(details)


class AppClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
):
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    async def intercept_unary_unary(self, continuation, details, request):
        metadata = list(details.metadata or ())
        self.log.append((self.name, trace.get_current_span().get_span_context(), traceparent_of(metadata)))
        metadata.append(("x-" + self.name, "1"))
        return await continuation(details._replace(metadata=metadata), request)


class AppStreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):
    """Returns its own response iterator, as grpc.aio lets an interceptor do."""

    def __init__(self, log: list) -> None:
        self.log = log

    async def intercept_unary_stream(self, continuation, details, request):
        call = await continuation(details, request)

        async def responses():
            async for response in call:
                self.log.append(response)
                yield response.upper()

        return responses()


def test_the_apps_interceptors_run_in_order_around_ours(hook, parent):
    echo, server_log, client_log, stream_log = Echo(), [], [], []
    server_interceptors = [AppServerInterceptor("s1", server_log), AppServerInterceptor("s2", server_log, tenant="t1")]
    client_interceptors = [
        AppClientInterceptor("c1", client_log),
        AppClientInterceptor("c2", client_log),
        AppStreamInterceptor(stream_log),
    ]

    async def main():
        async with serving(echo.handler(), interceptors=server_interceptors) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=client_interceptors) as channel:
                unary = await call(channel, "Unary")
                stream = await call(channel, "ServerStream")
            return unary, stream, await rpc_spans(hook, 4)

    unary, stream, (clients, servers) = run(main)
    assert unary == b"hi" and stream == [b"HI0", b"HI1", b"HI2"] and stream_log == [b"hi0", b"hi1", b"hi2"]
    client, server = clients[0], servers[0]
    assert client.name == server.name == f"{SERVICE}/Unary"
    # Client: the app's interceptors first, in their order, under the app's span and
    # without a traceparent (ours, the innermost, adds it); what they add is sent.
    assert [(name, span.span_id, tp) for name, span, tp in client_log] == [
        ("c1", parent.get_span_context().span_id, []),
        ("c2", parent.get_span_context().span_id, []),
    ]
    metadata = echo.seen[0]["metadata"]
    assert ("x-c1", "1") in metadata and ("x-c2", "1") in metadata
    assert ids(traceparent_of(metadata)[0])[1] == client.context.span_id
    # Server: ours first, so the app's interceptors run under the SERVER span, in their order.
    assert [(name, span.span_id) for name, span, _ in server_log[:2]] == [
        ("s1", server.context.span_id),
        ("s2", server.context.span_id),
    ]
    assert server.parent.span_id == client.context.span_id
    # What the app's interceptor made current reaches the handler, under the SERVER span.
    assert echo.seen[0]["tenant"] == "t1" and echo.seen[0]["span"].span_id == server.context.span_id
    [stream_client] = [c for c in clients if c.name.endswith("ServerStream")]
    [stream_server] = [s for s in servers if s.name.endswith("ServerStream")]
    assert stream_server.parent.span_id == stream_client.context.span_id


def test_an_app_server_interceptor_that_raises_ends_the_span(hook):
    class Refuse(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            raise PermissionError("go away")

    async def main():
        async with serving(Echo().handler(), interceptors=[Refuse()]) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(channel, "Unary")
            return raised.value.code(), await rpc_spans(hook, 2)

    code, ([client], [server]) = run(main)
    assert code == grpc.StatusCode.UNKNOWN
    assert server.attributes["rpc.grpc.status_code"] == 2
    assert [e.attributes["exception.type"] for e in server.events] == ["PermissionError"]
    assert client.attributes["rpc.grpc.status_code"] == 2


# -- sync handlers on an aio server (its migration thread pool) ----------------------------


def test_sync_handlers_run_in_the_thread_pool_under_the_server_span(hook, parent):
    seen = []

    def unary(request, ctx):
        seen.append(trace.get_current_span().get_span_context())
        if request == b"raise":
            raise ValueError("sync boom")
        return request

    def stream(request, ctx):
        seen.append(trace.get_current_span().get_span_context())
        for i in range(2):
            yield request + b"%d" % i
            if request == b"raise":
                raise ValueError("sync stream boom")

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )

    async def main():
        with futures.ThreadPoolExecutor(2) as pool:
            async with serving(handler, migration_thread_pool=pool) as port:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    results = [await call(channel, "Unary"), await call(channel, "ServerStream")]
                    for shape in ("Unary", "ServerStream"):
                        with pytest.raises(grpc.aio.AioRpcError):
                            await call(channel, shape, b"raise")
                return port, results, await rpc_spans(hook, 8)

    port, results, (clients, servers) = run(main)
    assert results == [b"hi", [b"hi0", b"hi1"]]
    assert all(c.attributes["server.port"] == port for c in clients)
    assert [s.attributes["rpc.grpc.status_code"] for s in servers] == [0, 0, 2, 2]
    assert [c.attributes["rpc.grpc.status_code"] for c in clients] == [0, 0, 2, 2]
    assert [e.attributes["exception.message"] for s in servers for e in s.events] == ["sync boom", "sync stream boom"]
    assert [s.span_id for s in seen] == [s.context.span_id for s in servers]
    for client, server in zip(clients, servers):
        assert server.parent.span_id == client.context.span_id


def sync_status_handler():
    """Sync handlers setting a code (``code``), or aborting (``abort``, unary only).

    grpc.aio itself (1.85, no agent) is racy with a sync stream handler that aborts: the
    client sees its deadline instead of the status, or the thread pool hangs. grpc.aio's
    sync context has no ``abort_with_status``.
    """

    def act(request, ctx):
        if request == b"code":
            ctx.set_code(grpc.StatusCode.NOT_FOUND)
            ctx.set_details("no such echo")
        elif request == b"abort":
            ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")

    def unary(request, ctx):
        act(request, ctx)
        return b""

    def stream(request, ctx):
        yield b"first"
        act(request, ctx)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


async def sync_status_call(shape: str, request: bytes) -> tuple:
    with futures.ThreadPoolExecutor(2) as pool:
        async with serving(sync_status_handler(), migration_thread_pool=pool) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(channel, shape, request, timeout=5)
    return raised.value.code(), raised.value.details()


@pytest.mark.parametrize(("shape", "request_"), [("Unary", b"code"), ("Unary", b"abort"), ("ServerStream", b"code")])
def test_a_sync_handlers_code_and_details_are_the_ones_the_client_gets(spans, shape, request_):
    without_agent = run(lambda: sync_status_call(shape, request_))

    async def main():
        with hooked():
            result = await sync_status_call(shape, request_)
        return result, await rpc_spans(spans, 2)

    with_agent, ([client], [server]) = run(main)
    assert with_agent == without_agent
    code, details = with_agent
    assert code == {b"code": grpc.StatusCode.NOT_FOUND, b"abort": grpc.StatusCode.PERMISSION_DENIED}[request_]
    for span in (client, server):
        assert span.attributes["rpc.grpc.status_code"] == code.value[0]
        assert span.attributes["error.type"] == code.name
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == details


# -- suppressed, and no context leaks -------------------------------------------------------


def test_suppressed_instrumentation_makes_no_span_and_sends_no_traceparent(hook, suppressed):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return [await call(channel, shape) for shape in SHAPES]

    assert run(main) == [EXPECTED[shape] for shape in SHAPES]
    assert hook.get_finished_spans() == ()
    assert all(traceparent_of(seen["metadata"]) == [] for seen in echo.seen) and len(echo.seen) == 4


def test_a_suppressed_call_sends_no_traceparent_and_the_server_span_is_a_root(hook, parent):
    """The server is started under the test's span: its SERVER spans still take their parent from the metadata only."""
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
                try:
                    await call(channel, "Unary")
                finally:
                    context.detach(token)
            return await rpc_spans(hook, 1)

    clients, [server] = run(main)
    assert clients == []
    assert traceparent_of(echo.seen[0]["metadata"]) == []
    assert server.parent is None
    assert server.context.trace_id != parent.get_span_context().trace_id
    assert echo.seen[0]["span"].span_id == server.context.span_id


class ThirdPartyPropagator:
    """W3C trace context, plus an upper-case key (``X-Vendor-Id``) as some third-party propagators write."""

    def __init__(self) -> None:
        from autotrace.propagation import build

        self.inner = build(["tracecontext"])

    def inject(self, carrier, context=None, setter=None):
        self.inner.inject(carrier, context=context)
        carrier["X-Vendor-Id"] = "v-1"

    def extract(self, carrier, context=None, getter=None):
        return self.inner.extract(carrier, context=context, getter=getter)

    @property
    def fields(self):
        return {"traceparent", "X-Vendor-Id"}


def test_a_propagators_upper_case_key_is_sent_lower_cased_and_never_fails_the_call(hook):
    """grpc refuses an upper-case metadata key (the call fails); the agent sends it lower-cased."""
    from opentelemetry import propagate

    from autotrace import api

    api.load()  # the agent installs its propagators once, at the first span: before ours
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                response = await call(channel, "Unary")
            return response, await rpc_spans(hook, 2)

    before = propagate.get_global_textmap()
    propagate.set_global_textmap(ThirdPartyPropagator())
    try:
        response, ([client], [server]) = run(main)
    finally:
        propagate.set_global_textmap(before)
    assert response == b"hi"
    assert ("x-vendor-id", "v-1") in echo.seen[0]["metadata"]
    assert server.parent.span_id == client.context.span_id


def test_secure_channels_are_traced_too(hook):
    echo = Echo()

    async def main():
        server = grpc.aio.server(handlers=[echo.handler()])
        port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials())
        await server.start()
        try:
            credentials = grpc.local_channel_credentials()
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                response = await call(channel, "Unary")
        finally:
            await server.stop(None)
        return port, response, await rpc_spans(hook, 2)

    port, response, ([client], [server]) = run(main)
    assert response == b"hi"
    assert server.parent.span_id == client.context.span_id
    assert client.attributes["server.port"] == port


def test_the_names_the_app_imports_are_the_wrappers_and_patching_twice_changes_nothing(hook):
    from autotrace.hooks import grpc_aio

    grpc_aio.patch(grpc.aio)  # a second time: nothing more
    from grpc.aio import insecure_channel, secure_channel, server

    for function in (insecure_channel, secure_channel, server):
        assert getattr(function, patching.ORIGINAL, None) is not None
    async def main():
        async with serving(Echo().handler()) as port:
            async with insecure_channel(f"127.0.0.1:{port}") as channel:
                await call(channel, "Unary")
            return await rpc_spans(hook, 2)

    clients, servers = run(main)
    assert len(clients) == len(servers) == 1


def test_the_hook_adds_its_interceptors_without_touching_the_apps(hook):
    mine = (AppClientInterceptor("c1", []),)

    async def main():
        channel = grpc.aio.insecure_channel("127.0.0.1:1", None, None, mine)  # positional, as grpc allows
        await channel.close()
        return channel

    channel = run(main)
    kinds = [type(i).__name__ for i in channel._unary_unary_interceptors]
    assert kinds[0] == "AppClientInterceptor" and len(kinds) == 2
    assert len(channel._stream_stream_interceptors) == 1


# -- what apps and grpc may hand the hook ------------------------------------------------


def test_registered_method_handlers_are_traced_too(hook):
    """What newer generated code uses (``add_registered_method_handlers``)."""
    echo = Echo()

    async def main():
        server = grpc.aio.server()
        server.add_registered_method_handlers(SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(echo.unary)})
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                response = await channel.unary_unary(f"/{SERVICE}/Unary", _registered_method=True)(b"hi")
        finally:
            await server.stop(None)
        return port, response, await rpc_spans(hook, 2)

    port, response, ([client], [server]) = run(main)
    assert response == b"hi"
    assert_rpc(client, server, "Unary", port)


class CallDetails(grpc.aio.ClientCallDetails.__bases__[1]):  # grpc.ClientCallDetails: not a namedtuple
    def __init__(self, details, metadata) -> None:
        self.method, self.timeout, self.credentials = details.method, details.timeout, details.credentials
        self.wait_for_ready, self.metadata = details.wait_for_ready, metadata


class ReplaceDetails(grpc.aio.UnaryUnaryClientInterceptor):
    """Hands on call details of its own: a tuple of metadata, or its own details class."""

    def __init__(self, how: str) -> None:
        self.how = how

    async def intercept_unary_unary(self, continuation, details, request):
        metadata = tuple(details.metadata) + (("x-app", self.how),)
        if self.how == "tuple":
            details = details._replace(metadata=metadata)
        elif self.how == "list":
            details = details._replace(metadata=list(metadata))
        else:
            details = CallDetails(details, metadata)
        return await continuation(details, request)


@pytest.mark.parametrize("how", ["tuple", "list", "class"])
def test_call_details_an_app_interceptor_made_carry_the_traceparent(hook, how):
    echo = Echo()

    async def main():
        async with serving(echo.handler()) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=[ReplaceDetails(how)]) as channel:
                response = await call(channel, "Unary")
            return response, await rpc_spans(hook, 2)

    response, ([client], [server]) = run(main)
    assert response == b"hi"
    metadata = echo.seen[0]["metadata"]
    assert ("x-app", how) in metadata
    assert ids(traceparent_of(metadata)[0])[1] == client.context.span_id == server.parent.span_id


class FakeCall:
    """A call object without grpc's internals: the hook asks it for its status."""

    def __init__(self) -> None:
        self.callbacks = []

    def add_done_callback(self, callback) -> None:
        self.callbacks.append(callback)

    async def code(self):
        return grpc.StatusCode.ABORTED

    async def details(self):
        return "fake"


def test_the_client_interceptor_records_what_its_continuation_does(hook):
    from autotrace.hooks import grpc_aio

    details = grpc.aio.ClientCallDetails(b"/pkg.Echo/Unary", None, grpc.aio.Metadata(), None, None)
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="no server")
    fake = FakeCall()

    async def main():
        async def raises(_details, _request):
            raise error

        async def cancelled(_details, _request):
            raise asyncio.CancelledError()

        async def returns(_details, _request):
            return fake

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await grpc_aio._intercept_call("127.0.0.1:1", raises, details, b"")
        assert raised.value is error
        with pytest.raises(asyncio.CancelledError):
            await grpc_aio._intercept_call("127.0.0.1:1", cancelled, details, b"")
        assert await grpc_aio._intercept_call("127.0.0.1:1", returns, details, b"") is fake
        [callback] = fake.callbacks
        callback(fake)
        return await rpc_spans(hook, 3)

    clients, servers = run(main)
    assert [c.attributes["rpc.grpc.status_code"] for c in clients] == [14, 1, 10]
    assert [c.status.description for c in clients] == ["no server", None, "fake"]
    assert [e.attributes["exception.type"] for e in clients[0].events] == ["grpc.aio._call.AioRpcError"]
    assert clients[0].attributes["server.port"] == 1 and servers == []
