"""server_span.start's common case goes to the compiled start (autotrace._speedups.start_light)
where the extension is built: the request's attributes as a plain dict, not a function
(start_light leaves a function to the Python start, which took every request that way)."""

from __future__ import annotations

from opentelemetry import context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind

from autotrace import api, config, light_span, server_span
from autotrace import spans as span_core
from autotrace.light_span import LightSpan


class LightRecorder(SpanProcessor):
    """A processor with a light end (as the agent's): the compiled start's common case."""

    def __init__(self) -> None:
        self.light: list[object] = []

    def light_end(self, span) -> None:
        self.light.append(span)


def test_a_server_span_is_started_by_the_compiled_start(monkeypatch):
    from autotrace import _speedups  # fails where the extension was not built

    api.load()
    config.reset_http_settings()
    provider = TracerProvider(resource=Resource({"service.name": "svc"}), shutdown_on_exit=False)
    recorder = LightRecorder()
    provider.add_span_processor(recorder)
    tracer = provider.get_tracer(server_span.TRACER, "1.0")
    monkeypatch.setitem(api.tracers, server_span.TRACER, tracer)
    assert light_span.compiled_start is _speedups.start_light
    light_span.start_span(tracer, "warm", SpanKind.SERVER, context.Context(), {})  # planned
    started = []
    real = _speedups.start_light
    monkeypatch.setattr(server_span, "_start_light", lambda *args: started.append(args[4]) or real(*args))
    monkeypatch.setattr(span_core, "new_span", lambda *args: (_ for _ in ()).throw(AssertionError("the Python way")))
    before = context.get_current()
    token = context.attach(context.Context())  # a server's usual: an empty context
    try:
        span = server_span.start("GET", "http", "/items/42", "q=1", server_span.DictLookup({"host": ["example.com:8080"]}), "example.com", 8080, "10.0.0.1", "1.1", "curl")
        assert span is not None and type(span.span) is LightSpan
        span.finish(200, "/items/{id}", True)
    finally:
        context.detach(token)
        config.reset_http_settings()
    assert context.get_current() is before
    assert len(started) == 1 and type(started[0]) is dict  # a plain dict: C's common case
    assert recorder.light == [span.span]
    assert span.span.name == "GET /items/{id}"
    assert dict(span.span.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "server.address": "example.com",
        "server.port": 8080,
        "network.protocol.version": "1.1",
        "user_agent.original": "curl",
        "url.path": "/items/42",
        "url.query": "q=1",
        "client.address": "10.0.0.1",
        "http.route": "/items/{id}",
        "http.response.status_code": 200,
    }
