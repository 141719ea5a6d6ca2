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
