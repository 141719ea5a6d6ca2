"""Cost of an outgoing request: plain Python vs under ``autotrace run``.

    python benchmarks/clients.py [--calls 2000] [--rounds 5] [--compare LABEL=VENV_BIN_DIR ...]

A client process makes ``--calls`` sequential GETs to a local server and prints the
mean time per call; each form (``requests.get``, a ``requests.Session``, an
``httpx.Client``, a urllib3 pool, ``urllib.request.urlopen``) runs plain and under the
agent, alternating for ``--rounds`` rounds. Under the agent every call is a CLIENT span,
exported over OTLP/HTTP to a local sink that accepts and discards it (as a collector
would), so export does its real work. Ratios are medians against plain in the same run,
of the wall clock and of the client process's CPU time (all its threads: the export
thread too); the CPU figure moves less when other work shares the machine.
The server and the sink run in this process's threads: they load the machine the same
for both variants. ``--compare`` adds ``autotrace run`` from another install (a venv
holding an earlier checkout: a before/after figure from the same run), with that venv's
Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLIENT = '''
import sys, time
form, url, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
if form == "requests.get":
    import requests
    call = lambda: requests.get(url).content
elif form == "requests.Session":
    import requests
    session = requests.Session()
    call = lambda: session.get(url).content
elif form == "httpx.Client":
    import httpx
    client = httpx.Client()
    call = lambda: client.get(url).content
elif form == "urllib3":
    import urllib3
    pool = urllib3.PoolManager()
    call = lambda: pool.request("GET", url).data
elif form == "urllib":
    import urllib.request
    call = lambda: urllib.request.urlopen(url).read()
for _ in range(min(200, calls)):  # warm-up: connections, caches, the SDK's set-up
    call()
start, cpu = time.perf_counter(), time.process_time()
for _ in range(calls):
    call()
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
print(elapsed / calls * 1e6, cpu / calls * 1e6)
'''

FORMS = ("requests.get", "requests.Session", "httpx.Client", "urllib3", "urllib")


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"hello\n")

    def log_message(self, *args: object) -> None:
        pass


class _Sink(_Hello):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve(handler: type) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=VENV_BIN_DIR",
        help="also time `autotrace run` of the install in that venv's bin directory",
    )
    args = parser.parse_args()

    autotrace = shutil.which("autotrace", path=str(Path(sys.executable).parent)) or "autotrace"
    traced_variants = {"autotrace": [autotrace, "run", sys.executable]}
    for item in args.compare:
        label, sep, other_bin = item.partition("=")
        if not sep or not Path(other_bin, "autotrace").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
        traced_variants[label] = [str(Path(other_bin, "autotrace")), "run", str(Path(other_bin, "python"))]
    hello, sink = _serve(_Hello), _serve(_Sink)
    url = f"http://127.0.0.1:{hello.server_address[1]}/hello"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    traced_env = dict(
        env,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.server_address[1]}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="bench-client",
    )
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory, "client.py")
        script.write_text(CLIENT)
        print(f"{args.calls} sequential calls per run, {args.rounds} rounds; mean µs per call (median of rounds)")
        header = f"{'plain':>9}" + "".join(f" {name:>14} {'ratio':>7}" for name in traced_variants)
        print(f"{'':18} {'wall clock':^{len(header)}} | {'CPU of the client process':^{len(header)}}")
        print(f"{'form':18} {header} | {header}")
        for form in args.forms.split(","):
            times: dict[str, list[float]] = {"plain": [], **{name: [] for name in traced_variants}}
            cpu: dict[str, list[float]] = {name: [] for name in times}
            for _ in range(args.rounds):
                runs = [("plain", [sys.executable], env)] + [(name, prefix, traced_env) for name, prefix in traced_variants.items()]
                for name, prefix, environ in runs:
                    out = subprocess.run(
                        [*prefix, str(script), form, url, str(args.calls)], env=environ, capture_output=True, text=True, timeout=600
                    )
                    if out.returncode != 0:
                        raise SystemExit(f"{form} ({name}) failed:\n{out.stderr}")
                    wall, used = out.stdout.split()[-2:]
                    times[name].append(float(wall))
                    cpu[name].append(float(used))
            columns = []
            for figures in (times, cpu):
                p = statistics.median(figures["plain"])
                columns.append(
                    f"{p:9.1f}"
                    + "".join(f" {statistics.median(figures[name]):14.1f} {statistics.median(figures[name]) / p:6.2f}x" for name in traced_variants)
                )
            print(f"{form:18} {columns[0]} | {columns[1]}", flush=True)
    hello.shutdown()
    sink.shutdown()


if __name__ == "__main__":
    main()
