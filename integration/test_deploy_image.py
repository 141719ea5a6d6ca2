"""The app image of the deployment guide (examples/deploy/Dockerfile), without Docker:
its app and its command, run with its ENV only (no launcher), spans checked at a real
OTLP receiver standing in for the collector."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

from agent import BIN, Watched, clean_env, wait_until_answers
from ports import free_port
from test_deploy_examples import dockerfile_env

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "examples" / "deploy" / "Dockerfile"


def image_command(port: int) -> list[str]:
    (line,) = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")]
    command = json.loads(line[4:])
    command = [f"127.0.0.1:{port}" if arg == "0.0.0.0:8000" else arg for arg in command]
    assert f"127.0.0.1:{port}" in command
    return [str(BIN / command[0])] + command[1:]


def test_the_image_traces_by_environment_only(tmp_path, otlp_receiver):
    env = dockerfile_env(DOCKERFILE)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_receiver.http_endpoint  # the collector, here
    port = free_port()
    env = clean_env(**env, OTEL_BSP_SCHEDULE_DELAY="100", SHOP_SELF_URL=f"http://127.0.0.1:{port}", HOME=str(tmp_path))
    app = ROOT / "examples" / "deploy" / "app"
    with Watched(image_command(port), app, env) as server:
        wait_until_answers(f"http://127.0.0.1:{port}/healthz", timeout=30, process=server)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/quote/book", timeout=20) as response:
            assert json.loads(json.loads(response.read())["quote"]) == {"item": "book", "price": 12.5}
        spans = otlp_receiver.wait_for_spans(3, timeout=20, predicate=lambda s: "/healthz" not in s.attributes.get("url.path", ""))
        server.send(signal.SIGTERM)
        server.finish(timeout=30)
    by_kind = {(s.kind, s.attributes.get("url.path") or s.attributes.get("url.full")): s for s in spans}
    quote = by_kind[(2, "/quote/book")]
    price = by_kind[(2, "/price/book")]
    (client,) = [s for s in spans if s.kind == 3]
    assert quote.name == "GET /quote/<item>" and price.name == "GET /price/<item>"
    assert client.parent_span_id == quote.span_id and price.parent_span_id == client.span_id
    assert len({s.trace_id for s in spans}) == 1
    for span in spans:
        assert span.resource["service.name"] == "shop"
        assert span.resource["deployment.environment.name"] == "staging"
        assert span.resource["process.pid"] != server.pid  # a gunicorn worker's
