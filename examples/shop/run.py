"""A shop of four services with no tracing code, each run under ``autotrace run``:

    front (stdlib http.server) -> orders (FastAPI on uvicorn) -> stock (Flask on gunicorn, 2 workers,
                                                                 a process pool)
                                                              -> prices (gRPC)

``GET /order?items=book,lamp`` at the front door: orders asks stock about each item and
prices for a quote at once (``httpx.AsyncClient`` and ``grpc.aio`` under ``asyncio.gather``);
stock reads each level from SQLite in a process pool. One order is one trace of 11 spans
across the four services (two items).

    python examples/shop/run.py                      # one order; spans to http://localhost:4318
    python examples/shop/run.py --requests 5000 --concurrency 8   # under load
    autotrace view &  python examples/shop/run.py     # then open the trace URL it prints

Needs the agent and the services' libraries (flask, gunicorn, fastapi, uvicorn, httpx,
grpcio: the agent's test extra has them) installed for this Python. The services get
this process's environment (``OTEL_*`` settings apply to all four); ``--endpoint`` sets
where their spans go. At the end the services are stopped with SIGTERM: each finishes
what it is doing and exits, and the agent flushes its spans at exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SHOP = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0  # gunicorn's graceful timeout is 30 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str:
    """A command installed beside this Python (its venv), else from PATH."""
    beside = BIN / name
    return str(beside) if beside.exists() else name


class Service:
    """A service under ``autotrace run``; its output lines are kept as they come."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[tuple[str, str]] = []  # (stream, line)
        self._cond = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autotrace", "run", *command], cwd=SHOP, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._readers = [threading.Thread(target=self._read, args=(stream, pipe), daemon=True)
                         for stream, pipe in (("stdout", self.process.stdout), ("stderr", self.process.stderr))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: str, pipe) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append((stream, line.rstrip("\n")))
                self._cond.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Until ``count`` lines of its output contain ``text`` (SystemExit if it dies or times out)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(text in line for _, line in self.lines) < count:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"shop: the {self.name} service did not start (exit status "
                                     f"{self.process.poll()}):\n" + "\n".join(line for _, line in self.lines))
                self._cond.wait(0.1)

    def agent_lines(self) -> list[str]:
        with self._cond:
            return [line for stream, line in self.lines if stream == "stderr" and line.startswith("autotrace ")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"shop: the {self.name} service did not stop within {STOP_TIMEOUT:.0f} s; killed", file=sys.stderr)
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(5)


def wait_for_port(service: Service, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if service.process.poll() is not None or time.monotonic() > deadline:
                service.wait_for("never printed", timeout=0)  # raises, with its output
            time.sleep(0.05)


def start_shop(env: dict[str, str]) -> tuple[list[Service], str]:
    """Start the four services; they and the front door's URL once all are ready."""
    ports = {name: free_port() for name in ("front", "orders", "stock", "prices")}
    env = dict(env,
               SHOP_ORDERS_URL=f"http://127.0.0.1:{ports['orders']}",
               SHOP_STOCK_URL=f"http://127.0.0.1:{ports['stock']}",
               SHOP_PRICES_ADDRESS=f"127.0.0.1:{ports['prices']}")
    services = [
        Service("prices", [sys.executable, "prices.py", str(ports["prices"])], env),
        Service("stock", [tool("gunicorn"), "-c", "gunicorn.conf.py", "-w", "2",
                          "-b", f"127.0.0.1:{ports['stock']}", "stock:app"], env),
        Service("orders", [tool("uvicorn"), "--host", "127.0.0.1", "--port", str(ports["orders"]),
                           "--log-level", "warning", "orders:app"], env),
        Service("front", [sys.executable, "front.py", str(ports["front"])], env),
    ]
    try:
        prices, stock, orders, front = services
        prices.wait_for("prices listening on")
        stock.wait_for("stock worker", count=2)  # both workers ready (see gunicorn.conf.py)
        wait_for_port(orders, ports["orders"])
        front.wait_for("front listening on")
    except BaseException:
        stop_shop(services)
        raise
    return services, f"http://127.0.0.1:{ports['front']}"


def stop_shop(services: list[Service]) -> None:
    for service in services:
        service.stop()
    for service in services:
        service.wait()


def order(front: str, items: str, ref: int) -> tuple[int, dict]:
    query = urllib.parse.urlencode({"items": items, "ref": ref})
    try:
        with urllib.request.urlopen(f"{front}/order?{query}", timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


def viewer_trace(endpoint: str) -> str | None:
    """The newest front-door trace's URL in ``autotrace view``, if the endpoint is one."""
    try:
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/autotrace-view", timeout=2) as response:
            ui = json.loads(response.read())["ui"].rstrip("/")
        query = urllib.parse.urlencode({"service": "front", "limit": "1", "lookback": "1h"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{ui}/api/traces?{query}", timeout=5) as response:
                traces = json.loads(response.read()).get("data") or []
            if traces:
                return f"{ui}/trace/{traces[0]['traceID']}"
            time.sleep(0.2)
    except (OSError, ValueError, KeyError, http.client.HTTPException):  # not a viewer: no URL
        pass
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="where the services send spans (OTLP/HTTP; default: the OTEL_* "
                        "environment, else http://localhost:4318)")
    parser.add_argument("--requests", type=int, default=1, help="orders to place (default 1)")
    parser.add_argument("--concurrency", type=int, default=4, help="orders in flight at once (default 4)")
    parser.add_argument("--items", default="book,lamp", help="what each order buys (default book,lamp)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.endpoint

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped: the shop is stopped too
    services, front = start_shop(env)
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=max(1, args.concurrency))
    try:
        answers = list(pool.map(lambda ref: order(front, args.items, ref), range(args.requests)))
        elapsed = time.monotonic() - started
    finally:
        pool.shutdown(cancel_futures=True)  # interrupted: the orders not yet sent are not sent
        stop_shop(services)
    for service in services:
        for line in service.agent_lines():
            print(f"shop: {service.name}: {line}", file=sys.stderr)
    failed = [(ref, answer) for ref, answer in enumerate(answers) if answer[0] != 200]
    if args.requests == 1:
        print(f"shop: order ref=0: HTTP {answers[0][0]} {json.dumps(answers[0][1])}")
    print(f"shop: {args.requests} orders placed in {elapsed:.2f} s ({args.requests / elapsed:.0f}/s, "
          f"concurrency {args.concurrency}); {len(failed)} failed")
    for ref, (status, answer) in failed[:5]:
        print(f"shop: order ref={ref} failed: HTTP {status} {json.dumps(answer)}", file=sys.stderr)
    url = viewer_trace(args.endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318")
    if url:
        print(f"shop: the newest order's trace: {url}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the services were stopped on the way out
        print("shop: interrupted; the services are stopped", file=sys.stderr)
        sys.exit(130)
