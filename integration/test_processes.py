"""Processes end to end: children and workers, signals, exit flush, the app's own provider,
failing hooks and the exporter's own traffic. Real processes under ``autotrace run``, spans
checked at the real OTLP receiver.

Most apps here record their spans with a long batch delay (``OTEL_BSP_SCHEDULE_DELAY``),
so nothing is exported while they run: what arrives was flushed when the process ended.
Every process flushes before it exits, so once it has exited, whatever has not arrived
never will: "nothing arrived" is asserted after the exit.
"""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

import pytest

from agent import AUTOTRACE, PYTHON, Watched, autotrace_run, clean_env, run, wait_until_answers, write
from ports import free_port

PROTOCOLS = ["grpc", "http"]
HOLD = "60000"  # OTEL_BSP_SCHEDULE_DELAY: nothing is exported before the process ends
REQUESTS = 200  # served before a prefork server is stopped: its SERVER spans all arrive, once
SERVER = 2  # proto SpanKind


def traced_env(receiver, protocol: str, **extra: str) -> dict[str, str]:
    env = clean_env(**receiver.env(protocol))
    env["OTEL_BSP_SCHEDULE_DELAY"] = HOLD
    env.update(extra)
    return env


def by_name(spans) -> dict:
    spans = list(spans)
    names = [s.name for s in spans]
    assert len(names) == len(set(names)), f"a span arrived twice: {sorted(names)}"
    return {s.name: s for s in spans}


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# -- 1. child processes ------------------------------------------------------------------

PARENT = """
import multiprocessing
import subprocess
import sys

from opentelemetry import trace

tracer = trace.get_tracer("parent")


def in_spawn_child():
    with trace.get_tracer("spawned").start_as_current_span("spawn-child"):
        pass


def in_fork_child():
    with trace.get_tracer("forked").start_as_current_span("fork-child"):
        pass


if __name__ == "__main__":
    # Still queued when the children start (the batch delay is long): a forked child
    # inherits the queue and must not send this span a second time.
    with tracer.start_as_current_span("parent-span"):
        pass
    subprocess.run([sys.executable, "child.py"], check=True, timeout=60)
    for method, target in (("spawn", in_spawn_child), ("fork", in_fork_child)):
        child = multiprocessing.get_context(method).Process(target=target)
        child.start()
        child.join(60)
        assert child.exitcode == 0, (method, child.exitcode)
    print("parent done")
"""

CHILD = """
from opentelemetry import trace

with trace.get_tracer("child").start_as_current_span("subprocess-child"):
    pass
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_children_are_traced_once_each(tmp_path, otlp_receiver, protocol):
    script = write(tmp_path, "app.py", PARENT)
    write(tmp_path, "child.py", CHILD)
    env = traced_env(otlp_receiver, protocol, OTEL_LOG_LEVEL="debug")
    # Watched: its own session, so a child left hanging is cleaned up with it.
    with Watched([AUTOTRACE, "run", "python", script.name], tmp_path, env) as parent:
        code = parent.finish(timeout=60)
    stderr = parent.text("stderr")

    assert code == 0, stderr
    assert "parent done" in parent.text()
    otlp_receiver.wait_for_spans(4, timeout=10)
    spans = by_name(otlp_receiver.spans())
    assert sorted(spans) == ["fork-child", "parent-span", "spawn-child", "subprocess-child"]
    assert {s.protocol for s in spans.values()} == {protocol}

    assert spans["parent-span"].resource["service.name"] == "app"
    assert spans["parent-span"].resource["process.pid"] == parent.pid  # the launcher exec'd
    # A subprocess names itself by its own script; a spawn child (python -c ...) and a
    # forked child are the parent's service.
    assert spans["subprocess-child"].resource["service.name"] == "child"
    assert spans["spawn-child"].resource["service.name"] == "app"
    assert spans["fork-child"].resource["service.name"] == "app"
    pids = [s.resource["process.pid"] for s in spans.values()]
    assert len(set(pids)) == 4, f"each span comes from its own process: {pids}"

    # Set up once per process that records spans: the parent, the subprocess and the
    # spawn child; the forked child uses what it inherited.
    assert stderr.count("TracerProvider set up") == 3, stderr


FORKS = 16

FORK_LOOP = f"""
import os, sys, threading, time

from opentelemetry import trace

tracer = trace.get_tracer("fork-loop")
stop = threading.Event()
made = []


def background():
    while not stop.is_set():
        with tracer.start_as_current_span("bg-%d" % len(made)):
            with tracer.start_as_current_span("bg-child-%d" % len(made)):
                pass
        made.append(1)
        time.sleep(0.002)  # paced: no span dropped by a full queue


thread = threading.Thread(target=background)
thread.start()
for k in range({FORKS}):
    pid = os.fork()  # while the thread is in a span, or exporting
    if pid == 0:
        with tracer.start_as_current_span("forked-%d" % k):
            pass
        sys.exit(0)  # a normal exit: the agent flushes the child's spans
    deadline = time.monotonic() + 30
    while True:  # bounded: a child that hangs is killed and named
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("child %d hung" % k, flush=True)
            break
        time.sleep(0.005)
    assert done == 0 or os.waitstatus_to_exitcode(status) == 0, (k, status)
stop.set()
thread.join(30)
print("made %d" % len(made), flush=True)
"""


GRPC_SKIPPED_FORK = "Other threads are currently calling into gRPC, skipping fork() handlers"


@pytest.mark.parametrize(("protocol", "round_"), [("grpc", 1), ("grpc", 2), ("grpc", 3), ("http", 1)],
                         ids=["grpc-1", "grpc-2", "grpc-3", "http"])
def test_fork_loop_while_a_thread_makes_spans(tmp_path, otlp_receiver, protocol, round_):
    """os.fork() 16 times while another thread makes spans and exports them: no child hangs,
    every span arrives, once: the parent's and every child's (three rounds over gRPC).

    Over gRPC a fork while the export thread was inside a gRPC call made grpc skip its fork
    handlers (it logs that line) and left the child's gRPC as that thread had it: the
    child's export could wait for ever, to the flush bound at its exit, its span lost
    (a third of the runs of 16 forks on a loaded machine). The fork now waits for the call
    (autotrace.otlp_exporters._ForkGate): grpc never skips its handlers."""
    script = write(tmp_path, "app.py", FORK_LOOP)
    # A short batch delay: exports go on while it forks; a short flush bound for a stuck child.
    env = clean_env(**otlp_receiver.env(protocol), AUTOTRACE_SHUTDOWN_TIMEOUT="2000")
    with Watched([AUTOTRACE, "run", "python", script.name], tmp_path, env) as process:
        code = process.finish(timeout=90)
    stderr = process.text("stderr")
    assert code == 0, stderr
    assert "hung" not in process.text(), process.text()
    assert "Traceback" not in stderr, stderr
    assert GRPC_SKIPPED_FORK not in stderr, stderr
    assert "not flushed" not in stderr, stderr  # no child waited for its export
    made = int(process.text().split("made ")[1])
    assert made > 0
    forked = {f"forked-{k}" for k in range(FORKS)}
    wanted = forked | {f"bg-{i}" for i in range(made)} | {f"bg-child-{i}" for i in range(made)}
    try:
        otlp_receiver.wait_for_spans(len(wanted), timeout=20, predicate=lambda s: s.name in wanted)
    except AssertionError:
        missing = sorted(wanted - {s.name for s in otlp_receiver.spans()})
        raise AssertionError(f"{len(missing)} spans never arrived: {missing[:20]}\nstderr:\n{stderr}") from None
    spans = otlp_receiver.spans()
    assert len({s.span_id for s in spans}) == len(spans), "a span arrived twice"
    assert set(by_name(s for s in spans if s.name in wanted)) == wanted  # and no name twice
    pids = {s.resource["process.pid"] for s in spans if s.name.startswith("forked-")}
    assert len(pids) == FORKS


FORK_IN_A_HUNG_EXPORT = """
import os, sys, time

from opentelemetry import trace

tracer = trace.get_tracer("fork-hung")
tracer.start_span("before-fork").end()
time.sleep(1.0)  # exported at once (OTEL_BSP_SCHEDULE_DELAY=100): the collector holds the call
started = time.monotonic()
pid = os.fork()
if pid == 0:
    deadline = time.monotonic() + 30
    while not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.02)
    tracer.start_span("in-child").end()
    sys.exit(0)  # a normal exit: the agent flushes the child's span
print("forked in %.2f s" % (time.monotonic() - started), flush=True)
_, status = os.waitpid(pid, 0)
print("child exit %d" % os.waitstatus_to_exitcode(status), flush=True)
deadline = time.monotonic() + 30
while not os.path.exists("end") and time.monotonic() < deadline:  # the parent's retry, not its exit
    time.sleep(0.02)
"""


def test_grpc_fork_while_the_export_hangs(tmp_path):
    """The collector holds the parent's export when the process forks: the fork waits a
    bounded time, cancels the call (sent again after the fork), and grpc runs its fork
    handlers; the child's export then works, and so does the parent's once the collector
    answers again. Each span arrives once (a held export records nothing)."""
    from otlp_receiver import Fault, OTLPReceiver

    with OTLPReceiver(fault=Fault("hang")) as receiver:
        script = write(tmp_path, "app.py", FORK_IN_A_HUNG_EXPORT)
        env = clean_env(**receiver.env("grpc"), OTEL_EXPORTER_OTLP_TIMEOUT="30000")
        with Watched([AUTOTRACE, "run", "python", script.name], tmp_path, env) as process:
            forked = process.wait_for_line("forked in ", timeout=20)
            assert receiver.faulted_requests(), "no export was held at the fork: the test proves nothing"
            receiver.up()  # held exports are released (UNAVAILABLE), and retried
            (tmp_path / "go").write_text("")
            process.wait_for_line("child exit", timeout=30)
            try:
                receiver.wait_for_spans(2, timeout=20, predicate=lambda s: s.name in ("before-fork", "in-child"))
            finally:
                (tmp_path / "end").write_text("")
                code = process.finish(timeout=60)
            spans = receiver.spans()
        stderr = process.text("stderr")
        assert code == 0, stderr
        took = float(process.text().split("forked in ")[1].split()[0])
        assert took < 3.0, process.text()  # bounded: 0.5 s, then the cancel (not the 30 s timeout)
        assert "child exit 0" in process.text(), process.text()
        assert GRPC_SKIPPED_FORK not in stderr, stderr
        assert "Traceback" not in stderr, stderr
    assert sorted(s.name for s in spans) == ["before-fork", "in-child"], [s.name for s in spans]
    assert len({s.resource["process.pid"] for s in spans}) == 2
    assert forked > 0


# -- 2. prefork servers ------------------------------------------------------------------

WSGI_APP = """
from opentelemetry import trace

tracer = trace.get_tracer(__name__)


def app(environ, start_response):
    with tracer.start_as_current_span("GET " + environ["PATH_INFO"]):
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

ASGI_APP = """
from opentelemetry import trace

tracer = trace.get_tracer(__name__)


async def app(scope, receive, send):
    assert scope["type"] == "http"
    with tracer.start_as_current_span("GET " + scope["path"]):
        body = b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def serve_requests(base: str, server: Watched, count: int = REQUESTS) -> list[str]:
    """``count`` requests, four at a time (both workers busy); their paths."""
    from concurrent.futures import ThreadPoolExecutor

    wait_until_answers(base + "/ready", timeout=30, process=server)
    paths = [f"/request-{i}" for i in range(count)]

    def get(path: str) -> None:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            assert response.status == 200
            assert response.read() == b"ok"

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(get, paths))
    return paths


def assert_request_spans(receiver, paths: list[str], server_pid: int, service: str) -> None:
    """Every request's SERVER span and the app's span in it arrived, once each (no span id
    twice), from a worker, the app's span the SERVER span's child."""
    wanted = {"GET " + p for p in paths}
    receiver.wait_for_spans(len(wanted), timeout=15, predicate=lambda s: s.name in wanted)
    receiver.wait_for_spans(len(paths), timeout=5, predicate=lambda s: s.kind == SERVER)
    spans = by_name(s for s in receiver.spans() if s.name in wanted)
    assert set(spans) == wanted
    for span in spans.values():
        assert span.resource["service.name"] == service  # app:app, a generic name: the folder
        assert span.resource["process.pid"] != server_pid  # recorded in a worker
    all_spans = receiver.spans()
    assert len({s.span_id for s in all_spans}) == len(all_spans), "a span arrived twice"
    served = sorted(s.attributes["url.path"] for s in all_spans if s.kind == SERVER and s.attributes["url.path"] != "/ready")
    assert served == sorted(paths), "a request's SERVER span is missing or doubled"
    for server_span in (s for s in all_spans if s.kind == SERVER and s.attributes["url.path"] in paths):
        assert spans["GET " + server_span.attributes["url.path"]].parent_span_id == server_span.span_id


# Gunicorn loses a SIGTERM that reaches a worker before the worker has set its own handlers
# (the handler it inherited queues the signal for the master's loop, which the worker never
# runs): that worker serves on, and the master waits its graceful timeout (30 s) for it,
# agent or not. One worker may answer every request while the other is still booting (on a
# loaded machine it does), so the master is stopped only once every worker says it is ready:
# post_worker_init runs after the worker's signal handlers are set.
GUNICORN_CONF = """
def post_worker_init(worker):
    print("worker %d ready" % worker.age, flush=True)
"""


@pytest.mark.parametrize(("preload", "workers"), [(False, 2), (True, 4)], ids=["no-preload-w2", "preload-w4"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gunicorn_workers_export_their_spans(tmp_path, otlp_receiver, protocol, preload, workers):
    """SIGTERM to the master right after the requests: every span arrives, once (the workers
    flush at exit). With --preload the SDK is set up in the master and the workers are forked
    from it."""
    write(tmp_path, "app.py", WSGI_APP)
    write(tmp_path, "ready.conf.py", GUNICORN_CONF)
    port = free_port()
    args = [AUTOTRACE, "run", "gunicorn", "-c", "ready.conf.py", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
    args += ["--preload"] if preload else []
    env = traced_env(otlp_receiver, protocol, HOME=str(tmp_path))  # gunicorn's control socket
    with Watched(args + ["app:app"], tmp_path, env) as server:
        paths = serve_requests(f"http://127.0.0.1:{port}", server)
        for age in range(1, workers + 1):
            server.wait_for_line(f"worker {age} ready", timeout=30)
        assert otlp_receiver.spans() == [], "exported before the stop: the test proves nothing"
        server.send(signal.SIGTERM)  # the launcher exec'd: this is the master
        code = server.finish(timeout=30)
    assert code == 0, server.text("stderr")
    assert_request_spans(otlp_receiver, paths, server.pid, tmp_path.name)


@pytest.mark.parametrize(
    ("protocol", "workers", "signum"),
    [("http", 1, signal.SIGINT), ("grpc", 1, signal.SIGTERM), ("http", 2, signal.SIGTERM), ("grpc", 2, signal.SIGTERM)],
    ids=["http-single-sigint", "grpc-single-sigterm", "http-workers-sigterm", "grpc-workers-sigterm"],
)
def test_uvicorn_spans_arrive_after_stop(tmp_path, otlp_receiver, protocol, workers, signum):
    """The signal right after the requests: every span arrives, once. --workers 2 runs
    multiprocessing spawn workers, which take the parent's service name."""
    write(tmp_path, "app.py", ASGI_APP)
    port = free_port()
    args = [AUTOTRACE, "run", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--lifespan", "off"]
    args += ["--workers", str(workers)] if workers > 1 else []
    with Watched(args + ["app:app"], tmp_path, traced_env(otlp_receiver, protocol)) as server:
        paths = serve_requests(f"http://127.0.0.1:{port}", server)
        assert otlp_receiver.spans() == [], "exported before the stop: the test proves nothing"
        server.send(signum)
        server.finish(timeout=30)
    assert "Traceback" not in server.text("stderr"), server.text("stderr")
    # A single uvicorn serves in the process the signal went to; workers are processes of their own.
    assert_request_spans(otlp_receiver, paths, server.pid if workers > 1 else -1, tmp_path.name)


# -- 3. signals flush everything -----------------------------------------------------------

SPANS = 300

SLEEPER = """
import signal
import sys
import time

from opentelemetry import trace

{handler}
tracer = trace.get_tracer(__name__)
for i in range({spans}):
    with tracer.start_as_current_span("work-%d" % i):
        pass
print("ready", flush=True)
time.sleep(60)
print("slept to the end")
"""

OWN_HANDLER = """
def on_term(signum, frame):
    print("app handler ran", flush=True)
    sys.exit(3)


signal.signal(signal.SIGTERM, on_term)
"""


def sleeper(directory: Path, handler: str = "", spans: int = SPANS) -> Path:
    return write(directory, "app.py", SLEEPER.format(handler=handler, spans=spans))


def stopped_by(signum: int, args: list[str], cwd: Path, env: dict[str, str], receiver=None) -> Watched:
    """Start, wait for "ready", check nothing was exported yet, send ``signum``, wait for the exit."""
    with Watched(args, cwd, env) as process:
        process.wait_for_line("ready", timeout=30)
        if receiver is not None:
            assert receiver.spans() == [], "exported before the signal: the test proves nothing"
        process.send(signum)
        process.finish(timeout=30)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_signal_flushes_every_span_and_keeps_the_exit_status(tmp_path, otlp_receiver, protocol, signum):
    script = sleeper(tmp_path)
    plain = stopped_by(signum, [PYTHON, script.name], tmp_path, clean_env())
    traced = stopped_by(
        signum, [AUTOTRACE, "run", "python", script.name], tmp_path, traced_env(otlp_receiver, protocol), otlp_receiver
    )

    # As a plain run: killed by SIGTERM (-15); KeyboardInterrupt's traceback and 1 for SIGINT.
    assert traced.process.returncode == plain.process.returncode, traced.text("stderr")
    if signum == signal.SIGTERM:
        assert traced.process.returncode == -signal.SIGTERM
    assert "slept to the end" not in traced.text()
    spans = otlp_receiver.wait_for_spans(SPANS, timeout=10)
    assert len(by_name(spans)) == SPANS


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_app_sigterm_handler_keeps_its_exit_code(tmp_path, otlp_receiver, protocol):
    script = sleeper(tmp_path, handler=OWN_HANDLER)
    traced = stopped_by(
        signal.SIGTERM,
        [AUTOTRACE, "run", "python", script.name],
        tmp_path,
        traced_env(otlp_receiver, protocol),
        otlp_receiver,
    )
    assert traced.process.returncode == 3, traced.text("stderr")
    assert "app handler ran" in traced.text()
    spans = otlp_receiver.wait_for_spans(SPANS, timeout=10)
    assert len(by_name(spans)) == SPANS


# -- 4. exit is bounded when the collector is down -------------------------------------------

SHORT = """
from opentelemetry import trace

tracer = trace.get_tracer(__name__)
for i in range(50):
    with tracer.start_as_current_span("span-%d" % i):
        pass
print("done", flush=True)
"""


def down_env(protocol: str, **extra: str) -> dict[str, str]:
    return clean_env(
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc" if protocol == "grpc" else "http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        OTEL_EXPORTER_OTLP_TIMEOUT="30000",  # the exporter alone would retry for 30 s
        **extra,
    )


def assert_quiet_and_not_waiting(process: Watched) -> None:
    stderr = process.text("stderr")
    assert "Traceback" not in stderr, stderr
    assert len(stderr_lines(stderr)) <= 8, f"too much on stderr:\n{stderr}"
    # Nothing listens: the export is given up at once, saying why; the bound is not waited for
    # (integration/test_export_diagnoses.py: a collector that hangs still holds the exit up to it).
    assert "nothing listens on 127.0.0.1:" in stderr and "not retried at exit" in stderr, stderr
    assert "not flushed within" not in stderr, stderr


@pytest.mark.parametrize(
    ("protocol", "timeout_ms", "limit_s"),
    [("grpc", "1500", 8), ("http", "1500", 8), ("http", None, 12)],
    ids=["grpc-1500ms", "http-1500ms", "http-default"],
)
def test_exit_is_bounded_when_collector_is_down(tmp_path, protocol, timeout_ms, limit_s):
    script = write(tmp_path, "app.py", SHORT)
    extra = {"AUTOTRACE_SHUTDOWN_TIMEOUT": timeout_ms} if timeout_ms else {}
    with Watched([AUTOTRACE, "run", "python", script.name], tmp_path, down_env(protocol, **extra)) as process:
        done = process.wait_for_line("done", timeout=30)
        code = process.finish(timeout=30)
    elapsed = process.exited_at - done
    assert code == 0, process.text("stderr")
    assert elapsed < limit_s, f"exit took {elapsed:.1f}s after the app was done"
    assert_quiet_and_not_waiting(process)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_exit_is_bounded_when_collector_is_down(tmp_path, protocol):
    script = sleeper(tmp_path, spans=50)
    env = down_env(protocol, AUTOTRACE_SHUTDOWN_TIMEOUT="1500")
    with Watched([AUTOTRACE, "run", "python", script.name], tmp_path, env) as process:
        process.wait_for_line("ready", timeout=30)
        sent = process.send(signal.SIGTERM)
        code = process.finish(timeout=30)
    elapsed = process.exited_at - sent
    assert code == -signal.SIGTERM, process.text("stderr")
    assert elapsed < 8, f"exit took {elapsed:.1f}s after SIGTERM"
    assert_quiet_and_not_waiting(process)


# -- 5. the app's own TracerProvider ------------------------------------------------------

APP_PROVIDER = """
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
"""

PROVIDER_FIRST = (
    """
from opentelemetry import trace
"""
    + APP_PROVIDER
    + """
trace.set_tracer_provider(provider)

tracer = trace.get_tracer(__name__)
for name in ("one", "two", "three"):
    with tracer.start_as_current_span(name):
        pass
print("global is the app's:", trace.get_tracer_provider() is provider)
print("app exporter got:", ",".join(s.name for s in exporter.get_finished_spans()))
"""
)

PROVIDER_LATER = (
    """
from opentelemetry import trace

tracer = trace.get_tracer(__name__)  # module level: before the app sets its provider
with tracer.start_as_current_span("before-app-provider"):
    pass
"""
    + APP_PROVIDER
    + """
trace.set_tracer_provider(provider)
with tracer.start_as_current_span("after-app-provider"):  # the same tracer object
    pass
print("global is the app's:", trace.get_tracer_provider() is provider)
print("app exporter got:", ",".join(s.name for s in exporter.get_finished_spans()))
"""
)


def test_app_provider_set_first_is_used_alone(tmp_path, otlp_receiver):
    script = write(tmp_path, "app.py", PROVIDER_FIRST)
    result = autotrace_run(script, clean_env(**otlp_receiver.env("http")))

    assert result.returncode == 0, result.stderr
    assert "global is the app's: True" in result.stdout
    assert "app exporter got: one,two,three" in result.stdout
    assert "Overriding of current TracerProvider is not allowed" not in result.stderr
    # Exited, so everything it would send has arrived.
    assert otlp_receiver.spans() == []
    assert otlp_receiver.export_requests() == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_app_provider_set_later_takes_over_the_same_tracer(tmp_path, otlp_receiver, protocol):
    script = write(tmp_path, "app.py", PROVIDER_LATER)
    result = autotrace_run(script, traced_env(otlp_receiver, protocol))

    assert result.returncode == 0, result.stderr
    assert "global is the app's: True" in result.stdout
    assert "app exporter got: after-app-provider" in result.stdout
    assert "Overriding of current TracerProvider is not allowed" not in result.stderr
    # The span recorded before the hand-over is flushed to the agent's collector, not lost.
    otlp_receiver.wait_for_spans(1, timeout=10)
    assert [s.name for s in otlp_receiver.spans()] == ["before-app-provider"]


# -- 6. hooks that fail --------------------------------------------------------------------

TARGET = "VALUE = 42\n"

HOOKED_APP = """
import targetmod

print("value", targetmod.VALUE)
print("app ran to the end")
"""

FAILING_HOOKS = {
    "raisinghook": ("def patch(module):\n    raise RuntimeError('hook exploded')\n", "RuntimeError"),
    "brokenhook": ("import autotrace_test_module_that_does_not_exist\n\ndef patch(module):\n    pass\n", "ImportError"),
    "absenthook": (None, "ModuleNotFoundError"),
}


@pytest.mark.parametrize("hook", sorted(FAILING_HOOKS))
def test_failing_hook_leaves_the_import_and_the_app_alone(tmp_path, hook):
    source, error = FAILING_HOOKS[hook]
    script = write(tmp_path, "app.py", HOOKED_APP)
    write(tmp_path, "targetmod.py", TARGET)
    if source is not None:
        write(tmp_path, f"{hook}.py", source)
    plain = run([PYTHON, script.name], tmp_path, clean_env())
    traced = autotrace_run(script, clean_env(AUTOTRACE_EXTRA_HOOKS=f"targetmod={hook}"))

    assert plain.returncode == 0, plain.stderr
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    # Nothing but the agent's own lines on stderr, and one warning: about this hook.
    lines = stderr_lines(traced.stderr)
    assert all(line.startswith("autotrace ") for line in lines), traced.stderr
    warnings = [line for line in lines if not line.startswith("autotrace INFO: ")]
    assert len(warnings) == 1, traced.stderr
    assert hook in warnings[0] and "targetmod" in warnings[0], warnings[0]
    # ModuleNotFoundError is an ImportError; the line names what was raised.
    assert error in warnings[0] or (error == "ImportError" and "ModuleNotFoundError" in warnings[0]), warnings[0]


OK_HOOK = """
def patch(module):
    module.autotrace_test_marker = "patched " + module.__name__
"""

MARKER_APP = """
import os

import targetmod

print(getattr(os, "autotrace_test_marker", "os not patched"))
print(getattr(targetmod, "autotrace_test_marker", "targetmod not patched"))
"""


def test_hook_for_a_module_imported_before_start_applies_at_once(tmp_path):
    """``os`` is imported before the agent starts; its hook runs during start-up."""
    hooks = tmp_path / "hooks"  # installed beside the app, as a hook package would be
    write(hooks, "okhook.py", OK_HOOK)
    script = write(tmp_path / "app", "app.py", MARKER_APP)
    write(tmp_path / "app", "targetmod.py", TARGET)
    env = clean_env(AUTOTRACE_EXTRA_HOOKS="os=okhook,targetmod=okhook", PYTHONPATH=str(hooks))
    result = autotrace_run(script, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["patched os", "patched targetmod"], result.stderr
    assert "WARNING" not in result.stderr


def test_hook_module_beside_the_app_for_a_module_imported_before_start(tmp_path):
    write(tmp_path, "okhook.py", OK_HOOK)
    script = write(tmp_path, "app.py", MARKER_APP)
    write(tmp_path, "targetmod.py", TARGET)
    result = autotrace_run(script, clean_env(AUTOTRACE_EXTRA_HOOKS="os=okhook"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "patched os", result.stderr


# -- 7. the exporter's own traffic is not traced --------------------------------------------

# A stand-in for a requests / gRPC instrumentation: it injects the current trace context
# into every outgoing call, except where instrumentation is suppressed (the key every
# instrumentation checks), and counts the calls it saw suppressed.
INJECT_HOOK = """
import collections

from opentelemetry import context, propagate

suppressed_calls = 0


def _suppressed():
    global suppressed_calls
    if context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY):
        suppressed_calls += 1
        return True
    return False


def patch_http_client(module):
    # Every HTTP/1.1 request goes through putrequest: the exporter's (http.client) and the
    # app's (requests, over urllib3).
    original = module.HTTPConnection.putrequest

    def putrequest(self, method, url, *args, **kwargs):
        result = original(self, method, url, *args, **kwargs)
        if not _suppressed():
            carrier = {}
            propagate.inject(carrier)
            for name, value in carrier.items():
                self.putheader(name, value)
        return result

    module.HTTPConnection.putrequest = putrequest


def patch_grpc(grpc):
    class Details(
        collections.namedtuple(
            "Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
        ),
        grpc.ClientCallDetails,
    ):
        pass

    class Inject(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            if not _suppressed():
                carrier = {}
                propagate.inject(carrier)
                details = Details(
                    details.method,
                    details.timeout,
                    list(details.metadata or ()) + list(carrier.items()),
                    details.credentials,
                    getattr(details, "wait_for_ready", None),
                    getattr(details, "compression", None),
                )
            return continuation(details, request)

    original = grpc.insecure_channel

    def insecure_channel(target, options=None, compression=None):
        return grpc.intercept_channel(original(target, options, compression), Inject())

    grpc.insecure_channel = insecure_channel
"""

EXPORT_APP = """
import os
import sys

if sys.argv[1] == "grpc":
    # An app that uses grpc: the agent keeps grpcio's exporter, whose calls the hook sees
    # (without grpc, autotrace.otlp_grpc sends over h2 and grpc is never called).
    import grpc  # noqa: F401

from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

import injecthook

endpoint = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]


def control_request():
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.name, span.trace_id, span.span_id = "control", b"\\x01" * 16, b"\\x02" * 8
    return request


def send_control():
    # The app's own call, made with the instrumented library inside a span.
    if sys.argv[1] == "http":
        import requests

        response = requests.post(
            endpoint + "/v1/traces",
            data=control_request().SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=10,
        )
        assert response.status_code == 200, response.status_code
    else:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        with grpc.insecure_channel(endpoint.split("://", 1)[1]) as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(control_request(), timeout=10)


tracer = trace.get_tracer(__name__)
with tracer.start_as_current_span("app-work"):
    with tracer.start_as_current_span("inner"):
        pass
    send_control()
    # Exports "inner" on this thread, inside "app-work": only suppression keeps the
    # exporter's request free of this trace's context.
    trace.get_tracer_provider().force_flush()
print("suppressed calls:", injecthook.suppressed_calls)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_export_requests_carry_no_trace_context(tmp_path, otlp_receiver, protocol):
    script = write(tmp_path, "app.py", EXPORT_APP)
    write(tmp_path, "injecthook.py", INJECT_HOOK)
    hook = "http.client=injecthook:patch_http_client" if protocol == "http" else "grpc=injecthook:patch_grpc"
    env = traced_env(otlp_receiver, protocol, AUTOTRACE_EXTRA_HOOKS=hook)
    result = autotrace_run(script, env, protocol)

    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    # The exporter's calls went through the instrumented library, with suppression on.
    suppressed = int(result.stdout.split("suppressed calls:")[1])
    assert suppressed >= 1, result.stdout
    otlp_receiver.wait_for_spans(4, timeout=10)
    spans = by_name(otlp_receiver.spans())
    # The app's own call is traced by the agent's hook: a CLIENT span under app-work.
    client = "POST" if protocol == "http" else "opentelemetry.proto.collector.trace.v1.TraceService/Export"
    assert sorted(spans) == sorted(["app-work", "control", "inner", client])
    assert spans[client].parent_span_id == spans["app-work"].span_id
    assert {s.protocol for s in spans.values()} == {protocol}

    # Control: the app's own call carries the context, so the hook does inject.
    trace_id = spans["app-work"].trace_id
    assert trace_id in spans["control"].headers.get("traceparent", ""), spans["control"].headers
    # The agent's export requests carry none.
    for name in ("app-work", "inner"):
        assert "traceparent" not in spans[name].headers, (name, spans[name].headers)
        assert "baggage" not in spans[name].headers, (name, spans[name].headers)
