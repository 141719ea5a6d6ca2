from __future__ import annotations

import io
import json
import textwrap
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from autotrace import cli, config, exporters, launcher
from autotrace.console_view import ConsoleTreeExporter, format_duration

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


class CountingIds(IdGenerator):
    def __init__(self) -> None:
        self.traces = 0
        self.spans = 0

    def generate_trace_id(self) -> int:
        self.traces += 1
        return 0xABC000 + self.traces

    def generate_span_id(self) -> int:
        self.spans += 1
        return 0x100 + self.spans


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(out=None, **kwargs):
    out = io.StringIO() if out is None else out
    kwargs.setdefault("colour", False)
    kwargs.setdefault("sweep", False)
    exporter = ConsoleTreeExporter(out, **kwargs)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop"}), id_generator=CountingIds()
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter, out


def span(tracer, name, start_ms, end_ms, parent=None, kind=SpanKind.INTERNAL, attributes=None, error=None):
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    s = tracer.start_span(name, context=ctx, kind=kind, attributes=attributes, start_time=T0 + start_ms * MS)
    if error:
        s.set_status(Status(StatusCode.ERROR, error))
    return s, (lambda: s.end(end_time=T0 + end_ms * MS))


def remote_parent(trace_id=0xFEED, span_id=0xBEEF):
    return trace.NonRecordingSpan(
        SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )


def test_golden_tree():
    tracer, exporter, out = make()
    root, end_root = span(
        tracer, "GET /users/{id}", 0, 42.5, kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.route": "/users/{id}",
                    "url.path": "/users/7", "http.response.status_code": 200, "other": "x"},
    )
    # started second, ends first: printed after the first-started sibling
    db, end_db = span(tracer, "load", 5, 6.25, parent=root)
    call, end_call = span(
        tracer, "GET", 2, 30, parent=root, kind=SpanKind.CLIENT,
        attributes={"http.request.method": "GET", "url.full": "http://auth:8080/check",
                    "server.address": "auth", "server.port": 8080, "http.response.status_code": 503,
                    "error.type": "503"},
        error="upstream down",
    )
    rpc, end_rpc = span(
        tracer, "users.Users/Get", 10, 12, parent=call, kind=SpanKind.CLIENT,
        attributes={"rpc.service": "users.Users", "rpc.method": "Get", "rpc.grpc.status_code": 0,
                    "server.address": "users"},
    )
    end_db()
    end_rpc()
    end_call()
    assert out.getvalue() == ""  # nothing before the root ends
    end_root()
    assert out.getvalue() == textwrap.dedent(
        """\
        trace 00000000000000000000000000abc001
          GET /users/{id}  SERVER  [shop]  42.5 ms  OK  method=GET  route=/users/{id}  path=/users/7  status=200
            GET  CLIENT  28.0 ms  ERROR: upstream down  method=GET  url=http://auth:8080/check  status=503  peer=auth:8080  error.type=503
              users.Users/Get  CLIENT  2.00 ms  OK  rpc=users.Users/Get  grpc.status=0  peer=users
            load  INTERNAL  1.25 ms  OK
        """
    )
    assert exporter._pending == {} and exporter._span_count == 0


def test_a_server_span_under_a_client_span_of_this_process_is_in_its_tree():
    """One process calling itself: the SERVER span's remote parent is a CLIENT span buffered here."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    out = io.StringIO()
    exporter = ConsoleTreeExporter(out, colour=False, sweep=False, duration=lambda ns: "D")
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}), id_generator=CountingIds())
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    call, end_call = span(tracer, "GET", 0, 10, kind=SpanKind.CLIENT)
    sent = call.get_span_context()
    received = trace.NonRecordingSpan(SpanContext(sent.trace_id, sent.span_id, is_remote=True, trace_flags=sent.trace_flags))
    served, end_served = span(tracer, "GET /hello", 1, 9, parent=received, kind=SpanKind.SERVER)
    end_served()  # ends first: a local root, with a remote parent not exported yet
    end_call()
    processor.force_flush()  # one batch, as the exit flush makes it
    assert out.getvalue() == textwrap.dedent(
        """\
        trace 00000000000000000000000000abc001
          GET  CLIENT  [shop]  D  OK
            GET /hello  SERVER  D  OK
        """
    )
    processor.shutdown()


def test_format_duration():
    assert format_duration(None) == "? ms"
    assert format_duration(1_234_567) == "1.23 ms"
    assert format_duration(12_340_000) == "12.3 ms"
    assert format_duration(1_234_000_000) == "1234 ms"


def test_remote_parent_header():
    tracer, _, out = make(duration=lambda ns: "D")
    root, end_root = span(tracer, "handle", 0, 1, parent=remote_parent(), kind=SpanKind.SERVER)
    end_root()
    assert out.getvalue() == (
        "trace 0000000000000000000000000000feed (remote parent 000000000000beef)\n"
        "  handle  SERVER  [shop]  D  OK\n"
    )


def test_orphans_flushed_at_force_flush_and_shutdown():
    tracer, exporter, out = make(duration=lambda ns: "D")
    root, _end_root = span(tracer, "never ends", 0, 1)
    child, end_child = span(tracer, "child", 0, 1, parent=root)
    end_child()
    assert out.getvalue() == ""
    exporter.force_flush()
    assert out.getvalue() == (
        "trace 00000000000000000000000000abc001 (flushed before its root span ended)\n"
        "  (parent 0000000000000101 not seen)\n"
        "  child  INTERNAL  [shop]  D  OK\n"
    )
    out.truncate(0), out.seek(0)
    other, end_other = span(tracer, "late", 0, 1, parent=root)
    end_other()
    exporter.shutdown()
    assert "root span not seen before shutdown" in out.getvalue()
    assert "late" in out.getvalue()
    assert exporter._pending == {}


def test_orphans_flushed_after_linger_time():
    clock = Clock()
    tracer, exporter, out = make(clock=clock, linger_s=5)
    root, _ = span(tracer, "never ends", 0, 1)
    child, end_child = span(tracer, "orphan", 0, 1, parent=root)
    end_child()
    clock.now = 4.9
    other, end_other = span(tracer, "other", 0, 1)  # another trace: a sweep, too early
    end_other()
    assert "orphan" not in out.getvalue()
    clock.now = 10
    third, end_third = span(tracer, "third", 0, 1)
    end_third()
    assert "orphan" in out.getvalue() and "root span not seen within 5 s" in out.getvalue()


def test_sweeper_thread_prints_orphans_without_further_exports():
    tracer, exporter, out = make(sweep=True, linger_s=0.1)
    root, _ = span(tracer, "never ends", 0, 1)
    child, end_child = span(tracer, "orphan", 0, 1, parent=root)
    end_child()
    deadline = time.monotonic() + 5
    while "orphan" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "orphan" in out.getvalue()
    exporter.shutdown()


def test_buffer_bounds_print_the_oldest_trace_early():
    tracer, exporter, out = make(max_traces=2, max_spans=3, duration=lambda ns: "D")
    roots = []
    for i in range(3):  # three traces, each with one orphan child: the first goes out
        root, _ = span(tracer, f"root{i}", 0, 1)
        child, end_child = span(tracer, f"child{i}", 0, 1, parent=root)
        end_child()
        roots.append(root)
    text = out.getvalue()
    assert text.count("buffer full") == 1 and "child0" in text and "child1" not in text
    assert len(exporter._pending) == 2 and exporter._span_count == 2
    # span bound: a trace with many spans
    for i in range(3):
        s, end = span(tracer, f"more{i}", 0, 1, parent=roots[2])
        end()
    assert exporter._span_count <= 3 and len(exporter._pending) <= 2


def test_colour_on_a_tty(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tracer, _, out = make(out=Tty(), colour=None)
    s, end = span(tracer, "boom", 0, 1, error="bad")
    end()
    text = out.getvalue()
    assert "\033[31mERROR: bad\033[0m" in text and "\033[2m1.00 ms\033[0m" in text


def test_no_colour_when_not_a_tty_or_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    tracer, _, out = make(colour=None)
    s, end = span(tracer, "plain", 0, 1)
    end()
    assert "\033[" not in out.getvalue()

    monkeypatch.setenv("NO_COLOR", "1")

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tracer, _, out = make(out=Tty(), colour=None)
    s, end = span(tracer, "plain", 0, 1)
    end()
    assert out.getvalue() and "\033[" not in out.getvalue()


class Broken(io.StringIO):
    """A stream whose every use raises, as a closed or broken stderr does; counts writes."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.writes = 0

    def write(self, text):
        self.writes += 1
        raise self.error

    def flush(self):
        raise self.error

    def isatty(self):
        raise self.error


def ended(name: str, trace_id: int = 0xABC, span_id: int = 0x1, parent: SpanContext | None = None) -> ReadableSpan:
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, span_id, is_remote=False),
        parent=parent,
        resource=Resource.create({"service.name": "shop"}),
        start_time=T0,
        end_time=T0 + MS,
    )


@pytest.mark.parametrize("error", [ValueError("I/O operation on closed file."), BrokenPipeError(32, "Broken pipe")])
def test_broken_stream_never_raises(error):
    out = Broken(error)
    exporter = ConsoleTreeExporter(out, colour=None, sweep=False)
    assert exporter.export([ended("root")]) is SpanExportResult.SUCCESS
    assert out.writes == 1  # the tree was written, and the failure swallowed
    child = ended("orphan", span_id=0x2, parent=SpanContext(0xABC, 0x9, is_remote=False))
    assert exporter.export([child]) is SpanExportResult.SUCCESS
    assert exporter.force_flush() is True
    assert out.writes == 2
    exporter.shutdown()


def test_closed_stream_never_raises():
    closed = io.StringIO()
    closed.close()
    exporter = ConsoleTreeExporter(closed, colour=None, sweep=False)
    assert exporter.export([ended("root")]) is SpanExportResult.SUCCESS
    exporter.shutdown()


def test_server_span_peer_is_the_client():
    tracer, _, out = make(duration=lambda ns: "D")
    server, end_server = span(
        tracer, "GET /", 0, 1, kind=SpanKind.SERVER,
        attributes={"server.address": "api.local", "server.port": 8000,
                    "client.address": "10.0.0.7", "client.port": 51234},
    )
    end_server()
    socket_only, end_socket_only = span(
        tracer, "GET /x", 0, 1, kind=SpanKind.SERVER,
        attributes={"server.address": "api.local", "network.peer.address": "10.0.0.8",
                    "network.peer.port": 40000, "client.port": 1},
    )
    end_socket_only()
    no_client, end_no_client = span(
        tracer, "GET /y", 0, 1, kind=SpanKind.SERVER, attributes={"server.address": "api.local", "server.port": 8000},
    )
    end_no_client()
    client, end_client = span(
        tracer, "GET", 0, 1, kind=SpanKind.CLIENT,
        attributes={"server.address": "auth", "client.address": "10.0.0.1", "network.peer.port": 9},
    )
    end_client()
    lines = [line.strip() for line in out.getvalue().splitlines() if not line.startswith("trace ")]
    assert lines == [
        "GET /  SERVER  [shop]  D  OK  peer=10.0.0.7:51234",
        "GET /x  SERVER  [shop]  D  OK  peer=10.0.0.8:40000",
        "GET /y  SERVER  [shop]  D  OK",
        "GET  CLIENT  [shop]  D  OK  peer=auth",
    ]


def test_a_very_deep_trace_is_printed_whole_with_capped_indentation():
    from autotrace.console_view import MAX_INDENT_DEPTH

    tracer, exporter, out = make(duration=lambda ns: "D", max_spans=5000)
    depth = 1500  # beyond the interpreter's recursion limit
    ends = []
    parent = None
    for level in range(depth):
        parent, end = span(tracer, f"level{level}", 0, 1, parent=parent)
        ends.append(end)
    for end in reversed(ends):
        end()
    lines = out.getvalue().splitlines()
    assert lines[0] == "trace 00000000000000000000000000abc001"
    assert lines[1] == "  level0  INTERNAL  [shop]  D  OK"
    assert lines[MAX_INDENT_DEPTH] == "  " * MAX_INDENT_DEPTH + f"level{MAX_INDENT_DEPTH - 1}  INTERNAL  D  OK"
    indent = "  " * (MAX_INDENT_DEPTH + 1)
    assert lines[MAX_INDENT_DEPTH + 1] == indent + f"(deeper than {MAX_INDENT_DEPTH} levels: indentation capped, depth shown)"
    assert lines[MAX_INDENT_DEPTH + 2] == indent + f"[depth {MAX_INDENT_DEPTH}]  level{MAX_INDENT_DEPTH}  INTERNAL  D  OK"
    assert lines[-1] == indent + f"[depth {depth - 1}]  level{depth - 1}  INTERNAL  D  OK"
    assert len(lines) == 1 + depth + 1
    assert max(len(line) for line in lines) < 200
    assert exporter._pending == {} and exporter._span_count == 0


def test_repeated_span_ids_neither_loop_nor_vanish():
    import threading

    out = io.StringIO()
    exporter = ConsoleTreeExporter(out, colour=False, sweep=False, duration=lambda ns: "D")
    # A cycle without a root: a's parent is b, b's parent is a.
    a = ended("a", trace_id=0x1, span_id=0x1, parent=SpanContext(0x1, 0x2, is_remote=False))
    b = ended("b", trace_id=0x1, span_id=0x2, parent=SpanContext(0x1, 0x1, is_remote=False))
    # A root whose id a descendant repeats: root(1) -> child(2) -> again(1) -> child(2) ...
    root = ended("root", trace_id=0x2, span_id=0x1)
    child = ended("child", trace_id=0x2, span_id=0x2, parent=SpanContext(0x2, 0x1, is_remote=False))
    again = ended("again", trace_id=0x2, span_id=0x1, parent=SpanContext(0x2, 0x2, is_remote=False))
    results = []
    worker = threading.Thread(
        target=lambda: results.append((exporter.export([a, b, child, again, root]), exporter.force_flush())),
        daemon=True,
    )
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the console view looped on repeated span ids"
    assert results == [(SpanExportResult.SUCCESS, True)]
    text = out.getvalue()
    for name in ("a", "b", "root", "child", "again"):
        assert f"  {name}  INTERNAL" in text, text
    assert "(in a cycle of repeated span ids)" in text
    assert exporter._pending == {} and exporter._span_count == 0


def test_writes_to_current_stderr_by_default(capsys):
    exporter = ConsoleTreeExporter(colour=False, sweep=False)
    provider = TracerProvider(id_generator=CountingIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    s, end = span(provider.get_tracer("t"), "on-stderr", 0, 1)
    end()
    captured = capsys.readouterr()
    assert "on-stderr" in captured.err and captured.out == ""


def test_console_factories(capsys):
    assert isinstance(exporters.console_factory(), ConsoleTreeExporter)
    json_exporter = exporters.console_json_factory()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(json_exporter))
    provider.get_tracer("t").start_span("raw").end()
    err = capsys.readouterr().err
    assert json.loads(err)["name"] == "raw"


@pytest.mark.parametrize(
    "value, expected",
    [("console-json", ("console-json",)), ("console,console-json", ("console", "console-json")),
     ("CONSOLE-JSON", ("console-json",))],
)
def test_config_accepts_console_json(value, expected, warnings):
    assert config.load({"OTEL_TRACES_EXPORTER": value}).exporters == expected
    assert warnings() == []


def test_cli_accepts_console_json():
    args = cli._parser().parse_args(["run", "--exporter", "console-json", "python", "app.py"])
    env = launcher.build_environment(args, {})
    assert env["OTEL_TRACES_EXPORTER"] == "console-json"
