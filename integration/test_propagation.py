"""Incoming context under ``autotrace run``: what an unchanged service passes on downstream.

A small service (stdlib http.server, no tracing code) answers ``GET /call?case=...`` by
calling the recording peer (tests/http_peer.py) with ``requests`` and replying with the
peer's answer. The test sends it requests with propagation headers (valid, malformed,
in other formats) and checks the OUTGOING headers the peer received, and, where it
matters, the spans at an OTLP receiver.

Each variant of the service (its environment: ``OTEL_PROPAGATORS``,
``AUTOTRACE_INCOMING_CONTEXT``) runs once for the module, all of them at once. The
B3/Jaeger variants need the agent's own propagators (autotrace.propagation) installed
as the global propagator; until they are, those tests skip.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import AUTOTRACE, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver, ReceivedSpan, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import http_peer  # noqa: E402

SERVER, CLIENT = 2, 3  # proto SpanKind
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
OTHER_TRACE_ID = "5bf92f3577b34da6a3ce929d0e0e4737"
OTHER_SPAN_ID = "10f067aa0ba902b8"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"

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


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("serving", flush=True)
try:
    server.serve_forever(poll_interval=0.05)
except KeyboardInterrupt:
    pass
"""

# variant -> its environment (besides the receiver's)
VARIANTS = {
    "default": {},
    "restart": {"AUTOTRACE_INCOMING_CONTEXT": "restart"},
    "ignore": {"AUTOTRACE_INCOMING_CONTEXT": "ignore"},
    "b3": {"OTEL_PROPAGATORS": "b3"},
    "b3multi": {"OTEL_PROPAGATORS": "b3multi"},
    "jaeger": {"OTEL_PROPAGATORS": "jaeger"},
    "tracecontext_b3": {"OTEL_PROPAGATORS": "tracecontext,b3"},
}


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def needs(module: str):
    return pytest.mark.skipif(not _have(f"autotrace.propagation.{module}"), reason=f"autotrace/propagation/{module}.py not written yet")


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


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    directory = tmp_path_factory.mktemp("propagation")
    write(directory, "service.py", SERVICE)
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


def require_agent_propagators(services: Services, variant: str) -> None:
    """Skip a format variant's test until the agent installs its own propagators."""
    if not services.uses_agent_propagators(variant):
        pytest.skip("the agent does not install autotrace.propagation's propagators yet")


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


def test_no_warning_from_the_agent(services):
    for variant in ("default", "restart", "ignore"):
        assert "autotrace WARNING" not in services.processes[variant].text("stderr"), variant


# -- other formats (autotrace.propagation) --------------------------------------------


@needs("b3")
def test_b3_single_header_in_and_out(services):
    require_agent_propagators(services, "b3")
    headers, case = services.call("b3", [("b3", f"{TRACE_ID}-{SPAN_ID}-1")])
    trace_id, span_id, sampled = one(headers, "b3").split("-")[:3]
    assert (trace_id, sampled) == (TRACE_ID, "1") and span_id != SPAN_ID
    assert "traceparent" not in headers
    assert services.server_span(case).parent_span_id == SPAN_ID


@needs("b3")
def test_b3multi_headers_in_and_out(services):
    require_agent_propagators(services, "b3multi")
    headers, case = services.call(
        "b3multi", [("X-B3-TraceId", TRACE_ID), ("X-B3-SpanId", SPAN_ID), ("X-B3-Sampled", "1")]
    )
    assert one(headers, "x-b3-traceid") == TRACE_ID
    assert one(headers, "x-b3-spanid") != SPAN_ID
    assert one(headers, "x-b3-sampled") == "1"
    assert "traceparent" not in headers and "b3" not in headers
    assert services.server_span(case).parent_span_id == SPAN_ID


@needs("jaeger")
def test_jaeger_header_in_and_out(services):
    require_agent_propagators(services, "jaeger")
    headers, case = services.call(
        "jaeger", [("uber-trace-id", f"{TRACE_ID}:{SPAN_ID}:0:1"), ("uberctx-tenant", "blue%20team")]
    )
    trace_id, span_id, _, flags = one(headers, "uber-trace-id").split(":")
    assert trace_id.rjust(32, "0") == TRACE_ID and span_id.rjust(16, "0") != SPAN_ID
    assert int(flags, 16) & 1
    assert one(headers, "uberctx-tenant") == "blue%20team"  # Jaeger baggage in and out
    assert "traceparent" not in headers
    assert services.server_span(case).parent_span_id == SPAN_ID


@needs("b3")
@needs("composite")
def test_tracecontext_b3_continues_either_and_writes_both(services):
    require_agent_propagators(services, "tracecontext_b3")
    headers, _ = services.call("tracecontext_b3", [("b3", f"{TRACE_ID}-{SPAN_ID}-1")])
    assert_continued(headers)
    assert one(headers, "b3").split("-")[0] == TRACE_ID

    headers, _ = services.call("tracecontext_b3", [("traceparent", TRACEPARENT)])
    assert_continued(headers)
    assert one(headers, "b3").split("-")[0] == TRACE_ID


@needs("b3")
@needs("composite")
def test_tracecontext_b3_first_format_is_the_parent_the_other_a_link(services):
    require_agent_propagators(services, "tracecontext_b3")
    headers, case = services.call(
        "tracecontext_b3", [("traceparent", TRACEPARENT), ("b3", f"{OTHER_TRACE_ID}-{OTHER_SPAN_ID}-1")]
    )
    assert_continued(headers)
    assert one(headers, "b3").split("-")[0] == TRACE_ID
    server = services.server_span(case)
    assert server.parent_span_id == SPAN_ID
    assert services.receiver.links(server.span_id) == [(OTHER_TRACE_ID, OTHER_SPAN_ID)]
