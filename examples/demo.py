"""A shop of three services with no tracing code, traced by ``autotrace run`` into ``autotrace view``.

    autotrace view &           # the viewer: OTLP on :4318, UI on http://127.0.0.1:16686
    python examples/demo.py    # prints the URL of the demo's trace

``frontend`` -> ``checkout`` -> ``inventory`` (``examples/demo/``), each a process of its own
under ``autotrace run`` on a free port. The demo buys an item the inventory has no
record of (an error in every service), then a book (three services, four calls), stops
the services (SIGTERM: each finishes the requests in progress and exits, and the agent
flushes its spans at exit; the viewer stores a batch before it answers), and asks the
viewer's Jaeger API for the two traces.

Options: ``--endpoint`` (default http://localhost:4318, where the services send spans).
Only the standard library; the agent must be installed for this Python.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SHOP = Path(__file__).resolve().parent / "demo"


def get_json(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def find_viewer(endpoint: str, wait: float) -> str:
    """The viewer's UI URL, from its marker at the OTLP/HTTP endpoint (it may still be starting)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            marker = get_json(f"{endpoint.rstrip('/')}/autotrace-view", timeout=2)
            if marker.get("service") == "autotrace-view":
                return marker["ui"].rstrip("/")
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            sys.exit(
                f"demo: no autotrace view answers at {endpoint}; start it first "
                "(`autotrace view &`), or see the trace on stderr with "
                "`autotrace run --exporter console python examples/hello.py`"
            )
        time.sleep(0.2)


def start(name: str, *args: str, endpoint: str) -> tuple[subprocess.Popen, str]:
    """Start a service under ``autotrace run`` on a free port; it and its URL."""
    command = [sys.executable, "-m", "autotrace", "run", "--service-name", name, "--endpoint", endpoint,
               sys.executable, str(SHOP / f"{name}.py"), "0", *args]  # fmt: skip
    process = subprocess.Popen(command, cwd=SHOP, stdout=subprocess.PIPE, text=True)
    first = process.stdout.readline()  # "NAME listening on URL", or "" if it died
    if " listening on " not in first:
        process.kill()
        process.wait()
        raise RuntimeError(f"the {name} service did not start (exit status {process.returncode})")
    print(f"demo: {first.strip()}")
    return process, first.split()[-1]


def buy(frontend: str, item: str) -> None:
    try:
        answer = get_json(f"{frontend}/buy?item={item}")
        print(f"demo: bought {item}: {answer}")
    except urllib.error.HTTPError as exc:
        print(f"demo: buying {item} failed as planned: HTTP {exc.code} {exc.read().decode(errors='replace')}")


def newest_trace(ui: str, **query: str) -> str | None:
    """The newest trace whose root service is frontend, by the Jaeger query API."""
    parameters = urllib.parse.urlencode({"service": "frontend", "limit": "1", "lookback": "1h", **query})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        traces = get_json(f"{ui}/api/traces?{parameters}").get("data") or []
        if traces:
            return traces[0]["traceID"]
        time.sleep(0.2)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="http://localhost:4318", help="the viewer's OTLP/HTTP endpoint")
    parser.add_argument("--wait", type=float, default=15, help="seconds to wait for the viewer to start")
    args = parser.parse_args()
    ui = find_viewer(args.endpoint, args.wait)

    url: dict[str, str] = {}
    services = []
    try:
        for name, downstream in (("inventory", ()), ("checkout", ("inventory",)), ("frontend", ("checkout",))):
            process, url[name] = start(name, *(url[d] for d in downstream), endpoint=args.endpoint)
            services.append(process)
        buy(url["frontend"], "unicorn")  # no stock record: a 500 in inventory, 502 upstream
        buy(url["frontend"], "book")  # the newest trace: frontend -> checkout -> inventory x2
    finally:
        for service in services:  # each finishes its requests at SIGTERM; the agent flushes at exit
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
        for service in services:
            try:
                service.wait(15)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()

    trace = newest_trace(ui)
    failed = newest_trace(ui, tags=json.dumps({"error": "true"}))
    if trace is None:
        print(f"demo: the viewer at {ui} has no frontend trace; is {args.endpoint} its OTLP port?", file=sys.stderr)
        return 1
    print(f"\nThe demo's trace (three services):  {ui}/trace/{trace}")
    if failed:
        print(f"The failed request's trace:         {ui}/trace/{failed}")
    print(f"All traces:                         {ui}/search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
