"""A hook's span alone: start + close through ``autotrace.spans.start``, instructions per span.

What every hook pays around the library call (issues 15, 17, 19): the light span's start,
its context made current, its end and the context left, in process under ``autotrace run``
with a current SDK span as the parent (a request's), for a database call's 6 attributes.
Counted by valgrind's callgrind (``harness.instructions``), with spans not exported
(``OTEL_TRACES_EXPORTER=none``) and exported over OTLP/HTTP to a port where the export
thread never sends (``--exporter otlp``: a schedule delay no run reaches, so the queue's
light end and the encoding are counted, the I/O not; past the queue's 2,048 spans they are
dropped), and to a local sink that accepts every export (``--exporter sink``: the export
thread's share counted too, every span delivered: a batch's request, its post). The forms:

- ``empty``: the loop alone (a Python call);
- ``context``: ``api.with_span`` + ``api.set_current`` + ``api.detach``;
- ``new_span``: ``spans.new_span(...)`` + ``span.end()``;
- ``start``: ``spans.start(...)`` + ``handle.close()`` (what hooks do);
- ``known``: ``start`` with ``handle.set_attributes(...)`` of two response attributes
  between (what clients and servers add through ``set_known``): ``known`` - ``start`` is
  their cost.

``--leak N``: no count; N spans started and closed, and the growth of traced memory
(tracemalloc) and of the RSS from the first tenth to the end, per install: a reference leak
in the compiled start or end shows as growth proportional to N.

    python benchmarks/span.py --instructions --compare before=BEFORE_VENV/bin
    python benchmarks/span.py --leak 200000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import harness

SCRIPT = r"""
import sys
calls, form = int(sys.argv[1]), sys.argv[2]
from autotrace import api, spans
api.load()
from opentelemetry import trace
attrs = {"db.system.name": "postgresql", "db.namespace": "shop", "server.address": "127.0.0.1",
         "server.port": 5432, "db.query.text": "SELECT 1", "db.operation.name": "SELECT"}
root = trace.get_tracer("bench").start_span("root")
ctx = api.with_span(root, api.get_current())
api.set_current(ctx)
kind = api.SpanKind.CLIENT
response = {"http.response.status_code": 200, "network.protocol.version": "1.1"}

def empty():
    pass

def leak_check(n):
    import gc, tracemalloc
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    tracemalloc.start()
    first = n // 10
    for i in range(n):
        if i == first:
            gc.collect()
            base, base_rss = tracemalloc.get_traced_memory()[0], rss()
        spans.start("autotrace.db", "SELECT", "CLIENT", attrs).close()
    gc.collect()
    print((tracemalloc.get_traced_memory()[0] - base) / (n - first), (rss() - base_rss) / (n - first))

if form == "leak":
    leak_check(calls)
    sys.exit(0)
for _ in range(calls):
    if form == "start":
        spans.start("autotrace.db", "SELECT", "CLIENT", attrs).close()
    elif form == "known":
        handle = spans.start("autotrace.db", "SELECT", "CLIENT", attrs)
        handle.set_attributes(response)
        handle.close()
    elif form == "new_span":
        spans.new_span("autotrace.db", "SELECT", kind, ctx, attrs).end()
    elif form == "context":
        api.detach(api.set_current(api.with_span(root, ctx)))
    else:
        empty()
print(0)
"""

FORMS = ("empty", "context", "new_span", "start", "known")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructions", action="store_true", help="count instructions per span (valgrind)")
    parser.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of {', '.join(FORMS)}")
    parser.add_argument("--exporter", choices=("none", "otlp", "sink", "both", "all"), default="both", help="both: none and otlp; all: and sink")
    parser.add_argument("--low", type=int, default=1000)
    parser.add_argument("--high", type=int, default=6000)
    parser.add_argument("--leak", type=int, default=0, metavar="N", help="N spans: memory growth per span instead")
    harness.add_compare(parser)
    args = parser.parse_args()
    if not args.instructions and not args.leak:
        parser.error("--instructions or --leak N")
    installs = {"this": harness.BIN, **harness.compared(parser, args.compare)}
    script = Path(os.environ.get("TMPDIR", "/tmp"), f"autotrace-span-bench-{os.getpid()}.py")
    script.write_text(SCRIPT)
    sink = None
    try:
        env = harness.plain_env()
        if args.leak:
            for label, bin_dir in installs.items():
                command = [str(Path(bin_dir, "autotrace")), "run", str(Path(bin_dir, "python")), str(script), str(args.leak), "leak"]
                traced, rss = harness.run_client(command, harness.unexported(env), f"{label} leak")
                print(f"{label:>8}  {args.leak} spans: traced memory {traced:+.2f} B/span, RSS {rss:+.2f} B/span", flush=True)
            return
        exporters = {"both": ("none", "otlp"), "all": ("none", "otlp", "sink")}.get(args.exporter, (args.exporter,))
        if "sink" in exporters:
            sink = harness.serve(harness.Sink)
        for exporter in exporters:
            run_env = harness.unexported(env) if exporter == "none" else harness.exporting_env(env, sink) if sink and exporter == "sink" else dict(
                env, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_BSP_SCHEDULE_DELAY="100000000",
            )  # fmt: skip
            for form in args.forms.split(","):
                counts = {}
                for label, bin_dir in installs.items():

                    def command(calls: int, bin_dir: Path = Path(bin_dir)) -> list[str]:
                        return [str(bin_dir / "autotrace"), "run", str(bin_dir / "python"), str(script), str(calls), form]

                    # Once without valgrind first: a changed module's bytecode is written then, not
                    # counted in the first of the two counted runs only.
                    harness.run_client(command(10), run_env, f"{label} {form}")
                    counts[label] = harness.instructions(command, run_env, f"{label} {form}", args.low, args.high)
                ratios = "  ".join(f"{label} {count / counts['this']:.2f}x" for label, count in counts.items() if label != "this")
                line = "  ".join(f"{label} {count:,.0f}" for label, count in counts.items())
                print(f"exporter {exporter:>4}  {form:>9}: {line} instructions/span  {ratios}", flush=True)
    finally:
        script.unlink(missing_ok=True)
        if sink is not None:
            sink.shutdown()


if __name__ == "__main__":
    sys.exit(main())
