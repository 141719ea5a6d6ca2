"""Microbenchmark: OTLP span encoding, autotrace's direct encoder against the SDK's.

A typical HTTP server span with 10 attributes, in batches of 512 (the batch processor's
default). Prints microseconds per span; asserts nothing.

    python benchmarks/encode.py [--batches 20]
"""

from __future__ import annotations

import argparse
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from autotrace.otlp_encode import encode_spans


def make_spans(n: int):
    exporter = InMemorySpanExporter()
    resource = Resource({"service.name": "bench", "host.name": "h", "process.pid": 1234, "telemetry.sdk.language": "python"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("autotrace.wsgi", "0.1.0")
    for i in range(n):
        with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER) as span:
            span.set_attributes(
                {
                    "http.request.method": "GET",
                    "url.path": f"/items/{i}",
                    "url.scheme": "http",
                    "http.route": "/items/{id}",
                    "http.response.status_code": 200,
                    "server.address": "localhost",
                    "server.port": 8000,
                    "network.protocol.version": "1.1",
                    "client.address": "127.0.0.1",
                    "user_agent.original": "wrk/4.2.0",
                }
            )
    return exporter.get_finished_spans()


def bench(name: str, fn, spans, batches: int) -> float:
    fn(spans)  # warm up
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        fn(spans)
        best = min(best, time.perf_counter() - t0)
    per_span = best / len(spans) * 1e6
    print(f"{name:<40} {per_span:8.2f} us/span  {best * 1e3:7.2f} ms/batch of {len(spans)}")
    return per_span


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    spans = make_spans(args.batch_size)
    sdk = bench("SDK encode_spans().SerializePartialToString", lambda s: sdk_encode_spans(s).SerializePartialToString(), spans, args.batches)
    ours = bench("autotrace encode_spans (bytes)", encode_spans, spans, args.batches)
    grpc = bench("autotrace + FromString (gRPC path)", lambda s: ExportTraceServiceRequest.FromString(encode_spans(s)), spans, args.batches)
    print(f"speed-up: {sdk / ours:.1f}x (bytes), {sdk / grpc:.1f}x (parsed message for gRPC)")


if __name__ == "__main__":
    main()
