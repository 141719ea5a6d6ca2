"""gRPC under ``autotrace run``: a chain of processes is one trace, for every call shape.

Processes with no tracing code, each run with ``autotrace run python``:

- ``leaf_sync.py`` / ``leaf_aio.py``: server B (``grpc.server`` / ``grpc.aio.server``),
  answers ``pkg.Chain`` itself;
- ``link_sync.py`` / ``link_aio.py``: server A (sync, or ``grpc.aio``), whose handlers
  call B, the same method and with the deadline they were given, over a channel they
  made, and answer with what B answered. The app's own interceptors run on both sides
  of A: its server interceptor refuses a call whose metadata has ``x-deny``
  (PERMISSION_DENIED), its channel's adds ``x-via: a`` to the unary calls, which B
  answers with an ``@a``;
- ``client_sync.py`` / ``client_aio.py``: calls A once per shape, then once each for an
  error B returns, a call A's interceptor refuses, a deadline that passes while B works,
  and a response stream the client cancels; prints what it got and exits.

Every route mixes the kinds (a client, A and B of each kind, every pair of kinds on a
hop). B exports over OTLP/HTTP, A and the clients over OTLP/gRPC: the agent's own gRPC
exporter calls must make no span. At the receiver, every call of a client is one trace:
client CLIENT -> A SERVER -> A CLIENT -> B SERVER, each the child of the one before,
named ``pkg.Chain/<Method>`` (the refused call stops at A SERVER).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from agent import AUTOTRACE, Watched, clean_env, write
from otlp_receiver import OTLPReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2
SHAPES = ("Unary", "ServerStream", "ClientStream", "BidiStream")
EXPORTER_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"

# (client, A, B): each kind of process on each side of each hop.
ROUTES = [("sync", "sync", "aio"), ("aio", "aio", "sync"), ("sync", "aio", "aio"), ("aio", "sync", "sync")]

COMMON = """
import sys
import time

import grpc

SERVICE = "pkg.Chain"


def method(name):
    return f"/{SERVICE}/{name}"


def via_a(context):
    return b"@a" if ("x-via", "a") in [(m.key, m.value) for m in context.invocation_metadata()] else b""


def denied(details):
    return ("x-deny", "1") in [(m.key, m.value) for m in details.invocation_metadata]


def chain_handler(unary, server_stream, client_stream, bidi_stream):  # pkg.Chain's four behaviors
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
        },
    )


def serve_sync(handler, interceptors=None):
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=interceptors)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening", port, flush=True)
    server.wait_for_termination()


async def serve_aio(handler, interceptors=None):
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print("listening", port, flush=True)
    await server.wait_for_termination()
"""

# B's answers: b"abort": NOT_FOUND; b"slow": works until the call's deadline (5 s at most);
# b"endless": a response stream until the client cancels (5 s at most).
LEAF_SYNC = (
    COMMON
    + """
def unary(request, context):
    if request == b"abort":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such link")
    if request == b"slow":
        until = time.monotonic() + 5
        while context.is_active() and time.monotonic() < until:
            time.sleep(0.01)
    return b"B:" + request + via_a(context)


def server_stream(request, context):
    if request == b"endless":
        for i in range(500):
            if not context.is_active():
                return
            yield b"B:%d" % i
            time.sleep(0.01)
        return
    for i in range(3):
        yield b"B:%s%d" % (request, i)


def client_stream(requests, context):
    return b"B:" + b"".join(requests)


def bidi_stream(requests, context):
    for request in requests:
        yield b"B:" + request


serve_sync(chain_handler(unary, server_stream, client_stream, bidi_stream))
"""
)

LEAF_AIO = (
    COMMON
    + """
import asyncio


async def unary(request, context):
    if request == b"abort":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such link")
    if request == b"slow":
        await asyncio.sleep(5)  # cancelled when the deadline passes
    return b"B:" + request + via_a(context)


async def server_stream(request, context):
    if request == b"endless":
        for i in range(500):
            yield b"B:%d" % i
            await asyncio.sleep(0.01)
        return
    for i in range(3):
        yield b"B:%s%d" % (request, i)


async def client_stream(requests, context):
    return b"B:" + b"".join([request async for request in requests])


async def bidi_stream(requests, context):
    async for request in requests:
        yield b"B:" + request


async def main():
    await serve_aio(chain_handler(unary, server_stream, client_stream, bidi_stream))


asyncio.run(main())
"""
)

LINK_SYNC = (
    COMMON
    + """
class Via(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, details, request):
        return continuation(details._replace(metadata=[*(details.metadata or ()), ("x-via", "a")]), request)


class Deny(grpc.ServerInterceptor):
    def intercept_service(self, continuation, details):
        if denied(details):
            def refuse(request, context):
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by the app")

            return grpc.unary_unary_rpc_method_handler(refuse)
        return continuation(details)


channel = grpc.intercept_channel(grpc.insecure_channel(sys.argv[1]), Via())


def unary(request, context):
    try:
        return b"A:" + channel.unary_unary(method("Unary"))(request, timeout=context.time_remaining())
    except grpc.RpcError as error:
        context.abort(error.code(), error.details())


def server_stream(request, context):
    for response in channel.unary_stream(method("ServerStream"))(request, timeout=context.time_remaining()):
        yield b"A:" + response


def client_stream(requests, context):
    return b"A:" + channel.stream_unary(method("ClientStream"))(iter(list(requests)), timeout=10)


def bidi_stream(requests, context):
    for response in channel.stream_stream(method("BidiStream"))(iter(list(requests)), timeout=10):
        yield b"A:" + response


serve_sync(chain_handler(unary, server_stream, client_stream, bidi_stream), [Deny()])
"""
)

LINK_AIO = (
    COMMON
    + """
import asyncio


class Via(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("x-via", "a"))
        return await continuation(details._replace(metadata=metadata), request)


class Deny(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        if denied(details):
            async def refuse(request, context):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by the app")

            return grpc.unary_unary_rpc_method_handler(refuse)
        return await continuation(details)


async def main():
    channel = grpc.aio.insecure_channel(sys.argv[1], interceptors=[Via()])

    async def unary(request, context):
        try:
            return b"A:" + await channel.unary_unary(method("Unary"))(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details())

    async def server_stream(request, context):
        call = channel.unary_stream(method("ServerStream"))(request, timeout=context.time_remaining())
        try:
            async for response in call:
                yield b"A:" + response
        finally:
            # Cancelled while grpc was sending (not while B's stream was read, where grpc
            # cancels B's call itself): B's call would be left to run to its deadline.
            call.cancel()

    async def client_stream(requests, context):
        received = [request async for request in requests]
        return b"A:" + await channel.stream_unary(method("ClientStream"))(iter(received), timeout=10)

    async def bidi_stream(requests, context):
        received = [request async for request in requests]
        async for response in channel.stream_stream(method("BidiStream"))(iter(received), timeout=10):
            yield b"A:" + response

    await serve_aio(chain_handler(unary, server_stream, client_stream, bidi_stream), [Deny()])


asyncio.run(main())
"""
)

# What a client prints: each shape's replies, then [code, details] of each failed call.
CLIENT_SYNC = (
    COMMON
    + """
import json

channel = grpc.insecure_channel(sys.argv[1])
out = {
    "Unary": channel.unary_unary(method("Unary"))(b"u", timeout=10).decode(),
    "ServerStream": [r.decode() for r in channel.unary_stream(method("ServerStream"))(b"s", timeout=10)],
    "ClientStream": channel.stream_unary(method("ClientStream"))(iter([b"c1", b"c2"]), timeout=10).decode(),
    "BidiStream": [r.decode() for r in channel.stream_stream(method("BidiStream"))(iter([b"b1", b"b2"]), timeout=10)],
}
for name, request, kwargs in [
    ("abort", b"abort", {"timeout": 10}),
    ("deny", b"d", {"timeout": 10, "metadata": [("x-deny", "1")]}),
    ("slow", b"slow", {"timeout": 1.5}),
]:
    try:
        channel.unary_unary(method("Unary"))(request, **kwargs)
    except grpc.RpcError as error:
        out[name] = [error.code().name, error.details()]
stream = channel.unary_stream(method("ServerStream"))(b"endless", timeout=10)
out["first"] = next(stream).decode()
stream.cancel()
out["cancel"] = [stream.code().name]
channel.close()
print(json.dumps(out), flush=True)
"""
)

CLIENT_AIO = (
    COMMON
    + """
import asyncio
import json


async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        out = {
            "Unary": (await channel.unary_unary(method("Unary"))(b"u", timeout=10)).decode(),
            "ServerStream": [r.decode() async for r in channel.unary_stream(method("ServerStream"))(b"s", timeout=10)],
            "ClientStream": (await channel.stream_unary(method("ClientStream"))(iter([b"c1", b"c2"]), timeout=10)).decode(),
            "BidiStream": [r.decode() async for r in channel.stream_stream(method("BidiStream"))(iter([b"b1", b"b2"]), timeout=10)],
        }
        for name, request, kwargs in [
            ("abort", b"abort", {"timeout": 10}),
            ("deny", b"d", {"timeout": 10, "metadata": [("x-deny", "1")]}),
            ("slow", b"slow", {"timeout": 1.5}),
        ]:
            try:
                await channel.unary_unary(method("Unary"))(request, **kwargs)
            except grpc.aio.AioRpcError as error:
                out[name] = [error.code().name, error.details()]
        stream = channel.unary_stream(method("ServerStream"))(b"endless", timeout=10)
        out["first"] = (await stream.read()).decode()
        stream.cancel()
        out["cancel"] = [(await stream.code()).name]
    print(json.dumps(out), flush=True)


asyncio.run(main())
"""
)

SCRIPTS = {
    "leaf_sync.py": LEAF_SYNC,
    "leaf_aio.py": LEAF_AIO,
    "link_sync.py": LINK_SYNC,
    "link_aio.py": LINK_AIO,
    "client_sync.py": CLIENT_SYNC,
    "client_aio.py": CLIENT_AIO,
}

EXPECTED_REPLIES = {
    "Unary": "A:B:u@a",  # A's channel interceptor ran, and B saw its metadata
    "ServerStream": ["A:B:s0", "A:B:s1", "A:B:s2"],
    "ClientStream": "A:B:c1c2",
    "BidiStream": ["A:B:b1", "A:B:b2"],
    "abort": ["NOT_FOUND", "no such link"],
    "deny": ["PERMISSION_DENIED", "denied by the app"],
    "slow": ["DEADLINE_EXCEEDED", "Deadline Exceeded"],
    "first": "A:B:0",
    "cancel": ["CANCELLED"],
}
# Spans of each call: client CLIENT, A SERVER, A CLIENT, B SERVER (a refused call: two).
SPANS_PER_ROUTE = 4 * len(SHAPES) + 4 + 2 + 4 + 4  # the shapes, abort, deny, slow, cancel


def route_name(route: tuple[str, str, str]) -> str:
    return "-".join(route)


@dataclass
class Chain:
    receiver: OTLPReceiver
    ports: dict  # "b-sync", "b-aio", "a-<route>" -> port
    replies: dict  # route name -> the client's output
    stderr: dict  # process name -> its stderr


def listening_port(process: Watched) -> int:
    process.wait_for_line("listening", timeout=20)
    line = next(line for line in process.text().splitlines() if line.startswith("listening"))
    return int(line.split()[1])


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    directory = tmp_path_factory.mktemp("grpc_chain")
    for name, source in SCRIPTS.items():
        write(directory, name, source)
    with OTLPReceiver() as receiver:
        processes: dict[str, Watched] = {}
        ports: dict[str, int] = {}
        replies: dict[str, dict] = {}
        try:
            for kind in ("sync", "aio"):
                env = clean_env(**receiver.env("http/protobuf"), OTEL_SERVICE_NAME=f"b-{kind}")
                processes[f"b-{kind}"] = Watched([AUTOTRACE, "run", "python", f"leaf_{kind}.py"], directory, env)
            for kind in ("sync", "aio"):
                ports[f"b-{kind}"] = listening_port(processes[f"b-{kind}"])
            for route in ROUTES:
                name = "a-" + route_name(route)
                env = clean_env(**receiver.env("grpc"), OTEL_SERVICE_NAME=name)
                target = f"127.0.0.1:{ports['b-' + route[2]]}"
                processes[name] = Watched([AUTOTRACE, "run", "python", f"link_{route[1]}.py", target], directory, env)
            for route in ROUTES:
                ports["a-" + route_name(route)] = listening_port(processes["a-" + route_name(route)])
            clients = {}
            for route in ROUTES:
                name = "client-" + route_name(route)
                env = clean_env(**receiver.env("grpc"), OTEL_SERVICE_NAME=name)
                target = f"127.0.0.1:{ports['a-' + route_name(route)]}"
                clients[name] = processes[name] = Watched([AUTOTRACE, "run", "python", f"client_{route[0]}.py", target], directory, env)
            for name, client in clients.items():
                assert client.finish(timeout=60) == 0, client.text("stderr")
                replies[name.removeprefix("client-")] = json.loads(client.text().strip().splitlines()[-1])
            receiver.wait_for_spans(len(ROUTES) * SPANS_PER_ROUTE, timeout=20)
        finally:
            for process in processes.values():
                process.stop()
        stderr = {name: process.text("stderr") for name, process in processes.items()}
        yield Chain(receiver, ports, replies, stderr)


def calls_of(chain: Chain, route: tuple[str, str, str], shape: str) -> list[ReceivedSpan]:
    """The client's CLIENT spans of its calls of ``shape`` on ``route``."""
    return [
        s
        for s in chain.receiver.spans()
        if s.kind == CLIENT
        and s.resource.get("service.name") == "client-" + route_name(route)
        and s.attributes.get("rpc.method") == shape
    ]


def the_chain(chain: Chain, root: ReceivedSpan, length: int = 4) -> list[ReceivedSpan]:
    """The trace's spans in chain order (each the child of the one before); asserts its shape."""
    spans = [s for s in chain.receiver.spans() if s.trace_id == root.trace_id]
    assert len(spans) == length, [(s.name, s.kind, s.resource.get("service.name")) for s in spans]
    assert root.parent_span_id == ""
    ordered = [root]
    while len(ordered) < len(spans):
        [child] = [s for s in spans if s.parent_span_id == ordered[-1].span_id]
        ordered.append(child)
    return ordered


def the_call(chain: Chain, route, code: int, length: int = 4, shape: str = "Unary") -> list[ReceivedSpan]:
    """The chain of the one call of ``shape`` on ``route`` whose CLIENT span has status ``code``."""
    [root] = [s for s in calls_of(chain, route, shape) if s.attributes["rpc.grpc.status_code"] == code]
    return the_chain(chain, root, length)


def assert_processes(spans: list[ReceivedSpan], route) -> None:
    name = route_name(route)
    expected = [(CLIENT, "client-" + name), (SERVER, "a-" + name), (CLIENT, "a-" + name), (SERVER, "b-" + route[2])]
    assert [(s.kind, s.resource.get("service.name")) for s in spans] == expected[: len(spans)]


@pytest.mark.parametrize("route", ROUTES, ids=route_name)
def test_replies_are_the_apps(chain, route):
    assert chain.replies[route_name(route)] == EXPECTED_REPLIES


@pytest.mark.parametrize("route", ROUTES, ids=route_name)
@pytest.mark.parametrize("shape", SHAPES)
def test_each_call_is_one_trace_through_the_chain(chain, route, shape):
    [root] = [s for s in calls_of(chain, route, shape) if s.status_code == STATUS_UNSET]
    client, a_server, a_client, b_server = spans = the_chain(chain, root)
    assert_processes(spans, route)
    for span in spans:
        assert span.name == f"pkg.Chain/{shape}"
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == "pkg.Chain"
        assert span.attributes["rpc.method"] == shape
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert "error.type" not in span.attributes
        assert span.status_code == STATUS_UNSET
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    assert (client.attributes["server.address"], client.attributes["server.port"]) == ("127.0.0.1", chain.ports["a-" + route_name(route)])
    assert (a_client.attributes["server.address"], a_client.attributes["server.port"]) == ("127.0.0.1", chain.ports["b-" + route[2]])
    assert a_server.attributes["server.port"] == chain.ports["a-" + route_name(route)]
    assert b_server.attributes["server.port"] == chain.ports["b-" + route[2]]
    assert a_server.attributes["client.address"] == b_server.attributes["client.address"] == "127.0.0.1"
    # Each span lies within its parent's time (the clocks are the same machine's).
    for parent, child in zip(spans, spans[1:]):
        assert parent.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= parent.end_time_unix_nano


@pytest.mark.parametrize("route", ROUTES, ids=route_name)
def test_an_error_from_b_is_recorded_along_the_chain(chain, route):
    spans = the_call(chain, route, 5)
    assert_processes(spans, route)
    for span in spans:
        assert span.status_code == STATUS_ERROR
        assert span.attributes["rpc.grpc.status_code"] == 5
        assert span.attributes["error.type"] == "NOT_FOUND"


@pytest.mark.parametrize("route", ROUTES, ids=route_name)
def test_a_call_the_apps_server_interceptor_refuses_ends_at_a(chain, route):
    spans = the_call(chain, route, 7, length=2)
    assert_processes(spans, route)
    for span in spans:
        assert span.status_code == STATUS_ERROR
        assert span.attributes["error.type"] == "PERMISSION_DENIED"


@pytest.mark.parametrize("route", ROUTES, ids=route_name)
def test_a_deadline_that_passes_ends_every_span_of_the_chain(chain, route):
    spans = the_call(chain, route, 4)
    assert_processes(spans, route)
    for span in spans:
        assert span.status_code == STATUS_ERROR
        # Each side sees the deadline; a server may see the client's cancellation first.
        assert span.attributes["error.type"] in ("DEADLINE_EXCEEDED", "CANCELLED"), span
    assert spans[0].attributes["error.type"] == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize("route", ROUTES, ids=route_name)
def test_a_stream_the_client_cancels_ends_every_span_of_the_chain(chain, route):
    """A's handler stops reading B's stream when its own call is cancelled: B's call is cancelled too."""
    spans = the_call(chain, route, 1, shape="ServerStream")
    assert_processes(spans, route)
    for span in spans:
        assert span.status_code == STATUS_ERROR
        assert span.attributes["error.type"] == "CANCELLED", span


def test_the_exporters_own_grpc_calls_are_not_traced(chain):
    assert "grpc" in chain.receiver.export_requests() and "http" in chain.receiver.export_requests()
    spans = chain.receiver.spans()
    assert not [s for s in spans if s.attributes.get("rpc.service") == EXPORTER_SERVICE]
    receiver_port = int(chain.receiver.grpc_endpoint.rpartition(":")[2])
    assert not [s for s in spans if s.attributes.get("server.port") == receiver_port]
    for span in spans:
        assert "traceparent" not in span.headers
    # Nothing but the chain's spans.
    assert len(spans) == len(ROUTES) * SPANS_PER_ROUTE
    assert {s.name.partition("/")[0] for s in spans} == {"pkg.Chain"}


def test_no_warning_from_the_agent(chain):
    for name, stderr in chain.stderr.items():
        assert "autotrace WARNING" not in stderr, (name, stderr)
        assert "Traceback" not in stderr, (name, stderr)
