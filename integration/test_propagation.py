"""Incoming context under ``autotrace run``: what an unchanged service passes on downstream.

A small service (no tracing code) answers ``GET /call?case=...`` by calling the
recording peer (tests/http_peer.py) and replying with the peer's answer: stdlib
http.server calling with ``requests``, and the same service in aiohttp (its server,
its ``ClientSession``); every case runs through both. The test sends it requests with propagation headers (valid, malformed,
in other formats) and checks the OUTGOING headers the peer received, and, where it
matters, the spans at an OTLP receiver.

Each variant of the service (its environment: ``OTEL_PROPAGATORS``,
``AUTOTRACE_INCOMING_CONTEXT``) runs once for the module, all of them at once, and
serves every case of its variant; each uses the agent's own propagators
(autotrace.propagation) as the global propagator.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import AUTOTRACE, SERVE_ON_ARGV_PORT, Watched, clean_env, run, wait_until_answers, write
from otlp_receiver import OTLPReceiver, ReceivedSpan
from ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import http_peer  # noqa: E402

SERVER, CLIENT = 2, 3  # proto SpanKind
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
OTHER_TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4737"
OTHER_SPAN_ID = "10f067aa0ba902b8"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"
TRACE_ID_64 = "a3ce929d0e0e4736"  # a 64-bit trace id: the lower half of a 128-bit one
OVERSIZED = 9000  # characters: over the 8192 a propagation header value may have

SERVICE = """
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import requests

PEER = sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        if parts.path == "/propagator":
            try:
                from opentelemetry import propagate

                textmap = propagate.get_global_textmap()
                payload = type(textmap).__module__ + "." + type(textmap).__qualname__
            except Exception as exc:
                payload = "error: %r" % (exc,)
            self._reply(payload.encode())
            return
        if parts.path != "/call":
            self.send_error(404)
            return
        case = parse_qs(parts.query)["case"][0]
        r = requests.get(PEER + "/echo?case=" + case, timeout=5)
        self._reply(r.content)

    def _reply(self, payload):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


""" + SERVE_ON_ARGV_PORT

AIOHTTP_SERVICE = """
import asyncio
import sys

import aiohttp
from aiohttp import web

PEER = sys.argv[2]


async def propagator(request):
    try:
        from opentelemetry import propagate

        textmap = propagate.get_global_textmap()
        payload = type(textmap).__module__ + "." + type(textmap).__qualname__
    except Exception as exc:
        payload = "error: %r" % (exc,)
    return web.Response(text=payload)


async def call(request):
    async with aiohttp.ClientSession() as session:
        async with session.get(PEER + "/echo?case=" + request.query["case"], timeout=aiohttp.ClientTimeout(total=5)) as r:
            payload = await r.read()
    return web.Response(body=payload, content_type="application/json")


app = web.Application()
app.router.add_get("/propagator", propagator)
app.router.add_get("/call", call)


async def main():
    # As large a header as http.server takes (the oversized propagation headers must arrive).
    runner = web.AppRunner(app, max_line_size=65536, max_field_size=65536)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    print("serving", flush=True)
    await asyncio.Event().wait()  # until SIGTERM


asyncio.run(main())
"""

SERVICES = {"http.server": SERVICE, "aiohttp": AIOHTTP_SERVICE}

# variant -> its environment (besides the receiver's)
VARIANTS = {
    "default": {},
    "restart": {"AUTOTRACE_INCOMING_CONTEXT": "restart"},
    "ignore": {"AUTOTRACE_INCOMING_CONTEXT": "ignore"},
    "b3": {"OTEL_PROPAGATORS": "b3"},
    "b3multi": {"OTEL_PROPAGATORS": "b3multi"},
    "jaeger": {"OTEL_PROPAGATORS": "jaeger"},
    "tracecontext_b3": {"OTEL_PROPAGATORS": "tracecontext,b3"},
    "tracecontext_jaeger": {"OTEL_PROPAGATORS": "tracecontext,baggage,jaeger"},
    "b3multi_jaeger": {"OTEL_PROPAGATORS": "b3multi,jaeger"},
    "none": {"OTEL_PROPAGATORS": "none"},
}


class RawReceiver(OTLPReceiver):
    """The receiver, also keeping each exported proto span (ReceivedSpan has no links)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: dict[str, object] = {}  # span id (hex) -> proto Span

    def _record(self, request, protocol, headers) -> None:
        with self._cond:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.raw[span.span_id.hex()] = span
        super()._record(request, protocol, headers)

    def links(self, span_id: str) -> list[tuple[str, str]]:
        with self._cond:
            span = self.raw[span_id]
        return [(link.trace_id.hex(), link.span_id.hex()) for link in span.links]


@dataclass
class Services:
    ports: dict  # variant -> port
    peer: http_peer.Peer
    receiver: RawReceiver
    processes: dict  # variant -> Watched

    def call(self, variant: str, headers: list[tuple[str, str]]) -> tuple[dict, str]:
        """Send one request with ``headers`` (repeats allowed); the headers the peer got, and the case."""
        case = f"{variant}-{secrets.token_hex(4)}"
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[variant], timeout=20)
        try:
            conn.putrequest("GET", f"/call?case={case}")
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == 200, (response.status, body, self.processes[variant].text("stderr"))
        [received] = self.peer.requests(case)
        assert json.loads(body) == received.headers  # the service got the peer's answer
        return received.headers, case

    def server_span(self, case: str) -> ReceivedSpan:
        """The SERVER span of the request ``case`` (the parent of its CLIENT span), at the receiver."""
        [client] = self.receiver.wait_for_spans(1, 10, lambda s: s.kind == CLIENT and case in str(s.attributes.get("url.full")))
        [server] = self.receiver.wait_for_spans(1, 10, lambda s: s.span_id == client.parent_span_id)
        assert server.kind == SERVER
        return server

    def uses_agent_propagators(self, variant: str) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[variant], timeout=10)
        try:
            conn.request("GET", "/propagator")
            return conn.getresponse().read().decode().startswith("autotrace.propagation")
        finally:
            conn.close()


@pytest.fixture(scope="module", params=sorted(SERVICES))
def services(tmp_path_factory, request):
    directory = tmp_path_factory.mktemp("propagation")
    write(directory, "service.py", SERVICES[request.param])
    peer, peer_server, peer_thread = http_peer.start()
    try:
        with RawReceiver() as receiver:
            ports = {variant: free_port() for variant in VARIANTS}
            processes: dict[str, Watched] = {}
            try:
                for variant, extra in VARIANTS.items():
                    env = clean_env(**receiver.env("http/protobuf"), OTEL_SERVICE_NAME=f"svc-{variant}", **extra)
                    processes[variant] = Watched(
                        [AUTOTRACE, "run", "python", "service.py", str(ports[variant]), peer.base], directory, env
                    )
                for variant, process in processes.items():
                    process.wait_for_line("serving", timeout=20)
                    wait_until_answers(f"http://127.0.0.1:{ports[variant]}/nothing", process=process)
                yield Services(ports, peer, receiver, processes)
            finally:
                for process in processes.values():
                    process.stop()
    finally:
        http_peer.stop(peer_server, peer_thread)


def one(headers: dict, name: str) -> str:
    values = headers.get(name)
    assert values and len(values) == 1, (name, headers)
    return values[0]


def parse_traceparent(value: str) -> tuple[str, str, str, str]:
    version, trace_id, span_id, flags = value.split("-")
    return version, trace_id, span_id, flags


def assert_continued(headers: dict, trace_id: str = TRACE_ID) -> None:
    version, got, span_id, flags = parse_traceparent(one(headers, "traceparent"))
    assert version == "00" and got == trace_id and flags == "01"
    assert span_id not in (SPAN_ID, "0" * 16)


def assert_new_trace(headers: dict) -> str:
    version, got, _, _ = parse_traceparent(one(headers, "traceparent"))
    assert version == "00" and got not in (TRACE_ID, OTHER_TRACE_ID, "0" * 32) and got == got.lower()
    return got


# -- W3C Trace Context (the default propagators) --------------------------------------


def test_a_valid_traceparent_is_continued(services):
    headers, case = services.call("default", [("traceparent", TRACEPARENT)])
    assert_continued(headers)
    assert "tracestate" not in headers
    server = services.server_span(case)
    assert (server.trace_id, server.parent_span_id) == (TRACE_ID, SPAN_ID)
    assert parse_traceparent(one(headers, "traceparent"))[2] != server.span_id  # the CLIENT span's id


@pytest.mark.parametrize(
    "traceparent",
    [
        pytest.param(f"ff-{TRACE_ID}-{SPAN_ID}-01", id="version-ff"),
        pytest.param(f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", id="upper-case-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID.upper()}-01", id="upper-case-span-id"),
        pytest.param(f"00-{'0' * 32}-{SPAN_ID}-01", id="zero-trace-id"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero-span-id"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}-01-extra", id="version-00-with-more"),
        pytest.param(f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01", id="short-trace-id"),
        pytest.param("garbage", id="garbage"),
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(services, traceparent):
    headers, case = services.call("default", [("traceparent", traceparent), ("tracestate", "vendor=1")])
    assert_new_trace(headers)
    assert "tracestate" not in headers  # no parent, so nothing of its state
    server = services.server_span(case)
    assert server.parent_span_id == ""


def test_a_repeated_traceparent_starts_a_new_trace(services):
    other = f"00-{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-01"
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("traceparent", other)])
    assert_new_trace(headers)
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)])
    assert_new_trace(headers)


def test_a_future_version_with_more_fields_is_continued(services):
    headers, case = services.call("default", [("traceparent", f"01-{TRACE_ID}-{SPAN_ID}-01-extra-fields")])
    assert_continued(headers)  # written back at the version we know: 00
    assert services.server_span(case).parent_span_id == SPAN_ID


def test_an_unsampled_caller_is_followed_and_propagated(services):
    headers, case = services.call("default", [("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-00")])
    version, trace_id, span_id, flags = parse_traceparent(one(headers, "traceparent"))
    assert (version, trace_id, flags) == ("00", TRACE_ID, "00") and span_id != SPAN_ID
    # Nothing of that request is exported (checked against a later, sampled request's spans).
    _, later = services.call("default", [("traceparent", TRACEPARENT)])
    services.server_span(later)
    assert not [s for s in services.receiver.spans() if case in str(s.attributes.get("url.full", ""))]


def test_a_valid_tracestate_is_forwarded_in_order(services):
    tracestate = "zz=last-set,vendor@tenant=x,a=1"
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("tracestate", tracestate)])
    assert_continued(headers)
    assert one(headers, "tracestate").replace(" ", "") == tracestate


# -- W3C Trace Context Level 2 edge cases ----------------------------------------------


@pytest.mark.parametrize(
    ("incoming", "outgoing"),
    [
        pytest.param("03", "03", id="sampled-and-random"),
        pytest.param("02", "02", id="random-unsampled"),
        pytest.param("07", "03", id="a-reserved-bit-is-not-written-back"),  # W3C: other flags set to zero
    ],
)
def test_the_level_2_random_flag_travels_on(services, incoming, outgoing):
    headers, case = services.call("default", [("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-{incoming}")])
    version, trace_id, span_id, flags = parse_traceparent(one(headers, "traceparent"))
    assert (version, trace_id, flags) == ("00", TRACE_ID, outgoing) and span_id != SPAN_ID
    if int(outgoing, 16) & 1:
        assert services.server_span(case).parent_span_id == SPAN_ID


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(("TraceParent", "TraceState", "Baggage"), id="mixed-case"),
        pytest.param(("TRACEPARENT", "TRACESTATE", "BAGGAGE"), id="upper-case"),
    ],
)
def test_header_names_in_any_case(services, names):
    traceparent, tracestate, bag = names
    headers, case = services.call(
        "default", [(traceparent, TRACEPARENT), (tracestate, "a=1"), (tracestate, "b=2"), (bag, "tenant=acme")]
    )
    assert_continued(headers)
    assert one(headers, "tracestate") == "a=1,b=2" and one(headers, "baggage") == "tenant=acme"
    assert services.server_span(case).parent_span_id == SPAN_ID
    # a repeated traceparent whatever the case of its names
    headers, _ = services.call("default", [(traceparent, TRACEPARENT), ("traceparent", TRACEPARENT)])
    assert_new_trace(headers)


@pytest.mark.parametrize(
    "traceparents",
    [
        pytest.param([f"{TRACEPARENT},{TRACEPARENT}"], id="comma-joined"),
        pytest.param([f"{TRACEPARENT}, 00-{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-01"], id="comma-joined-different"),
        pytest.param([TRACEPARENT, TRACEPARENT + "0" * (OVERSIZED - len(TRACEPARENT))], id="a-9000-character-duplicate"),
        pytest.param([TRACEPARENT + "0" * (OVERSIZED - len(TRACEPARENT)), TRACEPARENT], id="the-9000-character-one-first"),
    ],
)
def test_a_traceparent_given_more_than_once_starts_a_new_trace(services, traceparents):
    headers, case = services.call("default", [("traceparent", value) for value in traceparents])
    assert_new_trace(headers)
    assert services.server_span(case).parent_span_id == ""


@pytest.mark.parametrize(
    ("tracestates", "expected"),
    [
        pytest.param(["a=1", "b=2"], "a=1,b=2", id="two-headers-combined"),
        pytest.param(["a=1,b=2", "c=3"], "a=1,b=2,c=3", id="two-headers-in-order"),
        pytest.param(["tenant@vendor=x,b=2"], "tenant@vendor=x,b=2", id="tenant-at-vendor-key"),
        pytest.param([" a=1 ,, b=2 ,\t,c=3\t"], "a=1,b=2,c=3", id="empty-members-and-whitespace"),
        pytest.param(["a=1", "", "b=2"], "a=1,b=2", id="an-empty-header"),
        pytest.param([",".join(f"k{i}=v{i}" for i in range(32))], ",".join(f"k{i}=v{i}" for i in range(32)), id="exactly-32-members"),
        pytest.param(
            [",".join(f"k{i}=v{i}" for i in range(16)), ",".join(f"k{i}=v{i}" for i in range(16, 32))],
            ",".join(f"k{i}=v{i}" for i in range(32)),
            id="32-members-in-two-headers",
        ),
        pytest.param(["a=1", "a=2"], "a=1", id="a-key-repeated-across-headers"),  # the first kept
        pytest.param([",".join(f"k{i}=v{i}" for i in range(20)), ",".join(f"k{i}=v{i}" for i in range(20, 33))], None, id="33-members-in-two-headers"),
        pytest.param(["vendor=1", "big=" + "v" * 17000], None, id="an-extra-oversized-header"),
        pytest.param(["vendor=1", "a=1," * 2200], None, id="an-extra-header-over-8192-characters"),
    ],
)
def test_tracestate_headers_are_combined_or_dropped_whole(services, tracestates, expected):
    headers, case = services.call("default", [("traceparent", TRACEPARENT)] + [("tracestate", v) for v in tracestates])
    assert_continued(headers)  # the traceparent is kept either way
    if expected is None:
        assert "tracestate" not in headers
    else:
        assert one(headers, "tracestate") == expected
    assert services.server_span(case).parent_span_id == SPAN_ID


# W3C Trace Context Level 2 (current text): the key grammar ( lcalpha / DIGIT ) 0*255
# ( keychar ), "@" a keychar, no tenant@vendor limits. Each with "foo=1" in another
# header: the two headers are one list, in order (combined, "tracestate Header Field
# Values"), so "unchanged" is that list in one header.
@pytest.mark.parametrize(
    "tracestate",
    [
        pytest.param("foo@=1,bar=2", id="trailing-at"),
        pytest.param("foo@@bar=1,bar=2", id="two-ats"),
        pytest.param("foo@bar@baz=1,bar=2", id="two-vendors"),
        pytest.param("k" * 256 + "=1", id="a-256-character-key"),
        pytest.param("t" * 242 + "@v=1", id="a-242-character-tenant"),
        pytest.param("t@" + "v" * 15 + "=1", id="a-15-character-vendor"),
    ],
)
def test_a_tracestate_of_the_current_key_grammar_is_propagated_unchanged(services, tracestate):
    headers, case = services.call("default", [("traceparent", TRACEPARENT), ("tracestate", "foo=1"), ("tracestate", tracestate)])
    assert_continued(headers)
    assert one(headers, "tracestate") == "foo=1," + tracestate
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("tracestate", tracestate), ("tracestate", "foo=1")])
    assert one(headers, "tracestate") == tracestate + ",foo=1"
    assert services.server_span(case).parent_span_id == SPAN_ID


@pytest.mark.parametrize(
    "tracestates",
    [
        pytest.param(["foo=1,foo=1"], id="one-header"),
        pytest.param(["foo=1,foo=2"], id="one-header-differing"),
        pytest.param(["foo=1", "foo=1"], id="two-headers"),
        pytest.param(["foo=1", "foo=2"], id="two-headers-differing"),
    ],
)
def test_a_duplicate_tracestate_key_keeps_the_first_member(services, tracestates):
    """W3C: vendors MAY discard duplicate keys; the tracestate is not thrown away."""
    headers, _ = services.call("default", [("traceparent", TRACEPARENT)] + [("tracestate", v) for v in tracestates])
    assert_continued(headers)
    assert one(headers, "tracestate") == "foo=1"


@pytest.mark.parametrize(
    "tracestate",
    [
        pytest.param("@foo=1,bar=2", id="a-leading-at"),
        pytest.param("k" * 257 + "=1", id="a-257-character-key"),
    ],
)
def test_a_tracestate_key_outside_the_grammar_drops_the_tracestate(services, tracestate):
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("tracestate", "foo=1"), ("tracestate", tracestate)])
    assert_continued(headers)
    assert "tracestate" not in headers


def test_a_long_valid_tracestate_is_forwarded(services):
    """32 members of 256-character values: over 8192 characters, and valid."""
    tracestate = ",".join(f"k{i}=" + "v" * 255 + "x" for i in range(32))
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("tracestate", tracestate)])
    assert one(headers, "tracestate") == tracestate


@pytest.mark.parametrize(
    "tracestate",
    [
        pytest.param("Bad=1,a=2", id="upper-case-key"),
        pytest.param("a=1,1bad key=2", id="illegal-key"),
        pytest.param(",".join(f"k{i}=v{i}" for i in range(33)), id="33-members"),
    ],
)
def test_an_invalid_tracestate_is_dropped_and_the_trace_continued(services, tracestate):
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("tracestate", tracestate)])
    assert_continued(headers)
    assert "tracestate" not in headers


def test_baggage_is_forwarded(services):
    headers, _ = services.call("default", [("traceparent", TRACEPARENT), ("baggage", "tenant=acme,region=eu-1")])
    assert_continued(headers)
    members = sorted(m.strip() for m in one(headers, "baggage").split(","))
    assert members == ["region=eu-1", "tenant=acme"]


def test_baggage_without_a_trace_is_forwarded_too(services):
    headers, _ = services.call("default", [("baggage", "tenant=acme")])
    assert_new_trace(headers)
    assert one(headers, "baggage") == "tenant=acme"


# -- the trust boundary -----------------------------------------------------------------


def test_restart_starts_a_new_trace_linked_to_the_caller(services):
    headers, case = services.call(
        "restart", [("traceparent", TRACEPARENT), ("tracestate", "vendor=1"), ("baggage", "tenant=acme")]
    )
    trace_id = assert_new_trace(headers)
    assert "baggage" not in headers and "tracestate" not in headers
    server = services.server_span(case)
    assert server.trace_id == trace_id and server.parent_span_id == ""
    assert services.receiver.links(server.span_id) == [(TRACE_ID, SPAN_ID)]


def test_restart_without_a_caller_has_no_link(services):
    headers, case = services.call("restart", [])
    assert_new_trace(headers)
    assert services.receiver.links(services.server_span(case).span_id) == []


def test_ignore_disregards_the_incoming_context(services):
    headers, case = services.call("ignore", [("traceparent", TRACEPARENT), ("baggage", "tenant=acme")])
    trace_id = assert_new_trace(headers)
    assert "baggage" not in headers
    server = services.server_span(case)
    assert server.trace_id == trace_id and server.parent_span_id == ""
    assert services.receiver.links(server.span_id) == []


def test_every_variant_uses_the_agents_propagators(services):
    for variant in VARIANTS:
        assert services.uses_agent_propagators(variant), variant


# -- other formats (autotrace.propagation) --------------------------------------------


def test_b3_single_header_in_and_out(services):
    headers, case = services.call("b3", [("b3", f"{TRACE_ID}-{SPAN_ID}-1")])
    trace_id, span_id, sampled = one(headers, "b3").split("-")[:3]
    assert (trace_id, sampled) == (TRACE_ID, "1") and span_id != SPAN_ID
    assert "traceparent" not in headers
    assert services.server_span(case).parent_span_id == SPAN_ID


def test_b3multi_headers_in_and_out(services):
    headers, case = services.call(
        "b3multi", [("X-B3-TraceId", TRACE_ID), ("X-B3-SpanId", SPAN_ID), ("X-B3-Sampled", "1")]
    )
    assert one(headers, "x-b3-traceid") == TRACE_ID
    assert one(headers, "x-b3-spanid") != SPAN_ID
    assert one(headers, "x-b3-sampled") == "1"
    assert "traceparent" not in headers and "b3" not in headers
    assert services.server_span(case).parent_span_id == SPAN_ID


def test_jaeger_header_in_and_out(services):
    headers, case = services.call(
        "jaeger", [("uber-trace-id", f"{TRACE_ID}:{SPAN_ID}:0:1"), ("uberctx-tenant", "blue%20team")]
    )
    trace_id, span_id, _, flags = one(headers, "uber-trace-id").split(":")
    assert trace_id.rjust(32, "0") == TRACE_ID and span_id.rjust(16, "0") != SPAN_ID
    assert int(flags, 16) & 1
    assert one(headers, "uberctx-tenant") == "blue%20team"  # Jaeger baggage in and out
    assert "traceparent" not in headers
    assert services.server_span(case).parent_span_id == SPAN_ID


def test_tracecontext_b3_continues_either_and_writes_both(services):
    headers, _ = services.call("tracecontext_b3", [("b3", f"{TRACE_ID}-{SPAN_ID}-1")])
    assert_continued(headers)
    assert one(headers, "b3").split("-")[0] == TRACE_ID

    headers, _ = services.call("tracecontext_b3", [("traceparent", TRACEPARENT)])
    assert_continued(headers)
    assert one(headers, "b3").split("-")[0] == TRACE_ID


def test_tracecontext_b3_first_format_is_the_parent_the_other_a_link(services):
    headers, case = services.call(
        "tracecontext_b3", [("traceparent", TRACEPARENT), ("b3", f"{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-1")]
    )
    assert_continued(headers)
    assert one(headers, "b3").split("-")[0] == TRACE_ID
    server = services.server_span(case)
    assert server.parent_span_id == SPAN_ID
    assert services.receiver.links(server.span_id) == [(OTHER_TRACE_ID, OTHER_SPAN_ID)]


def test_tracecontext_b3_writes_a_w3c_context_as_b3_too(services):
    headers, _ = services.call("tracecontext_b3", [("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-03")])
    assert parse_traceparent(one(headers, "traceparent"))[3] == "03"
    trace_id, span_id, state = one(headers, "b3").split("-")
    assert (trace_id, state) == (TRACE_ID, "1") and span_id == parse_traceparent(one(headers, "traceparent"))[2]


# -- 64-bit ids, URL-encoded Jaeger, debug and deny --------------------------------------


def test_b3_64_bit_ids_are_continued(services):
    headers, case = services.call("b3", [("b3", f"{TRACE_ID_64}-{SPAN_ID}-1")])
    trace_id, _, state = one(headers, "b3").split("-")
    assert (trace_id, state) == ("0" * 16 + TRACE_ID_64, "1")
    assert services.server_span(case).trace_id == "0" * 16 + TRACE_ID_64
    headers, _ = services.call("b3multi", [("X-B3-TraceId", TRACE_ID_64), ("X-B3-SpanId", SPAN_ID), ("X-B3-Sampled", "1")])
    assert one(headers, "x-b3-traceid").lstrip("0") == TRACE_ID_64.lstrip("0")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"{TRACE_ID_64}:{SPAN_ID}:0:1", id="64-bit"),
        pytest.param(f"{TRACE_ID_64}%3A{SPAN_ID}%3A0%3A1", id="64-bit-url-encoded"),
        pytest.param(f"{TRACE_ID}%3a{SPAN_ID}%3a0%3a1", id="url-encoded-lower-case"),
    ],
)
def test_jaeger_64_bit_and_url_encoded_ids_are_continued(services, value):
    headers, case = services.call("jaeger", [("uber-trace-id", value)])
    trace_id, span_id, _, flags = one(headers, "uber-trace-id").split(":")
    expected = TRACE_ID if TRACE_ID in value else "0" * 16 + TRACE_ID_64
    assert trace_id.rjust(32, "0") == expected and span_id != SPAN_ID and flags == "1"
    assert services.server_span(case).parent_span_id == SPAN_ID


def test_b3_to_jaeger_and_jaeger_to_b3(services):
    headers, case = services.call(
        "b3multi_jaeger", [("X-B3-TraceId", TRACE_ID), ("X-B3-SpanId", SPAN_ID), ("X-B3-Sampled", "1")]
    )
    span_id = one(headers, "x-b3-spanid")
    assert (one(headers, "x-b3-traceid"), one(headers, "x-b3-sampled")) == (TRACE_ID, "1")
    assert one(headers, "uber-trace-id") == f"{TRACE_ID}:{span_id}:0:1"  # a B3 caller's trace, as Jaeger
    assert span_id != SPAN_ID and services.server_span(case).parent_span_id == SPAN_ID

    headers, case = services.call("b3multi_jaeger", [("uber-trace-id", f"{TRACE_ID_64}%3A{SPAN_ID}%3A0%3A0")])
    trace_id, span_id, parent, flags = one(headers, "uber-trace-id").split(":")
    assert (trace_id, parent, flags) == ("0" * 16 + TRACE_ID_64, "0", "0")  # unsampled, still propagated
    assert one(headers, "x-b3-traceid") == "0" * 16 + TRACE_ID_64  # a Jaeger caller's trace, as B3
    assert (one(headers, "x-b3-spanid"), one(headers, "x-b3-sampled")) == (span_id, "0")
    assert "traceparent" not in headers and "b3" not in headers


def test_none_reads_and_writes_no_context(services):
    headers, case = services.call(
        "none", [("traceparent", TRACEPARENT), ("baggage", "tenant=acme"), ("b3", f"{TRACE_ID}-{SPAN_ID}-1")]
    )
    propagation = {"traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "uber-trace-id"}
    assert not propagation & set(headers), headers
    server = services.server_span(case)  # still traced: a root span of its own
    assert server.parent_span_id == "" and server.trace_id != TRACE_ID


def test_jaeger_to_w3c_and_w3c_to_jaeger(services):
    headers, case = services.call(
        "tracecontext_jaeger", [("uber-trace-id", f"{TRACE_ID}:{SPAN_ID}:0:1"), ("uberctx-tenant", "blue%20team")]
    )
    assert_continued(headers)  # a Jaeger caller's trace, written as W3C
    _, _, w3c_span, _ = parse_traceparent(one(headers, "traceparent"))
    assert one(headers, "uber-trace-id") == f"{TRACE_ID}:{w3c_span}:0:1"
    assert one(headers, "baggage") == "tenant=blue%20team" and one(headers, "uberctx-tenant") == "blue%20team"
    assert services.server_span(case).parent_span_id == SPAN_ID

    headers, case = services.call("tracecontext_jaeger", [("traceparent", TRACEPARENT), ("baggage", "tenant=acme")])
    trace_id, span_id, parent, flags = one(headers, "uber-trace-id").split(":")
    assert (trace_id, parent, flags) == (TRACE_ID, "0", "1")  # a W3C caller's trace, written as Jaeger
    assert span_id == parse_traceparent(one(headers, "traceparent"))[2]
    assert one(headers, "uberctx-tenant") == "acme"
    assert services.server_span(case).parent_span_id == SPAN_ID


@pytest.mark.parametrize(
    ("variant", "incoming", "check"),
    [
        pytest.param("b3", [("b3", f"{TRACE_ID}-{SPAN_ID}-d")], lambda h: one(h, "b3").split("-")[2] == "d", id="b3-d"),
        pytest.param(
            "b3multi",
            [("X-B3-TraceId", TRACE_ID), ("X-B3-SpanId", SPAN_ID), ("X-B3-Flags", "1")],
            lambda h: one(h, "x-b3-flags") == "1" and "x-b3-sampled" not in h,
            id="b3multi-flags",
        ),
        pytest.param("jaeger", [("uber-trace-id", f"{TRACE_ID}:{SPAN_ID}:0:3")], lambda h: one(h, "uber-trace-id").endswith(":3"), id="jaeger-3"),
        pytest.param(
            "tracecontext_b3",
            [("b3", f"{TRACE_ID}-{SPAN_ID}-d")],
            lambda h: one(h, "b3").endswith("-d") and parse_traceparent(one(h, "traceparent"))[3] in ("01", "03"),
            id="b3-d-with-w3c",
        ),
    ],
)
def test_the_debug_flag_travels_on(services, variant, incoming, check):
    headers, case = services.call(variant, incoming)
    assert check(headers), headers
    server = services.server_span(case)  # debug: sampled, so exported
    assert (server.trace_id, server.parent_span_id) == (TRACE_ID, SPAN_ID)


@pytest.mark.parametrize(
    ("variant", "incoming", "outgoing"),
    [
        pytest.param("b3", [("b3", "0")], lambda h: one(h, "b3").endswith("-0"), id="b3-0"),
        pytest.param("b3multi", [("X-B3-Sampled", "0")], lambda h: one(h, "x-b3-sampled") == "0", id="x-b3-sampled-0"),
        pytest.param(
            "tracecontext_b3",
            [("b3", "0")],
            lambda h: one(h, "b3").endswith("-0") and int(parse_traceparent(one(h, "traceparent"))[3], 16) & 1 == 0,
            id="b3-0-with-w3c",
        ),
    ],
)
def test_a_b3_deny_is_honoured_and_sent_downstream(services, variant, incoming, outgoing):
    headers, case = services.call(variant, incoming)
    assert outgoing(headers), headers
    # nothing of it is exported (checked against a later, sampled request's spans)
    _, later = services.call(variant, [("b3", f"{TRACE_ID}-{SPAN_ID}-1")])
    services.server_span(later)
    assert not [s for s in services.receiver.spans() if case in str(s.attributes.get("url.full", ""))]


def test_a_deferred_b3_decision_is_ours(services):
    headers, case = services.call("b3", [("b3", f"{TRACE_ID}-{SPAN_ID}")])
    trace_id, _, state = one(headers, "b3").split("-")
    assert (trace_id, state) == (TRACE_ID, "1")  # the default sampler's root (always_on) decided
    assert services.server_span(case).parent_span_id == SPAN_ID


def test_no_warning_from_the_agent(services):
    for variant in VARIANTS:
        assert "autotrace WARNING" not in services.processes[variant].text("stderr"), variant


# -- beside the contrib packages' propagators (opentelemetry-propagator-b3, -jaeger) ----
#
# Their entry points are named b3, b3multi and jaeger; the agent's are autotrace_b3,
# autotrace_b3multi and autotrace_jaeger, so in one environment every name has one
# propagator and the API's choice never depends on the order it finds them in.
# Documented in docs/traced.md ("Beside the contrib propagator packages").

from test_wheel import wheel, wheel_env  # noqa: E402,F401 - fixtures: the wheel, installed in a new venv

CONTRIB = ("opentelemetry-propagator-b3", "opentelemetry-propagator-jaeger")
CONTRIB_NAMES = "b3,b3multi,jaeger"

PROBE = """
import json
import os
import sys
import urllib.request
from importlib.metadata import entry_points

def describe():
    from opentelemetry import propagate

    textmap = propagate.get_global_textmap()
    inner = getattr(textmap, "propagators", None) or getattr(textmap, "_propagators", ())
    return [type(textmap).__module__] + [type(p).__module__ + "." + type(p).__name__ for p in inner]

early = describe() if sys.argv[2] == "import-early" else None
with urllib.request.urlopen(sys.argv[1], timeout=10) as response:  # traced under the agent
    response.read()
print(json.dumps({
    "early": early,
    "late": describe(),
    "environment": os.environ.get("OTEL_PROPAGATORS"),
    "entry_points": sorted(
        (e.name, e.value) for e in entry_points(group="opentelemetry_propagator") if "b3" in e.name or "jaeger" in e.name
    ),
}))
"""

THE_CONTRIB_PACKAGES = [
    "opentelemetry.propagators.composite",
    "opentelemetry.propagators.b3.B3SingleFormat",
    "opentelemetry.propagators.b3.B3MultiFormat",
    "opentelemetry.propagators.jaeger.JaegerPropagator",
]
THE_AGENTS = [
    "autotrace.propagation.composite",
    "autotrace.propagation.b3.B3SinglePropagator",
    "autotrace.propagation.b3.B3MultiPropagator",
    "autotrace.propagation.jaeger.JaegerPropagator",
]


@pytest.fixture(scope="module")
def contrib_env(wheel_env) -> Path:
    """The wheel's venv with the contrib propagator packages installed beside it."""
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(wheel_env / "bin" / "python"), "install", "--no-deps", "-q", *CONTRIB],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if installed.returncode:
        pytest.skip(f"could not install {' and '.join(CONTRIB)}: {installed.stderr.strip()[-300:]}")
    return wheel_env


@pytest.mark.parametrize("agent", [True, False], ids=["agent", "no-agent"])
@pytest.mark.parametrize("when", ["import-early", "import-late"])
def test_beside_the_contrib_packages_each_name_has_one_propagator(contrib_env, tmp_path, agent, when):
    """With the agent, the global propagator is the agent's, whenever the app looks; without
    it, OTEL_PROPAGATORS=b3,b3multi,jaeger names the contrib packages' propagators."""
    write(tmp_path, "probe.py", PROBE)
    peer, peer_server, peer_thread = http_peer.start()
    try:
        case = secrets.token_hex(4)
        env = clean_env(OTEL_PROPAGATORS=CONTRIB_NAMES, OTEL_TRACES_EXPORTER="none")
        env["PATH"] = str(contrib_env / "bin") + os.pathsep + env["PATH"]
        command = [str(contrib_env / "bin" / "python"), "probe.py", peer.url("/echo", case), when]
        if agent:
            command = [str(contrib_env / "bin" / "autotrace"), "run", "python"] + command[1:]
        result = run(command, tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert "autotrace WARNING" not in result.stderr
        seen = json.loads(result.stdout)
        [request] = peer.requests(case)
    finally:
        http_peer.stop(peer_server, peer_thread)
    assert [tuple(entry) for entry in seen["entry_points"]] == [
        ("autotrace_b3", "autotrace.propagation.b3:B3SinglePropagator"),
        ("autotrace_b3multi", "autotrace.propagation.b3:B3MultiPropagator"),
        ("autotrace_jaeger", "autotrace.propagation.jaeger:JaegerPropagator"),
        ("b3", "opentelemetry.propagators.b3:B3SingleFormat"),
        ("b3multi", "opentelemetry.propagators.b3:B3MultiFormat"),
        ("jaeger", "opentelemetry.propagators.jaeger:JaegerPropagator"),
    ]
    expected = THE_AGENTS if agent else THE_CONTRIB_PACKAGES
    assert seen["late"] == expected
    assert seen["early"] == (expected if when == "import-early" else None)
    if agent:
        # The API's import found the agent's formats by their own names, then the agent's
        # propagator replaced its one; the outgoing request carries the agent's headers.
        assert seen["environment"] == "autotrace_b3,autotrace_b3multi,autotrace_jaeger"
        trace_id, span_id, parent, flags = one(request.headers, "uber-trace-id").split(":")
        assert (parent, flags) == ("0", "1")  # the contrib package would write the parent id and 03
        assert one(request.headers, "b3") == f"{trace_id}-{span_id}-1"
    else:
        assert seen["environment"] == CONTRIB_NAMES
        assert not {"b3", "uber-trace-id", "traceparent"} & set(request.headers)  # nothing traces the call
