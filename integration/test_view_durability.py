"""``autotrace view`` as a process: clean stop, restart and ``kill -9`` with the same store,
retention of whole traces, bad input beside good batches, ports in use, a non-loopback host."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import threading
import time

import pytest
from view_checks import body, new_span_id, new_trace_id, protobuf, span

from agent import AUTOTRACE, clean_env, run
from ports import free_port
from viewer import Viewer


def a_trace(spans: int = 2, service: str = "svc") -> tuple[str, bytes]:
    trace_id, root = new_trace_id(), new_span_id()
    now = time.time_ns()
    items = [span(trace_id, "root", span_id=root, start_ns=now)]
    items += [span(trace_id, f"child {i}", parent=root, kind=3, start_ns=now + i + 1) for i in range(spans - 1)]
    return trace_id, body(items, service=service)


def test_an_acknowledged_batch_survives_kill_9_and_a_clean_stop(tmp_path):
    db = str(tmp_path / "view.db")
    ports = (free_port(), free_port(), free_port())
    with Viewer(tmp_path, "--db", db, ports=ports) as viewer:
        first, data = a_trace(3)
        assert viewer.post(data) == 200
        viewer.process.send(signal.SIGKILL)
        viewer.process.finish(10)
    with Viewer(tmp_path, "--db", db, ports=ports) as viewer:
        (trace,) = viewer.get(f"/api/traces/{first}")["data"]
        assert len(trace["spans"]) == 3
        second, data = a_trace(2)
        assert viewer.post(data) == 200
        viewer.process.send(signal.SIGTERM)
        assert viewer.process.finish(20) == 0
        assert "Traceback" not in viewer.process.text("stderr")
    with Viewer(tmp_path, "--db", db, ports=ports) as viewer:
        assert viewer.get(f"/api/traces/{second}")["total"] == 1
        assert viewer.get("/api/traces")["total"] == 2
        viewer.process.send(signal.SIGINT)
        assert viewer.process.finish(20) == 0


def test_batches_in_flight_at_sigterm_are_committed_or_refused(tmp_path):
    db = str(tmp_path / "view.db")
    ports = (free_port(), free_port(), free_port())
    acknowledged: list[str] = []
    with Viewer(tmp_path, "--db", db, ports=ports) as viewer:
        stop = threading.Event()

        def send() -> None:
            while not stop.is_set():
                trace_id, data = a_trace(5)
                try:
                    if viewer.post(data) == 200:
                        acknowledged.append(trace_id)
                except OSError:
                    return

        senders = [threading.Thread(target=send) for _ in range(3)]
        for sender in senders:
            sender.start()
        time.sleep(0.5)
        viewer.process.send(signal.SIGTERM)
        code = viewer.process.finish(20)
        stop.set()
        for sender in senders:
            sender.join(20)
        assert code == 0
    assert acknowledged
    with Viewer(tmp_path, "--db", db, ports=ports) as viewer:
        stored = viewer.get(f"/api/autotrace/summaries?limit=1500")["data"]
        assert {s["traceID"] for s in stored} >= set(acknowledged)
        assert all(s["spanCount"] == 5 for s in stored)


def test_retention_by_span_count_drops_the_oldest_traces_whole(tmp_path):
    with Viewer(tmp_path, "--max-spans", "10") as viewer:
        ids = []
        for _ in range(6):
            trace_id, data = a_trace(3)
            assert viewer.post(data) == 200
            ids.append(trace_id)
        kept = [s["traceID"] for s in viewer.get("/api/autotrace/summaries")["data"]]
        assert kept == ids[:2:-1]  # the three newest, newest first
        for trace_id in ids[:3]:
            viewer.get(f"/api/traces/{trace_id}", status=404)
        for trace_id in kept:
            assert len(viewer.get(f"/api/traces/{trace_id}")["data"][0]["spans"]) == 3


def test_retention_by_age(tmp_path):
    with Viewer(tmp_path, "--retention-days", "0.00002") as viewer:  # 1.7 seconds
        old, data = a_trace()
        assert viewer.post(data) == 200
        time.sleep(2.5)
        new, data = a_trace()
        assert viewer.post(data) == 200
        viewer.get(f"/api/traces/{old}", status=404)
        assert viewer.get(f"/api/traces/{new}")["total"] == 1


BAD = {
    "protobuf": (b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf", {}, 400),
    "json": (b'{"resourceSpans": [', "application/json", {}, 400),
    "content-type": (b"{}", "text/plain", {}, 415),
    "gzip-bomb": (gzip.compress(b"\0" * (64 * 1024 * 1024)), "application/x-protobuf", {"Content-Encoding": "gzip"}, 413),
    "id-length": (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "ab" * 8, "spanId": "cd" * 8, "name": "x"}]}]}]}).encode(), "application/json", {}, 400),
}


def test_bad_input_is_refused_while_good_batches_are_stored(tmp_path):
    with Viewer(tmp_path) as viewer:
        good_ids = []
        for name, (data, content_type, headers, status) in BAD.items():
            trace_id = new_trace_id()
            good = threading.Thread(target=lambda: good_ids.append(
                (trace_id, viewer.post(protobuf([span(trace_id)]), "application/x-protobuf"))))
            good.start()
            assert viewer.post(data, content_type, **headers) == status, name
            good.join(20)
        assert [code for _, code in good_ids] == [200] * len(BAD)
        for trace_id, _ in good_ids:
            assert viewer.get(f"/api/traces/{trace_id}")["total"] == 1
        # The viewer logs a refusal after it has answered: its line may reach the pipe a little later.
        deadline = time.monotonic() + 10
        while True:
            refusals = [line for line in viewer.process.text("stderr").splitlines() if "refused a batch" in line]
            if len(refusals) >= len(BAD) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(refusals) == len(BAD), refusals
        assert viewer.process.process.poll() is None


def test_a_port_in_use_is_one_line_and_exit_status_2(tmp_path):
    ports = [free_port(), free_port(), free_port()]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[1]))
        busy.listen()
        result = run([AUTOTRACE, "view", "--memory", "--ui-port", str(ports[0]), "--otlp-http-port", str(ports[1]),
                      "--otlp-grpc-port", str(ports[2])], tmp_path, clean_env(), timeout=30)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"port {ports[1]}" in result.stderr
    assert "--otlp-http-port" in result.stderr and "Traceback" not in result.stderr


def test_another_host_is_warned_about(tmp_path):
    with Viewer(tmp_path, "--host", "127.0.0.2") as viewer:
        assert "no authentication" in viewer.process.text("stderr")
        assert "http://127.0.0.2:" in viewer.process.text("stdout")


def test_a_bad_import_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "1"}]}]}]}')
    result = run([AUTOTRACE, "view", "--memory", "--import", str(bad)], tmp_path, clean_env(), timeout=30)
    assert result.returncode == 1 and "cannot import" in result.stderr and "Traceback" not in result.stderr


def test_grpc_bad_data_is_invalid_argument_and_good_data_is_stored(tmp_path):
    import grpc

    with Viewer(tmp_path) as viewer, grpc.insecure_channel(f"127.0.0.1:{viewer.grpc_port}") as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        for bad in (b"\x0a\xff\xff\xff\xff\x0f", protobuf([span("ab" * 8)])):
            with pytest.raises(grpc.RpcError) as caught:
                export(bad, timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        trace_id = new_trace_id()
        assert export(protobuf([span(trace_id)]), timeout=10) == b""
        assert viewer.get(f"/api/traces/{trace_id}")["total"] == 1
