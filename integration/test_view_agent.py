"""Services under ``autotrace run`` export to a real ``autotrace view``, over OTLP/HTTP and
OTLP/gRPC, and the trace across them is served by the Jaeger query API, field by field."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from agent import AUTOTRACE, SERVE_ON_ARGV_PORT, Watched, autotrace_run, wait_until_answers, write
from ports import free_port
from viewer import Viewer

BACK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        status = 500 if self.path.startswith("/fail") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


""" + SERVE_ON_ARGV_PORT

FRONT = """
import sys
import urllib.error
import urllib.request

for path in sys.argv[2:]:
    try:
        urllib.request.urlopen("http://127.0.0.1:%s%s" % (sys.argv[1], path), timeout=5).read()
    except urllib.error.HTTPError:
        pass
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A viewer, and a back-end service under ``autotrace run`` exporting to it over gRPC."""
    directory = tmp_path_factory.mktemp("view_agent")
    write(directory, "back.py", BACK)
    write(directory, "front.py", FRONT)
    with Viewer(directory) as viewer:
        port = free_port()
        back = Watched([AUTOTRACE, "run", "python", "back.py", str(port)], directory,
                       viewer.agent_env("grpc", OTEL_SERVICE_NAME="back"))
        try:
            back.wait_for_line("serving", timeout=20)
            wait_until_answers(f"http://127.0.0.1:{port}/ready", process=back)
            yield viewer, directory, port
        finally:
            back.stop()


def run_front(viewer: Viewer, directory, port: int, *paths: str) -> None:
    result = autotrace_run(directory / "front.py", viewer.agent_env("http/protobuf", OTEL_SERVICE_NAME="front"),
                           str(port), *paths)
    assert result.returncode == 0 and "done" in result.stdout, result.stderr


def test_a_trace_across_two_services_in_jaeger_json(shop):
    viewer, directory, port = shop
    run_front(viewer, directory, port, "/items?id=1")
    # The front's spans are committed when its export was answered, before it exited.
    (front_trace,) = viewer.get("/api/traces?service=front&limit=5")["data"]
    trace_id = front_trace["traceID"]
    (trace,) = viewer.wait_for_trace(f"traceID={trace_id}", timeout=20)
    deadline = time.monotonic() + 20
    while len(trace["spans"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        (trace,) = viewer.get(f"/api/traces/{trace_id}")["data"]
    assert set(trace) == {"traceID", "spans", "processes", "warnings"}
    services = {pid: process["serviceName"] for pid, process in trace["processes"].items()}
    assert sorted(services.values()) == ["back", "front"]
    for process in trace["processes"].values():
        assert all(set(tag) == {"key", "type", "value"} for tag in process["tags"])
        assert "service.name" not in {tag["key"] for tag in process["tags"]}
    by_service = {services[span["processID"]]: span for span in trace["spans"]}
    client, server = by_service["front"], by_service["back"]
    for span in (client, server):
        assert set(span) == {"traceID", "spanID", "operationName", "references", "startTime", "duration", "tags",
                             "logs", "processID", "warnings", "flags"}
        assert span["traceID"] == trace_id and len(span["spanID"]) == 16
        assert isinstance(span["startTime"], int) and isinstance(span["duration"], int)
        assert abs(span["startTime"] - time.time() * 1e6) < 120e6  # microseconds, recent
    tags = {tag["key"]: tag for tag in client["tags"]}
    assert tags["span.kind"] == {"key": "span.kind", "type": "string", "value": "client"}
    assert tags["otel.scope.name"]["type"] == "string"
    assert client["references"] == []
    assert server["references"] == [{"refType": "CHILD_OF", "traceID": trace_id, "spanID": client["spanID"]}]
    server_tags = {tag["key"]: tag for tag in server["tags"]}
    assert server_tags["span.kind"]["value"] == "server"
    assert server_tags["http.response.status_code"] == {"key": "http.response.status_code", "type": "int64", "value": 200}
    assert server["startTime"] >= client["startTime"]

    assert "front" in viewer.get("/api/services")["data"] and "back" in viewer.get("/api/services")["data"]
    assert viewer.get("/api/services/back/operations")["data"]
    deps = viewer.get(f"/api/dependencies?endTs={int(time.time() * 1000) + 1000}&lookback=600000")["data"]
    assert {"parent": "front", "child": "back", "callCount": 1, "errorCount": 0} in deps
    summary = viewer.get(f"/api/autotrace/summaries?traceID={trace_id}")["data"][0]
    assert (summary["rootService"], summary["spanCount"], summary["services"]) == ("front", 2, ["back", "front"])


def test_errors_are_searchable_and_the_trace_downloads_as_otlp_json(shop, tmp_path):
    viewer, directory, port = shop
    run_front(viewer, directory, port, "/fail/once")
    tags = urllib.parse.quote(json.dumps({"error": "true"}))
    found = viewer.wait_for_trace(f"service=back&tags={tags}", timeout=20)
    assert found, viewer.process.text("stderr")
    trace_id = found[0]["traceID"]
    error_spans = [span for span in found[0]["spans"]
                   if {"key": "error", "type": "bool", "value": True} in span["tags"]]
    assert error_spans
    with urllib.request.urlopen(f"{viewer.ui}/api/autotrace/traces/{trace_id}/otlp", timeout=10) as response:
        assert response.headers["Content-Disposition"] == f'attachment; filename="trace-{trace_id}.json"'
        document = json.loads(response.read())
    names = {s["name"] for rs in document["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]}
    assert len(names) >= 1
    # What the download wrote, --import loads into another viewer.
    exported = tmp_path / "trace.json"
    exported.write_text(json.dumps(document))
    with Viewer(tmp_path, "--import", str(exported)) as other:
        assert "imported" in other.process.text("stderr")
        (trace,) = other.get(f"/api/traces/{trace_id}")["data"]
        assert len(trace["spans"]) == len(viewer.get(f"/api/traces/{trace_id}")["data"][0]["spans"])
