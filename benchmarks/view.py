"""Benchmark: `autotrace view`, ingest and queries against a real viewer process.

1. Ingest: spans/s sustained over OTLP/HTTP into `autotrace view --db TMP` from the
   agent's own exporter (the one `autotrace run` makes: `autotrace.exporters.otlp_factory`,
   the SDK's OTLP/HTTP exporter with autotrace's encoder), in `--senders` processes (one
   exporter each, as one service each on the machine), each sending its batches of 512
   spans (prepared before the clock starts) one after another as a BatchSpanProcessor
   does, while a thread asks the UI's search (`/api/autotrace/summaries`) every 200 ms.
   Reported too: that search's latency during ingest, the viewer's CPU time a batch and
   how busy it was (from /proc: on a machine shared with other work, steadier than the
   rate), and the senders' CPU and time a batch (what a sender waits for is the viewer).
2. Stored: N spans (realistic traces of four services with HTTP attributes, plus one
   trace of 2,000 spans) written straight through the store's write path, then a viewer
   started on that file: the first page of a search (service + attribute + min duration)
   via `/api/autotrace/summaries` and `/api/traces`, the 2,000-span trace's JSON via
   `/api/traces/{id}`, the viewer's RSS (from /proc) and the store's file size.

Targets (issue 14): ingest >= 20,000 spans/s; with 1M spans: search first page <= 200 ms,
2,000-span trace JSON <= 300 ms, RSS <= 300 MB. Prints figures; asserts nothing.

    python benchmarks/view.py [--spans 1000000] [--ingest-batches 60] [--senders 1] [--ingest-max-spans N]
                              [--skip-ingest] [--skip-stored]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

SERVICES = ("frontend", "cart", "catalog", "payments")
SEARCH = {"service": "frontend", "tags": '{"http.response.status_code":"500"}', "minDuration": "50ms", "limit": "20"}
TARGETS = {"ingest": 20000, "search_ms": 200, "trace_ms": 300, "rss_mb": 300}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Viewer:
    """`autotrace view` in a child process, on free loopback ports."""

    def __init__(self, db: Path, max_spans: int) -> None:
        self.ui, self.http, self.grpc = free_port(), free_port(), free_port()
        command = [sys.executable, "-m", "autotrace", "view", "--db", str(db), "--max-spans", str(max_spans),
                   "--ui-port", str(self.ui), "--otlp-http-port", str(self.http), "--otlp-grpc-port", str(self.grpc)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.ui}/autotrace-view", timeout=1).read()
                return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the viewer exited: {self.process.stdout.read()}")
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the viewer did not start in 60 s")

    def get(self, path: str, params: dict | None = None) -> tuple[float, bytes]:
        url = f"http://127.0.0.1:{self.ui}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        t0 = time.perf_counter()
        body = urllib.request.urlopen(url, timeout=60).read()
        return (time.perf_counter() - t0) * 1e3, body

    def rss_mb(self) -> tuple[float, float]:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def cpu_s(self) -> float:
        """CPU time (user + system) the viewer used so far: a figure the machine's load moves less."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def report(name: str, value: float, unit: str, target: float | None = None, higher_is_better: bool = False) -> None:
    line = f"{name:<52} {value:12,.1f} {unit}"
    if target is not None:
        met = value >= target if higher_is_better else value <= target
        line += f"   target {'>=' if higher_is_better else '<='} {target:,} ({value / target:.2f}x): {'met' if met else 'NOT met'}"
    print(line, flush=True)


# -- ingest --------------------------------------------------------------------------------


def sdk_batches(count: int, size: int = 512) -> list:
    """``count`` lists of ``size`` finished SDK spans: traces of 8 spans, HTTP attributes."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "ingest-bench", "host.name": "h", "process.pid": 1}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("autotrace.wsgi", "0.1.0")
    for i in range(count * size // 8):
        with tracer.start_as_current_span("GET /items/{id}", kind=SpanKind.SERVER) as root:
            root.set_attributes({"http.request.method": "GET", "url.path": f"/items/{i}", "http.route": "/items/{id}",
                                 "http.response.status_code": 500 if i % 50 == 0 else 200, "server.port": 8000,
                                 "user_agent.original": "bench/1.0", "client.address": "127.0.0.1"})
            for j in range(7):
                with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT) as child:
                    child.set_attributes({"http.request.method": "GET", "url.full": f"http://cart:8080/c/{i}/{j}",
                                          "server.address": "cart", "http.response.status_code": 200})
    spans = exporter.get_finished_spans()
    return [spans[at : at + size] for at in range(0, len(spans), size)]


def sender(endpoint: str, batches: int) -> None:
    """One sending process (``--sender``): ``batches`` batches of 512 SDK spans prepared, one
    exported to warm up, then, at a line on stdin, the rest exported one after another by
    the exporter ``autotrace run`` makes for this endpoint (as its BatchSpanProcessor does);
    prints one JSON line: spans sent, failed batches, seconds, CPU seconds of this process."""
    from autotrace.config import Configuration
    from autotrace.exporters import otlp_factory

    prepared = sdk_batches(batches + 1)
    # The prepared spans are the benchmark's, not what an agent keeps alive: out of the
    # cyclic collector's walks (which otherwise time the benchmark's heap, not the exporter).
    gc.collect()
    gc.freeze()
    exporter = otlp_factory(Configuration(protocol="http/protobuf", endpoint=endpoint, timeout_s=30))()
    exporter.export(prepared[0])  # warm up (the encoder's one-time check)
    print("ready", flush=True)
    sys.stdin.readline()
    t0, cpu0, failed = time.perf_counter(), time.process_time(), 0
    for batch in prepared[1:]:
        if exporter.export(batch).name != "SUCCESS":
            failed += 1
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"spans": sum(len(b) for b in prepared[1:]), "failed": failed, "elapsed": elapsed, "cpu": cpu}),
          flush=True)


def bench_ingest(workdir: Path, batches: int, senders: int, max_spans: int) -> None:
    share = [batches // senders + (n < batches % senders) for n in range(senders)]
    print(f"ingest: {senders} sending process(es), {batches} batches of 512 SDK spans in all, prepared ...", flush=True)
    viewer = Viewer(workdir / "ingest.db", max_spans=max_spans)
    processes = []
    try:
        endpoint = f"http://127.0.0.1:{viewer.http}/v1/traces"
        for count in share:
            processes.append(subprocess.Popen(
                [sys.executable, __file__, "--sender", endpoint, "--ingest-batches", str(count)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for process in processes:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a sender failed to start")
        searches: list[float] = []
        done = threading.Event()

        def search() -> None:
            params = dict(SEARCH, service="ingest-bench", minDuration="0us")
            while not done.wait(0.2):
                searches.append(viewer.get("/api/autotrace/summaries", params)[0])

        searcher = threading.Thread(target=search)
        searcher.start()
        t0, cpu0 = time.perf_counter(), viewer.cpu_s()
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(process.stdout.readline()) for process in processes]
        elapsed, cpu = time.perf_counter() - t0, viewer.cpu_s() - cpu0
        done.set()
        searcher.join()
        spans = sum(r["spans"] for r in results)
        sent = spans / 512
        failed = sum(r["failed"] for r in results)
        print(f"ingest: {spans} spans in {elapsed:.2f} s from {senders} process(es), {failed} failed batches"
              + (f", retention at {max_spans:,} spans" if max_spans < spans else ""))
        report("ingest over OTLP/HTTP (agent's exporter, 512/batch)", spans / elapsed, "spans/s", TARGETS["ingest"], True)
        report("viewer CPU a batch of 512 (searches included)", cpu * 1e3 / sent, "ms")
        report("viewer CPU busy (of one core; the rest it waited)", 100 * cpu / elapsed, "%")
        report("sender CPU a batch (encoding, HTTP; not its pauses)", sum(r["cpu"] for r in results) * 1e3 / sent, "ms")
        report("sender time a batch (one sender, export to answer)",
               statistics.mean(r["elapsed"] * 512e3 / r["spans"] for r in results), "ms")
        if searches:
            report(f"search during ingest, median of {len(searches)}", statistics.median(searches), "ms")
            report("search during ingest, max", max(searches), "ms")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        viewer.stop()


# -- stored --------------------------------------------------------------------------------


def _s(key: str, value: str) -> dict:
    return {"key": key, "value": {"stringValue": value}}


def _i(key: str, value: int) -> dict:
    return {"key": key, "value": {"intValue": str(value)}}


def records(total: int, big_trace_id: str, rng: random.Random):
    """Lists of about 5,000 SpanRecords: traces of 6 to 14 spans over four services, spread
    over the last hour, 2% of them failing with a 500; and one trace of 2,000 spans."""
    from autotrace.view.otlp import SpanRecord

    resources = {s: {"attributes": [_s("service.name", s), _s("host.name", f"{s}-1"), _i("process.pid", 4000 + n),
                                    _s("telemetry.sdk.language", "python")]} for n, s in enumerate(SERVICES)}
    scope = {"name": "autotrace.wsgi", "version": "0.1.0"}
    now = time.time_ns()
    made, batch = 0, []

    def span(trace_id, span_id, parent, service, name, kind, start, duration, status, attributes):
        return SpanRecord(trace_id, span_id, parent, service, name, kind, start, start + duration, 2 if status >= 500 else 0,
                          "", "", 1, attributes, [], [], resources[service], scope)

    def http_server(route: str, path: str, status: int) -> list:
        return [_s("http.request.method", "GET"), _s("url.path", path), _s("url.scheme", "http"), _s("http.route", route),
                _i("http.response.status_code", status), _s("server.address", "localhost"), _i("server.port", 8000),
                _s("client.address", "127.0.0.1"), _s("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)")]

    def http_client(target: str, path: str, status: int) -> list:
        return [_s("http.request.method", "GET"), _s("url.full", f"http://{target}:8080{path}"),
                _s("server.address", target), _i("server.port", 8080), _i("http.response.status_code", status)]

    big = True
    while made < total:
        trace_id = big_trace_id if big else "%032x" % rng.getrandbits(128)
        start = now - rng.randrange(3600 * 10**9)
        status = 500 if rng.random() < 0.02 else 200
        item = rng.randrange(100000)
        duration = rng.randrange(2, 400) * 10**6
        root_id = "%016x" % rng.getrandbits(64)
        spans = [span(trace_id, root_id, "", "frontend", "GET /items/{id}", 2, start, duration, status,
                      http_server("/items/{id}", f"/items/{item}", status))]
        for n in range(1999 if big else rng.randrange(3, 8)):
            target = SERVICES[1 + n % 3]
            client_id, server_id = "%016x" % rng.getrandbits(64), "%016x" % rng.getrandbits(64)
            at = start + duration * n // 10
            child_status = status if n == 0 else 200
            spans.append(span(trace_id, client_id, root_id, "frontend", "GET", 3, at, duration // 10, child_status,
                              http_client(target, f"/{target}/{item}", child_status)))
            spans.append(span(trace_id, server_id, client_id, target, f"GET /{target}/{{id}}", 2, at + 10**5,
                              duration // 12, child_status, http_server(f"/{target}/{{id}}", f"/{target}/{item}", child_status)))
            if big and len(spans) >= 2000:
                break
        if big:
            spans, big = spans[:2000], False
        batch.extend(spans)
        made += len(spans)
        if len(batch) >= 5000:
            yield batch
            batch = []
    if batch:
        yield batch


def bench_stored(workdir: Path, total: int) -> None:
    from autotrace.view.store import Store

    db = workdir / "stored.db"
    big_trace_id = "%032x" % random.Random(1).getrandbits(128)
    store = Store(str(db), retention_days=None, max_spans=None)
    print(f"loading {total:,} spans through the store's write path ...", flush=True)
    t0, written = time.perf_counter(), 0
    for batch in records(total, big_trace_id, random.Random(2)):
        store.write(batch)
        written += len(batch)
    elapsed = time.perf_counter() - t0
    store.close()
    report(f"store write path, {written:,} spans in {elapsed:.1f} s", written / elapsed, "spans/s")
    size = sum(p.stat().st_size for p in workdir.glob("stored.db*")) / 2**20
    report("store file size", size, "MB")
    report("store bytes per span", size * 2**20 / written, "B")

    viewer = Viewer(db, max_spans=10 * total)
    try:
        for name, path, params, target in (
            ("search first page /api/autotrace/summaries", "/api/autotrace/summaries", SEARCH, TARGETS["search_ms"]),
            ("search first page /api/traces", "/api/traces", SEARCH, TARGETS["search_ms"]),
            ("2,000-span trace /api/traces/{id}", f"/api/traces/{big_trace_id}", None, TARGETS["trace_ms"]),
        ):
            times, body = [], b""
            for _ in range(5):
                ms, body = viewer.get(path, params)
                times.append(ms)
            data = json.loads(body)
            shape = f"{len(data['data'])} results of {data.get('total')}" if "total" in data else ""
            if path.startswith("/api/traces/"):
                shape = f"{len(data['data'][0]['spans'])} spans, {len(body) / 2**20:.1f} MB of JSON"
            report(f"{name}, first", times[0], "ms")
            report(f"{name}, median of 5 ({shape})", statistics.median(times), "ms", target)
        rss, hwm = viewer.rss_mb()
        report("viewer RSS after the queries", rss, "MB", TARGETS["rss_mb"])
        report("viewer peak RSS (VmHWM)", hwm, "MB", TARGETS["rss_mb"])
    finally:
        viewer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000, help="spans stored for the query figures")
    parser.add_argument("--ingest-batches", type=int, default=60, help="batches of 512 spans sent in the ingest test")
    parser.add_argument("--senders", type=int, default=1,
                        help="sending processes in the ingest test, each one exporter (the agent has one a process)")
    parser.add_argument("--ingest-max-spans", type=int, default=10_000_000,
                        help="the viewer's --max-spans in the ingest test (below the spans sent: a full store, "
                             "retention dropping the oldest traces as batches arrive)")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-stored", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (printed)")
    parser.add_argument("--sender", metavar="ENDPOINT", help=argparse.SUPPRESS)  # a sending process's own run
    args = parser.parse_args()
    if args.sender:
        return sender(args.sender, args.ingest_batches)
    workdir = Path(tempfile.mkdtemp(prefix="autotrace-view-bench-"))
    try:
        if not args.skip_ingest:
            bench_ingest(workdir, args.ingest_batches, args.senders, args.ingest_max_spans)
        if not args.skip_stored:
            bench_stored(workdir, args.spans)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OTEL_SDK_DISABLED", "false")
    main()
