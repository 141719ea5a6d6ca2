"""The shared CLIENT span: URL attributes, injection rules, layering, errors."""

from __future__ import annotations

import gc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, StatusCode

from autotrace import _log, client_span


def test_url_full_drops_user_information_and_redacts_secret_query_values():
    full, address, port = client_span.url_attributes("https://user:pa%40ss@api.example.com/v1/items?token=abc&page=2")
    assert full == "https://api.example.com/v1/items?token=REDACTED&page=2"
    assert (address, port) == ("api.example.com", 443)


def test_url_full_redacts_secret_values_of_the_fragment():
    # Never sent, but kept in url.full: an OAuth implicit-flow URL has its token there.
    full, _, _ = client_span.url_attributes("https://h/cb?state=1&sig=x#access_token=abc&token_type=bearer")
    assert full == "https://h/cb?state=1&sig=REDACTED#access_token=REDACTED&token_type=bearer"
    assert client_span.url_attributes("http://h/page#section-2")[0] == "http://h/page#section-2"
    assert client_span.url_attributes("http://u:p@h/#token=t")[0] == "http://h/#token=REDACTED"


def test_url_attributes_ports_and_ipv6():
    assert client_span.url_attributes("http://127.0.0.1:8080/a") == ("http://127.0.0.1:8080/a", "127.0.0.1", 8080)
    assert client_span.url_attributes("http://example.com/") == ("http://example.com/", "example.com", 80)
    assert client_span.url_attributes("http://[::1]:9000/x") == ("http://[::1]:9000/x", "::1", 9000)
    assert client_span.url_attributes(b"http://h/p") == ("http://h/p", "h", 80)
    # A port that is not a number: recorded as given, no port attribute.
    assert client_span.url_attributes("http://h:abc/p") == ("http://h:abc/p", "h", None)


def test_error_type_is_the_qualified_class_name():
    assert client_span.error_type(ConnectionRefusedError()) == "ConnectionRefusedError"
    assert client_span.error_type(TimeoutError()) == "TimeoutError"

    class Custom(Exception):
        pass

    assert client_span.error_type(Custom()) == f"{__name__}.test_error_type_is_the_qualified_class_name.<locals>.Custom"


def test_protocol_version():
    assert client_span.protocol_version(11) == "1.1"
    assert client_span.protocol_version(10) == "1.0"
    assert client_span.protocol_version(20) == "2"
    assert client_span.protocol_version("HTTP/1.1") == "1.1"
    assert client_span.protocol_version("HTTP/2") == "2"
    assert client_span.protocol_version(None) is None


def test_span_content_and_injected_parent_id(spans):
    with trace.get_tracer("test").start_as_current_span("parent") as parent:
        call = client_span.start("lib", "get", "http://u:p@127.0.0.1:1234/x?api_key=1")
        headers = {"Accept": "*/*"}
        previous = call.inject(headers)
        call.set_response(200, "1.1")
        call.close()
    [span] = [s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert span.name == "GET"
    assert span.parent.span_id == parent.get_span_context().span_id
    assert dict(span.attributes) == {
        "http.request.method": "GET",
        "http.request.method_original": "get",
        "url.full": "http://127.0.0.1:1234/x?api_key=REDACTED",
        "server.address": "127.0.0.1",
        "server.port": 1234,
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }
    assert span.status.status_code == StatusCode.UNSET
    # traceparent names the CLIENT span itself, in the caller's trace.
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert int(trace_id, 16) == span.context.trace_id
    assert int(span_id, 16) == span.context.span_id
    assert previous == {"traceparent": None}
    client_span.restore(headers, previous)
    assert headers == {"Accept": "*/*"}


def test_unknown_method_is_other(spans):
    call = client_span.start("lib", "PURGE", "http://h/")
    call.close()
    [span] = spans.get_finished_spans()
    assert span.name == "HTTP"
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


def test_plain_dict_header_set_by_hand_is_replaced_in_any_case_with_a_debug_line(spans, capsys):
    _log.logger.level = _log.DEBUG
    call = client_span.start("lib", "GET", "http://h/")
    headers = {"TraceParent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    previous = call.inject(headers)
    call.close()
    assert list(headers) == ["traceparent"]
    assert headers["traceparent"] != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert "the traceparent header set by the application is replaced" in capsys.readouterr().err
    client_span.restore(headers, previous)
    assert headers == {"TraceParent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def test_status_codes_and_exceptions(spans):
    for code, error in ((302, False), (404, True), (503, True)):
        call = client_span.start("lib", "GET", "http://h/")
        call.set_response(code)
        call.close()
        span = spans.get_finished_spans()[-1]
        assert (span.status.status_code == StatusCode.ERROR) is error
        assert span.attributes.get("error.type") == (str(code) if error else None)
    call = client_span.start("lib", "GET", "http://h/")
    call.fail(ConnectionRefusedError(111, "refused"))
    call.close()
    span = spans.get_finished_spans()[-1]
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "ConnectionRefusedError"
    assert [e.name for e in span.events] == ["exception"]


def test_lower_layer_of_another_library_starts_nothing_same_library_nests(spans):
    outer = client_span.start("requests", "GET", "http://h/a")
    assert client_span.start("urllib3", "GET", "http://h/a") is None  # a layer of the same call
    inner = client_span.start("requests", "GET", "http://h/b")  # a call of its own
    inner.close()
    outer.close()
    inner_span, outer_span = spans.get_finished_spans()
    assert inner_span.parent.span_id == outer_span.context.span_id
    assert client_span.current_call() is None


def test_next_hop_after_an_ended_call_is_a_sibling_numbered_by_resend_count(spans):
    with trace.get_tracer("test").start_as_current_span("parent") as parent:
        first = client_span.start("requests", "GET", "http://h/1")
        headers = {}
        first.inject(headers)
        first.end()  # the redirect is being followed: the first hop is over
        second = client_span.start("requests", "GET", "http://h/2")
        copied = dict(headers)  # the redirect's copy of the request
        second.inject(copied)
        second.close()
        third = client_span.start("requests", "GET", "http://h/3")
        third.close()
        first.detach()
    spans_by_url = {s.attributes["url.full"]: s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT}
    for url, resends in (("http://h/1", None), ("http://h/2", 1), ("http://h/3", 2)):
        assert spans_by_url[url].parent.span_id == parent.get_span_context().span_id
        assert spans_by_url[url].attributes.get("http.request.resend_count") == resends
    assert copied["traceparent"] != headers["traceparent"]


def test_suppressed_instrumentation_starts_nothing(spans):
    for key in (context._SUPPRESS_INSTRUMENTATION_KEY, context._SUPPRESS_HTTP_INSTRUMENTATION_KEY):
        token = context.attach(context.set_value(key, True))
        try:
            assert client_span.start("lib", "GET", "http://h/") is None
        finally:
            context.detach(token)
    assert spans.get_finished_spans() == ()


def test_request_and_response_header_capture(spans, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "X-Request-Id,Authorization")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE", "content-type")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "authorization")
    call = client_span.start("lib", "GET", "http://h/")
    call.inject({"x-request-id": "r1", "Authorization": "Bearer s3cret", "Other": "no"})
    call.set_response(200, None, [("Content-Type", "text/plain"), ("Set-Cookie", "a=b")])
    call.close()
    [span] = spans.get_finished_spans()
    assert span.attributes["http.request.header.x-request-id"] == ("r1",)
    assert span.attributes["http.request.header.authorization"] == ("[REDACTED]",)
    assert span.attributes["http.response.header.content-type"] == ("text/plain",)
    assert "http.request.header.other" not in span.attributes
    assert "http.response.header.set-cookie" not in span.attributes


def test_no_header_capture_by_default(spans):
    call = client_span.start("lib", "GET", "http://h/")
    call.inject({"Authorization": "Bearer s3cret"})
    call.set_response(200, None, [("Set-Cookie", "a=b")])
    call.close()
    [span] = spans.get_finished_spans()
    assert not [k for k in span.attributes if ".header." in k]


def test_a_broken_propagator_sends_the_request_without_headers(spans, monkeypatch, warnings):
    from opentelemetry import propagate

    class Broken:
        fields = {"x"}

        def inject(self, *args, **kwargs):
            raise RuntimeError("broken propagator")

    monkeypatch.setattr(propagate, "_HTTP_TEXT_FORMAT", Broken())
    call = client_span.start("lib", "GET", "http://h/")
    headers = {}
    assert call.inject(headers) == {}
    call.close()
    assert headers == {}
    assert len(spans.get_finished_spans()) == 1
    assert any("broken propagator" in line for line in warnings())


def test_an_ended_and_left_call_is_freed_at_once_not_by_the_garbage_collector(spans):
    # Its context holds the call (current_call()): the call drops the context once it has
    # ended and is no longer current, so neither waits for a collection.
    def calls():
        with trace.get_tracer("test").start_as_current_span("parent"):
            call = client_span.start("urllib3", "GET", "http://h/1")
            call.inject({})
            call.close()
            pending = client_span.start("http.client", "GET", "http://h/2", attach=False)
            pending.inject({})
            pending.end()
            ended_first = client_span.start("httpx", "GET", "http://h/3")
            ended_first.end()
            ended_first.detach()

    gc.collect()
    gc.disable()
    try:
        calls()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [found for found in gc.garbage if isinstance(found, client_span.ClientSpan)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
    assert len([s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT]) == 3


_KEYS = st.from_regex(r"[a-z][a-z0-9_\-*/@]{0,12}", fullmatch=True)
_VALUES = st.from_regex(r"[!-+\--<>-~]{1,12}", fullmatch=True)  # tracestate value characters (no , or =)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sampled=st.booleans(),
    states=st.dictionaries(_KEYS, _VALUES, max_size=4),
    entries=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4),
    properties=st.booleans(),
    names=st.sampled_from(["tracecontext,baggage", "tracecontext", "baggage", "baggage,tracecontext", "none"]),
)
def test_a_client_span_sends_the_headers_inject_makes(spans, sampled, states, entries, properties, names):
    # The dict writer (the default formats' fast path) against the API's inject of the
    # same context, through the same propagators: the same headers, in the same order.
    from opentelemetry import baggage, propagate
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from autotrace.propagation import build
    from autotrace.propagation.tracecontext import W3CTraceState

    propagator = build(names.split(","))
    assert propagator.dict_writer is not None
    remote = SpanContext(0x1F, 0x2E, True, TraceFlags(1 if sampled else 0), W3CTraceState(states))
    ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    for name, value in entries.items():
        ctx = baggage.set_baggage(name, value, ctx)
    if properties and entries:  # a property kept from an extracted header
        ctx = propagator.extract({"baggage": "k=v;p=1"}, ctx)
    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(propagator)
    token = context.attach(ctx)
    try:
        call = client_span.start("lib", "GET", "http://h/")
        sent = dict(call.headers())
        expected: dict = {}
        propagate.inject(expected, context=call.context)
        call.close()
    finally:
        context.detach(token)
        propagate.set_global_textmap(saved)
    assert list(sent.items()) == list(expected.items())
    if "tracecontext" in names:
        assert sent["traceparent"].split("-")[1] == f"{0x1F:032x}"


def test_a_propagator_of_another_kind_is_asked_through_inject(spans):
    from opentelemetry import propagate
    from opentelemetry.propagators.textmap import TextMapPropagator

    class Custom(TextMapPropagator):
        def extract(self, carrier, context=None, getter=None):
            return context

        def inject(self, carrier, context=None, setter=None):
            carrier["x-custom"] = format(trace.get_current_span(context).get_span_context().span_id, "016x")

        @property
        def fields(self):
            return {"x-custom"}

    from autotrace.propagation.composite import CompositePropagator

    composite = CompositePropagator([Custom()])
    assert composite.dict_writer is None
    saved = propagate.get_global_textmap()
    for textmap in (composite, Custom()):
        propagate.set_global_textmap(textmap)
        try:
            call = client_span.start("lib", "GET", "http://h/")
            assert call.headers() == {"x-custom": format(call.span.get_span_context().span_id, "016x")}
            call.close()
        finally:
            propagate.set_global_textmap(saved)


def test_spans_of_one_url_share_no_attributes(spans):
    # A request's attributes are kept per (method, URL ...): each span has its own copy.
    first = client_span.start("lib", "GET", "http://h:81/same")
    first.span.set_attribute("app.key", "first")
    first.set_response(500, 11)
    first.close()
    second = client_span.start("lib", "GET", "http://h:81/same")
    second.set_response(200)
    second.close()
    one, two = spans.get_finished_spans()
    assert one.attributes["app.key"] == "first" and one.attributes["http.response.status_code"] == 500
    assert dict(two.attributes) == {
        "http.request.method": "GET",
        "url.full": "http://h:81/same",
        "server.address": "h",
        "server.port": 81,
        "http.response.status_code": 200,
    }
    assert one.attributes["network.protocol.version"] == "1.1" and two.status.status_code == StatusCode.UNSET


def test_set_response_takes_the_version_as_the_library_reports_it(spans):
    for given, recorded in ((11, "1.1"), (20, "2"), ("HTTP/1.0", "1.0"), ("HTTP/2", "2"), ("1.1", "1.1"), ("3", "3"), (0, None), ([11], None)):
        call = client_span.start("lib", "GET", "http://h/v")
        call.set_response(204, given)
        call.close()
        span = spans.get_finished_spans()[-1]
        assert span.attributes["http.response.status_code"] == 204
        assert span.attributes.get("network.protocol.version") == recorded, given


def test_responses_are_kept_bounded_and_never_give_another_responses_values(spans, monkeypatch):
    # set_response keeps the attributes per (status, version as reported): each response
    # gets its own status and version, a span changed by the app changes no other, and the
    # cache never grows past its bound.
    monkeypatch.setattr(client_span, "_RESPONSES_SIZE", 4)
    client_span._RESPONSES.clear()
    answers = [(200, 11), (200, 10), (404, 11), (200, "HTTP/2"), (500, 20), (200, 11), (201, None), (200, 11)]
    for status, version in answers:
        call = client_span.start("lib", "GET", "http://h/r")
        call.set_response(status, version)
        call.span.set_attribute("http.response.status_code", 999)  # the app's change: this span's alone
        call.close()
        assert len(client_span._RESPONSES) <= 4
    for span, (status, version) in zip(spans.get_finished_spans(), answers):
        assert span.attributes["http.response.status_code"] == 999
        assert span.attributes.get("network.protocol.version") == client_span.protocol_version(version)
        assert (span.status.status_code == StatusCode.ERROR) is (status >= 400)
    for (status, _), found in client_span._RESPONSES.items():
        assert found["http.response.status_code"] == status
    call = client_span.start("lib", "GET", "http://h/r")
    call.set_response(200, 11)
    call.close()
    assert spans.get_finished_spans()[-1].attributes["http.response.status_code"] == 200


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1), st.integers(0, 255))
def test_traceparent_is_what_the_format_makes(trace_id, span_id, flags):
    from autotrace.propagation.tracecontext import traceparent

    assert traceparent(trace_id, span_id, flags) == f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    assert traceparent(2**128 + trace_id, span_id, flags) == f"00-{2**128 + trace_id:032x}-{span_id:016x}-{flags:02x}"
