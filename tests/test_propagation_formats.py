"""B3 (single and multi), Jaeger, the composite propagator and choosing them by name."""

from __future__ import annotations

import re
import tracemalloc
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

from autotrace import config, propagation
from autotrace.propagation import build, extracted_links, install
from autotrace.propagation import decision
from autotrace.propagation.b3 import B3MultiPropagator, B3SinglePropagator
from autotrace.propagation.baggage import BaggagePropagator
from autotrace.propagation.composite import CompositePropagator
from autotrace.propagation.jaeger import JaegerPropagator
from autotrace.propagation.tracecontext import TraceContextPropagator
from test_propagation_w3c import reference_valid  # the W3C traceparent reference

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TRACE64 = "8448eb211c80319c"
OTHER_TRACE = "11111111111111111111111111111111"
OTHER_SPAN = "2222222222222222"


def span_context(ctx: Context) -> trace.SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def ids(ctx: Context) -> tuple[str, str, bool] | None:
    sc = span_context(ctx)
    if not sc.is_valid:
        return None
    assert sc.is_remote
    return f"{sc.trace_id:032x}", f"{sc.span_id:016x}", sc.trace_flags.sampled


def local_context(trace_id: str = TRACE, span_id: str = SPAN, sampled: bool = True) -> Context:
    sc = trace.SpanContext(
        int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=trace.TraceFlags(1 if sampled else 0)
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(sc), Context())


class ListGetter(textmap.Getter):
    """A getter like the agent's server one: lists of values, names looked up as given."""

    def get(self, carrier, key):
        return carrier.get(key)

    def keys(self, carrier):
        return list(carrier)


class RaisingGetter(textmap.Getter):
    def get(self, carrier, key):
        raise RuntimeError("broken carrier")

    def keys(self, carrier):
        raise RuntimeError("broken carrier")


# -- B3 --------------------------------------------------------------------------------

B3_BOTH = [B3SinglePropagator(), B3MultiPropagator()]


@pytest.mark.parametrize("propagator", B3_BOTH, ids=["b3", "b3multi"])
@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"b3": f"{TRACE}-{SPAN}-1"}, (TRACE, SPAN, True)),
        ({"b3": f"{TRACE}-{SPAN}-0"}, (TRACE, SPAN, False)),
        ({"b3": f"{TRACE}-{SPAN}-d"}, (TRACE, SPAN, True)),
        ({"b3": f"{TRACE}-{SPAN}"}, (TRACE, SPAN, False)),  # deferred
        ({"b3": f"{TRACE}-{SPAN}-1-{OTHER_SPAN}"}, (TRACE, SPAN, True)),
        ({"b3": f"{TRACE64}-{SPAN}-1"}, ("0" * 16 + TRACE64, SPAN, True)),
        ({"b3": f"{TRACE.upper()}-{SPAN}-1"}, (TRACE, SPAN, True)),
        ({"b3": [f"{TRACE}-{SPAN}-1", f"{TRACE}-{SPAN}-1"]}, (TRACE, SPAN, True)),  # same value twice
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "1"}, (TRACE, SPAN, True)),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "true"}, (TRACE, SPAN, True)),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0"}, (TRACE, SPAN, False)),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN}, (TRACE, SPAN, False)),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "1"}, (TRACE, SPAN, True)),
        ({"x-b3-traceid": TRACE64, "x-b3-spanid": SPAN, "x-b3-sampled": "1"}, ("0" * 16 + TRACE64, SPAN, True)),
        ({"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN, "X-B3-Sampled": "1"}, (TRACE, SPAN, True)),  # mixed case
        ({"B3": f"{TRACE}-{SPAN}-1"}, (TRACE, SPAN, True)),
        # the single header wins over the multi ones
        ({"b3": f"{TRACE}-{SPAN}-1", "x-b3-traceid": OTHER_TRACE, "x-b3-spanid": OTHER_SPAN}, (TRACE, SPAN, True)),
    ],
)
def test_b3_extract(propagator, headers, expected):
    assert ids(propagator.extract(headers)) == expected
    assert ids(propagator.extract(headers, getter=ListGetter())) == expected


@pytest.mark.parametrize("propagator", B3_BOTH, ids=["b3", "b3multi"])
@pytest.mark.parametrize(
    "headers",
    [
        {"b3": f"{TRACE}-{SPAN}-x"},
        {"b3": f"{TRACE}-{SPAN}-1-zz"},
        {"b3": f"{TRACE}-{SPAN}-1-{SPAN}-extra"},
        {"b3": f"{TRACE[:-1]}-{SPAN}-1"},  # 31 digits
        {"b3": f"{TRACE}0-{SPAN}-1"},  # 33 digits
        {"b3": f"{'0' * 32}-{SPAN}-1"},
        {"b3": f"{TRACE}-{'0' * 16}-1"},
        {"b3": f"{TRACE}-{SPAN[:-1]}g-1"},
        {"b3": f"-{TRACE}-{SPAN}-1"},
        {"b3": [f"{TRACE}-{SPAN}-1", f"{OTHER_TRACE}-{OTHER_SPAN}-1"]},  # differing values
        {"b3": f"{TRACE}-{SPAN}-1,{OTHER_TRACE}-{OTHER_SPAN}-1"},
        {"b3": f"{TRACE}-{SPAN}-1" + " " * 9000},  # oversized
        {"b3": [f"{TRACE}-{SPAN}-1", f"{TRACE}-{SPAN}-1" + " " * 9000]},  # one copy oversized
        {"b3": "garbage", "x-b3-traceid": TRACE, "x-b3-spanid": SPAN},  # a bad single header: not the multi ones
        {"b3": f"{TRACE}-{SPAN}-1" + " " * 9000, "x-b3-traceid": TRACE, "x-b3-spanid": SPAN},
        {"b3": [f"{TRACE}-{SPAN}-1"] * 65},  # too many copies
        {"x-b3-traceid": TRACE},
        {"x-b3-spanid": SPAN},
        {"x-b3-traceid": "0" * 16, "x-b3-spanid": SPAN},
        {"x-b3-traceid": TRACE, "x-b3-spanid": "xyz"},
        {"x-b3-traceid": [TRACE, OTHER_TRACE], "x-b3-spanid": SPAN},
        {"x-b3-traceid": [TRACE, TRACE + " " * 9000], "x-b3-spanid": SPAN},
        {"x-b3-sampled": "maybe"},
        {},
    ],
)
def test_b3_extract_invalid(propagator, headers):
    base = Context()
    assert propagator.extract(headers, base) is base
    assert propagator.extract(headers, base, getter=ListGetter()) is base


@pytest.mark.parametrize("propagator", B3_BOTH, ids=["b3", "b3multi"])
@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"b3": "0"}, decision.DENY),
        ({"b3": "1"}, decision.ACCEPT),
        ({"b3": "d"}, decision.ACCEPT),
        ({"b3": "0", "x-b3-traceid": TRACE, "x-b3-spanid": SPAN}, decision.DENY),  # a deny is not overruled
        ({"x-b3-sampled": "0"}, decision.DENY),
        ({"X-B3-Sampled": "false"}, decision.DENY),
        ({"x-b3-sampled": "1"}, decision.ACCEPT),
        ({"x-b3-flags": "1"}, decision.ACCEPT),
        ({"x-b3-flags": "1", "x-b3-sampled": "0"}, decision.ACCEPT),  # debug implies accept
    ],
)
def test_b3_sampling_state_alone_is_a_decision_without_a_span(propagator, headers, expected):
    for ctx in (propagator.extract(headers, Context()), propagator.extract(headers, Context(), getter=ListGetter())):
        assert not span_context(ctx).is_valid
        assert decision.upstream_decision(ctx) == expected
        # it applies to the root span started there, not under a parent
        assert decision.upstream_decision(trace.set_span_in_context(trace.NonRecordingSpan(span_context(local_context())), ctx)) is None


@pytest.mark.parametrize("propagator", B3_BOTH, ids=["b3", "b3multi"])
@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"b3": f"{TRACE}-{SPAN}"}, decision.DEFER),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN}, decision.DEFER),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "maybe"}, decision.DEFER),
        ({"b3": f"{TRACE}-{SPAN}-0"}, None),
        ({"b3": f"{TRACE}-{SPAN}-1"}, None),
        ({"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "0"}, None),
    ],
)
def test_b3_deferred_state_is_recorded_for_its_span_context_only(propagator, headers, expected):
    ctx = propagator.extract(headers, Context())
    assert ids(ctx)[:2] == (TRACE, SPAN)
    assert decision.upstream_decision(ctx) == expected
    child = trace.set_span_in_context(trace.NonRecordingSpan(span_context(local_context(span_id=OTHER_SPAN))), ctx)
    assert decision.upstream_decision(child) is None


def test_a_deferred_b3_context_does_not_overrule_an_earlier_formats_parent():
    """tracecontext first says "sampled"; b3 with the same ids defers: tracecontext's flag stands."""
    composite = CompositePropagator([TraceContextPropagator(), B3SinglePropagator()])
    ctx = composite.extract({"traceparent": f"00-{TRACE}-{SPAN}-01", "b3": f"{TRACE}-{SPAN}"})
    assert ids(ctx) == (TRACE, SPAN, True)
    assert decision.upstream_decision(ctx) is None
    # the same format twice (b3 and b3multi read both forms): the deferral is kept
    ctx = CompositePropagator(B3_BOTH).extract({"b3": f"{TRACE}-{SPAN}"})
    assert decision.upstream_decision(ctx) == decision.DEFER


def debug_context(headers: dict) -> Context:
    """A local sampled child (other span id) of what ``headers`` carried, as a client call has."""
    extracted = build(["b3", "jaeger"]).extract(headers, Context())
    sc = span_context(extracted)
    child = trace.SpanContext(sc.trace_id, int(OTHER_SPAN, 16), is_remote=False, trace_flags=sc.trace_flags)
    return trace.set_span_in_context(trace.NonRecordingSpan(child), extracted)


DEBUG_IN = [
    {"b3": f"{TRACE}-{SPAN}-d"},
    {"b3": f"{TRACE}-{SPAN}-d-{OTHER_SPAN}"},
    {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-flags": "1"},
    {"X-B3-TraceId": TRACE, "X-B3-SpanId": SPAN, "X-B3-Flags": "1", "X-B3-Sampled": "1"},
    {"uber-trace-id": f"{TRACE}:{SPAN}:0:3"},
    {"uber-trace-id": f"{TRACE}:{SPAN}:0:2"},
]


@pytest.mark.parametrize("headers", DEBUG_IN)
def test_the_debug_flag_is_written_back_in_every_format(headers):
    ctx = debug_context(headers)
    assert span_context(ctx).trace_flags.sampled
    carrier: dict[str, str] = {}
    B3SinglePropagator().inject(carrier, ctx)
    assert carrier == {"b3": f"{TRACE}-{OTHER_SPAN}-d"}
    carrier = {}
    B3MultiPropagator().inject(carrier, ctx)
    assert carrier == {"x-b3-traceid": TRACE, "x-b3-spanid": OTHER_SPAN, "x-b3-flags": "1"}  # no x-b3-sampled
    carrier = {}
    JaegerPropagator().inject(carrier, ctx)
    assert carrier == {"uber-trace-id": f"{TRACE}:{OTHER_SPAN}:0:3"}


def test_the_debug_flag_stays_with_its_trace_and_sampled_spans():
    ctx = debug_context({"b3": f"{TRACE}-{SPAN}-d"})
    other_trace = trace.SpanContext(int(OTHER_TRACE, 16), int(OTHER_SPAN, 16), is_remote=False, trace_flags=trace.TraceFlags(1))
    unsampled = trace.SpanContext(int(TRACE, 16), int(OTHER_SPAN, 16), is_remote=False, trace_flags=trace.TraceFlags(0))
    for sc, state in ((other_trace, "1"), (unsampled, "0")):
        carrier: dict[str, str] = {}
        B3SinglePropagator().inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(sc), ctx))
        assert carrier["b3"].endswith("-" + state)
    # no debug flag came in: plain sampled
    carrier = {}
    B3SinglePropagator().inject(carrier, debug_context({"b3": f"{TRACE}-{SPAN}-1"}))
    assert carrier == {"b3": f"{TRACE}-{OTHER_SPAN}-1"}


@pytest.mark.parametrize("sampled", [True, False])
def test_b3_inject_and_round_trip(sampled):
    flag = "1" if sampled else "0"
    carrier: dict[str, str] = {}
    B3SinglePropagator().inject(carrier, local_context(sampled=sampled))
    assert carrier == {"b3": f"{TRACE}-{SPAN}-{flag}"}
    assert ids(B3SinglePropagator().extract(carrier)) == (TRACE, SPAN, sampled)
    assert ids(B3MultiPropagator().extract(carrier)) == (TRACE, SPAN, sampled)

    carrier = {}
    B3MultiPropagator().inject(carrier, local_context(sampled=sampled))
    assert carrier == {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": flag}
    assert ids(B3MultiPropagator().extract(carrier)) == (TRACE, SPAN, sampled)
    assert ids(B3SinglePropagator().extract(carrier)) == (TRACE, SPAN, sampled)


def test_b3_fields_and_nothing_injected_without_a_span():
    assert B3SinglePropagator().fields == {"b3"}
    assert B3MultiPropagator().fields == {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"}
    for propagator in B3_BOTH:
        carrier: dict[str, str] = {}
        propagator.inject(carrier, Context())
        assert carrier == {}


# -- Jaeger ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (f"{TRACE}:{SPAN}:0:1", (TRACE, SPAN, True)),
        (f"{TRACE}:{SPAN}:0:0", (TRACE, SPAN, False)),
        (f"{TRACE}:{SPAN}:0:01", (TRACE, SPAN, True)),
        (f"{TRACE}:{SPAN}:0:2", (TRACE, SPAN, True)),  # debug
        (f"{TRACE}:{SPAN}:0:3", (TRACE, SPAN, True)),
        (f"{TRACE}:{SPAN}:0:4", (TRACE, SPAN, False)),  # firehose only
        (f"{TRACE}:{SPAN}:{OTHER_SPAN}:1", (TRACE, SPAN, True)),
        (f"{TRACE64}:{SPAN}:0:1", ("0" * 16 + TRACE64, SPAN, True)),
        ("abc:def:0:1", ("0" * 29 + "abc", "0" * 13 + "def", True)),
        (f"{TRACE}%3A{SPAN}%3A0%3A1", (TRACE, SPAN, True)),  # URL-encoded
        (f"{TRACE}%3a{SPAN}%3a0%3a1", (TRACE, SPAN, True)),
        (f"{TRACE.upper()}:{SPAN}:0:1", (TRACE, SPAN, True)),
        ([f"{TRACE}:{SPAN}:0:1", f"{TRACE}:{SPAN}:0:1"], (TRACE, SPAN, True)),
        (f" {TRACE}:{SPAN}:0:1\t", (TRACE, SPAN, True)),  # whitespace around it is trimmed
    ],
)
def test_jaeger_extract(value, expected):
    assert ids(JaegerPropagator().extract({"uber-trace-id": value})) == expected
    assert ids(JaegerPropagator().extract({"Uber-Trace-Id": value}, getter=ListGetter())) == expected


@pytest.mark.parametrize(
    "value",
    [
        f"{TRACE}:{SPAN}:0",
        f"{TRACE}:{SPAN}:0:1:1",
        f"{TRACE}0:{SPAN}:0:1",  # 33 digits
        f"{TRACE}:{SPAN}0:0:1",  # 17 digits
        f"{'0' * 32}:{SPAN}:0:1",
        f"{TRACE}:0:0:1",
        f"{TRACE}:{SPAN}:0:100",
        f"{TRACE}:{SPAN}:0:g",
        f"{TRACE}:{SPAN}::1",
        f":{SPAN}:0:1",
        f"{TRACE}-{SPAN}-0-1",
        f"{TRACE}:{SPAN}:0:1" + "%20" * 100,
        [f"{TRACE}:{SPAN}:0:1", f"{OTHER_TRACE}:{SPAN}:0:1"],
        f"{TRACE}:{SPAN}:0:1,{OTHER_TRACE}:{SPAN}:0:1",
        "",
    ],
)
def test_jaeger_extract_invalid(value):
    base = Context()
    assert JaegerPropagator().extract({"uber-trace-id": value}, base) is base


def test_jaeger_baggage_extract():
    headers = {
        "uber-trace-id": f"{TRACE}:{SPAN}:0:1",
        "uberctx-user": "alice%20smith",
        "UberCtx-Tenant": "t%2F1",
        "uberctx-": "nameless",
        "uberctx-twice": ["a", "b"],  # differing values: skipped
        "other": "x",
    }
    ctx = JaegerPropagator().extract(headers)
    assert ids(ctx) == (TRACE, SPAN, True)
    assert baggage.get_all(ctx) == {"user": "alice smith", "tenant": "t/1"}
    # baggage without a trace header is still read
    assert baggage.get_all(JaegerPropagator().extract({"uberctx-k": "v"})) == {"k": "v"}


def test_jaeger_baggage_is_bounded():
    headers = {f"uberctx-k{i}": "v" for i in range(500)}
    assert len(baggage.get_all(JaegerPropagator().extract(headers))) == 64
    headers = {f"uberctx-k{i}": "v" * 4000 for i in range(5)}
    assert len(baggage.get_all(JaegerPropagator().extract(headers))) == 2


@pytest.mark.parametrize("sampled", [True, False])
def test_jaeger_inject_and_round_trip(sampled):
    ctx = baggage.set_baggage("user", "alice smith/1", local_context(sampled=sampled))
    ctx = baggage.set_baggage("bad key", "x", ctx)
    carrier: dict[str, str] = {}
    JaegerPropagator().inject(carrier, ctx)
    assert carrier == {
        "uber-trace-id": f"{TRACE}:{SPAN}:0:{1 if sampled else 0}",
        "uberctx-user": "alice%20smith%2F1",
    }
    back = JaegerPropagator().extract(carrier)
    assert ids(back) == (TRACE, SPAN, sampled)
    assert baggage.get_all(back) == {"user": "alice smith/1"}
    assert JaegerPropagator().fields == {"uber-trace-id"}


def test_extractors_survive_a_broken_getter():
    for propagator in [*B3_BOTH, JaegerPropagator()]:
        base = Context()
        assert propagator.extract({}, base, getter=RaisingGetter()) is base


# -- the composite ---------------------------------------------------------------------


class Exploding(textmap.TextMapPropagator):
    def extract(self, carrier, context=None, getter=textmap.default_getter):
        raise RuntimeError("boom")

    def inject(self, carrier, context=None, setter=textmap.default_setter):
        raise RuntimeError("boom")

    @property
    def fields(self):
        return {"boom"}


W3C = {"traceparent": f"00-{TRACE}-{SPAN}-01"}


def test_composite_first_valid_wins_and_other_trace_is_a_link():
    composite = CompositePropagator([TraceContextPropagator(), B3MultiPropagator(), JaegerPropagator()])
    headers = {**W3C, "x-b3-traceid": OTHER_TRACE, "x-b3-spanid": OTHER_SPAN, "x-b3-sampled": "1"}
    ctx = composite.extract(headers)
    assert ids(ctx) == (TRACE, SPAN, True)
    links = extracted_links(ctx)
    assert [(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in links] == [
        (OTHER_TRACE, OTHER_SPAN)
    ]
    assert isinstance(links[0], trace.Link) and links[0].context.is_remote


def test_composite_same_trace_id_is_no_link_and_order_matters():
    composite = CompositePropagator([B3SinglePropagator(), TraceContextPropagator()])
    headers = {**W3C, "b3": f"{TRACE}-{OTHER_SPAN}-0"}
    ctx = composite.extract(headers)
    assert ids(ctx) == (TRACE, OTHER_SPAN, False)  # b3 comes first here
    assert extracted_links(ctx) == []


def test_composite_skips_invalid_and_broken_formats(warnings):
    composite = CompositePropagator([Exploding(), TraceContextPropagator(), B3SinglePropagator()])
    ctx = composite.extract({"traceparent": "garbage", "b3": f"{OTHER_TRACE}-{OTHER_SPAN}-1"})
    assert ids(ctx) == (OTHER_TRACE, OTHER_SPAN, True)
    assert extracted_links(ctx) == []
    carrier: dict[str, str] = {}
    composite.inject(carrier, local_context())
    assert set(carrier) == {"traceparent", "b3"}
    composite.extract({})
    composite.inject({}, local_context())
    lines = warnings()
    assert len(lines) == 2 and all("Exploding" in line for line in lines)
    assert composite.fields == {"boom", "traceparent", "tracestate", "b3"}


def test_composite_links_are_this_extractions_only():
    """A context that already holds links (a thread started inside an earlier request
    carries its context) does not lend them to the next extraction made over it."""
    composite = CompositePropagator([TraceContextPropagator(), B3MultiPropagator()])
    earlier = composite.extract({**W3C, "x-b3-traceid": OTHER_TRACE, "x-b3-spanid": OTHER_SPAN}, Context())
    assert len(extracted_links(earlier)) == 1
    later = composite.extract({"traceparent": f"00-{'5' * 32}-{SPAN}-01"}, earlier)
    assert ids(later) == ("5" * 32, SPAN, True) and extracted_links(later) == []
    assert composite.extract({}, earlier) is not None and extracted_links(composite.extract({}, earlier)) == []
    third = "3" * 32
    again = composite.extract({"traceparent": f"00-{'5' * 32}-{SPAN}-01", "x-b3-traceid": third, "x-b3-spanid": SPAN}, earlier)
    assert [f"{link.context.trace_id:032x}" for link in extracted_links(again)] == [third]


def test_composite_merges_baggage_from_every_format():
    composite = CompositePropagator([TraceContextPropagator(), BaggagePropagator(), JaegerPropagator()])
    headers = {**W3C, "baggage": "a=1", "uberctx-b": "2", "uber-trace-id": f"{OTHER_TRACE}:{OTHER_SPAN}:0:1"}
    ctx = composite.extract(headers)
    assert ids(ctx) == (TRACE, SPAN, True)
    assert baggage.get_all(ctx) == {"a": "1", "b": "2"}
    assert len(extracted_links(ctx)) == 1


def test_composite_of_nothing_and_links_of_plain_contexts():
    composite = CompositePropagator([])
    base = Context()
    assert composite.extract(W3C, base) is base
    assert isinstance(composite.extract(W3C), Context)
    carrier: dict[str, str] = {}
    composite.inject(carrier, local_context())
    assert carrier == {} and composite.fields == set()
    assert extracted_links(Context()) == []
    assert extracted_links(None) == []


def test_composite_round_trip_all_formats():
    composite = build(["tracecontext", "baggage", "b3", "b3multi", "jaeger"])
    carrier: dict[str, str] = {}
    composite.inject(carrier, baggage.set_baggage("k", "v", local_context()))
    assert {"traceparent", "baggage", "b3", "x-b3-traceid", "uber-trace-id", "uberctx-k"} <= set(carrier)
    for name in ["tracecontext", "b3", "b3multi", "jaeger"]:
        assert ids(build([name]).extract(carrier)) == (TRACE, SPAN, True), name
    ctx = composite.extract(carrier)
    assert ids(ctx) == (TRACE, SPAN, True) and extracted_links(ctx) == []
    assert baggage.get_all(ctx) == {"k": "v"}


# -- build / install / config ----------------------------------------------------------


def test_build_from_names(warnings):
    kinds = [type(p) for p in build(["TraceContext", "baggage", "b3", "B3MULTI", "jaeger", "b3"]).propagators]
    assert kinds == [TraceContextPropagator, BaggagePropagator, B3SinglePropagator, B3MultiPropagator, JaegerPropagator]
    assert build([]).propagators == () and build(["none"]).propagators == ()
    assert build(["b3", "none"]).propagators == ()
    assert warnings() == []
    assert [type(p) for p in build(["no-such-propagator", "jaeger", "no-such-propagator"]).propagators] == [
        JaegerPropagator
    ]
    lines = warnings()
    assert len(lines) == 1 and "'no-such-propagator'" in lines[0]


def test_build_loads_other_names_from_entry_points(monkeypatch):
    from autotrace import distributions

    class FakeEntryPoint:
        def load(self):
            return B3MultiPropagator

    def entry_points(group, name):
        assert group == "opentelemetry_propagator"
        return [FakeEntryPoint()] if name == "custom" else []

    monkeypatch.setattr(distributions, "entry_points", entry_points)
    assert [type(p) for p in build(["custom"]).propagators] == [B3MultiPropagator]


def test_entry_points_are_installed():
    """By names of their own (autotrace_b3 ...): b3, b3multi and jaeger are the contrib packages'."""
    from opentelemetry.util._importlib_metadata import entry_points

    for name, cls in [("b3", B3SinglePropagator), ("b3multi", B3MultiPropagator), ("jaeger", JaegerPropagator)]:
        (found,) = entry_points(group="opentelemetry_propagator", name="autotrace_" + name)
        assert found.load() is cls and propagation.ENTRY_POINTS[name] == "autotrace_" + name
        assert not [e for e in entry_points(group="opentelemetry_propagator", name=name) if e.value.startswith("autotrace")]


@pytest.fixture
def clean_install(monkeypatch):
    from opentelemetry import propagate

    before = propagate.get_global_textmap()
    monkeypatch.setattr(propagation, "_installed", None)
    yield
    propagate.set_global_textmap(before)


def test_install_once(clean_install):
    from opentelemetry import propagate

    first = install(["b3", "jaeger"])
    assert propagate.get_global_textmap() is first
    assert install(["tracecontext"]) is first  # idempotent
    ctx = propagate.extract({"b3": f"{TRACE}-{SPAN}-1"})
    assert ids(ctx) == (TRACE, SPAN, True)


def test_built_in_names_and_the_setting_the_api_can_load():
    assert [propagation.built_in_name(n) for n in ["B3", " autotrace_b3 ", "AUTOTRACE_JAEGER", "tracecontext"]] == [
        "b3",
        "b3",
        "jaeger",
        "tracecontext",
    ]
    assert propagation.built_in_name("xray") is None and propagation.built_in_name("autotrace_xray") is None
    assert propagation.api_setting(["tracecontext", "baggage", "b3", "b3multi", "jaeger", "xray"]) == (
        "tracecontext,baggage,autotrace_b3,autotrace_b3multi,autotrace_jaeger,xray"
    )
    assert propagation.api_setting([]) == "none"
    kinds = [type(p) for p in build(["autotrace_b3", "b3", "autotrace_jaeger"]).propagators]
    assert kinds == [B3SinglePropagator, JaegerPropagator]  # autotrace_b3 is b3: once


def test_arm_installs_at_once_when_the_api_is_imported(clean_install):
    from opentelemetry import propagate

    propagation.arm(["b3"])  # opentelemetry.propagate is imported already: now
    assert [type(p) for p in propagate.get_global_textmap().propagators] == [B3SinglePropagator]


def test_arm_installs_when_the_app_imports_the_api(tmp_path):
    """In a new process: the agent's propagator is the global one by the end of the app's
    own import of opentelemetry.propagate, which loads OTEL_PROPAGATORS as the agent set it."""
    import os
    import subprocess
    import sys

    script = (
        "from autotrace import propagation\n"
        "propagation.arm(['b3', 'jaeger'])\n"
        "from opentelemetry import propagate\n"
        "print([type(p).__module__ for p in propagate.get_global_textmap().propagators])\n"
        "print(propagation.install(['tracecontext']) is propagate.get_global_textmap())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTOTRACE_"))}
    env["OTEL_PROPAGATORS"] = propagation.api_setting(["b3", "jaeger"])
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["['autotrace.propagation.b3', 'autotrace.propagation.jaeger']", "True"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("b3", ("b3",)),
        ("B3,b3multi", ("b3", "b3multi")),
        ("jaeger, tracecontext ,baggage", ("jaeger", "tracecontext", "baggage")),
        ("b3,B3", ("b3",)),
        ("autotrace_b3,autotrace_b3multi,autotrace_jaeger", ("b3", "b3multi", "jaeger")),  # as the agent writes them
        ("autotrace_b3,b3", ("b3",)),
    ],
)
def test_config_accepts_the_formats(value, expected, warnings):
    assert config.load({"OTEL_PROPAGATORS": value}).propagators == expected
    assert warnings() == []


def test_config_warning_lists_the_formats(warnings):
    assert config.load({"OTEL_PROPAGATORS": "zipkin,b3"}).propagators == ("b3",)
    (line,) = warnings()
    assert "'zipkin'" in line and "b3, b3multi, jaeger" in line


# -- properties: arbitrary input never raises, stays fast, never yields garbage ---------

HEADER_NAMES = [
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
    "uberctx-k",
]
EXTRACTORS = [
    TraceContextPropagator(),
    BaggagePropagator(),
    B3SinglePropagator(),
    B3MultiPropagator(),
    JaegerPropagator(),
    build(["tracecontext", "baggage", "b3", "b3multi", "jaeger"]),
]

text_values = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="0123456789abcdefABCDEF-:%3d,", max_size=80),
    st.builds(lambda n, c: c * n, st.integers(8000, 60000), st.sampled_from("0a-:")),
)


@st.composite
def mixed_case(draw, name):
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(ch.upper() if flip else ch for ch, flip in zip(name, flips))


carriers = st.dictionaries(
    st.sampled_from(HEADER_NAMES).flatmap(lambda name: st.one_of(st.just(name), mixed_case(name))),
    st.one_of(
        text_values,
        st.lists(text_values, max_size=5),
        st.builds(lambda v, n: [v] * n, text_values, st.integers(0, 5000)),
        st.binary(max_size=40),
        st.integers(),
        st.none(),
    ),
    max_size=8,
)


def _valid_under_own_rules(sc: trace.SpanContext) -> bool:
    return sc.is_valid and 0 < sc.trace_id < 2**128 and 0 < sc.span_id < 2**64 and sc.is_remote


MAX_PEAK_BYTES = 1 << 20  # extra memory one extraction may take, whatever the input


def bounded_extract(propagator, carrier, getter) -> Context:
    """``propagator.extract`` checked to take under MAX_PEAK_BYTES at its peak (bounded
    work is checked by counting what is read: test_every_extractor_reads_a_bounded_amount)."""
    ctx = propagator.extract(carrier, Context(), getter=getter)
    tracemalloc.start()
    try:
        again = propagator.extract(carrier, Context(), getter=getter)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_PEAK_BYTES, peak
    assert span_context(again) == span_context(ctx)
    return ctx


def ref_traceparent_in_dict(carrier: dict, getter: textmap.Getter) -> tuple[int, int] | None:
    """What a dict carrier's ``traceparent`` gives: its key as written, else every key
    that is ``traceparent`` in another case (several: the header given several times).
    The API's default getter turns a bytes value into a list of ints (not text)."""
    if carrier.get("traceparent") is not None:
        found = [carrier["traceparent"]]
    else:
        found = [v for k, v in carrier.items() if k != "traceparent" and k.lower() == "traceparent" and v is not None]
    values: list = []
    for value in found:
        if isinstance(value, bytes) and isinstance(getter, textmap.DefaultGetter):
            return None
        if isinstance(value, (str, bytes)):
            values.append(value)
        elif isinstance(value, list):
            values.extend(value)
        else:
            return None  # not text
    if len(values) != 1 or not isinstance(values[0], (str, bytes)):
        return None
    value = values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]
    return ref_tracecontext([value])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(carriers)
@example({"TraceParent": f"00-{TRACE}-{SPAN}-01", "TRACEPARENT": f"00-{TRACE}-{SPAN}-01"})
@example({"TraceParent": [], "TRACEPARENT": [f"00-{TRACE}-{SPAN}-01"]})
@example({"Traceparent": f"00-{TRACE}-{SPAN}-01".encode(), "uberctx-K": b"x"})
def test_extractors_never_raise_and_stay_bounded(carrier):
    """Every extractor, arbitrary carriers (bytes, huge and repeated values, names in
    any case): no exception, bounded memory, and W3C's parent only from a valid header."""
    for propagator in EXTRACTORS:
        for getter in (textmap.default_getter, ListGetter()):
            sc = span_context(bounded_extract(propagator, carrier, getter))
            if sc.is_valid:
                assert _valid_under_own_rules(sc)
            if isinstance(propagator, TraceContextPropagator):
                assert ((sc.trace_id, sc.span_id) if sc.is_valid else None) == ref_traceparent_in_dict(carrier, getter)


class Endless(textmap.Getter):
    """A carrier where every field holds a million copies of ``value`` and that lists a
    million key names (``uberctx-k{i}``, then every field name in upper case): counts
    what an extractor reads of it."""

    COUNT = 10**6

    def __init__(self, value: str) -> None:
        self.value = value
        self.values_read = 0
        self.keys_read = 0

    def get(self, carrier, key):
        if key != key.lower():  # the upper-case names: none of them holds anything
            return None

        def values():
            for _ in range(self.COUNT):
                self.values_read += 1
                yield self.value

        return values()

    def keys(self, carrier):
        def names():
            for i in range(self.COUNT):
                self.keys_read += 1
                yield f"uberctx-k{i}" if i % 2 else HEADER_NAMES[i // 2 % len(HEADER_NAMES)].upper()

        return names()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([f"00-{TRACE}-{SPAN}-01", f"{TRACE}-{SPAN}-1", f"{TRACE}:{SPAN}:0:1", "k=v", "x" * 9000]))
def test_every_extractor_reads_a_bounded_amount(value):
    """Bounded work, whatever the carrier holds: at most MAX_VALUES + 1 values a field,
    MAX_KEYS + 1 names a scan, and a field given a million times is never continued."""
    from autotrace.propagation.fields import MAX_KEYS, MAX_VALUES

    for propagator in EXTRACTORS:
        getter = Endless(value)
        ctx = propagator.extract({}, Context(), getter=getter)
        assert not span_context(ctx).is_valid, type(propagator).__name__
        assert baggage.get_all(ctx) == {}
        scans = 2 * len(HEADER_NAMES)  # an upper bound on the fields one extraction reads
        assert getter.keys_read <= scans * (MAX_KEYS + 1), (type(propagator).__name__, getter.keys_read)
        assert getter.values_read <= (scans + MAX_KEYS) * (MAX_VALUES + 1), (type(propagator).__name__, getter.values_read)


# Reference statements of what each format accepts from a header's RAW values (all its
# copies, before any limit), independent of the propagators' code.


def ref_one_value(values: list[str]) -> str | None:
    """The value a single-valued header holds: copies of one value (repeated or comma-
    joined) count once; none, differing, too many or an oversized copy: None."""
    if not values or len(values) > 64 or any(len(v) > 8192 for v in values):
        return None
    parts = {part.strip(" \t") for value in values for part in value.split(",")}
    return parts.pop() if len(parts) == 1 and "" not in parts else None


def ref_hex_id(text: str | None, sizes: tuple[int, ...]) -> int | None:
    if text is None or len(text) not in sizes or not re.fullmatch(r"[0-9a-fA-F]+", text):
        return None
    return int(text, 16) or None


def ref_b3_single(values: list[str]) -> tuple[int, int] | None:
    value = ref_one_value(values)
    ok = value is not None and re.fullmatch(r"([^-]+)-([^-]+)(-[01d](-[0-9a-fA-F]{16})?)?", value)
    if not ok:
        return None
    trace_id, span_id = ref_hex_id(ok.group(1), (16, 32)), ref_hex_id(ok.group(2), (16,))
    return (trace_id, span_id) if trace_id and span_id else None


def ref_b3_multi(headers: dict[str, list[str]]) -> tuple[int, int, bool] | None:
    """``(trace_id, span_id, sampled)`` from the X-B3-* headers (no ``b3`` header), or None."""
    trace_id = ref_hex_id(ref_one_value(headers.get("x-b3-traceid", [])), (16, 32))
    span_id = ref_hex_id(ref_one_value(headers.get("x-b3-spanid", [])), (16,))
    if not trace_id or not span_id:
        return None
    debug = ref_one_value(headers.get("x-b3-flags", [])) == "1"
    sampled = (ref_one_value(headers.get("x-b3-sampled", [])) or "").lower() in ("1", "true")
    return trace_id, span_id, debug or sampled


def ref_b3(headers: dict[str, list[str]]) -> tuple[int, int] | None:
    if headers.get("b3"):  # a present single header decides alone
        return ref_b3_single(headers["b3"])
    found = ref_b3_multi(headers)
    return found[:2] if found else None


def ref_jaeger(values: list[str]) -> tuple[int, int] | None:
    value = ref_one_value(values)
    if value is None or len(value) > 256:
        return None
    hex_ = "[0-9a-fA-F]"
    ok = re.fullmatch(rf"({hex_}{{1,32}}):({hex_}{{1,16}}):{hex_}{{1,16}}:{hex_}{{1,2}}", unquote(value).strip(" \t"))
    if not ok:
        return None
    trace_id, span_id = int(ok.group(1), 16), int(ok.group(2), 16)
    return (trace_id, span_id) if trace_id and span_id else None


def ref_tracecontext(values: list[str]) -> tuple[int, int] | None:
    if len(values) != 1 or not reference_valid(values[0]):
        return None
    value = values[0].strip(" \t")
    return int(value[3:35], 16), int(value[36:52], 16)


b3_id_text = st.one_of(
    st.sampled_from([TRACE, TRACE64, SPAN, TRACE.upper(), "0" * 16, "0" * 32, TRACE[:-1], SPAN + "0", ""]),
    st.text(alphabet="0123456789abcdefABCDEFg ,", max_size=34),
    st.just(TRACE + " " * 9000),
)
b3_multi_headers = st.fixed_dictionaries(
    {},
    optional={
        name: st.lists(values, min_size=1, max_size=3)
        for name, values in {
            "x-b3-traceid": b3_id_text,
            "x-b3-spanid": b3_id_text,
            "x-b3-sampled": st.sampled_from(["1", "0", "true", "FALSE", "True", "d", "2", "", "1,1", "1,0", " 1 "]),
            "x-b3-flags": st.sampled_from(["1", "0", "", "1,1", "2"]),
        }.items()
    },
)


@settings(max_examples=300, deadline=None)
@given(b3_multi_headers, st.booleans())
@example({"x-b3-traceid": [TRACE64], "x-b3-spanid": [SPAN], "x-b3-flags": ["1"], "x-b3-sampled": ["0"]}, False)
@example({"x-b3-traceid": [TRACE, TRACE + " " * 9000], "x-b3-spanid": [SPAN]}, False)
def test_b3multi_never_accepts_invalid_headers(headers, mixed):
    carrier = {name.upper() if mixed else name: values for name, values in headers.items()}
    expected = ref_b3_multi(headers)
    for propagator in B3_BOTH:
        ctx = propagator.extract(carrier, Context(), getter=ListGetter())
        sc = span_context(ctx)
        if expected is None:
            assert not sc.is_valid
        else:
            assert (sc.trace_id, sc.span_id, sc.trace_flags.sampled) == expected


# -- the composite through a server's own header lookup (server_span) ------------------

SERVER_FORMATS = ["tracecontext", "baggage", "b3", "b3multi", "jaeger"]
GOOD_VALUES = {
    "traceparent": [f"00-{TRACE}-{SPAN}-01", f"00-{OTHER_TRACE}-{OTHER_SPAN}-03", f"cc-{TRACE}-{SPAN}-00-more"],
    "tracestate": ["a=1", "t@v=x, b=2", ",,c=3"],
    "baggage": ["bk=1", "bk=2;p"],
    "b3": [f"{TRACE}-{SPAN}-1", f"{OTHER_TRACE}-{OTHER_SPAN}-d", "0", f"{TRACE64}-{SPAN}"],
    "x-b3-traceid": [TRACE, OTHER_TRACE, TRACE64],
    "x-b3-spanid": [SPAN, OTHER_SPAN],
    "x-b3-sampled": ["1", "0"],
    "x-b3-flags": ["1"],
    "uber-trace-id": [f"{TRACE}:{SPAN}:0:1", f"{OTHER_TRACE}%3A{OTHER_SPAN}%3A0%3A3", f"{TRACE64}:{SPAN}:0:0"],
    "uberctx-k": ["v", "a%20b"],
}


def server_value(name: str):
    limit = 16447 if name == "tracestate" else 8192
    return st.one_of(
        st.sampled_from(GOOD_VALUES[name]),
        st.sampled_from(GOOD_VALUES[name]).map(lambda v: v + " " * (limit + 1 - len(v))),  # oversized by one
        st.sampled_from(GOOD_VALUES[name]).map(lambda v: v + "," + v),  # comma-joined copies
        st.text(max_size=40),
    )


header_pairs = st.lists(
    st.sampled_from(sorted(GOOD_VALUES)).flatmap(lambda name: st.tuples(mixed_case(name), server_value(name))).flatmap(
        lambda pair: st.sampled_from([[pair], [pair], [pair] * 2, [pair] * 70, [pair] * 3000])  # repeated headers
    ),
    max_size=8,
).map(lambda groups: [pair for group in groups for pair in group])


def server_lookup(pairs: list[tuple[str, str]]):
    """A request's headers as a server presents them: values by lower-case name, and the names."""
    from autotrace import server_span

    table: dict[str, list[str]] = {}
    for name, value in pairs:
        table.setdefault(name.lower(), []).append(value)
    return server_span.HeaderLookup(lambda name: table.get(name, []), lambda: (name for name, _ in pairs)), table


def test_a_servers_lookup_is_not_scanned_for_names_in_another_case():
    """Servers look headers up in any case themselves (names_in_any_case): an absent
    field costs one lookup, not a walk over the request's header names."""
    from autotrace import server_span

    listed = []
    lookup = server_span.HeaderLookup(lambda name: [], lambda: listed.append(1) or ["Host", "Accept"])
    for names in (["tracecontext", "baggage"], ["b3"], ["b3multi"]):
        ctx = build(names).extract(lookup, Context(), getter=server_span._GETTER)
        assert not span_context(ctx).is_valid
    assert listed == []
    build(["jaeger"]).extract(lookup, Context(), getter=server_span._GETTER)  # uberctx-*: a prefix, listed once
    assert listed == [1]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(header_pairs)
@example([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("traceparent", f"00-{TRACE}-{SPAN}-01" + " " * 9000)])
@example([("traceparent", f"00-{TRACE}-{SPAN}-01"), ("TraceState", "a=1"), ("tracestate", "b=" + "x" * 16446)])
@example([("B3", f"{TRACE}-{SPAN}-1"), ("b3", f"{TRACE}-{SPAN}-1" + " " * 9000), ("uber-trace-id", f"{OTHER_TRACE}:{OTHER_SPAN}:0:1")])
def test_the_composite_through_a_servers_lookup_never_continues_an_invalid_header(pairs):
    from autotrace import server_span

    lookup, table = server_lookup(pairs)
    ctx = bounded_extract(build(SERVER_FORMATS), lookup, server_span._GETTER)
    sc = span_context(ctx)
    candidates = [ref_tracecontext(table.get("traceparent", [])), ref_b3(table), ref_jaeger(table.get("uber-trace-id", []))]
    expected = next((found for found in candidates if found), None)
    assert ((sc.trace_id, sc.span_id) if sc.is_valid else None) == expected
    states = table.get("tracestate", [])
    if len(sc.trace_state):  # read only from headers within the limits, never in part
        assert candidates[0] and len(",".join(states)) <= 16447 and len(states) <= 64
    bags = table.get("baggage", [])
    if "bk" in baggage.get_all(ctx):
        assert len(",".join(bags)) <= 8192 and len(bags) <= 64


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=120), st.text(alphabet="0123456789abcdef-d, ", max_size=120)))
def test_b3_never_accepts_an_invalid_single_header(value):
    import re

    ctx = B3SinglePropagator().extract({"b3": value}, Context())
    parts = {part.strip(" \t") for part in value.split(",")}  # copies of one value count once
    ok = len(parts) == 1 and re.fullmatch(
        r"([0-9a-fA-F]{16}|[0-9a-fA-F]{32})-([0-9a-fA-F]{16})(-[01d](-[0-9a-fA-F]{16})?)?", parts.pop()
    )
    valid = bool(ok) and int(ok.group(1), 16) != 0 and int(ok.group(2), 16) != 0
    assert span_context(ctx).is_valid == valid


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdefgABCDEFG:%3A ", max_size=80))
@example("1:1:0:A")
@example("1%3A1%3a0%3A1")
@example("0:1:0:1")
def test_jaeger_never_accepts_an_invalid_trace_header(value):
    import re
    from urllib.parse import unquote

    ctx = JaegerPropagator().extract({"uber-trace-id": value}, Context())
    decoded = unquote(value.strip(" \t")).strip(" \t")
    hex_ = "[0-9a-fA-F]"  # Jaeger clients read either case (the module's docstring)
    ok = re.fullmatch(rf"({hex_}{{1,32}}):({hex_}{{1,16}}):({hex_}{{1,16}}):({hex_}{{1,2}})", decoded)
    valid = bool(ok) and int(ok.group(1), 16) != 0 and int(ok.group(2), 16) != 0
    assert span_context(ctx).is_valid == valid


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
    st.booleans(),
    st.sampled_from([B3SinglePropagator, B3MultiPropagator, JaegerPropagator]),
)
def test_round_trip_property(trace_id, span_id, sampled, cls):
    sc = trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=trace.TraceFlags(int(sampled)))
    carrier: dict[str, str] = {}
    cls().inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(sc), Context()))
    back = span_context(cls().extract(carrier, Context()))
    assert (back.trace_id, back.span_id, back.trace_flags.sampled) == (trace_id, span_id, sampled)
