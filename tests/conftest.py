"""Shared fixtures: every test starts from clean agent state and leaves none behind."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from autotrace import _log, importer, registry
from dbservers import mariadb_server, postgres_server, rabbitmq_server, redis_cluster_server, redis_server  # noqa: F401  (session fixtures)


@pytest.fixture(autouse=True)
def clean_log_state():
    """warn_once memory and the logger's level are process-wide: reset them per test."""
    warned = set(_log._warned)
    level = _log.logger.level
    _log._warned.clear()
    _log.logger.level = _log.INFO
    yield
    _log._warned.clear()
    _log._warned.update(warned)
    _log.logger.level = level


@pytest.fixture
def clean_importer():
    """Restore the importer's pending hooks and remove its finder if this test added it."""
    pending = {name: list(hooks) for name, hooks in importer._pending.items()}
    finder = importer._finder
    yield importer
    with importer._lock:
        importer._pending.clear()
        importer._pending.update(pending)
        if finder is None and importer._finder is not None:
            try:
                sys.meta_path.remove(importer._finder)
            except ValueError:
                pass
            importer._finder = None


@pytest.fixture
def clean_registry(clean_importer):
    armed, applied, status = dict(registry._armed), set(registry._applied), dict(registry._status)
    registry._armed.clear()
    registry._applied.clear()
    registry._status.clear()
    yield registry
    registry._armed.clear()
    registry._armed.update(armed)
    registry._applied.clear()
    registry._applied.update(applied)
    registry._status.clear()
    registry._status.update(status)


class ModuleFactory:
    """Writes modules with unique names into a directory on sys.path."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.names: list[str] = []

    def unique(self, prefix: str = "atmod") -> str:
        return f"{prefix}_{uuid.uuid4().hex[:10]}"

    def module(self, source: str = "", name: str | None = None) -> str:
        name = name or self.unique()
        (self.directory / f"{name}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        importlib.invalidate_caches()
        return name

    def package(self, submodules: dict[str, str], init: str = "", name: str | None = None) -> str:
        name = name or self.unique("atpkg")
        root = self.directory / name
        root.mkdir()
        (root / "__init__.py").write_text(textwrap.dedent(init))
        for sub, source in submodules.items():
            (root / f"{sub}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        importlib.invalidate_caches()
        return name

    def forget(self) -> None:
        for name in self.names:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[loaded]


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Make modules on the fly (tmp dir on sys.path); they are dropped from sys.modules after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = ModuleFactory(tmp_path)
    yield factory
    factory.forget()


@pytest.fixture
def warnings(capsys):
    """``warnings()``: the agent's warning lines written to stderr since the last call."""

    def read() -> list[str]:
        err = capsys.readouterr().err
        return [line for line in err.splitlines() if line.startswith("autotrace WARNING:")]

    return read


# One SDK TracerProvider for the whole session: the API lets the global provider be set
# once per process, so every test that records spans shares it (through these fixtures).
_memory_exporter = None


@pytest.fixture(scope="session")
def memory_exporter():
    """An InMemorySpanExporter fed by the global SDK TracerProvider (set up once)."""
    global _memory_exporter
    if _memory_exporter is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            trace.set_tracer_provider(TracerProvider())
            provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider), f"a non-SDK global TracerProvider is set: {provider!r}"
        _memory_exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_memory_exporter))
    return _memory_exporter


@pytest.fixture
def spans(memory_exporter, monkeypatch):
    """The in-memory exporter, emptied, with server_span's tracer and settings reset.

    ``spans.get_finished_spans()`` lists what ended during the test.
    """
    from opentelemetry import context

    from autotrace import api, config

    for name in (
        "OTEL_PYTHON_EXCLUDED_URLS",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
    ):
        monkeypatch.delenv(name, raising=False)
    memory_exporter.clear()
    api.tracers.clear()
    config.reset_http_settings()
    before = context.get_current()
    yield memory_exporter
    if context.get_current() is not before:  # a failed test left a request's context current
        context.attach(before)
    memory_exporter.clear()
    api.tracers.clear()
    config.reset_http_settings()


@pytest.fixture(scope="session")
def _peer_server():
    import http_peer

    peer, server, thread = http_peer.start()
    yield peer
    http_peer.stop(server, thread)


@pytest.fixture
def peer(_peer_server):
    """A real HTTP server on loopback recording what it receives (see tests/http_peer.py)."""
    _peer_server.clear()
    yield _peer_server
    _peer_server.clear()


# Every outgoing-request hook, by the module it patches (as the registry's table has them).
CLIENT_HOOKS = (
    ("http.client", "autotrace.hooks.http_client"),
    ("urllib.request", "autotrace.hooks.urllib_request"),
    ("urllib3.connectionpool", "autotrace.hooks.urllib3"),
    ("requests.sessions", "autotrace.hooks.requests"),
    ("httpx._client", "autotrace.hooks.httpx"),
)


@pytest.fixture
def client_hooks(spans):
    """All outgoing-request hooks applied, as under the agent; the originals put back after.

    Applied together, as an app has them: layers (requests over urllib3 over
    http.client) must make one span per call. Yields the in-memory exporter.
    """
    from autotrace import patching

    mark = len(patching.history)
    for module_name, hook_name in CLIENT_HOOKS:
        try:
            hook = importlib.import_module(hook_name)
        except ModuleNotFoundError as exc:
            if exc.name != hook_name:
                raise
            continue  # not written yet
        hook.patch(importlib.import_module(module_name))
    yield spans
    patching.undo(mark)


@pytest.fixture
def parent():
    """A span current for the test: what the app's request span would be."""
    from opentelemetry import trace

    with trace.get_tracer("test").start_as_current_span("parent") as span:
        yield span


@pytest.fixture
def suppressed():
    """Instrumentation suppressed, as the agent's own exporter runs."""
    from opentelemetry import context

    token = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
    yield
    context.detach(token)


@pytest.fixture
def messaging_parent(monkeypatch):
    """AUTOTRACE_MESSAGING_PARENT for the test, unset at first: ``messaging_parent("link")``
    (read again at its next use)."""
    from autotrace import config

    def set_mode(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv("AUTOTRACE_MESSAGING_PARENT", raising=False)
        else:
            monkeypatch.setenv("AUTOTRACE_MESSAGING_PARENT", value)
        config.reset_messaging_settings()

    set_mode(None)
    yield set_mode
    config.reset_messaging_settings()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(extra + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "1", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))
    return {name: d / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
