"""A script that gevent or eventlet monkey-patches, under ``autotrace run``: its spans arrive.

The agent's export thread, its locks and its waits must work whether the script patches
at its first line (the agent then sets the SDK up after the patching, at the first span)
or after the agent set itself up (the export thread then runs since before the patching):
a span made early arrives while the script still runs (the batch delay is 100 ms, the
script waits 30 s cooperatively), and one made just before the exit arrives with the
flush at exit.
"""

from __future__ import annotations

import time

import pytest

from agent import AUTOTRACE, Watched, clean_env, write
from otlp_receiver import OTLPReceiver

SCRIPT = """
import os
import sys
import time

library, when = sys.argv[1], sys.argv[2]
if when == "after-set-up":
    from opentelemetry import trace

    time.sleep(1.0)  # the agent sets the SDK up meanwhile, on its own thread
if library == "gevent":
    from gevent import monkey

    monkey.patch_all()
    from gevent import sleep
else:
    import eventlet

    eventlet.monkey_patch()
    from eventlet import sleep
from opentelemetry import trace

tracer = trace.get_tracer("script")
with tracer.start_as_current_span("first"):
    pass
print("first", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists("stop") and time.monotonic() < deadline:
    sleep(0.02)
with tracer.start_as_current_span("last"):
    pass
print("done", flush=True)
"""


@pytest.mark.parametrize("protocol", ["http", "grpc"])  # grpc: autotrace.otlp_grpc (h2; the script has no grpc)
@pytest.mark.parametrize("when", ["at-start", "after-set-up"])
@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_a_patched_script_exports_while_it_runs_and_at_exit(tmp_path, otlp_receiver: OTLPReceiver, library, when, protocol):
    write(tmp_path, "green_app.py", SCRIPT)
    env = clean_env(**otlp_receiver.env(protocol), PYTHONWARNINGS="ignore")
    with Watched([AUTOTRACE, "run", "python", "green_app.py", library, when], tmp_path, env) as script:
        script.wait_for_line("first", timeout=30)
        (first,) = otlp_receiver.wait_for_spans(1, timeout=10)  # exported while the script runs
        assert first.name == "first" and script.process.poll() is None
        (tmp_path / "stop").write_text("")
        assert script.finish(timeout=30) == 0, script.text("stderr")
    time.sleep(0.2)
    assert sorted(s.name for s in otlp_receiver.spans()) == ["first", "last"]
    assert "Traceback" not in script.text("stderr") and "WARNING" not in script.text("stderr"), script.text("stderr")


HANGING_EXIT = """
import sys

if sys.argv[1] == "gevent":
    from gevent import monkey

    monkey.patch_all()
else:
    import eventlet

    eventlet.monkey_patch()
from opentelemetry import trace

trace.get_tracer("script").start_span("one").end()
print("done", flush=True)
"""


@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_a_patched_scripts_exit_keeps_the_flush_bound(tmp_path, silent, library):
    """A collector that accepts and never answers holds a patched script's exit only up to
    AUTOTRACE_SHUTDOWN_TIMEOUT: the flush at exit runs on a real thread, waited for with a
    real lock, so the bound holds whatever the hub is doing."""
    write(tmp_path, "hanging_exit.py", HANGING_EXIT)
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{silent.port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TIMEOUT="30000",
        AUTOTRACE_SHUTDOWN_TIMEOUT="2000",
        PYTHONWARNINGS="ignore",
    )
    started = time.monotonic()
    with Watched([AUTOTRACE, "run", "python", "hanging_exit.py", library], tmp_path, env) as script:
        script.wait_for_line("done", timeout=30)
        assert script.finish(timeout=25) == 0, script.text("stderr")
    elapsed = time.monotonic() - started
    stderr = script.text("stderr")
    assert "spans not flushed within 2s (AUTOTRACE_SHUTDOWN_TIMEOUT)" in stderr, stderr
    assert "1 span not delivered" in stderr, stderr
    assert elapsed < 15, (elapsed, stderr)  # the bound, not the 30 s export timeout
    assert "Traceback" not in stderr, stderr


# The background set-up is held inside its import of the SDK (the hook below) when the
# script patches: gevent and eventlet replace _thread.get_ident, which the import system's
# module locks use, so that import would fail to release its lock and the SDK would not be
# set up. The import of the patching module waits for the set-up in progress instead.
HELD_SET_UP_HOOK = """
import threading
import time

in_set_up = threading.Event()


def patch(module):
    in_set_up.set()
    time.sleep(1.0)
"""

PATCH_DURING_SET_UP = """
import sys

import held_set_up
from opentelemetry import trace

assert held_set_up.in_set_up.wait(20), "the background set-up did not start"
if sys.argv[1] == "gevent":
    from gevent import monkey

    monkey.patch_all()
else:
    import eventlet

    eventlet.monkey_patch()
with trace.get_tracer("script").start_as_current_span("after-patching"):
    pass
print("done", flush=True)
"""


@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_patching_while_the_background_set_up_imports(tmp_path, otlp_receiver: OTLPReceiver, library):
    write(tmp_path, "held_set_up.py", HELD_SET_UP_HOOK)
    write(tmp_path, "patching.py", PATCH_DURING_SET_UP)
    env = clean_env(
        **otlp_receiver.env("http"), PYTHONWARNINGS="ignore", AUTOTRACE_EXTRA_HOOKS="opentelemetry.sdk.trace=held_set_up"
    )
    with Watched([AUTOTRACE, "run", "python", "patching.py", library], tmp_path, env) as script:
        assert script.finish(timeout=40) == 0, script.text("stderr")
    stderr = script.text("stderr")
    assert "WARNING" not in stderr and "Traceback" not in stderr, stderr
    (span,) = otlp_receiver.wait_for_spans(1, timeout=10)
    assert span.name == "after-patching"


@pytest.mark.parametrize("protocol", ["http", "grpc"])  # grpc: over h2 (the script has no grpc)
@pytest.mark.parametrize("when", ["at-start", "after-set-up"])
@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_a_patched_script_exports_over_tls(tmp_path, tls_receiver, certificate, library, when, protocol):
    """OTLP over TLS from a patched script: the export thread's TLS works too."""
    receiver, grpc_port, http_port = tls_receiver
    _key, cert = certificate
    write(tmp_path, "green_app.py", SCRIPT)
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"https://127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc" if protocol == "grpc" else "http/protobuf",
        OTEL_EXPORTER_OTLP_CERTIFICATE=str(cert),
        OTEL_BSP_SCHEDULE_DELAY="100",
        PYTHONWARNINGS="ignore",
    )
    with Watched([AUTOTRACE, "run", "python", "green_app.py", library, when], tmp_path, env) as script:
        script.wait_for_line("first", timeout=30)
        (first,) = receiver.wait_for_spans(1, timeout=10)  # exported while the script runs
        assert first.name == "first" and script.process.poll() is None
        (tmp_path / "stop").write_text("")
        assert script.finish(timeout=30) == 0, script.text("stderr")
    time.sleep(0.2)
    assert sorted(s.name for s in receiver.spans()) == ["first", "last"]
    assert "Traceback" not in script.text("stderr") and "WARNING" not in script.text("stderr"), script.text("stderr")
