"""The first OTLP/gRPC export after a collector came back, with a short export timeout (issue 18).

    python benchmarks/grpc_outage.py [--runs 10] [--timeout 1.0] [--compare LABEL=VENV_BIN_DIR ...]

Each run, in one process per install: the agent's gRPC exporter
(``autotrace.otlp_exporters.grpc_exporter_class``) exports one span to a loopback port
where nothing listens, with a 1.5 s timeout (refused, retried once on a new channel,
refused again: the channel is left in grpc's reconnect back-off, as after any outage
longer than an export); a gRPC collector starts on that port, and the next export is
made at once, with ``--timeout`` seconds. Printed: in how many runs that export was
lost, and the median time it took.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = """
import statistics, sys, time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from autotrace import otlp_exporters

sys.path.insert(0, TESTS)
from ports import free_port


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):  # noqa: N802
        return trace_service_pb2.ExportTraceServiceResponse()


span = TracerProvider().get_tracer("bench").start_span("one")
span.end()
lost, took = 0, []
for _ in range(RUNS):
    port = free_port()
    exporter = otlp_exporters.grpc_exporter_class()(endpoint="127.0.0.1:%d" % port, insecure=True, timeout=1.5)
    assert exporter.export([span]) is SpanExportResult.FAILURE  # nothing listens
    exporter._timeout = TIMEOUT  # the SDK exporter's deadline, for the export after the return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    started = time.monotonic()
    lost += exporter.export([span]) is not SpanExportResult.SUCCESS
    took.append(time.monotonic() - started)
    server.stop(None)
    exporter.shutdown()
print("lost %d %.4f" % (lost, statistics.median(took)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1.0, help="the export timeout, in seconds")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=VENV_BIN_DIR")
    args = parser.parse_args()
    installs = {"this": Path(sys.executable).parent}
    for item in args.compare:
        label, _, directory = item.partition("=")
        if not directory or not (Path(directory) / "python").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory")
        installs[label] = Path(directory)
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    source = RUN.replace("TESTS", repr(tests)).replace("RUNS", str(args.runs)).replace("TIMEOUT", repr(args.timeout))
    print(f"{args.runs} outages, export timeout {args.timeout:g} s: the first export after the collector came back")
    for label, bin_dir in installs.items():
        # Not run from the checkout: ``-c`` puts the working directory first on sys.path.
        done = subprocess.run([str(bin_dir / "python"), "-c", source], capture_output=True, text=True, timeout=600,
                              cwd=tempfile.gettempdir())
        if done.returncode:
            print(f"  {label:>8}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        lost, median = done.stdout.split()[-2:]
        print(f"  {label:>8}: lost in {lost}/{args.runs} runs, median {float(median) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
