"""``autotrace view``: start the store, the OTLP receivers and the UI, serve until a signal.

It prints one line with the UI's URL and the OTLP endpoints, then serves until SIGINT or
SIGTERM. The stop refuses new connections, lets batches in flight commit and be answered,
then closes the store. A port in use is one line naming the port and the option that
changes it, and exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import gc
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

IMPORT_BATCH = 5000  # spans a transaction when importing a file
GC_THRESHOLD = 50_000  # allocations between collections of the youngest generation (default 700)
SWITCH_INTERVAL_S = 0.0002  # how long a thread holds the GIL while another waits for it (default 0.005)
DEFAULT_RETENTION_DAYS = 7.0
DEFAULT_MAX_SPANS = 1_000_000
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_db() -> Path:
    """``$XDG_DATA_HOME/autotrace/view.db`` (``~/.local/share/autotrace/view.db``)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "autotrace" / "view.db"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotrace view",
        description=(
            "A local trace viewer: receives OTLP (HTTP and gRPC), keeps the spans in SQLite and "
            "serves a web UI and Jaeger's query API. For one machine; production stays on the "
            "OpenTelemetry Collector and a tracing backend."
        ),
        epilog="example: autotrace view --open",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                        "any other one exposes the UI, which has no authentication)")
    parser.add_argument("--ui-port", type=_port, default=16686, metavar="N", help="UI and query API port (default 16686)")
    parser.add_argument("--otlp-http-port", type=_port, default=4318, metavar="N", help="OTLP/HTTP port (default 4318)")
    parser.add_argument("--otlp-grpc-port", type=_port, default=4317, metavar="N", help="OTLP/gRPC port (default 4317)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", metavar="PATH", help=f"SQLite file (default {default_db()})")
    where.add_argument("--memory", action="store_true", help="keep the spans in memory only")
    parser.add_argument("--retention-days", type=_positive_float, default=DEFAULT_RETENTION_DAYS, metavar="D",
                        help=f"drop traces received more than D days ago (default {DEFAULT_RETENTION_DAYS:g})")
    parser.add_argument("--max-spans", type=_positive_int, default=DEFAULT_MAX_SPANS, metavar="N",
                        help=f"keep at most N spans, dropping the oldest traces whole (default {DEFAULT_MAX_SPANS})")
    parser.add_argument("--open", action="store_true", help="open the UI in a browser")
    parser.add_argument("--import", dest="import_file", metavar="FILE",
                        help="load OTLP JSON (a downloaded trace or the Collector's file exporter output) first")
    return parser


def _bounded(convert: type, low: float, high: float, what: str):
    """An argparse type: ``convert(text)`` within [low, high], else an error naming ``what``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
        return value

    return parse


_port = _bounded(int, 0, 65535, "a port number")
_positive_float = _bounded(float, 1e-9, float("inf"), "a number above 0")
_positive_int = _bounded(int, 1, float("inf"), "a whole number above 0")


def browser_host(host: str) -> str:
    """The host a browser on this machine uses to reach ``host``."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .otlp import BadData, decode_file
    from .receiver import GrpcReceiver, http_receiver
    from .server import log, ui_server
    from .store import Store

    if args.host not in _LOOPBACK:
        log(f"warning: listening on {args.host}: anyone who can reach it sees every trace; "
            "the UI has no authentication")
    if args.memory:
        path = ":memory:"
    else:
        db = Path(args.db) if args.db else default_db()
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log(f"cannot create {db.parent}: {exc.strerror}; choose another file with --db")
            return 1
        path = str(db)
    try:
        store = Store(path, retention_days=args.retention_days, max_spans=args.max_spans)
    except Exception as exc:  # noqa: BLE001 - sqlite3.Error and OSError alike: one line
        log(f"cannot open the store {path}: {exc}; choose another file with --db, or --memory")
        return 1
    servers: list = []
    gc_before: tuple = ()
    try:
        if args.import_file:
            try:
                text = Path(args.import_file).read_text(encoding="utf-8")
                records = decode_file(text)
            except (OSError, UnicodeDecodeError, BadData) as exc:
                log(f"cannot import {args.import_file}: {exc}")
                return 1
            for at in range(0, len(records), IMPORT_BATCH):
                store.write(records[at : at + IMPORT_BATCH])
            log(f"imported {len(records)} spans of {len({r.trace_id for r in records})} traces from {args.import_file}")
        host = browser_host(args.host)
        ui_url = f"http://{host}:{args.ui_port}"
        for name, option, port, make in (
            ("UI", "--ui-port", args.ui_port, lambda: ui_server(args.host, args.ui_port, store, ui_url)),
            ("OTLP/HTTP", "--otlp-http-port", args.otlp_http_port,
             lambda: http_receiver(args.host, args.otlp_http_port, store, ui_url)),
            ("OTLP/gRPC", "--otlp-grpc-port", args.otlp_grpc_port,
             lambda: GrpcReceiver(args.host, args.otlp_grpc_port, store)),
        ):
            try:
                servers.append(make())
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    log(f"port {port} ({name}) is already in use on {args.host}: stop what uses it "
                        f"(another autotrace view, a collector?) or choose another port with {option}")
                else:
                    log(f"cannot listen on {args.host}:{port} ({name}): {exc.strerror or exc}; "
                        f"choose another address with --host or port with {option}")
                return 2
        # A batch decodes into tens of thousands of short-lived containers: with the default
        # thresholds the cyclic collector ran some 50 times a batch, its older generations
        # walking every object of the loaded modules (measured: 10-15% of the viewer's time).
        # What is alive now is frozen out of it, and the youngest generation is collected
        # every GC_THRESHOLD allocations; both are undone on the way out.
        gc_before = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *gc_before[1:])
        # SQLite lets go of the GIL around every statement; while another thread runs Python
        # (a request being decoded, a search's rows), the writer then waited up to the switch
        # interval, 5 ms by default, to go on: measured, a batch's commit took several times
        # its own length with a second sender. A short interval bounds each such wait.
        switch_before = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        stop = threading.Event()
        previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
        for server in servers:
            server.start()
        grpc_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        print(
            f"autotrace view: UI at {ui_url} ; OTLP at http://{host}:{args.otlp_http_port} (HTTP) "
            f"and {grpc_host}:{args.otlp_grpc_port} (gRPC) ; store {path if not args.memory else 'in memory'}",
            flush=True,
        )
        if args.open:
            import webbrowser

            threading.Thread(target=webbrowser.open, args=(ui_url,), daemon=True).start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        log("stopping")
        return 0
    finally:
        for server in reversed(servers):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others, close the store
                log(f"error stopping a server: {exc}")
        store.close()
        if gc_before:
            gc.set_threshold(*gc_before)
            gc.unfreeze()
            sys.setswitchinterval(switch_before)
