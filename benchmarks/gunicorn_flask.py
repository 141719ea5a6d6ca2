"""Throughput and latency of a Flask hello app under gunicorn: plain vs under the agent.

    python benchmarks/gunicorn_flask.py [--seconds 10] [--connections 4] [--workers 1] [--app flask|aiohttp|tornado] [--no-export] [--protocol http|grpc] [--compare LABEL=VENV_BIN_DIR ...]
    python benchmarks/gunicorn_flask.py [--app flask|aiohttp|tornado] --instructions [--compare LABEL=VENV_BIN_DIR ...]
    python benchmarks/gunicorn_flask.py --app aiohttp --instructions --server-process [--compare LABEL=VENV_BIN_DIR ...]

``--app aiohttp``: the same hello as an ``aiohttp.web`` app under gunicorn's aiohttp
worker (``-k aiohttp.GunicornWebWorker``), with the same targets. ``--app tornado``: a
``tornado.web.Application`` served by ``Application.listen`` in one process (``python
app.py PORT``, no gunicorn; ``--workers`` does not apply), RSS that process's.

Needs `wrk` (Debian package wrk). Each variant gets a fresh gunicorn on a free loopback
port, a warm-up, then a timed wrk run; variants alternate for --rounds rounds, and the
medians are compared with plain gunicorn measured in the same run. Spans go to a local
OTLP/HTTP sink that accepts and discards them, so export does real work. ``--compare``
adds ``autotrace run`` of another install (a venv holding an earlier checkout), with that
venv's gunicorn: a before/after figure from the same run. ``--no-export`` adds each
``autotrace run`` variant again with ``OTEL_TRACES_EXPORTER=none`` (spans made, not
exported): the hooks' cost apart from the export's. ``--protocol grpc``: spans go to a
local OTLP/gRPC sink (a grpcio server in this process, see ``collector_down.grpc_sink``)
instead.

Besides throughput, p99 and RSS, each line gives the server's CPU time per request (the
worker processes' user + system time from /proc over the timed run, divided by the
requests wrk completed): on a machine shared with other work it moves much less than the
throughput, and its difference to plain is what the agent adds to each request.

``--instructions``: instead of timing, the
instructions per request as valgrind's callgrind counts them (Debian package valgrind),
which the machine's load does not move: for aiohttp and Tornado, the app and a raw
keep-alive HTTP/1.1 client on one event loop in one process (``INSTRUCTIONS_DRIVER``);
for Flask, the app called as a WSGI app in process as gunicorn's sync worker calls it,
no server and no socket (``FLASK_INSTRUCTIONS_DRIVER``); 2,000 requests after 300 of
warm-up, counted only inside the ``functools.reduce`` call that runs them (start-up,
imports and warm-up left out); spans made, not exported. The client's share is the same
in every variant, so the difference to plain is the agent's, server side.

``--instructions --server-process`` (aiohttp): the server alone, as deployed: the hello
app served by ``web.run_app`` in a process of its own under callgrind (every thread:
the export thread's work is counted), a keep-alive client in another process (not
counted); each variant run for 500 and for 2,500 requests, the difference divided by
2,000 (start-up, imports and the exit's flush cancel out). Variants: plain, ``autotrace
run`` exporting to the local sink, and the same with ``OTEL_TRACES_EXPORTER=none``: their
difference is what the export costs the server's process a request (the span's encoding
at its end and the export thread's batching and POST). Under valgrind the server is about
50 times slower, so batches leave on the schedule (every 5 s) rather than full: a batch's
fixed cost is spread over fewer spans than at full speed, and the export's share reads
high, not low.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

import harness

APP = '''
from flask import Flask

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return f"hello {name}"
'''

AIOHTTP_APP = '''
from aiohttp import web


async def hello(request):
    return web.Response(text="hello " + request.match_info["name"])


app = web.Application()
app.router.add_get("/hello/{name}", hello)
'''

TORNADO_APP = '''
import asyncio
import sys

import tornado.web


class Hello(tornado.web.RequestHandler):
    def get(self, name):
        self.write("hello " + name)


async def main():
    tornado.web.Application([(r"/hello/([^/]+)", Hello)]).listen(int(sys.argv[1]), "127.0.0.1")
    await asyncio.Event().wait()


asyncio.run(main())
'''


# --instructions: the app and its client on one loop; argv: app (aiohttp | tornado), requests.
INSTRUCTIONS_DRIVER = '''
import asyncio, functools, re, socket, sys

app_kind, calls = sys.argv[1], int(sys.argv[2])


async def serve_aiohttp(port):
    from aiohttp import web

    async def hello(request):
        return web.Response(text="hello " + request.match_info["name"])

    app = web.Application()
    app.router.add_get("/hello/{name}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()


async def serve_tornado(port):
    import tornado.web

    class Hello(tornado.web.RequestHandler):
        def get(self, name):
            self.write("hello " + name)

    tornado.web.Application([(r"/hello/([^/]+)", Hello)]).listen(port, "127.0.0.1")


with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
loop = asyncio.new_event_loop()
loop.run_until_complete((serve_aiohttp if app_kind == "aiohttp" else serve_tornado)(port))
reader, writer = loop.run_until_complete(asyncio.open_connection("127.0.0.1", port))
request = b"GET /hello/world HTTP/1.1\\r\\nHost: 127.0.0.1:%d\\r\\n\\r\\n" % port
length = re.compile(rb"(?i)content-length: *(\\d+)")


async def run(n):
    for _ in range(n):
        writer.write(request)
        head = await reader.readuntil(b"\\r\\n\\r\\n")
        await reader.readexactly(int(length.search(head).group(1)))


loop.run_until_complete(run(300))
functools.reduce(lambda _, n: loop.run_until_complete(run(n)), [calls], None)  # what callgrind counts
'''


# --instructions --app flask: the Flask hello called as a WSGI app in process, as gunicorn's
# sync worker calls it (an environ per request, start_response, the body iterated, closed);
# under `autotrace run` Flask's own entry point starts the span (autotrace.wsgi.call, the
# path gunicorn's wrapped app takes). argv: app (flask), requests.
FLASK_INSTRUCTIONS_DRIVER = """
import functools, io, sys

from flask import Flask

app = Flask(__name__)


@app.get("/hello/<name>")
def hello(name):
    return f"hello {name}"


ENVIRON = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/hello/world", "QUERY_STRING": "", "RAW_URI": "/hello/world",
    "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1:8000",
    "HTTP_USER_AGENT": "wrk", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "wsgi.url_scheme": "http",
    "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
}


def start_response(status, headers, exc_info=None):
    return None


def run(n):
    for _ in range(n):
        environ = dict(ENVIRON, **{"wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr})
        body = app(environ, start_response)
        for _chunk in body:
            pass
        body.close()


run(300)
functools.reduce(lambda _, n: run(n), [int(sys.argv[2])], None)  # what callgrind counts
"""


# --instructions --server-process: the aiohttp hello served alone; argv: port.
SERVER_PROCESS_APP = """
import sys

from aiohttp import web


async def hello(request):
    return web.Response(text="hello " + request.match_info["name"])


app = web.Application()
app.router.add_get("/hello/{name}", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

# Its client (not counted): argv: port, requests. Waits for the port (a server under
# valgrind takes a minute or more to start), sends the requests one after the other on
# one kept-alive connection, reading each response whole.
SERVER_PROCESS_CLIENT = """
import re, socket, sys, time

port, calls = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 1500
while True:
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
request = b"GET /hello/world HTTP/1.1\\r\\nHost: 127.0.0.1:%d\\r\\nUser-Agent: bench\\r\\n\\r\\n" % port
length = re.compile(rb"(?i)content-length: *(\\d+)")
buffer = b""
for _ in range(calls):
    sock.sendall(request)
    while True:
        end = buffer.find(b"\\r\\n\\r\\n")
        if end >= 0:
            size = end + 4 + int(length.search(buffer[:end]).group(1))
            if len(buffer) >= size:
                buffer = buffer[size:]
                break
        buffer += sock.recv(65536)
sock.close()
"""


def _server_instructions(variants: dict[str, tuple[list[str], dict[str, str]]], low: int = 500, high: int = 2500) -> None:
    """Instructions per request of the aiohttp server's process (``--server-process``), a
    variant's low and high runs at once."""
    with tempfile.TemporaryDirectory() as tmp:
        app, client = Path(tmp, "app.py"), Path(tmp, "client.py")
        app.write_text(SERVER_PROCESS_APP)
        client.write_text(SERVER_PROCESS_CLIENT)
        counts: dict[str, dict[int, int]] = {name: {} for name in variants}
        for name, (command, env) in variants.items():  # one variant at a time: its two runs at once
            running = []
            try:
                for calls in (low, high):
                    port = harness.free_port()
                    server = subprocess.Popen(
                        ["valgrind", "--tool=callgrind", "--trace-children=yes", "--callgrind-out-file=/dev/null", *command, str(app), str(port)],
                        env=dict(env, PYTHONHASHSEED="0"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    )
                    driver = subprocess.Popen([str(harness.BIN / "python"), str(client), str(port), str(calls)], env=harness.plain_env())
                    running.append((calls, server, driver))
                for calls, server, driver in running:
                    if driver.wait(timeout=1800) != 0:
                        raise SystemExit(f"{name}: the client failed")
                    server.send_signal(signal.SIGINT)  # run_app's clean exit (the agent's flush included)
                    _, err = server.communicate(timeout=600)
                    counts[name][calls] = sum(int(found) for found in re.findall(r"Collected : (\d+)", err))
            finally:
                for _, server, driver in running:
                    for process in (driver, server):
                        if process.poll() is None:
                            process.kill()
                            process.wait()
    per_request = {name: (found[high] - found[low]) / (high - low) for name, found in counts.items()}
    plain = per_request.pop("plain")
    print(f"aiohttp hello, instructions per request of the server's process (web.run_app, every thread, user space; "
          f"{high} - {low} requests; valgrind --tool=callgrind)")
    print(f"  plain {plain:,.0f}" + "".join(f"   {name} {count:,.0f} {count / plain:.2f}x (+{count - plain:,.0f})" for name, count in per_request.items()))


def _instructions(app: str, variants: dict[str, list[str]], env: dict[str, str], requests: int = 2000) -> None:
    """Instructions per request of each variant (``[launcher..., python]``), counted in parallel."""
    with tempfile.TemporaryDirectory() as tmp:
        driver = Path(tmp, "driver.py")
        driver.write_text(FLASK_INSTRUCTIONS_DRIVER if app == "flask" else INSTRUCTIONS_DRIVER)
        running = {
            name: subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--trace-children=yes", "--collect-atstart=no", "--toggle-collect=functools_reduce",
                 "--callgrind-out-file=/dev/null", *command, str(driver), app, str(requests)],
                env=dict(harness.unexported(env), PYTHONHASHSEED="0"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for name, command in variants.items()
        }
        counts = {}
        for name, process in running.items():
            _, err = process.communicate(timeout=3600)
            if process.returncode != 0:
                raise SystemExit(f"{name} failed under valgrind:\n{err[-3000:]}")
            counts[name] = sum(int(found) for found in re.findall(r"Collected : (\d+)", err)) / requests
    plain = counts.pop("plain")
    how = "the WSGI app called in process" if app == "flask" else "app + client in one process"
    print(f"{app} hello, instructions per request ({how}, user space, spans not exported; valgrind --tool=callgrind)")
    print(f"  plain {plain:,.0f}" + "".join(f"   {name} {count:,.0f} {count / plain:.2f}x (+{count - plain:,.0f})" for name, count in counts.items()))


def _gunicorn(*worker: str) -> Callable[[Path, int, int], list[str]]:
    def command(bin_dir: Path, port: int, workers: int) -> list[str]:
        return [str(bin_dir / "gunicorn"), *worker, "-w", str(workers), "-b", f"127.0.0.1:{port}", "app:app"]

    return command


def _tornado(bin_dir: Path, port: int, workers: int) -> list[str]:
    return [str(bin_dir / "python"), "app.py", str(port)]


# --app: the app's source, the server's command (from a venv's bin directory, the port,
# --workers), and its name in the report
APPS = {
    "flask": (APP, _gunicorn(), "gunicorn -w {workers} + Flask"),
    "aiohttp": (AIOHTTP_APP, _gunicorn("-k", "aiohttp.GunicornWebWorker"), "gunicorn -w {workers} + aiohttp"),
    "tornado": (TORNADO_APP, _tornado, "Tornado (Application.listen, one process)"),
}


def _wait(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _wrk(url: str, seconds: int, connections: int) -> tuple[float, float, int]:
    """Requests per second, p99 latency in ms, and the number of requests completed."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99, int(re.search(r"(\d+) requests in", out).group(1))


def _server_pids(pid: int) -> list[str]:
    """gunicorn's worker processes (children of the master), or the server process itself (Tornado)."""
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split() or [str(pid)]


def _cpu_seconds(pids: list[str]) -> float:
    """User + system CPU time of these processes (all their threads: the export thread too)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    """Resident memory of gunicorn's worker processes (children of the master), or of the
    server process itself when it has no children (Tornado)."""
    total = 0
    for child in _server_pids(pid):
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=VENV_BIN_DIR",
        help="also measure `autotrace run` of the install in that venv's bin directory",
    )
    parser.add_argument("--app", choices=sorted(APPS), default="flask")
    parser.add_argument(
        "--no-export", action="store_true", help="also `autotrace run` with OTEL_TRACES_EXPORTER=none (spans made, not exported)"
    )
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http", help="how spans are exported to the sink")
    parser.add_argument(
        "--instructions", action="store_true",
        help="count instructions per request in process with valgrind (callgrind) instead of timing",
    )
    parser.add_argument(
        "--server-process", action="store_true",
        help="with --instructions (aiohttp): count the server's process alone, export on and off",
    )
    args = parser.parse_args()
    source, server_command, title = APPS[args.app]
    if args.server_process:
        if not args.instructions or args.app != "aiohttp":
            parser.error("--server-process goes with --instructions --app aiohttp")
        sink = harness.serve(harness.Sink)
        exporting = harness.exporting_env(harness.plain_env(), sink)
        unexported = harness.unexported(harness.plain_env())
        launch = [str(harness.BIN / "autotrace"), "run", str(harness.BIN / "python")]
        processes: dict[str, tuple[list[str], dict[str, str]]] = {
            "plain": ([str(harness.BIN / "python")], exporting),
            "autotrace run": (launch, exporting),
            "autotrace run, no export": (launch, unexported),
        }
        for item in args.compare:
            label, sep, other_bin = item.partition("=")
            if not sep or not Path(other_bin, "autotrace").exists():
                parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
            other = [str(Path(other_bin, "autotrace")), "run", str(Path(other_bin, "python"))]
            processes[f"autotrace run ({label})"] = (other, exporting)
            processes[f"autotrace run ({label}), no export"] = (other, unexported)
        _server_instructions(processes)
        sink.shutdown()
        return
    if args.instructions:
        env = harness.plain_env()
        counted = {"plain": [str(harness.BIN / "python")], "autotrace run": [str(harness.BIN / "autotrace"), "run", str(harness.BIN / "python")]}
        for item in args.compare:
            label, sep, other_bin = item.partition("=")
            if not sep or not Path(other_bin, "autotrace").exists():
                parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
            counted[f"autotrace run ({label})"] = [str(Path(other_bin, "autotrace")), "run", str(Path(other_bin, "python"))]
        _instructions(args.app, counted, env)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    sink = harness.serve(harness.Sink)
    bin_dir = harness.BIN
    env = harness.exporting_env(harness.plain_env(), sink)
    grpc_server = None
    if args.protocol == "grpc":
        from collector_down import grpc_sink

        grpc_port = harness.free_port()
        grpc_server = grpc_sink(grpc_port)
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{grpc_port}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # each variant: the launcher put before the server's command, the venv the server comes
    # from, and the variables it adds to the environment
    variants: dict[str, tuple[list[str], Path, dict[str, str]]] = {
        "plain": ([], bin_dir, {}),
        "autotrace run": ([str(bin_dir / "autotrace"), "run"], bin_dir, {}),
    }
    if args.no_export:
        variants["autotrace run, no export"] = ([str(bin_dir / "autotrace"), "run"], bin_dir, {"OTEL_TRACES_EXPORTER": "none"})
    for item in args.compare:
        label, sep, other_bin = item.partition("=")
        if not sep or not Path(other_bin, "autotrace").exists():
            parser.error(f"--compare {item!r}: expected LABEL=DIR, DIR a venv's bin directory with autotrace")
        variants[f"autotrace run ({label})"] = ([str(Path(other_bin, "autotrace")), "run"], Path(other_bin), {})
        if args.no_export:
            variants[f"autotrace run ({label}), no export"] = (
                [str(Path(other_bin, "autotrace")), "run"], Path(other_bin), {"OTEL_TRACES_EXPORTER": "none"}
            )
    for name, tool in (("opentelemetry-instrument", "opentelemetry-instrument"), ("ddtrace-run", "ddtrace-run")):
        path = shutil.which(tool, path=env["PATH"])
        if path:
            variants[name] = ([path], bin_dir, {})
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "app.py").write_text(source)

        def measure(name: str, variant: tuple[list[str], Path, dict[str, str]]) -> tuple[float, float, int, float]:
            launcher, server_bin, extra_env = variant
            port = harness.free_port()
            url = f"http://127.0.0.1:{port}/hello/world"
            server = subprocess.Popen(
                [*launcher, *server_command(server_bin, port, args.workers)],
                cwd=tmp, env={**env, **extra_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                _wait(url)
                _wrk(url, 2, args.connections)  # warm-up
                pids = _server_pids(server.pid)
                cpu = _cpu_seconds(pids)
                rps, p99, requests = _wrk(url, args.seconds, args.connections)
                cpu = _cpu_seconds(pids) - cpu
                return rps, p99, _rss_kib(server.pid), cpu / max(requests, 1) * 1e6
            finally:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)

        results = harness.alternate(args.rounds, variants, measure)
    sink.shutdown()
    if grpc_server is not None:
        grpc_server.stop(None)

    base_rps = harness.median(r[0] for r in results["plain"])
    base_p99 = harness.median(r[1] for r in results["plain"])
    base_rss = harness.median(r[2] for r in results["plain"])
    base_cpu = harness.median(r[3] for r in results["plain"])
    print(
        f"{title.format(workers=args.workers)} hello, wrk -c{args.connections} -d{args.seconds}s, "
        f"median of {args.rounds} rounds, {os.cpu_count()} cores, export over {args.protocol}"
    )
    for name, rows in results.items():
        rps = harness.median(r[0] for r in rows)
        p99 = harness.median(r[1] for r in rows)
        rss = harness.median(r[2] for r in rows)
        cpu = harness.median(r[3] for r in rows)
        print(
            f"  {name:36s} {rps:8.0f} req/s {rps / base_rps:5.2f}x   p99 {p99:7.2f} ms {p99 / base_p99:5.2f}x"
            f"   worker RSS {rss / 1024:6.1f} MiB {rss / base_rss:5.2f}x   server CPU {cpu:6.1f} us/request ({cpu - base_cpu:+.1f})"
        )


if __name__ == "__main__":
    main()
