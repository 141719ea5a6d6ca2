"""The `autotrace view` UI in a real browser: Debian's chromium, headless, driven by Selenium.

The pages are the files in ``autotrace/view/static/``, served by :class:`FakeViewer`, a
stand-in for the viewer's HTTP server that keeps the viewer's contract: the same page
paths, the same Content-Security-Policy header, and canned JSON in the shapes of the
Jaeger query API and autotrace's own endpoints. Its data (:data:`SPANS`) holds a trace
across three services with an error and its stack trace, a span link to another trace,
a span whose parent never arrived and an N+1 loop of six identical CLIENT calls, plus a
trace whose service names, span names, attributes, events and links are HTML/JS payloads.

One browser for the module. Screenshots go to each test's ``tmp_path``; the trace page's
screenshot is also copied to ``$AUTOTRACE_SCREENSHOTS/viewer-trace.png`` when that
variable names a folder. The tests fail (never skip) when chromium, chromedriver or
Selenium is missing: CI installs them (see .ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from ports import free_port

STATIC = Path(__file__).resolve().parent.parent / "autotrace" / "view" / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 10.0  # seconds any one page state may take to appear

MAIN = "4bf92f3577b34da6a3ce929d0e0e4736"
LINKED = "0af7651916cd43dd8448eb211c80319c"
XSS = "5b8efff798038103d269b633813fc60c"
MISSING_PARENT = "deadbeefdeadbeef"

# Payloads: each would set window.__xss or document.title if it ever ran.
P_IMG = '<img src=x onerror="window.__xss=1">'
P_SCRIPT = "<script>window.__xss=1;document.title='pwned'</script>"
P_SVG = '"><svg onload=window.__xss=1>'
P_JS_URL = "javascript:window.__xss=1"
P_TITLE = "\"><img src=x onerror=\"document.title='pwned'\">"

NOW_US = int(time.time() * 1_000_000)


def span(trace: str, span_id: str, parent: str | None, service: str, name: str, kind: str, start_ms: float,
         duration_ms: float, attrs: dict[str, Any] | None = None, events: list[tuple[str, float, dict[str, Any]]] | None = None,
         links: list[tuple[str, str]] | None = None, error: bool = False, trace_start_us: int = 0) -> dict[str, Any]:
    """One span of the canned data, in a neutral form (the lead can encode it as OTLP too)."""
    return {
        "trace": trace, "id": span_id, "parent": parent, "service": service, "name": name, "kind": kind,
        "start": trace_start_us + int(start_ms * 1000), "duration": int(duration_ms * 1000),
        "attrs": attrs or {}, "events": events or [], "links": links or [], "error": error,
    }


def main_trace(start: int) -> list[dict[str, Any]]:
    """frontend -> orders (6 identical SELECTs, then a call to payments, which fails)."""
    t = MAIN
    spans = [
        span(t, "a000000000000001", None, "frontend", "GET /checkout", "server", 0, 120,
             {"http.request.method": "GET", "url.path": "/checkout", "http.response.status_code": 500}),
        span(t, "a000000000000002", "a000000000000001", "frontend", "cache lookup", "internal", 11, 19),
        span(t, "a000000000000003", "a000000000000001", "frontend", "GET", "client", 10, 90,
             {"server.address": "orders", "server.port": 8080, "url.full": "http://orders:8080/orders/42"}),
        span(t, "a000000000000004", "a000000000000003", "orders", "GET /orders/{id}", "server", 12, 86,
             {"http.route": "/orders/{id}", "http.response.status_code": 500}),
    ]
    for i in range(6):
        spans.append(span(t, f"a00000000000001{i}", "a000000000000004", "orders", "SELECT items", "client", 14 + i * 5, 4,
                          {"db.system": "postgresql", "server.address": "db.local", "server.port": 5432,
                           "db.query.text": "SELECT * FROM items WHERE order_id = $1"}))
    stack = 'Traceback (most recent call last):\n  File "/app/pay.py", line 42, in charge\n    raise CardDeclined(card)\nCardDeclined: card declined'
    spans += [
        span(t, "a000000000000005", "a000000000000004", "orders", "POST", "client", 45, 50,
             {"server.address": "payments", "server.port": 8081, "url.full": "http://payments:8081/pay"}),
        span(t, "a000000000000006", "a000000000000005", "payments", "POST /pay", "server", 47, 47,
             {"http.route": "/pay", "http.response.status_code": 500},
             [("exception", 46, {"exception.type": "CardDeclined", "exception.message": "card declined",
                                 "exception.stacktrace": stack})], error=True),
        span(t, "a000000000000007", "a000000000000006", "payments", "charge card", "internal", 50, 40),
        span(t, "a000000000000008", "a000000000000001", "frontend", "render", "internal", 101, 17,
             links=[(LINKED, "b000000000000001")]),
        span(t, "a000000000000009", MISSING_PARENT, "frontend", "late callback", "internal", 60, 10),
    ]
    for s in spans:
        s["start"] += start
    return spans


def linked_trace(start: int) -> list[dict[str, Any]]:
    return [
        span(LINKED, "b000000000000001", None, "payments", "settle batch", "consumer", 0, 30, trace_start_us=start),
        span(LINKED, "b000000000000002", "b000000000000001", "payments", "write ledger", "internal", 5, 20, trace_start_us=start),
    ]


def xss_trace(start: int) -> list[dict[str, Any]]:
    return [
        span(XSS, "c000000000000001", None, P_IMG, P_SCRIPT, "server", 0, 40,
             {P_SVG: P_IMG, "url.full": P_JS_URL, "user_agent.original": P_TITLE},
             [(P_SCRIPT, 5, {P_IMG: P_SVG, "exception.message": P_IMG})],
             links=[(P_JS_URL, P_SVG)], trace_start_us=start),
        span(XSS, "c000000000000002", "c000000000000001", P_IMG, P_IMG, "client", 5, 30,
             {"server.address": P_JS_URL}, trace_start_us=start),
        span(XSS, "c000000000000003", "c000000000000002", P_SVG, P_TITLE, "server", 6, 28,
             {"http.route": P_SCRIPT},
             [("exception", 20, {"exception.type": P_IMG, "exception.message": P_TITLE,
                                 "exception.stacktrace": "</pre>" + P_SCRIPT})], error=True, trace_start_us=start),
    ]


def filler_trace(i: int, start: int) -> list[dict[str, Any]]:
    return [span(f"{0xf0000000 + i:032x}", "d000000000000001", None, "frontend", "GET /health", "server", 0, 2 + i,
                 trace_start_us=start)]


BIG = "b16b16b16b16b16b16b16b16b16b16b1"
BIG_SPANS = 2000


def big_trace(start: int) -> list[dict[str, Any]]:
    """2,000 spans: 50 CLIENT calls from a root, each with a server span and 38 children."""
    spans = [span(BIG, f"{1:016x}", None, "frontend", "GET /big", "server", 0, 2000, trace_start_us=start)]
    n = 2
    for call in range(50):
        client = f"{n:016x}"
        spans.append(span(BIG, client, f"{1:016x}", "frontend", "GET", "client", call * 40, 39,
                          {"server.address": "orders", "url.full": f"http://orders/{call}"}, trace_start_us=start))
        server = f"{n + 1:016x}"
        spans.append(span(BIG, server, client, "orders", "GET /item", "server", call * 40 + 1, 37, trace_start_us=start))
        for child in range(38):
            spans.append(span(BIG, f"{n + 2 + child:016x}", server, "orders", f"step {child}", "internal",
                              call * 40 + 1 + child * 0.9, 0.8, trace_start_us=start))
        n += 40
    assert len(spans) == BIG_SPANS + 1
    return spans[:BIG_SPANS]


def canned_spans() -> list[dict[str, Any]]:
    spans = main_trace(NOW_US - 1_000_000) + xss_trace(NOW_US - 3_000_000) + linked_trace(NOW_US - 5_000_000)
    for i in range(23):
        spans += filler_trace(i, NOW_US - 10_000_000 - i * 1_000_000)
    return spans


# ---- the canned data in the contract's JSON shapes -----------------------------------------

def kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "type": "bool", "value": value}
    if isinstance(value, int):
        return {"key": key, "type": "int64", "value": value}
    if isinstance(value, float):
        return {"key": key, "type": "float64", "value": value}
    return {"key": key, "type": "string", "value": str(value)}


def jaeger_trace(trace_id: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    processes: dict[str, dict[str, Any]] = {}
    process_of: dict[str, str] = {}
    out = []
    for s in spans:
        if s["service"] not in process_of:
            pid = f"p{len(process_of) + 1}"
            process_of[s["service"]] = pid
            processes[pid] = {"serviceName": s["service"], "tags": [
                kv("host.name", "dev-laptop"), kv("telemetry.sdk.language", "python"),
                kv("service.instance.id", s["service"] + "-1")]}
        tags = [kv(k, v) for k, v in s["attrs"].items()]
        tags += [kv("span.kind", s["kind"]), kv("otel.scope.name", "autotrace")]
        if s["error"]:
            tags += [kv("otel.status_code", "ERROR"), kv("error", True)]
        refs = []
        if s["parent"]:
            refs.append({"refType": "CHILD_OF", "traceID": trace_id, "spanID": s["parent"]})
        refs += [{"refType": "FOLLOWS_FROM", "traceID": t, "spanID": sid} for t, sid in s["links"]]
        logs = [{"timestamp": s["start"] + int(at * 1000),  # an event's time: ms from its span's start
                 "fields": [kv("event", name)] + [kv(k, v) for k, v in attrs.items()]} for name, at, attrs in s["events"]]
        out.append({"traceID": trace_id, "spanID": s["id"], "operationName": s["name"], "references": refs,
                    "startTime": s["start"], "duration": s["duration"], "tags": tags, "logs": logs,
                    "processID": process_of[s["service"]], "warnings": None, "flags": 1})
    return {"traceID": trace_id, "spans": out, "processes": processes, "warnings": None}


def duration_us(text: str) -> float | None:
    units = {"us": 1, "µs": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
    text = text.strip()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * units[unit]
            except ValueError:
                return None
    return None


class FakeViewer:
    """Serves the static UI and canned API answers the way `autotrace view` does (see above)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = canned_spans()
        self.big = big_trace(NOW_US - 60_000_000)
        self.requests: list[tuple[str, dict[str, list[str]]]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        viewer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                viewer.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "FakeViewer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def add_spans(self, spans: list[dict[str, Any]]) -> None:
        with self.lock:
            self.spans += spans

    def api_requests(self, path: str) -> list[dict[str, list[str]]]:
        with self.lock:
            return [query for p, query in self.requests if p == path]

    # -- data --

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        with self.lock:
            spans = list(self.spans)
        by_trace: dict[str, list[dict[str, Any]]] = {}
        for s in spans:
            by_trace.setdefault(s["trace"], []).append(s)
        return by_trace

    def summary(self, trace_id: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
        ids = {s["id"] for s in spans}
        roots = sorted((s for s in spans if s["parent"] is None or s["parent"] not in ids), key=lambda s: (s["parent"] is not None, s["start"]))
        start = min(s["start"] for s in spans)
        end = max(s["start"] + s["duration"] for s in spans)
        services: list[str] = []
        for s in sorted(spans, key=lambda s: s["start"]):
            if s["service"] not in services:
                services.append(s["service"])
        return {"traceID": trace_id, "rootService": roots[0]["service"], "rootOperation": roots[0]["name"],
                "startTime": start, "duration": end - start, "spanCount": len(spans), "services": services,
                "errors": sum(1 for s in spans if s["error"])}

    def search(self, query: dict[str, list[str]]) -> tuple[list[dict[str, Any]], int, int, int]:
        one = {k: v[0] for k, v in query.items()}
        tags = json.loads(one.get("tags", "{}"))
        trace_ids = set(query.get("traceID", []))
        low = duration_us(one["minDuration"]) if "minDuration" in one else None
        high = duration_us(one["maxDuration"]) if "maxDuration" in one else None
        found = []
        for trace_id, spans in self.traces().items():
            summary = self.summary(trace_id, spans)
            if trace_ids and trace_id not in trace_ids:
                continue
            if "service" in one and not any(s["service"] == one["service"] and s["name"] == one.get("operation", s["name"]) for s in spans):
                continue
            if low is not None and summary["duration"] < low or high is not None and summary["duration"] > high:
                continue

            def has(key: str, value: str) -> bool:
                if key == "error":
                    return any(s["error"] for s in spans) == (value == "true")
                return any(str(s["attrs"].get(key)) == value for s in spans)

            if not all(has(k, str(v)) for k, v in tags.items()):
                continue
            found.append(summary)
        found.sort(key=lambda t: t["startTime"], reverse=True)
        limit = int(one.get("limit", "20"))
        offset = int(one.get("offset", "0"))
        return found[offset:offset + limit], len(found), limit, offset

    def stats(self) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for spans in self.traces().values():
            for s in spans:
                groups.setdefault((s["service"], s["name"]), []).append(s)
        rows = []
        for (service, name), spans in sorted(groups.items()):
            durations = sorted(s["duration"] for s in spans)

            def rank(p: float) -> int:
                return durations[max(0, min(len(durations) - 1, int(round(p * len(durations) + 0.5)) - 1))]

            rows.append({"service": service, "operation": name, "count": len(spans),
                         "errors": sum(1 for s in spans if s["error"]), "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99)})
        return rows

    def dependencies(self) -> list[dict[str, Any]]:
        counts: dict[tuple[str, str], int] = {}
        for spans in self.traces().values():
            by_id = {s["id"]: s for s in spans}
            for s in spans:
                parent = by_id.get(s["parent"] or "")
                if parent and parent["kind"] in ("client", "producer") and s["kind"] in ("server", "consumer") and parent["service"] != s["service"]:
                    counts[(parent["service"], s["service"])] = counts.get((parent["service"], s["service"]), 0) + 1
        return [{"parent": p, "child": c, "callCount": n} for (p, c), n in sorted(counts.items())]

    # -- HTTP --

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(request.path)
        path = parsed.path
        query = urllib.parse.parse_qs(parsed.query)
        if path.startswith("/api/"):
            with self.lock:
                self.requests.append((path, query))
        if path in ("/", "/search", "/services", "/map") or path.startswith("/trace/"):
            self.send(request, 200, "text/html; charset=utf-8", (STATIC / "index.html").read_bytes(), html=True)
        elif path.startswith("/static/"):
            name = path[len("/static/"):]
            types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8",
                     ".svg": "image/svg+xml", ".png": "image/png"}
            if name in os.listdir(STATIC) and Path(name).suffix in types:
                self.send(request, 200, types[Path(name).suffix], (STATIC / name).read_bytes())
            else:
                self.send_json(request, 404, {"error": "not found"})
        elif path == "/api/services":
            names = sorted({s["service"] for spans in self.traces().values() for s in spans})
            self.send_json(request, 200, {"data": names, "total": len(names), "limit": 0, "offset": 0, "errors": None})
        elif path.startswith("/api/services/") and path.endswith("/operations"):
            service = urllib.parse.unquote(path[len("/api/services/"):-len("/operations")])
            names = sorted({s["name"] for spans in self.traces().values() for s in spans if s["service"] == service})
            self.send_json(request, 200, {"data": names, "total": len(names), "limit": 0, "offset": 0, "errors": None})
        elif path.startswith("/api/traces/"):
            trace_id = path[len("/api/traces/"):]
            # The big trace is only served by id: it stays out of search and statistics.
            spans = self.big if trace_id == BIG else self.traces().get(trace_id)
            if spans is None:
                self.send_json(request, 404, {"data": None, "total": 0, "limit": 0, "offset": 0,
                                              "errors": [{"code": 404, "msg": "trace not found"}]})
            else:
                self.send_json(request, 200, {"data": [jaeger_trace(trace_id, spans)], "total": 1, "limit": 0, "offset": 0, "errors": None})
        elif path == "/api/autotrace/summaries":
            found, total, limit, offset = self.search(query)
            self.send_json(request, 200, {"data": found, "total": total, "limit": limit, "offset": offset, "errors": None})
        elif path == "/api/autotrace/stats":
            self.send_json(request, 200, {"data": self.stats()})
        elif path == "/api/dependencies":
            # One self loop the real viewer never serves: the UI must not draw it either.
            edges = self.dependencies() + [{"parent": "orders", "child": "orders", "callCount": 3}]
            self.send_json(request, 200, {"data": edges, "total": len(edges), "limit": 0, "offset": 0, "errors": None})
        elif path.startswith("/api/autotrace/traces/") and path.endswith("/otlp"):
            trace_id = path[len("/api/autotrace/traces/"):-len("/otlp")]
            body = json.dumps({"resourceSpans": []}).encode()
            request.send_response(200)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Disposition", f'attachment; filename="trace-{trace_id}.json"')
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        else:
            self.send_json(request, 404, {"data": None, "errors": [{"code": 404, "msg": "not found"}]})

    def send_json(self, request: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        self.send(request, status, "application/json", json.dumps(body).encode())

    @staticmethod
    def send(request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes, html: bool = False) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("X-Content-Type-Options", "nosniff")
        if html:
            request.send_header("Content-Security-Policy", CSP)
        request.end_headers()
        request.wfile.write(body)


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def viewer() -> Iterator[FakeViewer]:
    with FakeViewer() as fake:
        yield fake


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.fail(f"the browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} missing): "
                    "run `apt-get install -y chromium chromium-driver` as root (.ci/run does it in CI)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser tests need Selenium: pip install -e '.[test]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--no-first-run", "--disable-extensions", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser: Any, css: str, count: int = 1) -> list[Any]:
    """The elements matching ``css`` once at least ``count`` of them are there (or fail)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + WAIT
    while True:
        found = browser.find_elements(By.CSS_SELECTOR, css)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{css!r}: {len(found)} of {count} elements after {WAIT} s on {browser.current_url}")
        time.sleep(0.05)


def wait_until(check: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.05)


def open_page(browser: Any, viewer: FakeViewer, path: str) -> None:
    browser.get(viewer.url + path)


def one(browser: Any, css: str) -> Any:
    return wait_for(browser, css)[0]


def screenshot(browser: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    browser.save_screenshot(str(path))
    return path


def row(browser: Any, span_id: str) -> Any:
    return one(browser, f'.span-row[data-span-id="{span_id}"]')


def no_xss(browser: Any) -> None:
    assert browser.execute_script("return window.__xss") is None, "a payload ran"
    assert "pwned" not in browser.title, "a payload ran"
    assert browser.execute_script("return document.querySelectorAll('#app img, #app script, #app iframe, #app object').length") == 0
    hrefs = browser.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href'))")
    assert all(href.startswith("/") and not href.startswith("//") for href in hrefs), hrefs


# ---- tests ---------------------------------------------------------------------------------

def test_pages_carry_the_csp_and_no_inline_script(viewer):
    for path in ("/", "/search", f"/trace/{MAIN}", "/services", "/map"):
        with urllib.request.urlopen(viewer.url + path, timeout=5) as response:
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            page = response.read().decode()
    assert '<script src="/static/app.js" defer></script>' in page
    assert page.count("<script") == 1 and " style=" not in page and " on" not in page.replace(" onl", "")
    assert not any(word in (STATIC / "app.js").read_text() for word in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("))


def test_search_lists_newest_first_pages_and_opens_a_trace(browser, viewer, tmp_path):
    open_page(browser, viewer, "/search")
    results = wait_for(browser, "li.result", 20)
    assert len(results) == 20
    first = results[0]
    assert first.get_attribute("data-trace-id") == MAIN
    assert "frontend: GET /checkout" in first.text
    assert "15 spans" in first.text and "1 error" in first.text
    services = [item.text for item in first.find_elements("css selector", ".result-services li")]
    assert services == ["frontend", "orders", "payments"]
    widths = browser.execute_script("return [...document.querySelectorAll('.duration-bar')].map(b => parseFloat(b.style.width))")
    assert widths[0] == 100.0 and all(0 < width <= 100 for width in widths)
    assert "of 26" in one(browser, "#result-count").text
    screenshot(browser, tmp_path, "search.png")

    one(browser, "a.pager-next").click()
    wait_until(lambda: "offset=20" in browser.current_url and len(browser.find_elements("css selector", "li.result")) == 6, "page 2")
    assert viewer.api_requests("/api/autotrace/summaries")[-1]["offset"] == ["20"]

    # Search by service from the form: the query goes into the URL.
    open_page(browser, viewer, "/search")
    wait_for(browser, '#f-service option[value="payments"]')
    from selenium.webdriver.support.ui import Select

    Select(one(browser, "#f-service")).select_by_value("payments")
    wait_for(browser, '#f-operation option[value="POST /pay"]')
    Select(one(browser, "#f-operation")).select_by_value("POST /pay")
    one(browser, "#f-submit").click()
    wait_until(lambda: "service=payments" in browser.current_url, "the service in the URL")
    assert urllib.parse.urlsplit(browser.current_url).query == "service=payments&operation=POST+%2Fpay&lookback=1h&limit=20"
    wait_until(lambda: [r.get_attribute("data-trace-id") for r in browser.find_elements("css selector", "li.result")] == [MAIN], "one result")
    assert viewer.api_requests("/api/autotrace/summaries")[-1]["operation"] == ["POST /pay"]

    one(browser, "li.result a.result-title").click()
    wait_until(lambda: browser.current_url.endswith(f"/trace/{MAIN}"), "the trace page")
    wait_for(browser, ".span-row", 15)


def test_search_query_from_the_url(browser, viewer):
    open_page(browser, viewer, "/search?errors=1&tags=http.response.status_code%3D500&minDuration=50ms&lookback=6h")
    wait_for(browser, "li.result")
    query = viewer.api_requests("/api/autotrace/summaries")[-1]
    assert json.loads(query["tags"][0]) == {"http.response.status_code": "500", "error": "true"}
    assert query["minDuration"] == ["50ms"] and query["lookback"] == ["6h"]
    assert one(browser, "#f-errors").is_selected()
    assert one(browser, "#f-tags").get_attribute("value") == "http.response.status_code=500"
    assert [r.get_attribute("data-trace-id") for r in browser.find_elements("css selector", "li.result")] == [MAIN]

    open_page(browser, viewer, f"/search?traceID={LINKED}")
    wait_until(lambda: [r.get_attribute("data-trace-id") for r in browser.find_elements("css selector", "li.result")] == [LINKED], "the trace id")


def test_live_tail_shows_a_new_trace(browser, viewer):
    open_page(browser, viewer, "/search")
    wait_for(browser, "li.result", 20)
    one(browser, "#live-tail").click()
    wait_until(lambda: "live=1" in browser.current_url, "live=1 in the URL")
    new = f"{0xe0000000:032x}"
    viewer.add_spans([span(new, "e000000000000001", None, "orders", "GET /new", "server", 0, 5, trace_start_us=int(time.time() * 1e6))])
    try:
        wait_until(lambda: browser.find_elements("css selector", "li.result")[0].get_attribute("data-trace-id") == new, "the new trace on top")
    finally:
        one(browser, "#live-tail").click()
        with viewer.lock:
            viewer.spans = [s for s in viewer.spans if s["trace"] != new]


def test_waterfall_tree_colours_and_critical_path(browser, viewer, tmp_path):
    open_page(browser, viewer, f"/trace/{MAIN}")
    rows = wait_for(browser, ".span-row", 15)
    assert len(rows) == 15
    assert "frontend" in one(browser, ".trace-title").text and "GET /checkout" in one(browser, ".trace-title").text
    colours = browser.execute_script("""
        const out = {};
        for (const row of document.querySelectorAll('.span-row')) {
          const colour = getComputedStyle(row.querySelector('.bar')).backgroundColor;
          (out[row.dataset.service] = out[row.dataset.service] || []).push(colour);
        }
        return out;""")
    assert set(colours) == {"frontend", "orders", "payments"}
    assert all(len(set(values)) == 1 for values in colours.values()), colours
    assert len({values[0] for values in colours.values()}) == 3, colours
    # Tree order: a child right under its parent, indented deeper.
    ids = [r.get_attribute("data-span-id") for r in rows]
    assert ids.index("a000000000000004") == ids.index("a000000000000003") + 1
    pad = browser.execute_script("return [...document.querySelectorAll('.span-row .wf-name')].map(n => parseFloat(n.style.paddingLeft))")
    assert pad[ids.index("a000000000000004")] > pad[ids.index("a000000000000003")] > pad[ids.index("a000000000000001")]

    critical = {r.get_attribute("data-span-id") for r in rows if "on-critical-path" in r.get_attribute("class")}
    assert critical == {"a000000000000001", "a000000000000003", "a000000000000004", "a000000000000005", "a000000000000006",
                        "a000000000000007", "a000000000000008"} | {f"a00000000000001{i}" for i in range(6)}
    assert len(wait_for(browser, ".span-row .cp")) >= len(critical)
    assert not row(browser, "a000000000000002").find_elements("css selector", ".cp")
    shot = screenshot(browser, tmp_path, "trace.png")
    folder = os.environ.get("AUTOTRACE_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(shot, os.path.join(folder, "viewer-trace.png"))

    # Collapse the orders server span: its 9 descendants are hidden, then shown again.
    toggle = row(browser, "a000000000000004").find_element("css selector", "button.toggle")
    toggle.click()
    wait_until(lambda: sum(1 for r in rows if not r.is_displayed()) == 9, "9 rows hidden")
    assert not row(browser, "a000000000000007").is_displayed() and row(browser, "a000000000000008").is_displayed()
    toggle.click()
    wait_until(lambda: all(r.is_displayed() for r in rows), "all rows shown")

    download = one(browser, "a.download")
    assert download.get_attribute("href") == f"{viewer.url}/api/autotrace/traces/{MAIN}/otlp"
    assert browser.execute_script(
        "return fetch(arguments[0]).then(r => r.json())", download.get_attribute("href")).get("resourceSpans") is not None


def test_span_detail_attributes_exception_and_link(browser, viewer, tmp_path):
    open_page(browser, viewer, f"/trace/{MAIN}")
    row(browser, "a000000000000006").click()
    detail = one(browser, '.span-detail[data-span-id="a000000000000006"]')
    attributes = detail.find_element("css selector", "table.attributes").text
    assert "http.response.status_code 500" in attributes and "http.route /pay" in attributes
    assert "host.name dev-laptop" in detail.find_element("css selector", "table.resource").text
    exception = detail.find_element("css selector", ".exception")
    assert "CardDeclined: card declined" in exception.text
    stack = exception.find_element("css selector", "pre.stacktrace").text
    assert 'File "/app/pay.py", line 42, in charge' in stack and stack.endswith("CardDeclined: card declined")
    assert "exception" in detail.find_element("css selector", ".events").text
    screenshot(browser, tmp_path, "span-detail.png")
    row(browser, "a000000000000006").click()
    wait_until(lambda: not browser.find_elements("css selector", ".span-detail"), "the detail closes")

    row(browser, "a000000000000008").click()
    detail = one(browser, '.span-detail[data-span-id="a000000000000008"]')
    link = detail.find_element("css selector", ".links a.span-link")
    assert link.get_attribute("href") == f"{viewer.url}/trace/{LINKED}"
    assert "FOLLOWS_FROM" in detail.find_element("css selector", ".links").text
    link.click()
    wait_until(lambda: browser.current_url.endswith(f"/trace/{LINKED}"), "the linked trace")
    assert "settle batch" in one(browser, ".trace-title").text
    assert len(wait_for(browser, ".span-row", 2)) == 2


def test_flags_missing_parent_and_repeated_calls(browser, viewer):
    open_page(browser, viewer, f"/trace/{MAIN}")
    flags = one(browser, "#trace-flags").text
    assert f"Parent never arrived: frontend: late callback (parent span {MISSING_PARENT})" in flags
    assert "6 identical CLIENT calls SELECT items to db.local:5432 under orders: GET /orders/{id}" in flags
    orphan = row(browser, "a000000000000009")
    assert "missing-parent" in orphan.get_attribute("class") and orphan.find_element("css selector", ".badge-orphan")
    repeated = [r.get_attribute("data-span-id") for r in browser.find_elements("css selector", ".span-row.repeated-call")]
    assert repeated == [f"a00000000000001{i}" for i in range(6)]
    assert {b.text for b in browser.find_elements("css selector", ".badge-repeated")} == {"×6"}
    # Fewer than five identical calls (the two different CLIENT calls) are not flagged.
    assert "repeated-call" not in row(browser, "a000000000000005").get_attribute("class")


def test_services_table(browser, viewer, tmp_path):
    open_page(browser, viewer, "/services?lookback=6h")
    wait_for(browser, "#stats-table tbody tr", 5)
    assert viewer.api_requests("/api/autotrace/stats")[-1]["lookback"] == ["6h"]
    pay = one(browser, '#stats-table tr[data-service="payments"][data-operation="POST /pay"]')
    cells = [c.text for c in pay.find_elements("css selector", "td")]
    assert cells == ["payments", "POST /pay", "1", "100%", "47.0 ms", "47.0 ms", "47.0 ms"]
    health = one(browser, '#stats-table tr[data-service="frontend"][data-operation="GET /health"]')
    cells = [c.text for c in health.find_elements("css selector", "td")]
    assert cells[2:4] == ["23", "0%"] and cells[4] == "13.0 ms" and cells[6] == "24.0 ms"
    link = pay.find_element("css selector", "a")
    assert link.get_attribute("href") == f"{viewer.url}/search?service=payments&operation=POST+%2Fpay&lookback=6h"
    screenshot(browser, tmp_path, "services.png")


def test_service_map_edges(browser, viewer, tmp_path):
    open_page(browser, viewer, "/map")
    edges = wait_for(browser, "#service-map g.edge", 3)
    pairs = {(e.get_attribute("data-parent"), e.get_attribute("data-child")): e.text for e in edges}
    assert pairs[("frontend", "orders")] == "1 call" and pairs[("orders", "payments")] == "1 call"
    assert all(parent != child for parent, child in pairs)
    nodes = {n.get_attribute("data-service") for n in browser.find_elements("css selector", "#service-map g.node")}
    assert {"frontend", "orders", "payments"} <= nodes
    query = viewer.api_requests("/api/dependencies")[-1]
    assert query["lookback"] == ["3600000"] and abs(int(query["endTs"][0]) - time.time() * 1000) < 60_000
    screenshot(browser, tmp_path, "map.png")


def test_payloads_in_span_data_never_run(browser, viewer, tmp_path):
    with urllib.request.urlopen(f"{viewer.url}/trace/{XSS}", timeout=5) as response:
        assert response.headers["Content-Security-Policy"] == CSP

    open_page(browser, viewer, "/search")
    wait_for(browser, "li.result", 20)
    result = one(browser, f'li.result[data-trace-id="{XSS}"]')
    assert f"{P_IMG}: {P_SCRIPT}" in result.text and P_SVG in result.text
    assert [o.text for o in browser.find_elements("css selector", "#f-service option")][1:3] == sorted([P_SVG, P_IMG])
    no_xss(browser)

    open_page(browser, viewer, f"/trace/{XSS}")
    rows = wait_for(browser, ".span-row", 3)
    for r in rows:
        r.click()
    wait_for(browser, ".span-detail", 3)
    text = one(browser, "#app").text
    for payload in (P_IMG, P_SCRIPT, P_SVG, P_JS_URL, P_TITLE, "</pre>" + P_SCRIPT):
        assert payload in text, payload
    # The link's trace id is not a hex id: it is shown as text, never as an href.
    link = one(browser, '.span-detail[data-span-id="c000000000000001"] .links')
    assert P_JS_URL in link.text and not link.find_elements("css selector", "a")
    screenshot(browser, tmp_path, "xss-trace.png")
    no_xss(browser)

    for path in ("/services", "/map"):
        open_page(browser, viewer, path)
        wait_for(browser, "#stats-table tbody tr, #service-map g.edge", 3)
        assert P_IMG in one(browser, "#app").text
        no_xss(browser)
    assert (P_IMG, P_SVG) in {(e.get_attribute("data-parent"), e.get_attribute("data-child"))
                              for e in browser.find_elements("css selector", "#service-map g.edge")}
    screenshot(browser, tmp_path, "xss-map.png")


def test_a_2000_span_waterfall_renders_within_a_second(browser, viewer, tmp_path):
    open_page(browser, viewer, f"/trace/{BIG}")
    assert len(wait_for(browser, ".span-row", BIG_SPANS)) == BIG_SPANS
    rendered = wait_until(lambda: browser.execute_script(
        "const m = performance.getEntriesByName('autotrace:trace-rendered'); return m.length && m[0].startTime"), "the mark")
    screenshot(browser, tmp_path, "big-trace.png")
    assert rendered < 1000, f"{rendered:.0f} ms from navigation to the drawn waterfall"
    print(f"2,000-span waterfall drawn {rendered:.0f} ms after navigation (fake viewer)")


def test_unknown_trace_says_not_found(browser, viewer):
    open_page(browser, viewer, f"/trace/{'0' * 31}1")
    assert "Trace not found." in one(browser, ".error-box").text
    open_page(browser, viewer, "/trace/not-hex")
    assert "Not a trace id: not-hex" in one(browser, ".error-box").text
