"""Cost of an outgoing request: plain Python vs under ``autotrace run``.

    python benchmarks/clients.py [--calls 2000] [--rounds 5]

A client process makes ``--calls`` sequential GETs to a local server and prints the
mean time per call; each form (``requests.get``, a ``requests.Session``, an
``httpx.Client``, a urllib3 pool, ``urllib.request.urlopen``) runs plain and under the
agent, alternating for ``--rounds`` rounds. Under the agent every call is a CLIENT span,
exported over OTLP/HTTP to a local sink that accepts and discards it (as a collector
would), so export does its real work. Ratios are medians against plain in the same run.
The server and the sink run in this process's threads: they load the machine the same
for both variants.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import harness

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
start = time.perf_counter()
for _ in range(calls):
    call()
print((time.perf_counter() - start) / calls * 1e6)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forms", default=",".join(FORMS))
    args = parser.parse_args()

    hello, sink = harness.serve(_Hello), harness.serve(harness.Sink)
    url = f"http://127.0.0.1:{hello.server_address[1]}/hello"
    env = harness.plain_env()
    variants = {"plain": ([], env), "autotrace": ([harness.autotrace(), "run"], harness.exporting_env(env, sink, "bench-client"))}
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory, "client.py")
        script.write_text(CLIENT)
        print(f"{args.calls} sequential calls per run, {args.rounds} rounds; mean µs per call (median of rounds)")
        print(f"{'form':18} {'plain':>9} {'autotrace':>10} {'ratio':>7}")
        for form in args.forms.split(","):

            def measure(name: str, variant: tuple) -> float:
                prefix, environ = variant
                return harness.run_client([*prefix, sys.executable, str(script), form, url, str(args.calls)], environ, form)[-1]

            results = harness.alternate(args.rounds, variants, measure)
            p, t = harness.median(results["plain"]), harness.median(results["autotrace"])
            print(f"{form:18} {p:9.1f} {t:10.1f} {t / p:6.2f}x", flush=True)
    hello.shutdown()
    sink.shutdown()


if __name__ == "__main__":
    main()
