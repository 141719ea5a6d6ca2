"""gRPC under ``autotrace run``: a chain of processes is one trace, for the four call shapes.

Three kinds of process, none with tracing code, each run with ``autotrace run python``:

- ``leaf.py``: server B (sync ``grpc.server``), answers ``pkg.Chain`` itself;
- ``link_sync.py`` / ``link_aio.py``: server A (sync, or ``grpc.aio``), whose handlers
  call B, the same method, with a channel they made, and answer with what B answered;
- ``client.py``: calls A once per shape (and once for an error B returns), and exits.

B exports over OTLP/HTTP, A and the client over OTLP/gRPC: the agent's own gRPC
exporter calls must make no span. At the receiver, every call of the client is one
trace: client CLIENT -> A SERVER -> A CLIENT -> B SERVER, each the child of the one
before, named ``pkg.Chain/<Method>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from agent import AUTOTRACE, Watched, autotrace_run, clean_env, write
from otlp_receiver import OTLPReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2
SHAPES = ("Unary", "ServerStream", "ClientStream", "BidiStream")
EXPORTER_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
HAS_AIO_HOOK = (Path(__file__).resolve().parent.parent / "hooks" / "grpc_aio.py").exists()

# The server flavours of A. Add a flavour here (and a script in LINKS) to run the chain
# through another kind of server.
FLAVOURS = [
    "sync",
    pytest.param("aio", marks=pytest.mark.skipif(not HAS_AIO_HOOK, reason="hooks/grpc_aio.py not written yet")),
]

COMMON = """
import sys

import grpc

SERVICE = "pkg.Chain"


def method(name):
    return f"/{SERVICE}/{name}"
"""

LEAF = (
    COMMON
    + """
from concurrent import futures


def unary(request, context):
    if request == b"abort":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such link")
    return b"B:" + request


def server_stream(request, context):
    for i in range(3):
        yield b"B:%s%d" % (request, i)


def client_stream(requests, context):
    return b"B:" + b"".join(requests)


def bidi_stream(requests, context):
    for request in requests:
        yield b"B:" + request


handler = grpc.method_handlers_generic_handler(
    SERVICE,
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("listening", port, flush=True)
server.wait_for_termination()
"""
)

LINK_SYNC = (
    COMMON
    + """
from concurrent import futures

channel = grpc.insecure_channel(sys.argv[1])


def unary(request, context):
    try:
        return b"A:" + channel.unary_unary(method("Unary"))(request, timeout=10)
    except grpc.RpcError as error:
        context.abort(error.code(), error.details())


def server_stream(request, context):
    for response in channel.unary_stream(method("ServerStream"))(request, timeout=10):
        yield b"A:" + response


def client_stream(requests, context):
    return b"A:" + channel.stream_unary(method("ClientStream"))(iter(list(requests)), timeout=10)


def bidi_stream(requests, context):
    for response in channel.stream_stream(method("BidiStream"))(iter(list(requests)), timeout=10):
        yield b"A:" + response


handler = grpc.method_handlers_generic_handler(
    SERVICE,
    {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
    },
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("listening", port, flush=True)
server.wait_for_termination()
"""
)

LINK_AIO = (
    COMMON
    + """
import asyncio


async def main():
    channel = grpc.aio.insecure_channel(sys.argv[1])

    async def unary(request, context):
        try:
            return b"A:" + await channel.unary_unary(method("Unary"))(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details())

    async def server_stream(request, context):
        async for response in channel.unary_stream(method("ServerStream"))(request, timeout=10):
            yield b"A:" + response

    async def client_stream(requests, context):
        received = [request async for request in requests]
        return b"A:" + await channel.stream_unary(method("ClientStream"))(iter(received), timeout=10)

    async def bidi_stream(requests, context):
        received = [request async for request in requests]
        async for response in channel.stream_stream(method("BidiStream"))(iter(received), timeout=10):
            yield b"A:" + response

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "BidiStream": grpc.stream_stream_rpc_method_handler(bidi_stream),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print("listening", port, flush=True)
    await server.wait_for_termination()


asyncio.run(main())
"""
)

CLIENT_SCRIPT = (
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
try:
    channel.unary_unary(method("Unary"))(b"abort", timeout=10)
except grpc.RpcError as error:
    out["abort"] = [error.code().name, error.details()]
channel.close()
print(json.dumps(out), flush=True)
"""
)

LINKS = {"sync": ("link_sync.py", LINK_SYNC), "aio": ("link_aio.py", LINK_AIO)}

EXPECTED_REPLIES = {
    "Unary": "A:B:u",
    "ServerStream": ["A:B:s0", "A:B:s1", "A:B:s2"],
    "ClientStream": "A:B:c1c2",
    "BidiStream": ["A:B:b1", "A:B:b2"],
    "abort": ["NOT_FOUND", "no such link"],
}
SPANS_PER_CALL = 4  # client CLIENT, A SERVER, A CLIENT, B SERVER
CALLS_PER_FLAVOUR = len(SHAPES) + 1  # each shape, and the error


@dataclass
class Chain:
    receiver: OTLPReceiver
    ports: dict  # "b", "sync", "aio" -> port
    replies: dict  # flavour -> the client's output
    stderr: dict  # process name -> its stderr


def listening_port(process: Watched) -> int:
    process.wait_for_line("listening", timeout=15)
    line = next(line for line in process.text().splitlines() if line.startswith("listening"))
    return int(line.split()[1])


def flavours_run() -> list[str]:
    return ["sync", "aio"] if HAS_AIO_HOOK else ["sync"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    directory = tmp_path_factory.mktemp("grpc_chain")
    write(directory, "leaf.py", LEAF)
    write(directory, "client.py", CLIENT_SCRIPT)
    for name, source in LINKS.values():
        write(directory, name, source)
    flavours = flavours_run()
    with OTLPReceiver() as receiver:
        b_env = clean_env(**receiver.env("http/protobuf"), OTEL_SERVICE_NAME="b")
        with Watched([AUTOTRACE, "run", "python", "leaf.py"], directory, b_env) as leaf:
            ports = {"b": listening_port(leaf)}
            links = {}
            try:
                for flavour in flavours:
                    env = clean_env(**receiver.env("grpc"), OTEL_SERVICE_NAME=f"a-{flavour}")
                    script = LINKS[flavour][0]
                    links[flavour] = Watched([AUTOTRACE, "run", "python", script, f"127.0.0.1:{ports['b']}"], directory, env)
                for flavour, link in links.items():
                    ports[flavour] = listening_port(link)
                replies = {}
                client_env = clean_env(**receiver.env("grpc"), OTEL_SERVICE_NAME="client")
                for flavour in flavours:
                    result = autotrace_run(directory / "client.py", client_env, f"127.0.0.1:{ports[flavour]}", timeout=30)
                    assert result.returncode == 0, result.stderr
                    replies[flavour] = json.loads(result.stdout.strip().splitlines()[-1])
                    replies[flavour + " stderr"] = result.stderr
                receiver.wait_for_spans(len(flavours) * CALLS_PER_FLAVOUR * SPANS_PER_CALL, timeout=15)
            finally:
                for link in links.values():
                    link.stop()
            leaf.stop()
            stderr = {"b": leaf.text("stderr"), **{f"a-{f}": link.text("stderr") for f, link in links.items()}}
            stderr.update({f"client-{f}": replies.pop(f + " stderr") for f in flavours})
        yield Chain(receiver, ports, replies, stderr)


def calls_to(chain: Chain, flavour: str, shape: str) -> list[ReceivedSpan]:
    """The client's CLIENT spans of its calls of ``shape`` to A of ``flavour``."""
    return [
        s
        for s in chain.receiver.spans()
        if s.kind == CLIENT
        and s.resource.get("service.name") == "client"
        and s.attributes.get("server.port") == chain.ports[flavour]
        and s.attributes.get("rpc.method") == shape
    ]


def trace_of(chain: Chain, root: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in chain.receiver.spans() if s.trace_id == root.trace_id]


def the_chain(chain: Chain, root: ReceivedSpan) -> list[ReceivedSpan]:
    """The trace's spans in chain order (each the child of the one before); asserts its shape."""
    spans = trace_of(chain, root)
    assert len(spans) == SPANS_PER_CALL, [(s.name, s.kind, s.resource.get("service.name")) for s in spans]
    ordered = [root]
    while len(ordered) < len(spans):
        [child] = [s for s in spans if s.parent_span_id == ordered[-1].span_id]
        ordered.append(child)
    return ordered


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_replies_are_the_apps(chain, flavour):
    assert chain.replies[flavour] == EXPECTED_REPLIES


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("shape", SHAPES)
def test_each_call_is_one_trace_through_the_chain(chain, flavour, shape):
    [root] = [s for s in calls_to(chain, flavour, shape) if s.status_code == STATUS_UNSET]
    assert root.parent_span_id == ""
    client, a_server, a_client, b_server = the_chain(chain, root)
    assert [(s.kind, s.resource.get("service.name")) for s in (client, a_server, a_client, b_server)] == [
        (CLIENT, "client"),
        (SERVER, f"a-{flavour}"),
        (CLIENT, f"a-{flavour}"),
        (SERVER, "b"),
    ]
    for span in (client, a_server, a_client, b_server):
        assert span.name == f"pkg.Chain/{shape}"
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == "pkg.Chain"
        assert span.attributes["rpc.method"] == shape
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.status_code == STATUS_UNSET
        assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    assert a_client.attributes["server.port"] == chain.ports["b"]
    assert a_client.attributes["server.address"] == "127.0.0.1"
    assert a_server.attributes["client.address"] == b_server.attributes["client.address"] == "127.0.0.1"
    # Each span lies within its parent's time (the clocks are the same machine's).
    for parent, child in ((client, a_server), (a_server, a_client), (a_client, b_server)):
        assert parent.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= parent.end_time_unix_nano


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_an_error_from_b_is_recorded_along_the_chain(chain, flavour):
    [root] = [s for s in calls_to(chain, flavour, "Unary") if s.status_code == STATUS_ERROR]
    for span in the_chain(chain, root):
        assert span.status_code == STATUS_ERROR
        assert span.attributes["rpc.grpc.status_code"] == 5
        assert span.attributes["error.type"] == "NOT_FOUND"


def test_the_exporters_own_grpc_calls_are_not_traced(chain):
    assert "grpc" in chain.receiver.export_requests() and "http" in chain.receiver.export_requests()
    spans = chain.receiver.spans()
    assert not [s for s in spans if s.attributes.get("rpc.service") == EXPORTER_SERVICE]
    receiver_port = int(chain.receiver.grpc_endpoint.rpartition(":")[2])
    assert not [s for s in spans if s.attributes.get("server.port") == receiver_port]
    for span in spans:
        assert "traceparent" not in span.headers
    # Nothing but the chain's spans.
    assert len(spans) == len(flavours_run()) * CALLS_PER_FLAVOUR * SPANS_PER_CALL
    assert {s.name.partition("/")[0] for s in spans} == {"pkg.Chain"}


def test_no_warning_from_the_agent(chain):
    for name, stderr in chain.stderr.items():
        assert "autotrace WARNING" not in stderr, (name, stderr)
        assert "Traceback" not in stderr, (name, stderr)
