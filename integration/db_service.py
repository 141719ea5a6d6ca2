"""A service under ``autotrace run`` whose requests run database queries: start it, make the
requests (each with its own ``traceparent``), wait for their SERVER spans, stop it (it
flushes at exit), and look at what the OTLP receiver got. Shared by the database tests."""

from __future__ import annotations

import json
import secrets
import signal
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from agent import AUTOTRACE, Watched, clean_env, wait_until_answers
from otlp_receiver import OTLPReceiver
from ports import free_port

SERVER, CLIENT = 2, 3  # proto SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2


@dataclass
class Request:
    name: str
    path: str
    trace_id: str = field(default_factory=lambda: secrets.token_hex(16))
    span_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


@dataclass
class Run:
    """What a service did: the replies to the requests, its output, the spans received."""

    requests: list
    responses: dict  # request name -> (status, body bytes)
    process: Watched
    spans: list
    table: str = ""

    @property
    def statuses(self) -> dict:
        return {name: status for name, (status, _body) in self.responses.items()}

    @property
    def replies(self) -> dict:
        """Request name -> (status, the JSON body read)."""
        return {name: (status, json.loads(body)) for name, (status, body) in self.responses.items()}

    @property
    def stderr(self) -> str:
        return self.process.text("stderr")

    def trace(self, name: str) -> list:
        request = next(r for r in self.requests if r.name == name)
        return [s for s in self.spans if s.trace_id == request.trace_id]

    def server_span(self, name: str):
        """The request's one SERVER span, checked to continue the caller's context."""
        request = next(r for r in self.requests if r.name == name)
        [span] = [s for s in self.trace(name) if s.kind == SERVER]
        assert span.parent_span_id == request.span_id
        return span


def get(port: int, path: str, traceparent: str | None = None) -> tuple[int, bytes]:
    headers = {"traceparent": traceparent} if traceparent else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def serve(command: list[str], directory: Path, requests: list[Request], run_class: type[Run] = Run) -> Run:
    """Start the service under ``autotrace run`` (``{port}`` in ``command`` is its port; it
    answers ``/ready`` once up), make every request, wait for their SERVER spans (a SERVER
    span ends after the reply is sent: bounded), stop it with SIGTERM, collect the spans."""
    port = free_port()
    command = [arg.replace("{port}", str(port)) for arg in command]
    with OTLPReceiver() as receiver:
        env = clean_env(**receiver.env("http"), OTEL_LOG_LEVEL="debug")
        env["HOME"] = str(directory)  # gunicorn's control socket
        with Watched([AUTOTRACE, "run", *command], directory, env) as process:
            wait_until_answers(f"http://127.0.0.1:{port}/ready", timeout=30, process=process)
            responses = {r.name: get(port, r.path, r.traceparent) for r in requests}
            for r in requests:
                receiver.wait_for_spans(timeout=30, predicate=lambda s, r=r: s.trace_id == r.trace_id and s.kind == SERVER)
            process.send(signal.SIGTERM)
            process.finish(timeout=30)
        return run_class(requests, responses, process, receiver.spans())
