"""The trace context in threads, thread pools and asyncio executors, and in log lines, under ``autotrace run``.

A stdlib http.server service (no tracing setup; it uses the OpenTelemetry API only to
make its own spans, as app code does) answers ``GET /fanout`` by handing work to a
``threading.Thread``, a ``Thread`` subclass overriding ``run()``, a
``ThreadPoolExecutor``, asyncio's ``loop.run_in_executor``, a ``ProcessPoolExecutor``
(spawn) and a ``multiprocessing.Process`` (fork): the issue's acceptance, in one trace.
Each worker makes a span
and logs a line whose format names ``%(otelTraceID)s`` and ``%(otelSpanID)s``; the
handler itself logs through ``logging.basicConfig()``'s default format, which
``OTEL_PYTHON_LOG_CORRELATION=true`` makes name the ids; one more line passes its own
``otelTraceID`` in ``extra=`` (the app's value is written). The request carries a
``traceparent``. At a real OTLP receiver: every worker span is a child of the request's
SERVER span, in the caller's trace, and the trace holds nothing else (the hooks make no
span of their own); each log line names its worker's span.
"""

from __future__ import annotations

import textwrap
import urllib.request

from agent import AUTOTRACE, SERVE_ON_ARGV_PORT, Watched, clean_env, wait_until_answers, write
from otlp_receiver import OTLPReceiver
from ports import free_port

SERVER = 2  # proto SpanKind
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
WORKERS = ("thread", "thread-subclass", "pool", "executor", "process-pool", "process")

SERVICE = """
import asyncio
import logging
import multiprocessing
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace

logging.basicConfig(level=logging.INFO, stream=sys.stdout)  # the default format
log = logging.getLogger("fanout")
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("worker-log %(otelTraceID)s %(otelSpanID)s %(message)s"))
log.addHandler(handler)
log.propagate = False
tracer = trace.get_tracer("fanout-app")
POOL = ThreadPoolExecutor(max_workers=2)


def work(name):
    with tracer.start_as_current_span("worker " + name):
        log.warning(name)
    return name


class Worker(threading.Thread):
    def run(self):
        work("thread-subclass")


def fan_out():
    thread = threading.Thread(target=work, args=("thread",))
    subclass = Worker()
    thread.start()
    subclass.start()
    done = [POOL.submit(work, "pool").result(5)]

    async def in_executor():
        return await asyncio.get_running_loop().run_in_executor(None, work, "executor")

    done.append(asyncio.run(in_executor()))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as processes:
        done.append(processes.submit(work, "process-pool").result(30))
    process = multiprocessing.get_context("fork").Process(target=work, args=("process",))
    process.start()
    process.join(30)
    thread.join(5)
    subclass.join(5)
    return done


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/fanout":
            self.send_error(404)
            return
        body = ",".join(fan_out()).encode()
        logging.getLogger("handler").info("fanned out")
        logging.getLogger("handler").info("own id", extra={"otelTraceID": "chosen-by-the-app"})
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":  # a spawn child imports this module too
""" + textwrap.indent(SERVE_ON_ARGV_PORT, "    ")


def test_workers_are_children_of_the_server_span_and_log_its_trace(tmp_path):
    write(tmp_path, "service.py", SERVICE)
    with OTLPReceiver() as receiver:
        port = free_port()
        env = clean_env(
            **receiver.env("http/protobuf"), OTEL_SERVICE_NAME="fanout", OTEL_PYTHON_LOG_CORRELATION="true"
        )
        with Watched([AUTOTRACE, "run", "python", "service.py", str(port)], tmp_path, env) as service:
            service.wait_for_line("serving", timeout=8)
            wait_until_answers(f"http://127.0.0.1:{port}/nothing", timeout=8, process=service)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/fanout", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.read() == b"pool,executor,process-pool"
            in_trace = receiver.wait_for_spans(
                1 + len(WORKERS), timeout=15, predicate=lambda s: s.trace_id == TRACE_ID
            )
            service.wait_for_line("fanned out", timeout=5)
            service.stop()  # SIGTERM: the service flushes what it still holds, then exits
            stdout, stderr = service.text("stdout"), service.text("stderr")
        # Everything the service (and its children) recorded has arrived by now: the
        # trace holds the request's span and one per worker, nothing made by the hooks.
        whole_trace = [s for s in receiver.spans() if s.trace_id == TRACE_ID]
        assert len(whole_trace) == 1 + len(WORKERS), sorted(s.name for s in whole_trace)

    [server] = [s for s in in_trace if s.kind == SERVER]
    assert server.parent_span_id == PARENT_ID
    assert server.resource["service.name"] == "fanout"
    workers = {s.name.removeprefix("worker "): s for s in in_trace if s.name.startswith("worker ")}
    assert sorted(workers) == sorted(WORKERS)
    for name, span in workers.items():
        assert span.parent_span_id == server.span_id, name

    logged = {}
    for line in stdout.splitlines():
        if line.startswith("worker-log "):
            _, trace_id, span_id, name = line.split(" ", 3)
            logged[name] = (trace_id, span_id)
    assert logged == {name: (TRACE_ID, span.span_id) for name, span in workers.items()}, stdout

    # The handler's line, in basicConfig()'s default format (OTEL_PYTHON_LOG_CORRELATION=true).
    [handled] = [line for line in stdout.splitlines() if line.endswith("- fanned out")]
    assert f"[trace_id={TRACE_ID} span_id={server.span_id} resource.service.name=fanout trace_sampled=True]" in handled
    assert "INFO [handler]" in handled
    [own] = [line for line in stdout.splitlines() if line.endswith("- own id")]
    assert f"[trace_id=chosen-by-the-app span_id={server.span_id} " in own
    assert "autotrace WARNING" not in stderr, stderr
