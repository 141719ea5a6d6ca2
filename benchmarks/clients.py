"""Cost of an outgoing request: plain Python vs under ``autotrace run``.

    python benchmarks/clients.py [--calls 2000] [--rounds 5] [--forms ...] [--instructions] [--compare LABEL=VENV_BIN_DIR ...]

A client process makes ``--calls`` sequential GETs to a local server and prints the
mean time per call; each form (``requests.get``, a ``requests.Session``, an
``httpx.Client``, a urllib3 pool, ``urllib.request.urlopen``) runs plain and under the
agent, alternating for ``--rounds`` rounds. Under the agent every call is a CLIENT span,
exported over OTLP/HTTP to a local sink that accepts and discards it (as a collector
would), so export does its real work. Ratios are medians against plain in the same run,
of the wall clock and of the client process's CPU time (all its threads: the export
thread too); the CPU figure moves less when other work shares the machine. The server
and the sink run in this process's threads: they load the machine the same for both
variants. ``--compare`` adds ``autotrace run`` of another install (a venv holding an
earlier checkout), with that venv's Python: a before/after figure from the same run.
``--instructions``: instead of timing, the client process's instructions per call as
valgrind's callgrind counts them (Debian package valgrind), which the machine's load does
not move. ``--count-calls``: the function calls per call (Python's and C's, as ``cProfile``
counts them in the client's loop), spans not exported: what the hooks add, in seconds;
with ``--breakdown N``, also the N functions whose calls per call differ most from plain's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import harness

CLIENT = '''
import os, sys, time
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
if os.environ.get("BENCH_COUNT_CALLS"):  # --count-calls
    import cProfile, pstats
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(calls):
        call()
    profile.disable()
    stats = pstats.Stats(profile)
    if os.environ.get("BENCH_BREAKDOWN"):  # --breakdown: the calls of each function, per call
        import json, re
        counts = {}
        for (file, line, name), (_, total, *_rest) in stats.stats.items():
            key = f"{name} ({file.rpartition('/')[2]}:{line})" if line else re.sub(r" at 0x[0-9a-f]+", "", name)
            counts[key] = counts.get(key, 0) + total / calls
        with open(os.environ["BENCH_BREAKDOWN"], "w") as out:
            json.dump(counts, out)
    print(stats.total_calls / calls, 0)
    sys.exit()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument(
        "--instructions", action="store_true",
        help="count the client process's instructions per call with valgrind (callgrind) instead of timing: 200 and 1200 calls, once each",
    )
    parser.add_argument(
        "--count-calls", action="store_true",
        help="count the function calls per call (cProfile, spans not exported) instead of timing: --calls calls once each",
    )
    parser.add_argument(
        "--breakdown", type=int, default=0, metavar="N",
        help="with --count-calls: also list the N functions whose calls per call differ most from plain's",
    )
    harness.add_compare(parser)
    args = parser.parse_args()

    hello, sink = harness.serve(_Hello), harness.serve(harness.Sink)
    url = f"http://127.0.0.1:{hello.server_address[1]}/hello"
    env = harness.plain_env()
    traced_env = harness.exporting_env(env, sink, "bench-client")
    variants = {"plain": ([sys.executable], env), "autotrace": ([harness.autotrace(), "run", sys.executable], traced_env)}
    for label, other_bin in harness.compared(parser, args.compare).items():
        variants[label] = ([str(other_bin / "autotrace"), "run", str(other_bin / "python")], traced_env)
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory, "client.py")
        script.write_text(CLIENT)
        if args.instructions or args.count_calls:
            if args.instructions:
                _count_instructions(args.forms.split(","), variants, script, url)
            else:
                _count_calls(args.forms.split(","), variants, script, url, args.calls, args.breakdown)
            hello.shutdown()
            sink.shutdown()
            return
        print(f"{args.calls} sequential calls per run, {args.rounds} rounds; mean µs per call (median of rounds)")
        traced = [name for name in variants if name != "plain"]
        header = f"{'plain':>9}" + "".join(f" {name:>14} {'ratio':>7}" for name in traced)
        print(f"{'':18} {'wall clock':^{len(header)}} | {'CPU of the client process':^{len(header)}}")
        print(f"{'form':18} {header} | {header}")
        for form in args.forms.split(","):

            def measure(name: str, variant: tuple) -> list[float]:
                prefix, environ = variant
                return harness.run_client([*prefix, str(script), form, url, str(args.calls)], environ, form)

            results = harness.alternate(args.rounds, variants, measure)
            columns = []
            for index in (0, 1):  # wall clock, CPU
                p = harness.median(r[index] for r in results["plain"])
                medians = [harness.median(r[index] for r in results[name]) for name in traced]
                columns.append(f"{p:9.1f}" + "".join(f" {t:14.1f} {t / p:6.2f}x" for t in medians))
            print(f"{form:18} {columns[0]} | {columns[1]}", flush=True)
    hello.shutdown()
    sink.shutdown()


def _count_instructions(forms: list[str], variants: dict, script: Path, url: str) -> None:
    print("instructions per call of the client process, user space, spans not exported (valgrind --tool=callgrind; 1200 minus 200 calls)")
    for form in forms:
        counts = {}
        for name, (prefix, environ) in variants.items():
            counts[name] = harness.instructions(lambda calls: [*prefix, str(script), form, url, str(calls)], harness.unexported(environ), form, 200, 1200)
        plain = counts.pop("plain")
        line = "".join(f"   {name} {count:,.0f} {count / plain:.2f}x (+{count - plain:,.0f})" for name, count in counts.items())
        print(f"{form:18} plain {plain:,.0f}{line}", flush=True)


def _count_calls(forms: list[str], variants: dict, script: Path, url: str, calls: int, breakdown: int = 0) -> None:
    print(f"function calls per call of the client's loop (cProfile, Python and C functions; spans not exported; {calls} calls)")
    for form in forms:
        counts, functions = {}, {}
        for name, (prefix, environ) in variants.items():
            environ = dict(harness.unexported(environ), BENCH_COUNT_CALLS="1")
            with tempfile.NamedTemporaryFile(suffix=".json") as found:
                if breakdown:
                    environ["BENCH_BREAKDOWN"] = found.name
                counts[name] = harness.run_client([*prefix, str(script), form, url, str(calls)], environ, form)[0]
                if breakdown:
                    functions[name] = json.loads(Path(found.name).read_text())
        plain = counts.pop("plain")
        line = "".join(f"   {name} {count:,.1f} (+{count - plain:,.1f})" for name, count in counts.items())
        print(f"{form:18} plain {plain:,.1f}{line}", flush=True)
        for name in counts if breakdown else ():
            base, traced = functions["plain"], functions[name]
            differences = {key: traced.get(key, 0) - base.get(key, 0) for key in base.keys() | traced.keys()}
            print(f"  {name}: the {breakdown} functions with most calls added (calls per call)")
            for key, added in sorted(differences.items(), key=lambda item: -abs(item[1]))[:breakdown]:
                if abs(added) >= 0.05:
                    print(f"    {added:+8.2f}  {key}")


if __name__ == "__main__":
    main()
