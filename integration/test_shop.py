"""examples/shop/ end to end (issue 18): four services with no tracing code, each under
``autotrace run`` (a stdlib http.server front door; FastAPI on uvicorn fanning out with
httpx.AsyncClient and grpc.aio under asyncio.gather; Flask on gunicorn, two workers, with
a process pool; a gRPC service), started and stopped by ``examples/shop/run.py``.

Each order is one connected trace, checked span by span: its 11 spans, the right parent
for each, no orphan, no duplicate, the service names the agent derived, the pool's span
from another process. Under load (a few hundred orders, four at a time, default batch
settings) every order's trace arrives complete: not one span lost. And an order is one
trace in ``autotrace view``. The full load figure: benchmarks/README.md (run.py --requests).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from agent import PYTHON, clean_env
from otlp_receiver import OTLPReceiver, ReceivedSpan
from viewer import Viewer

RUN = Path(__file__).resolve().parent.parent / "examples" / "shop" / "run.py"
ORDERS = 300  # well under a minute on a loaded 2-core machine
KINDS = {2: "server", 3: "client"}

# Each span of an order (two items), by its parent: "service kind name".
SHAPE = Counter({
    ("", "front server GET"): 1,
    ("front server GET", "front client POST"): 1,
    ("front client POST", "orders server POST /orders"): 1,
    ("orders server POST /orders", "orders client GET"): 2,  # httpx, one per item
    ("orders server POST /orders", "orders client shop.Prices/Quote"): 1,  # grpc.aio
    ("orders client GET", "stock server GET /stock/<item>"): 2,
    ("stock server GET /stock/<item>", "stock client SELECT"): 2,  # sqlite3, in the process pool
    ("orders client shop.Prices/Quote", "prices server shop.Prices/Quote"): 1,
})
SPANS_PER_ORDER = sum(SHAPE.values())


@dataclass(frozen=True)
class Span:
    span_id: str
    parent_id: str
    what: str  # "service kind name"
    pid: int


def from_receiver(span: ReceivedSpan) -> Span:
    what = f"{span.resource['service.name']} {KINDS.get(span.kind, span.kind)} {span.name}"
    return Span(span.span_id, span.parent_span_id, what, span.resource["process.pid"])


def check_order(spans: list[Span]) -> None:
    """One order's trace, span by span."""
    by_id = {span.span_id: span for span in spans}
    assert len(by_id) == len(spans), f"a span id twice: {sorted(s.what for s in spans)}"
    orphans = [span.what for span in spans if span.parent_id and span.parent_id not in by_id]
    assert not orphans, f"a parent not in the trace: {orphans}"
    edges = Counter((by_id[s.parent_id].what if s.parent_id else "", s.what) for s in spans)
    assert edges == SHAPE, f"extra: {edges - SHAPE}, missing: {SHAPE - edges}"
    for select in (s for s in spans if s.what == "stock client SELECT"):
        assert select.pid != by_id[select.parent_id].pid, "the query ran in the pool, another process"


def run_shop(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([PYTHON, str(RUN), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # The agent's start-up lines only: no drop, no export failure, no hook warning.
    agent = [line for line in result.stderr.splitlines() if line.startswith("shop: ")]
    assert all(": autotrace INFO: " in line for line in agent), result.stderr
    assert sum(": autotrace INFO: service.name=" in line for line in agent) == 4, result.stderr
    return result


def test_the_shop_under_load_loses_no_span(otlp_receiver: OTLPReceiver) -> None:
    env = clean_env(**otlp_receiver.env("grpc"))
    del env["OTEL_BSP_SCHEDULE_DELAY"]  # the default batch settings
    result = run_shop(env, "--requests", str(ORDERS), "--concurrency", "4")
    assert re.search(rf"shop: {ORDERS} orders placed in .*; 0 failed", result.stdout), result.stdout
    # The services have exited, each having flushed at exit: everything has arrived.
    spans = otlp_receiver.spans()
    traces: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(from_receiver(span))
    refs = sorted(
        int(urllib.parse.parse_qs(s.attributes["url.query"])["ref"][0])
        for s in spans if s.kind == 2 and s.resource["service.name"] == "front"
    )
    assert refs == list(range(ORDERS)), "an order's front door span is missing or doubled"
    assert len(traces) == ORDERS
    for trace in traces.values():
        check_order(trace)
    assert len(spans) == ORDERS * SPANS_PER_ORDER
    services = {s.resource["service.name"] for s in spans}
    assert sorted(services) == ["front", "orders", "prices", "stock"]  # derived: no OTEL_SERVICE_NAME
    stock_workers = {s.resource["process.pid"] for s in spans if s.kind == 2 and s.resource["service.name"] == "stock"}
    assert len(stock_workers) == 2, "both gunicorn workers served"


def from_viewer(trace: dict) -> list[Span]:
    """A trace of the viewer's Jaeger JSON as the receiver's spans are checked."""
    processes = trace["processes"]
    out = []
    for span in trace["spans"]:
        tags = {tag["key"]: tag["value"] for tag in span["tags"]}
        process = processes[span["processID"]]
        pid = {tag["key"]: tag["value"] for tag in process["tags"]}.get("process.pid", 0)
        parents = [ref["spanID"] for ref in span["references"] if ref["refType"] == "CHILD_OF"]
        what = f"{process['serviceName']} {tags['span.kind']} {span['operationName']}"
        out.append(Span(span["spanID"], parents[0] if parents else "", what, int(pid)))
    return out


def test_an_order_is_one_trace_in_autotrace_view(tmp_path: Path) -> None:
    with Viewer(tmp_path) as viewer:
        env = clean_env()  # the default batch settings; spans are flushed when the services stop
        result = run_shop(env, "--endpoint", viewer.otlp_http)
        assert 'HTTP 200 {"items": ["book", "lamp"], "total": 42.5}' in result.stdout, result.stdout
        url = re.search(r"shop: the newest order's trace: (\S+)", result.stdout)
        assert url and url.group(1).startswith(viewer.ui + "/trace/"), result.stdout
        trace_id = url.group(1).rsplit("/", 1)[1]
        (trace,) = viewer.get(f"/api/traces/{trace_id}")["data"]
        check_order(from_viewer(trace))
        summary = viewer.get(f"/api/autotrace/summaries?traceID={trace_id}")["data"][0]
        assert summary["rootService"] == "front" and summary["services"] == ["front", "orders", "prices", "stock"]
