"""Microbenchmark: OTLP span encoding, autotrace's direct encoder against the SDK's.

A typical HTTP server span with 10 attributes, in batches of 512 (the batch processor's
default). Prints microseconds per span; asserts nothing.

    python benchmarks/encode.py [--batches 20]

``--light``: a hook's span instead (a redis ``GET``'s CLIENT span, its attributes a plain
dict, under a request span), started and ended through the agent's OTLP queue
(``EncodingBatchProcessor``, its export left out), each variant in a process of its own:
the compiled encoder and light end (``autotrace._speedups``) against the pure-Python ones
(the extension hidden), and ``--compare LABEL=VENV_BIN_DIR`` installs (their ``python``).
Prints the encoding alone (µs per span, in process) and the span's start + end (µs per
span, best of ``--rounds``); ``--instructions``: the start + end counted by valgrind's
callgrind instead (1,500 minus 500 spans, instructions per span).

    python benchmarks/encode.py --light [--instructions] [--compare before=BEFORE_VENV/bin]
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


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


# A redis GET's span, as the hook makes it (a plain attribute dict).
LIGHT_ATTRIBUTES = {
    "db.system.name": "redis",
    "db.namespace": "0",
    "db.operation.name": "GET",
    "db.query.text": "GET user:?",
    "server.address": "127.0.0.1",
    "server.port": 6379,
    "network.peer.address": "127.0.0.1",
}
LIGHT_WARM_UP = 300


def light_child(mode: str, calls: int) -> None:
    """Runs in a process of its own: ``calls`` hook spans started and ended (after a warm-up)
    under a request span, through the agent's queue; prints µs per span."""
    if mode == "python":
        sys.modules["autotrace._speedups"] = None  # hidden: the pure-Python encoder and light end
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider

    from autotrace import light_span, otlp_encode, span_queue

    if mode == "compiled" and not getattr(otlp_encode, "COMPILED", False):
        raise SystemExit("the compiled encoder is not built in this install")

    class Drop:
        def export(self, batch: object) -> None:
            return None

        def shutdown(self) -> None:
            return None

    big = 1 << 30
    processor = span_queue.EncodingBatchProcessor(
        Drop(), max_queue_size=4096, max_export_batch_size=4096, schedule_delay_millis=1e9, max_queue_bytes=big, max_batch_bytes=big
    )
    provider = TracerProvider(resource=Resource({"service.name": "bench"}), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    server = provider.get_tracer("autotrace.wsgi")
    client = provider.get_tracer("autotrace.redis")
    request = light_span.start_span(server, "GET /items/{id}", SpanKind.SERVER, context.Context(), {"http.request.method": "GET"})
    parent = trace.set_span_in_context(request)
    kind = SpanKind.CLIENT

    def run(n: int) -> None:
        for i in range(n):
            light_span.start_span(client, "GET", kind, parent, LIGHT_ATTRIBUTES).end()
            if i & 1023 == 1023:  # the export thread's part, left out: the queue emptied
                processor._queue.clear()
                processor._bytes = 0

    run(LIGHT_WARM_UP)
    # What is alive now (modules, the SDK) is frozen: the garbage collector's full passes
    # would otherwise walk it a varying number of times within the counted spans (one pass
    # more or less moved the count per span by 20,000 instructions), whatever the encoder.
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    run(calls)
    elapsed = time.perf_counter() - start
    print(f"{elapsed / calls * 1e6:.3f}")


def light_main(args, parser) -> None:
    """Each variant's hook span start + end (and, in this process, the encoding alone)."""
    env = harness.plain_env()
    script = str(Path(__file__).resolve())
    variants = {"compiled": (sys.executable, "compiled"), "python": (sys.executable, "python")}
    for label, other_bin in harness.compared(parser, args.compare).items():
        variants[label] = (str(other_bin / "python"), "python")

    # The encoding alone, in this process: a finished hook span, C against Python.
    from opentelemetry import context
    from opentelemetry.sdk.trace import TracerProvider

    from autotrace import light_span, otlp_encode

    provider = TracerProvider(resource=Resource({"service.name": "bench"}), shutdown_on_exit=False)
    span = light_span.start_span(provider.get_tracer("autotrace.redis"), "GET", SpanKind.CLIENT, context.Context(), LIGHT_ATTRIBUTES)
    span.end()
    encoders = {"python": otlp_encode._encode_light_py}
    if otlp_encode.COMPILED:
        encoders["compiled"] = otlp_encode.speedups.encode_light
    per_call = {}
    for name, encode in encoders.items():
        best = float("inf")
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(20_000):
                encode(span)
            best = min(best, time.perf_counter() - t0)
        per_call[name] = best / 20_000 * 1e6
    line = "   ".join(f"{name} {us:.2f} µs" for name, us in per_call.items())
    ratio = f"   compiled/python {per_call['compiled'] / per_call['python']:.2f}x" if "compiled" in per_call else ""
    print(f"encode_light alone (a redis GET's span, 7 attributes), best of {args.rounds}: {line}{ratio}")

    def command(python: str, mode: str, calls: int) -> list[str]:
        return [python, script, "--light-child", mode, str(calls)]

    if args.instructions:
        print("hook span start + end through the agent's queue, instructions per span (valgrind --tool=callgrind; 1500 minus 500 spans)")
        counts = {
            name: harness.instructions(lambda calls, p=python, m=mode: command(p, m, calls), env, name, 500, 1500)
            for name, (python, mode) in variants.items()
        }
    else:
        print(f"hook span start + end through the agent's queue, µs per span ({args.calls} spans a run, best of {args.rounds} alternating runs)")
        results = harness.alternate(
            args.rounds,
            variants,
            lambda name, v: float(subprocess.run(command(v[0], v[1], args.calls), env=env, capture_output=True, text=True, check=True).stdout.split()[-1]),
        )
        counts = {name: min(values) for name, values in results.items()}
    base = counts["python"]
    for name, count in counts.items():
        print(f"{name:>12} {count:12,.2f}   {count / base:.2f}x the pure-Python one")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--light-child":
        light_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--light", action="store_true", help="a hook's span start + end through the agent's queue, compiled vs Python")
    parser.add_argument("--instructions", action="store_true", help="with --light: instructions per span (valgrind) instead of times")
    parser.add_argument("--rounds", type=int, default=5, help="with --light")
    parser.add_argument("--calls", type=int, default=20_000, help="with --light: spans a run")
    harness.add_compare(parser)
    args = parser.parse_args()
    if args.light:
        light_main(args, parser)
        return
    spans = make_spans(args.batch_size)
    from autotrace.otlp_encode import encode_spans  # not at the top: --light-child hides the extension first

    sdk = bench("SDK encode_spans().SerializePartialToString", lambda s: sdk_encode_spans(s).SerializePartialToString(), spans, args.batches)
    ours = bench("autotrace encode_spans (bytes)", encode_spans, spans, args.batches)
    grpc = bench("autotrace + FromString (gRPC path)", lambda s: ExportTraceServiceRequest.FromString(encode_spans(s)), spans, args.batches)
    print(f"speed-up: {sdk / ours:.1f}x (bytes), {sdk / grpc:.1f}x (parsed message for gRPC)")


if __name__ == "__main__":
    main()
