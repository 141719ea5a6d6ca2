"""``examples/demo.py`` end to end against a stand-in viewer: the test OTLP receiver behind
the viewer's marker and a minimal ``/api/traces`` (the real viewer is tested on its own)."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from agent import PYTHON, clean_env, run
from otlp_receiver import OTLPReceiver
from ports import free_port
from viewer_stub import send

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"
ERROR = 2  # proto Status code


class FakeViewer:
    """Marker and POST /v1/traces (forwarded to the receiver), /api/traces from its spans."""

    def __init__(self, receiver: OTLPReceiver) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path == "/autotrace-view":
                    self._json({"service": "autotrace-view", "version": "0", "ui": fake.url})
                elif parts.path == "/api/traces":
                    query = parse_qs(parts.query)
                    self._json({"data": [{"traceID": t} for t in fake.traces(receiver, query)][:1]})
                else:
                    self.send_error(404)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = urllib.request.Request(
                    receiver.http_endpoint + "/v1/traces", body, {"Content-Type": self.headers["Content-Type"]}
                )
                with urllib.request.urlopen(request, timeout=5) as reply:
                    send(self, reply.status, reply.read(), reply.headers["Content-Type"])

            def _json(self, document: dict) -> None:
                send(self, 200, json.dumps(document).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def traces(receiver: OTLPReceiver, query: dict) -> list[str]:
        """Trace ids whose root is the service's, newest first; ``tags`` error=true: failed ones."""
        spans = receiver.spans()
        service = query["service"][0]
        roots = [s for s in spans if not s.parent_span_id and s.resource.get("service.name") == service]
        if "error" in json.loads(query.get("tags", ["{}"])[0]):
            failed = {s.trace_id for s in spans if s.status_code == ERROR}
            roots = [s for s in roots if s.trace_id in failed]
        return [s.trace_id for s in sorted(roots, key=lambda s: s.start_time_unix_nano, reverse=True)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_the_demo_prints_its_trace(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    viewer = FakeViewer(otlp_receiver)
    try:
        result = run([PYTHON, str(DEMO), "--endpoint", viewer.url, "--wait", "5"], cwd=tmp_path, env=clean_env())
    finally:
        viewer.close()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split(":", 1)[0]: line.split()[-1] for line in result.stdout.splitlines() if "/trace/" in line}
    trace = lines["The demo's trace (three services)"].rsplit("/", 1)[1]
    failed = lines["The failed request's trace"].rsplit("/", 1)[1]
    spans = [s for s in otlp_receiver.spans() if s.trace_id == trace]
    services = {s.resource.get("service.name") for s in spans}
    assert services == {"frontend", "checkout", "inventory"}
    assert len(spans) == 7  # the frontend SERVER span, then CLIENT + SERVER per call made: 1 + 2 * 3
    assert not any(s.status_code == ERROR for s in spans)
    failed_spans = [s for s in otlp_receiver.spans() if s.trace_id == failed]
    assert {s.resource.get("service.name") for s in failed_spans if s.status_code == ERROR} == set(services)
    stderr = result.stderr.splitlines()
    assert sum(f"spans go to autotrace view at {viewer.url}" in line for line in stderr) == 3, result.stderr
