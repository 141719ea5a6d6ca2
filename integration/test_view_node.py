"""The OpenTelemetry SDK for Node exports to a real ``autotrace view`` over OTLP/HTTP (JSON,
protobuf, protobuf with gzip) and OTLP/gRPC (plain and gzip), configured only through the
standard OTEL_* variables, and each trace is served whole by the Jaeger query API.

Needs ``node`` and ``npm`` (CI's image has both) and the npm registry: the SDK is installed
once per session. Without them the tests fail with the reason; they are never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent import clean_env
from viewer import Viewer

# One compatible set of the JS SDK: the newest line that still runs on Node 20 (the 0.300 /
# 3.x line needs Node >= 22.15). sdk-trace-base 2.12 wants @opentelemetry/api below 1.10.
NODE_PACKAGES = {
    "@opentelemetry/api": "1.9.1",
    "@opentelemetry/sdk-trace-base": "2.12.1",
    "@opentelemetry/resources": "2.12.1",
    "@opentelemetry/exporter-trace-otlp-http": "0.223.1",
    "@opentelemetry/exporter-trace-otlp-proto": "0.223.1",
    "@opentelemetry/exporter-trace-otlp-grpc": "0.223.1",
}
SDK_VERSION = "2.12.1"  # telemetry.sdk.version of that set
NPM_INSTALL_TIMEOUT = 300  # seconds
NODE_RUN_TIMEOUT = 60  # seconds, for one export script

TRACE_JS = r'''// A trace of three spans made with the OpenTelemetry JS SDK and exported with the OTLP
// exporter named by argv[2] ("http" = JSON, "proto" = protobuf, "grpc"), configured only
// through the standard OTEL_* environment variables. Exits 0 only if every export succeeded.
"use strict";
const api = require("@opentelemetry/api");
const { BasicTracerProvider, BatchSpanProcessor } = require("@opentelemetry/sdk-trace-base");
const { defaultResource, detectResources, envDetector, resourceFromAttributes } = require("@opentelemetry/resources");

const EXPORTERS = {
  http: "@opentelemetry/exporter-trace-otlp-http",
  proto: "@opentelemetry/exporter-trace-otlp-proto",
  grpc: "@opentelemetry/exporter-trace-otlp-grpc",
};

async function main() {
  const module = EXPORTERS[process.argv[2]];
  if (!module) throw new Error("usage: node trace.js http|proto|grpc");
  const exporter = new (require(module).OTLPTraceExporter)();
  const results = [];
  const counting = {
    export(spans, done) {
      exporter.export(spans, (result) => { results.push(result); done(result); });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush ? exporter.forceFlush() : Promise.resolve(),
  };
  // The SDK's own resource (telemetry.sdk.*), ours, then OTEL_SERVICE_NAME/OTEL_RESOURCE_ATTRIBUTES.
  const resource = defaultResource()
    .merge(resourceFromAttributes({ "deployment.environment.name": "test" }))
    .merge(detectResources({ detectors: [envDetector] }));
  const provider = new BasicTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(counting)] });
  const tracer = provider.getTracer("node-trace-test", "1.2.3");

  // Parents passed explicitly: a BasicTracerProvider registers no context manager.
  const root = tracer.startSpan("GET /orders", { kind: api.SpanKind.SERVER });
  root.setAttributes({
    "http.request.method": "GET",
    "http.response.status_code": 500,
    "test.ratio": 0.25,
    "test.flag": true,
    "test.tags": ["a", "b"],
  });
  const work = tracer.startSpan("load order", {}, api.trace.setSpan(api.context.active(), root));
  work.addEvent("cache.miss", { "cache.key": "order:7", "cache.attempt": 2 });
  const client = tracer.startSpan(
    "SELECT orders",
    { kind: api.SpanKind.CLIENT, attributes: { "db.system.name": "postgresql" } },
    api.trace.setSpan(api.context.active(), work),
  );
  client.addLink({ context: root.spanContext(), attributes: { "link.reason": "retry" } });
  client.end();
  work.end();
  const failure = new Error("order failed");
  failure.name = "OrderError";
  root.recordException(failure);
  root.setStatus({ code: api.SpanStatusCode.ERROR, message: "order failed" });
  root.end();
  await provider.shutdown();
  const failed = results.filter((result) => result.code !== 0);
  if (results.length === 0 || failed.length) {
    console.error("export failed:", results.length ? String(failed[0].error) : "nothing exported");
    process.exit(1);
  }
  console.log("exported " + results.length + " batch(es)");
}

main().catch((error) => { console.error(error); process.exit(2); });
'''

# variant -> (exporter argument of trace.js, OTLP protocol, extra environment)
VARIANTS = {
    "http-json": ("http", "http/json", {}),
    "http-protobuf": ("proto", "http/protobuf", {}),
    "http-protobuf-gzip": ("proto", "http/protobuf", {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}),
    "grpc": ("grpc", "grpc", {}),
    "grpc-gzip": ("grpc", "grpc", {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}),
}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} not found on PATH: these tests need Node.js and npm (apt-get install -y nodejs npm)")
    return path


@pytest.fixture(scope="session")
def node_sdk(tmp_path_factory) -> Path:
    """A directory with the OpenTelemetry JS SDK installed (once per session) and ``trace.js``."""
    node, npm = _need("node"), _need("npm")
    directory = tmp_path_factory.mktemp("node-otel")
    package = {"name": "autotrace-view-node-test", "private": True, "dependencies": NODE_PACKAGES}
    (directory / "package.json").write_text(json.dumps(package, indent=2))
    env = clean_env(npm_config_update_notifier="false", npm_config_loglevel="error")
    started = time.monotonic()
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"], cwd=directory, env=env,
            capture_output=True, text=True, timeout=NPM_INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"npm install of the OpenTelemetry JS SDK took over {NPM_INSTALL_TIMEOUT} s (registry reachable?)")
    if done.returncode != 0:
        pytest.fail(f"npm install of the OpenTelemetry JS SDK failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"npm install: {time.monotonic() - started:.1f} s, node {subprocess.check_output([node, '--version'], text=True).strip()}")
    (directory / "trace.js").write_text(TRACE_JS)
    return directory


@pytest.fixture(scope="module")
def traces(node_sdk, tmp_path_factory) -> dict[str, dict]:
    """Each variant's trace, as ``/api/traces?service=node-{variant}`` of one viewer serves it."""
    found: dict[str, dict] = {}
    with Viewer(tmp_path_factory.mktemp("viewer")) as viewer:
        for variant, (exporter, protocol, extra) in VARIANTS.items():
            port = viewer.grpc_port if protocol == "grpc" else viewer.http_port
            env = clean_env(
                OTEL_SERVICE_NAME=f"node-{variant}",
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=protocol,
                **extra,
            )
            try:
                done = subprocess.run(
                    ["node", "trace.js", exporter], cwd=node_sdk, env=env,
                    capture_output=True, text=True, timeout=NODE_RUN_TIMEOUT,
                )
            except subprocess.TimeoutExpired:
                pytest.fail(f"{variant}: the Node script did not finish in {NODE_RUN_TIMEOUT} s")
            assert done.returncode == 0, (variant, done.stdout, done.stderr, viewer.process.lines["stderr"])
            # The viewer commits a batch before it answers: the trace is there at once.
            data = viewer.get(f"/api/traces?service=node-{variant}")["data"]
            assert len(data) == 1, (variant, data)
            found[variant] = data[0]
        services = viewer.get("/api/services")["data"]
        assert {f"node-{variant}" for variant in VARIANTS} <= set(services), services
        stderr = viewer.process.lines["stderr"]
    assert not [line for _, line in stderr if "refused" in line], stderr
    return found


def _tags(kvs: list[dict]) -> dict[str, tuple[str, object]]:
    return {kv["key"]: (kv["type"], kv["value"]) for kv in kvs}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_node_trace_arrives_whole(traces, variant):
    trace = traces[variant]
    assert len(trace["traceID"]) == 32 and trace["warnings"] is None
    spans = {span["operationName"]: span for span in trace["spans"]}
    assert sorted(spans) == ["GET /orders", "SELECT orders", "load order"]
    root, work, client = spans["GET /orders"], spans["load order"], spans["SELECT orders"]
    for span in spans.values():
        assert span["traceID"] == trace["traceID"] and len(span["spanID"]) == 16
        assert span["processID"] in trace["processes"] and span["flags"] == 1
        assert span["startTime"] > 1_600_000_000_000_000 and span["duration"] >= 0

    # Parents: root <- load order <- SELECT orders, as CHILD_OF references.
    assert root["references"] == []
    assert work["references"] == [{"refType": "CHILD_OF", "traceID": trace["traceID"], "spanID": root["spanID"]}]
    # The link, after the parent, as FOLLOWS_FROM.
    assert client["references"] == [
        {"refType": "CHILD_OF", "traceID": trace["traceID"], "spanID": work["spanID"]},
        {"refType": "FOLLOWS_FROM", "traceID": trace["traceID"], "spanID": root["spanID"]},
    ]
    # The JS SDK starts a span at Date.now() (whole milliseconds) and times its duration with
    # performance.now(): a child may seem to end up to 1 ms after its parent.
    assert root["startTime"] <= work["startTime"] <= client["startTime"]
    assert client["startTime"] + client["duration"] <= work["startTime"] + work["duration"] + 1000

    # Attributes of each type, with Jaeger's KV types; the kind, the scope, the error status.
    tags = _tags(root["tags"])
    assert tags["http.request.method"] == ("string", "GET")
    assert tags["http.response.status_code"] == ("int64", 500)
    assert tags["test.ratio"] == ("float64", 0.25)
    assert tags["test.flag"] == ("bool", True)
    assert tags["test.tags"][0] == "string" and json.loads(tags["test.tags"][1]) == ["a", "b"]
    assert tags["span.kind"] == ("string", "server")
    assert tags["otel.scope.name"] == ("string", "node-trace-test")
    assert tags["otel.scope.version"] == ("string", "1.2.3")
    assert tags["otel.status_code"] == ("string", "ERROR")
    assert tags["otel.status_description"] == ("string", "order failed")
    assert tags["error"] == ("bool", True)
    assert _tags(work["tags"])["span.kind"] == ("string", "internal")
    assert "error" not in _tags(work["tags"]) and "otel.status_code" not in _tags(work["tags"])
    client_tags = _tags(client["tags"])
    assert client_tags["span.kind"] == ("string", "client")
    assert client_tags["db.system.name"] == ("string", "postgresql")

    # The exception and the event, as logs with an ``event`` field and the event's attributes.
    assert client["logs"] == []
    (exception,) = root["logs"]
    fields = _tags(exception["fields"])
    assert fields["event"] == ("string", "exception")
    assert fields["exception.type"] == ("string", "OrderError")
    assert fields["exception.message"] == ("string", "order failed")
    assert fields["exception.stacktrace"][0] == "string" and "trace.js" in fields["exception.stacktrace"][1]
    (log,) = work["logs"]
    assert work["startTime"] - 1000 <= log["timestamp"] <= work["startTime"] + work["duration"] + 1000
    assert _tags(log["fields"]) == {
        "event": ("string", "cache.miss"),
        "cache.key": ("string", "order:7"),
        "cache.attempt": ("int64", 2),
    }

    # The resource: service name from OTEL_SERVICE_NAME, the SDK's tags, our attribute.
    (process,) = trace["processes"].values()
    assert process["serviceName"] == f"node-{variant}"
    resource = _tags(process["tags"])
    assert "service.name" not in resource
    assert resource["telemetry.sdk.language"] == ("string", "nodejs")
    assert resource["telemetry.sdk.name"] == ("string", "opentelemetry")
    assert resource["telemetry.sdk.version"] == ("string", SDK_VERSION)
    assert resource["deployment.environment.name"] == ("string", "test")
