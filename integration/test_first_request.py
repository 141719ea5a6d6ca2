"""The SDK is set up off the first request's path.

Behaviour, not timing (the latency is measured by benchmarks/first_request.py): a server
sets it up before its port accepts (``http.server``'s bind, ``uvicorn.run``, gunicorn's
master at its start; over OTLP/gRPC too, making no channel before gunicorn forks);
otherwise the set-up happens on the background thread once start-up is over
(:func:`autotrace.provider.prepare_soon`). The first request's span is then exported
complete; a request that comes while that set-up runs waits for it, and one that comes
before it starts sets the SDK up itself; nothing is lost either way, and gunicorn's
workers export their own spans once each. The debug line ``TracerProvider set up ... on
thread NAME`` says where the set-up ran.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.request

import pytest

from agent import AUTOTRACE, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve(port, bind=True):
    # bind=False: the socket bound without HTTPServer.server_bind, so that the agent does
    # not set the SDK up before the port accepts (the background set-up's cases).
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler, bind_and_activate=bind)
    if not bind:
        server.socket.bind(("127.0.0.1", port))
        server.server_address = server.socket.getsockname()
        server.server_activate()
    print("serving", flush=True)
    server.serve_forever(poll_interval=0.05)
"""

SET_UP = re.compile(r"TracerProvider set up \(exporters: otlp\) on thread (\S+)")


def env_for(receiver: OTLPReceiver, protocol: str = "http", **extra: str) -> dict[str, str]:
    return clean_env(**receiver.env(protocol), OTEL_LOG_LEVEL="debug", **extra)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as response:
        assert response.status == 200
        return response.read()


def set_up_threads(server: Watched) -> list[str]:
    return SET_UP.findall(server.text("stderr"))


def assert_server_span(receiver: OTLPReceiver, path: str, port: int, pid: int) -> None:
    (span,) = receiver.wait_for_spans(1, timeout=10, predicate=lambda s: s.name == "GET")
    assert span.kind == 2  # SERVER
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.path"] == path
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["server.port"] == port
    assert span.end_time_unix_nano > span.start_time_unix_nano
    assert span.resource["service.name"] == "shop"
    assert span.resource["process.pid"] == pid


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_http_server_sets_up_before_its_port_accepts(tmp_path, otlp_receiver, protocol):
    """A script's ``http.server`` sets the SDK up when it binds its port, on the thread
    that binds (here the main thread, while the background set-up still waits for start-up
    to be over): a request sent the instant the port accepts finds it set up."""
    write(tmp_path, "shop.py", SERVER + "serve(int(sys.argv[1]))\n")
    port = free_port()
    with Watched([AUTOTRACE, "run", "python", "shop.py", str(port)], tmp_path, env_for(otlp_receiver, protocol)) as server:
        server.wait_for_line("serving")
        assert set_up_threads(server) == ["MainThread"]  # already, before the port accepted
        assert get(f"http://127.0.0.1:{port}/first") == b"hello /first"
        assert_server_span(otlp_receiver, "/first", port, server.pid)
        assert set_up_threads(server) == ["MainThread"]


def test_the_first_request_finds_the_sdk_set_up(tmp_path, otlp_receiver):
    """A server the agent does not see bind sets up on the background thread, once
    start-up is over."""
    write(tmp_path, "shop.py", SERVER + "serve(int(sys.argv[1]), bind=False)\n")
    port = free_port()
    with Watched([AUTOTRACE, "run", "python", "shop.py", str(port)], tmp_path, env_for(otlp_receiver)) as server:
        server.wait_for_line("serving")
        server.wait_for_line("TracerProvider set up", name="stderr")
        assert get(f"http://127.0.0.1:{port}/first") == b"hello /first"
        assert_server_span(otlp_receiver, "/first", port, server.pid)
        assert set_up_threads(server) == ["autotrace-setup"]


SLOW_HOOK = """
import sys
import threading
import time


started = threading.Event()


def patch(module):
    # Applied when the SDK is imported, inside the set-up: make that set-up slow.
    print("set-up started on " + threading.current_thread().name, flush=True)
    started.set()
    time.sleep(1.5)
"""


def test_a_request_during_the_background_set_up_waits_for_it(tmp_path, otlp_receiver):
    write(tmp_path, "shop.py", SERVER + "serve(int(sys.argv[1]), bind=False)\n")
    write(tmp_path, "slow_hook.py", SLOW_HOOK)
    port = free_port()
    env = env_for(otlp_receiver, AUTOTRACE_EXTRA_HOOKS="opentelemetry.sdk.trace=slow_hook")
    with Watched([AUTOTRACE, "run", "python", "shop.py", str(port)], tmp_path, env) as server:
        server.wait_for_line("set-up started on autotrace-setup")
        assert set_up_threads(server) == []  # in progress
        assert get(f"http://127.0.0.1:{port}/early") == b"hello /early"
        assert_server_span(otlp_receiver, "/early", port, server.pid)
        assert set_up_threads(server) == ["autotrace-setup"]


# Forks while the background set-up is in progress (the slow hook holds it): the fork
# waits for it, so the child does not inherit its locks held by a thread it lacks.
FORK_DURING_SET_UP = """
import os
import sys
import time

import slow_hook
from opentelemetry import trace

assert slow_hook.started.wait(20), "the background set-up did not start"
pid = os.fork()
if pid == 0:
    with trace.get_tracer("t").start_as_current_span("fork-child"):
        pass
    sys.exit(0)  # atexit flushes the child's span
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child exit", os.waitstatus_to_exitcode(status), flush=True)
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("child hung", flush=True)
with trace.get_tracer("t").start_as_current_span("parent"):
    pass
"""


def test_a_fork_during_the_background_set_up_waits_for_it(tmp_path, otlp_receiver):
    write(tmp_path, "slow_hook.py", SLOW_HOOK)
    write(tmp_path, "shop.py", FORK_DURING_SET_UP)
    env = env_for(otlp_receiver, AUTOTRACE_EXTRA_HOOKS="opentelemetry.sdk.trace=slow_hook")
    with Watched([AUTOTRACE, "run", "python", "shop.py"], tmp_path, env) as parent:
        assert parent.finish(timeout=60) == 0, parent.text("stderr")
    assert "child exit 0" in parent.text(), parent.text() + parent.text("stderr")
    spans = {s.name: s for s in otlp_receiver.wait_for_spans(2, timeout=10)}
    assert sorted(spans) == ["fork-child", "parent"]
    assert spans["parent"].resource["process.pid"] == parent.pid
    assert spans["fork-child"].resource["process.pid"] not in (parent.pid, None)
    assert set_up_threads(parent) == ["autotrace-setup"]  # the child inherited it


# A server binds on another thread, which sets the SDK up (the slow hook holds it); the
# main thread forks meanwhile: the fork waits for that set-up, as for the background one.
# All of it runs inside an import (shop.py imports it), so the background set-up, which
# waits for start-up imports to end, never starts and holds nothing the fork waits for.
FORK_DURING_BIND_SET_UP = """
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import slow_hook
from opentelemetry import trace

# HTTPServer.server_bind asks the resolver (getfqdn) once the set-up is done, just as the
# fork goes ahead: a child forked while glibc's resolver holds its lock in the parent would
# hang in its own first connect, whatever the agent does. The binder leaves it alone.
socket.getfqdn = lambda name="": name


def bind():
    ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler).server_close()


threading.Thread(target=bind, name="binder").start()
""" + FORK_DURING_SET_UP.split("from opentelemetry import trace", 1)[1]


def test_a_fork_during_a_bind_set_up_waits_for_it(tmp_path, otlp_receiver):
    write(tmp_path, "slow_hook.py", SLOW_HOOK)
    write(tmp_path, "forker.py", FORK_DURING_BIND_SET_UP)
    write(tmp_path, "shop.py", "import forker\n")
    env = env_for(otlp_receiver, AUTOTRACE_EXTRA_HOOKS="opentelemetry.sdk.trace=slow_hook")
    with Watched([AUTOTRACE, "run", "python", "shop.py"], tmp_path, env) as parent:
        assert parent.finish(timeout=60) == 0, parent.text("stderr")
    assert "set-up started on binder" in parent.text(), parent.text()
    assert "child exit 0" in parent.text(), parent.text() + parent.text("stderr")
    spans = {s.name: s for s in otlp_receiver.wait_for_spans(2, timeout=10)}
    assert sorted(spans) == ["fork-child", "parent"]
    assert spans["parent"].resource["process.pid"] == parent.pid
    assert spans["fork-child"].resource["process.pid"] not in (parent.pid, None)
    assert set_up_threads(parent) == ["binder"]  # the child inherited it


# The main thread stays inside an import until the first request was answered: start-up
# is not over, so the background set-up has not started, and the request sets it up.
HOLD = SERVER + """
import threading

answered = threading.Event()
_do_get = Handler.do_GET


def do_get_then_release(self):
    _do_get(self)
    answered.set()


Handler.do_GET = do_get_then_release
threading.Thread(target=serve, args=(int(sys.argv[1]), False), daemon=True).start()
answered.wait(30)
"""


def test_a_request_before_the_background_set_up_sets_it_up_itself(tmp_path, otlp_receiver):
    write(tmp_path, "startup_hold.py", HOLD)
    write(tmp_path, "shop.py", "import time\nimport startup_hold\ntime.sleep(30)\n")
    port = free_port()
    with Watched([AUTOTRACE, "run", "python", "shop.py", str(port)], tmp_path, env_for(otlp_receiver)) as server:
        server.wait_for_line("serving")
        assert get(f"http://127.0.0.1:{port}/before") == b"hello /before"
        assert_server_span(otlp_receiver, "/before", port, server.pid)
        (thread,) = set_up_threads(server)
        assert thread != "autotrace-setup"  # the request's own thread


WSGI = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]
"""
# The master waits for its background set-up before it forks its workers.
AFTER_MASTER_SET_UP = """
import time

from autotrace import provider


def when_ready(server):
    deadline = time.monotonic() + 30
    while not provider.is_set_up() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


@pytest.mark.parametrize(
    "conf, preload, protocol, worker",
    [
        (AFTER_MASTER_SET_UP, True, "http", "sync"),
        (AFTER_MASTER_SET_UP, False, "http", "sync"),
        ("", True, "http", "sync"),
        ("", False, "http", "sync"),
        ("", True, "grpc", "sync"),
        ("", False, "grpc", "sync"),
        ("", False, "grpc", "gevent"),
    ],
    ids=[
        "master-set-up-then-preload-fork", "master-set-up-then-fork", "preload-fork", "fork", "grpc-preload-fork",
        "grpc-fork", "grpc-gevent-fork",
    ],
)
def test_gunicorn_workers_and_the_set_up(tmp_path, otlp_receiver, conf, preload, protocol, worker):
    """The master sets up at its start, before it binds its port, and the workers it forks
    inherit that set-up (one set-up in all, on the master's main thread). With OTLP/gRPC
    too: the set-up imports grpc but makes no channel (none may be made before a fork);
    each worker makes its own at its first export (in a gevent worker, patched after the
    fork, from the real export thread). Each span arrives once, from its worker."""
    folder = tmp_path / "shop"
    write(folder, "app.py", WSGI)
    write(folder, "conf.py", conf)
    port = free_port()
    args = [AUTOTRACE, "run", "gunicorn", "-c", "conf.py", "-w", "2", "-b", f"127.0.0.1:{port}"]
    args += ["--preload"] if preload else []
    args += ["-k", worker]
    # gunicorn's gevent worker sometimes waits out its graceful timeout (30 s) at SIGTERM,
    # traced or not (2 runs of 5 under load, plain): bounded here, its spans are out by then.
    args += ["--graceful-timeout", "5"] if worker == "gevent" else []
    env = clean_env(**otlp_receiver.env(protocol), OTEL_LOG_LEVEL="debug", HOME=str(tmp_path))
    with Watched(args + ["app:app"], folder, env) as server:
        wait_until_answers(f"http://127.0.0.1:{port}/ready", timeout=30, process=server)
        # The master set up at its start (bounded wait: the line may come late).
        deadline = time.monotonic() + 30
        while not set_up_threads(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        paths = [f"/request-{i}" for i in range(8)]
        for path in paths:
            assert get(f"http://127.0.0.1:{port}{path}") == path.encode()
        server.send(signal.SIGTERM)
        assert server.finish(timeout=30) == 0, server.text("stderr")
    spans = otlp_receiver.wait_for_spans(len(paths), timeout=10, predicate=lambda s: s.attributes.get("url.path") in paths)
    assert sorted(s.attributes["url.path"] for s in spans) == sorted(paths)  # each once
    everything = otlp_receiver.spans()
    assert len(everything) == len({(s.trace_id, s.span_id) for s in everything})
    for span in spans:
        assert span.resource["process.pid"] != server.pid  # recorded in a worker, its own pid
        assert span.resource["service.name"] == "shop"
        assert span.attributes["http.response.status_code"] == 200
    assert set_up_threads(server) == ["MainThread"]  # the master's, at its start, inherited by both workers
    stderr = server.text("stderr")
    assert stderr.index("TracerProvider set up") < stderr.index("Listening at")  # before the port accepts


UVICORN_SCRIPT = """
import sys

import uvicorn


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
"""


def test_uvicorn_run_from_a_script_sets_up_before_its_port_accepts(tmp_path, otlp_receiver):
    """``uvicorn.run`` in a script (not the ``uvicorn`` command, which sets up at its start):
    the SDK is set up once uvicorn has loaded the app, before it binds its port."""
    write(tmp_path, "shop.py", UVICORN_SCRIPT)
    port = free_port()
    with Watched([AUTOTRACE, "run", "python", "shop.py", str(port)], tmp_path, env_for(otlp_receiver)) as server:
        server.wait_for_line("Uvicorn running on", name="stderr")
        stderr = server.text("stderr")
        assert set_up_threads(server) == ["MainThread"], stderr
        assert stderr.index("TracerProvider set up") < stderr.index("Uvicorn running on")
        assert get(f"http://127.0.0.1:{port}/first") == b"hello /first"
        (span,) = otlp_receiver.wait_for_spans(1, timeout=10, predicate=lambda s: s.name == "GET /first" or s.name == "GET")
        assert span.kind == 2  # SERVER
        assert span.attributes["url.path"] == "/first"
        assert span.resource["process.pid"] == server.pid
