"""A readable console view: each finished trace printed as an indented tree on stderr.

``OTEL_TRACES_EXPORTER=console`` uses :class:`ConsoleTreeExporter`; ``console-json``
keeps the SDK's raw JSON (``ConsoleSpanExporter``).

Spans are buffered per trace id. A trace is printed when a local root span (no parent,
or a remote parent) is exported: the root and every buffered descendant. A span whose
remote parent is a span of this process, buffered with it (a service calling itself,
one process both client and server), is printed in its parent's tree, not apart. Spans whose
parent never arrives are printed after ``linger_s`` without news of their trace, at
``force_flush`` and at ``shutdown``. The buffer is bounded (traces and spans): when it
is full, the oldest trace is printed early, marked as such. Writing never raises.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import OrderedDict
from typing import IO, Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

_RESET = "\033[0m"
_BOLD = "\033[1m"
_DIM = "\033[2m"
_RED = "\033[31m"
_GREEN = "\033[32m"
_YELLOW = "\033[33m"
_CYAN = "\033[36m"


def format_duration(nanos: int | None) -> str:
    """Milliseconds, with precision that shrinks as the value grows."""
    if nanos is None:
        return "? ms"
    ms = nanos / 1e6
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:.0f} ms"


# The peer of a span: for a SERVER span the client, otherwise the server called.
# Each (address, port) pair is read together, so a port never joins another key's host.
_SERVER_PEER_KEYS = (
    ("client.address", "client.port"),
    ("network.peer.address", "network.peer.port"),
    ("net.sock.peer.addr", "net.sock.peer.port"),
    ("net.peer.ip", "net.peer.port"),
)
_CLIENT_PEER_KEYS = (
    ("server.address", "server.port"),
    ("net.peer.name", "net.peer.port"),
)

# Deeper spans are printed at this indentation, their depth shown: bounded line width.
MAX_INDENT_DEPTH = 32


def _peer(attrs, kind: SpanKind | None) -> str | None:
    for host_key, port_key in _SERVER_PEER_KEYS if kind is SpanKind.SERVER else _CLIENT_PEER_KEYS:
        host = attrs.get(host_key)
        if host is not None and host != "":
            port = attrs.get(port_key)
            return f"{host}:{port}" if port is not None and port != "" else str(host)
    return None


def _attr_summary(attrs, kind: SpanKind | None = None) -> list[str]:
    """The few attributes worth a glance, as short ``label=value`` items."""
    if not attrs:
        return []
    out: list[str] = []

    def get(*keys: str):
        for key in keys:
            value = attrs.get(key)
            if value is not None and value != "":
                return value
        return None

    method = get("http.request.method", "http.method")
    if method is not None:
        out.append(f"method={method}")
    route = get("http.route")
    if route is not None:
        out.append(f"route={route}")
    url = get("url.full", "http.url")
    if url is not None:
        out.append(f"url={url}")
    else:
        path = get("url.path", "http.target")
        if path is not None:
            out.append(f"path={path}")
    status = get("http.response.status_code", "http.status_code")
    if status is not None:
        out.append(f"status={status}")
    service, rpc_method = get("rpc.service"), get("rpc.method")
    if service is not None or rpc_method is not None:
        out.append(f"rpc={service or '?'}/{rpc_method or '?'}")
    grpc_status = get("rpc.grpc.status_code")
    if grpc_status is not None:
        out.append(f"grpc.status={grpc_status}")
    peer = _peer(attrs, kind)
    if peer is not None:
        out.append(f"peer={peer}")
    error_type = get("error.type")
    if error_type is not None:
        out.append(f"error.type={error_type}")
    return out


def _service(span: ReadableSpan) -> str | None:
    resource = span.resource
    if resource is None:
        return None
    value = resource.attributes.get("service.name")
    return None if value is None else str(value)


def _is_local_root(span: ReadableSpan) -> bool:
    return span.parent is None or bool(span.parent.is_remote)


class ConsoleTreeExporter(SpanExporter):
    """Prints each finished trace as an indented tree (see the module docstring)."""

    def __init__(
        self,
        out: IO[str] | None = None,
        *,
        colour: bool | None = None,
        linger_s: float = 5.0,
        max_traces: int = 1000,
        max_spans: int = 10000,
        clock: Callable[[], float] = time.monotonic,
        duration: Callable[[int | None], str] = format_duration,
        sweep: bool = True,
    ) -> None:
        self._out = out  # None: sys.stderr as it is at each write
        self._colour = colour  # None: decided per write (a tty and no NO_COLOR)
        self._linger_s = linger_s
        self._max_traces = max(1, max_traces)
        self._max_spans = max(1, max_spans)
        self._clock = clock
        self._duration = duration
        self._lock = threading.RLock()
        # trace id -> (spans, time of the last span seen); oldest first
        self._pending: OrderedDict[int, tuple[list[ReadableSpan], float]] = OrderedDict()
        self._span_count = 0
        self._closed = False
        self._wake = threading.Event()
        self._sweep = sweep
        self._sweeper: threading.Thread | None = None

    # -- SpanExporter --------------------------------------------------------------

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._closed:
            return SpanExportResult.FAILURE
        with self._lock:
            now = self._clock()
            roots: list[ReadableSpan] = []
            for span in spans:
                if span.context is None:
                    continue
                trace_id = span.context.trace_id
                entry = self._pending.pop(trace_id, None)
                buffered = entry[0] if entry else []
                buffered.append(span)
                self._pending[trace_id] = (buffered, now)  # most recent last
                self._span_count += 1
                if _is_local_root(span):
                    roots.append(span)
            for root in roots:
                if not self._under_a_buffered_span(root):
                    self._emit_root(root)
            self._expire(now)
            self._bound()
            if self._pending:
                self._start_sweeper()
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            self._flush_all("flushed before its root span ended")
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._flush_all("root span not seen before shutdown")
            self._closed = True
        self._wake.set()

    # -- buffering -----------------------------------------------------------------

    def _take(self, trace_id: int, picked: list[ReadableSpan]) -> None:
        """Remove ``picked`` from the buffer of ``trace_id``."""
        entry = self._pending.get(trace_id)
        if entry is None:
            return
        ids = {id(span) for span in picked}
        remaining = [span for span in entry[0] if id(span) not in ids]
        self._span_count -= len(entry[0]) - len(remaining)
        if remaining:
            self._pending[trace_id] = (remaining, entry[1])
        else:
            del self._pending[trace_id]

    def _under_a_buffered_span(self, root: ReadableSpan) -> bool:
        """Whether a root's remote parent is a span buffered here: it is printed in that tree."""
        parent = root.parent
        if parent is None:
            return False
        entry = self._pending.get(root.context.trace_id)
        return entry is not None and any(span.context.span_id == parent.span_id for span in entry[0])

    def _emit_root(self, root: ReadableSpan) -> None:
        trace_id = root.context.trace_id
        entry = self._pending.get(trace_id)
        if entry is None:
            return
        children = _children_map(entry[0])
        subtree: list[ReadableSpan] = []
        seen: set[int] = set()  # span ids may repeat (a broken id generator): no loop
        stack = [root]
        while stack:
            span = stack.pop()
            if id(span) in seen:
                continue
            seen.add(id(span))
            subtree.append(span)
            stack.extend(children.get(span.context.span_id, ()))
        self._take(trace_id, subtree)
        note = None
        if root.parent is not None and root.parent.is_remote:
            note = f"remote parent {root.parent.span_id:016x}"
        self._write(self._render(trace_id, subtree, note))

    def _emit_trace(self, trace_id: int, reason: str) -> None:
        entry = self._pending.pop(trace_id, None)
        if entry is None:
            return
        self._span_count -= len(entry[0])
        self._write(self._render(trace_id, entry[0], reason))

    def _flush_all(self, reason: str) -> None:
        for trace_id in list(self._pending):
            self._emit_trace(trace_id, reason)

    def _expire(self, now: float) -> None:
        for trace_id, (_spans, seen) in list(self._pending.items()):
            if now - seen < self._linger_s:
                break  # ordered by last activity: the rest are newer
            self._emit_trace(trace_id, f"root span not seen within {self._linger_s:g} s")

    def _bound(self) -> None:
        while self._pending and (
            len(self._pending) > self._max_traces or self._span_count > self._max_spans
        ):
            oldest = next(iter(self._pending))
            self._emit_trace(oldest, "buffer full: printed before its root span ended")

    def _start_sweeper(self) -> None:
        if not self._sweep or (self._sweeper is not None and self._sweeper.is_alive()):
            return
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="autotrace-console-view", daemon=True
        )
        try:
            self._sweeper.start()
        except RuntimeError:  # at interpreter exit: shutdown flushes instead
            self._sweeper = None

    def _sweep_loop(self) -> None:
        while not self._closed:
            self._wake.wait(max(self._linger_s / 2, 0.05))
            if self._closed:
                return
            with self._lock:
                self._expire(self._clock())
                if not self._pending:
                    self._sweeper = None
                    return

    # -- rendering -----------------------------------------------------------------

    def _use_colour(self, out: IO[str]) -> bool:
        if self._colour is not None:
            return self._colour
        if os.environ.get("NO_COLOR"):
            return False
        try:
            return bool(out.isatty())
        except Exception:  # noqa: BLE001 - a closed or odd stream: no colour
            return False

    def _render(self, trace_id: int, spans: list[ReadableSpan], note: str | None) -> Callable[[bool], str]:
        def render(colour: bool) -> str:
            def paint(code: str, text: str) -> str:
                return f"{code}{text}{_RESET}" if colour else text

            header = f"trace {trace_id:032x}"
            if note:
                header += f" ({note})"
            lines = [paint(_BOLD + _YELLOW, header)]
            by_id = {span.context.span_id for span in spans}
            children = _children_map(spans)
            tops = sorted(
                (s for s in spans if s.parent is None or s.parent.span_id not in by_id),
                key=_start,
            )

            def line(span: ReadableSpan, depth: int, parent_service: str | None) -> str:
                service = _service(span)
                parts = [paint(_BOLD, span.name), span.kind.name if span.kind else "INTERNAL"]
                if service is not None and service != parent_service:
                    parts.append(paint(_CYAN, f"[{service}]"))
                parts.append(paint(_DIM, self._duration(_duration_ns(span))))
                if span.status.status_code is StatusCode.ERROR:
                    status = "ERROR"
                    if span.status.description:
                        status += f": {span.status.description}"
                    parts.append(paint(_RED, status))
                else:
                    parts.append(paint(_GREEN, "OK"))
                parts.extend(_attr_summary(span.attributes, span.kind))
                if depth < MAX_INDENT_DEPTH:
                    return "  " * (depth + 1) + "  ".join(parts)
                return "  " * (MAX_INDENT_DEPTH + 1) + paint(_DIM, f"[depth {depth}]") + "  " + "  ".join(parts)

            seen: set[int] = set()

            def walk(top: ReadableSpan) -> None:
                """Depth first, iteratively: a trace of any depth is printed whole."""
                capped = False
                stack: list[tuple[ReadableSpan, int, str | None]] = [(top, 0, None)]
                while stack:
                    span, depth, parent_service = stack.pop()
                    if id(span) in seen:
                        continue
                    seen.add(id(span))
                    if depth >= MAX_INDENT_DEPTH and not capped:
                        capped = True
                        lines.append("  " * (MAX_INDENT_DEPTH + 1) + paint(
                            _DIM, f"(deeper than {MAX_INDENT_DEPTH} levels: indentation capped, depth shown)"
                        ))
                    lines.append(line(span, depth, parent_service))
                    service = _service(span)
                    for child in reversed(children.get(span.context.span_id, ())):
                        stack.append((child, depth + 1, service))

            for top in tops:
                if top.parent is not None and not top.parent.is_remote:
                    lines.append("  " + paint(_DIM, f"(parent {top.parent.span_id:016x} not seen)"))
                walk(top)
            for span in sorted(spans, key=_start):  # in a cycle of repeated span ids: still shown
                if id(span) not in seen:
                    lines.append("  " + paint(_DIM, "(in a cycle of repeated span ids)"))
                    walk(span)
            return "\n".join(lines) + "\n"

        return render

    def _write(self, render: Callable[[bool], str]) -> None:
        out = self._out if self._out is not None else sys.stderr
        try:
            if out is None:
                return
            out.write(render(self._use_colour(out)))
            out.flush()
        except Exception:  # noqa: BLE001 - a closed stderr must never break the app
            pass


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def _duration_ns(span: ReadableSpan) -> int | None:
    if span.start_time is None or span.end_time is None:
        return None
    return span.end_time - span.start_time


def _children_map(spans: Sequence[ReadableSpan]) -> dict[int, list[ReadableSpan]]:
    """Parent span id -> its spans; a remote parent counts where it is among ``spans``."""
    children: dict[int, list[ReadableSpan]] = {}
    for span in spans:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)
    for group in children.values():
        group.sort(key=_start)
    return children
