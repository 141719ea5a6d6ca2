"""The first request's latency: plain vs under the agent, seen from the client.

    python benchmarks/first_request.py [--rounds 7] [--pause 1.0] [--protocol http,grpc] [--compare LABEL=VENV_BIN_DIR ...]

For each server (a stdlib ``http.server`` script, gunicorn + Flask with one sync worker)
and each variant (plain, ``autotrace run``), a fresh server is started; when its port
accepts a connection (a bare TCP connect, no request), the client waits ``--pause``
seconds (a first request rarely comes the instant a server binds; 0 measures that
instant), then times one GET, then a second one. Variants alternate for ``--rounds``
rounds; medians are printed with the difference to plain measured in the same run, and
the time from the launch to the port accepting ("ready": what a set-up done before the
port accepts costs instead). Spans go to a local OTLP/HTTP sink that accepts and discards
them; ``--protocol grpc`` (or ``http,grpc``: both) exports over OTLP/gRPC to a local
receiver (``integration/otlp_receiver.py``) instead. ``--compare`` adds
``autotrace run`` from another install (a venv holding an earlier checkout: a before/after
figure measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import harness

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

HTTP_SERVER = '''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

FLASK_APP = '''
from flask import Flask

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return f"hello {name}"
'''


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    """Return once ``port`` accepts a connection (a bare TCP connect, no request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"port {port} did not accept within {timeout}s")


def _get_ms(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    return (time.perf_counter() - start) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between the port accepting and the first request")
    parser.add_argument("--protocol", default="http", help="http, grpc or http,grpc: how the spans are exported")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=VENV_BIN_DIR")
    args = parser.parse_args()
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    if not protocols or set(protocols) - {"http", "grpc"}:
        parser.error("--protocol: http, grpc or http,grpc")

    bin_dir = harness.BIN
    base_env = harness.plain_env()
    base_env.update(PATH=f"{bin_dir}{os.pathsep}{base_env.get('PATH', '')}", OTEL_LOG_LEVEL="warning")
    sink = harness.serve(harness.Sink)
    envs = {"http": harness.exporting_env(base_env, sink)}
    receiver = None
    if "grpc" in protocols:
        from otlp_receiver import OTLPReceiver

        receiver = OTLPReceiver().__enter__()
        envs["grpc"] = {**base_env, **receiver.env("grpc")}
    agents = {"autotrace run": ([str(bin_dir / "autotrace"), "run"], {})}
    for item in args.compare:
        label, sep, other = item.partition("=")
        if not sep or not Path(other, "autotrace").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
        agents[f"autotrace run ({label})"] = ([str(Path(other, "autotrace")), "run"], {"PATH": f"{other}{os.pathsep}{base_env['PATH']}"})
    variants: dict[str, tuple[list[str], dict[str, str]]] = {"plain": ([], envs[protocols[0]])}
    for protocol in protocols:
        suffix = f" {protocol}" if len(protocols) > 1 or protocol != "http" else ""
        for name, (prefix, extra_env) in agents.items():
            variants[name + suffix] = (prefix, {**envs[protocol], **extra_env})
    servers = {
        "http.server": lambda port: ["python", "server.py", str(port)],
        "gunicorn+Flask": lambda port: ["gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "app:app"],
    }
    paths = {"http.server": "/", "gunicorn+Flask": "/hello/world"}
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "server.py").write_text(HTTP_SERVER)
            Path(tmp, "app.py").write_text(FLASK_APP)
            for _ in range(args.rounds):
                for server, command in servers.items():
                    for variant, (prefix, env) in variants.items():
                        port = harness.free_port()
                        argv = command(port)
                        if not prefix:  # plain: this venv's programs, as autotrace run finds them on PATH
                            argv = [str(bin_dir / argv[0])] + argv[1:]
                        launched = time.perf_counter()
                        process = subprocess.Popen(prefix + argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        try:
                            _wait_for_port(port, process)
                            ready = (time.perf_counter() - launched) * 1000.0
                            time.sleep(args.pause)
                            url = f"http://127.0.0.1:{port}{paths[server]}"
                            first = _get_ms(url)
                            second = _get_ms(url)
                            results.setdefault((server, variant), []).append((first, second, ready))
                        finally:
                            process.send_signal(signal.SIGTERM)
                            process.wait(timeout=30)
    finally:
        sink.shutdown()
        if receiver is not None:
            receiver.__exit__(None, None, None)

    print(f"first request {args.pause:g}s after the port accepts; median of {args.rounds} rounds, {os.cpu_count()} cores")
    for server in servers:
        base = harness.median(r[0] for r in results[(server, "plain")])
        base_ready = harness.median(r[2] for r in results[(server, "plain")])
        for variant in variants:
            rows = results[(server, variant)]
            first = harness.median(r[0] for r in rows)
            second = harness.median(r[1] for r in rows)
            ready = harness.median(r[2] for r in rows)
            added = f"   added {first - base:+7.1f} ms   ready {ready:6.0f} ms ({ready - base_ready:+5.0f})" if variant != "plain" else f"{'':23s}ready {ready:6.0f} ms"
            print(f"  {server:15s} {variant:29s} first {first:7.1f} ms   second {second:6.1f} ms{added}")


if __name__ == "__main__":
    main()
