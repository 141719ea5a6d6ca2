"""Memory while the collector is down (issue 18, item 1), and what the export path costs to import.

Part 1: a script making spans at ``--rate`` spans/s for ``--seconds`` under ``autotrace run``,
exporting over OTLP/HTTP and OTLP/gRPC, once to a local sink that accepts every export and
once to a port where nothing listens. The script reports its RSS every 10 s and at the end;
the figure is the final RSS of each "down" run minus that of the same protocol's "up" run
(target: at most 5 MB). All variants run at the same time (a span every millisecond costs
little CPU), so the machine's drift is shared; ``--compare LABEL=VENV_BIN_DIR`` adds another
install (before/after).

Part 2 (``--imports``): the peak RSS of a bare interpreter after importing each export
path, the median of ``--runs`` fresh processes each.

    python benchmarks/collector_down.py --rate 1000 --seconds 600 --compare before=BEFORE_VENV/bin
    python benchmarks/collector_down.py --imports --runs 5
"""

from __future__ import annotations

import argparse
import subprocess
import textwrap
from concurrent import futures
from pathlib import Path

from harness import BIN, Sink, add_compare, autotrace, compared, free_port, median, plain_env, serve

APP = textwrap.dedent(
    """
    import sys, time
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    def rss_mb():
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status)
        return int(fields["VmRSS"].split()[0]) / 1024

    rate, seconds = float(sys.argv[1]), float(sys.argv[2])
    tracer = trace.get_tracer("bench")
    attributes = {
        "http.request.method": "GET", "url.path": "/items/42", "url.scheme": "http",
        "http.route": "/items/{id}", "http.response.status_code": 200, "server.address": "shop",
        "server.port": 8000, "network.protocol.version": "1.1", "user_agent.original": "wrk",
        "client.address": "127.0.0.1",
    }
    start = time.monotonic()
    made = 0
    report = start + 10
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) * rate)
        while made < due:
            with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER, attributes=attributes):
                pass
            made += 1
        if now >= report:
            print(f"t={now - start:.0f}s rss={rss_mb():.1f}MB", flush=True)
            report += 10
        time.sleep(0.005)
    print(f"spans={made} rss={rss_mb():.1f}MB", flush=True)
    """
)

IMPORTS = {
    "bare interpreter": "",
    "opentelemetry.sdk.trace": "import opentelemetry.sdk.trace",
    "new OTLP/HTTP path (autotrace.otlp_http, span_queue)": "import opentelemetry.sdk.trace, autotrace.otlp_http, autotrace.span_queue",
    "old OTLP/HTTP path (SDK exporter, protobuf, requests)": "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter, requests",
    "new OTLP/gRPC path (autotrace.otlp_grpc, h2, span_queue)": "import opentelemetry.sdk.trace, autotrace.otlp_grpc, autotrace.span_queue",
    "OTLP/gRPC path (SDK exporter, grpcio)": "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, autotrace.otlp_exporters",
}


def grpc_sink(port: int):
    """An OTLP/gRPC sink: answers every TraceService/Export with an empty response (bytes in, bytes out)."""
    import grpc

    def export(request: bytes, context) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def run_variants(args, installs: dict[str, Path]) -> None:
    http = serve(Sink)
    grpc_port = free_port()
    grpc_server = grpc_sink(grpc_port)
    down = free_port()  # nothing listens there
    endpoints = {
        ("http", "up"): f"http://127.0.0.1:{http.server_address[1]}",
        ("http", "down"): f"http://127.0.0.1:{down}",
        ("grpc", "up"): f"http://127.0.0.1:{grpc_port}",
        ("grpc", "down"): f"http://127.0.0.1:{down}",
    }
    script = Path("/tmp") / f"collector_down_app_{free_port()}.py"
    script.write_text(APP)
    processes = {}
    for label, bin_dir in installs.items():
        for (protocol, state), endpoint in endpoints.items():
            env = dict(
                plain_env(),
                OTEL_SERVICE_NAME="collector-down",
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL="grpc" if protocol == "grpc" else "http/protobuf",
            )
            command = [str(bin_dir / "autotrace"), "run", str(bin_dir / "python"), str(script), str(args.rate), str(args.seconds)]
            processes[(label, protocol, state)] = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
    results = {}
    try:
        for key, process in processes.items():
            out, err = process.communicate(timeout=args.seconds + 120)
            lines = out.strip().splitlines()
            if process.returncode != 0 or not lines:
                raise SystemExit(f"{key} failed:\n{err}")
            results[key] = (lines, err)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        http.shutdown()
        grpc_server.stop(None)
        script.unlink()
    print(f"{args.rate:g} spans/s for {args.seconds:g} s; final RSS (MB), and its course every 10 s")
    for label in installs:
        for protocol in ("http", "grpc"):
            up = _final(results[(label, protocol, "up")][0])
            off = _final(results[(label, protocol, "down")][0])
            print(f"{label:8} {protocol:5} collector up {up:6.1f}  down {off:6.1f}  difference {off - up:+6.1f}")
            for state in ("up", "down"):
                course = [line.split("rss=")[1].rstrip("MB") for line in results[(label, protocol, state)][0]]
                print(f"         {state:5} {' '.join(course)}")


def _final(lines: list[str]) -> float:
    return float(lines[-1].split("rss=")[1].rstrip("MB"))


def measure_imports(runs: int) -> None:
    python = str(BIN / "python")
    print(f"peak RSS (VmHWM, MB) after the import, median of {runs} fresh processes")
    bare = None
    for name, statement in IMPORTS.items():
        # VmHWM, not ru_maxrss: the latter keeps the peak of the forked parent from before exec.
        code = f"{statement}\nprint(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024)"
        values = []
        for _ in range(runs):
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, env=plain_env())
            if out.returncode != 0:
                raise SystemExit(f"{name}: {out.stderr}")
            values.append(float(out.stdout.strip()))
        value = median(values)
        bare = value if bare is None else bare
        print(f"{name:58} {value:6.1f}  (+{value - bare:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--imports", action="store_true", help="measure the imports of the export paths instead")
    parser.add_argument("--runs", type=int, default=5)
    add_compare(parser)
    args = parser.parse_args()
    if args.imports:
        measure_imports(args.runs)
        return
    installs = {"after": Path(autotrace()).parent}
    installs.update(compared(parser, args.compare))
    run_variants(args, installs)


if __name__ == "__main__":
    main()
