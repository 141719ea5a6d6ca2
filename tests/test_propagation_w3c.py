"""W3C Trace Context Level 2 and W3C Baggage propagators: exact rules, round trips, fuzzing."""

from __future__ import annotations

import re
import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from autotrace.propagation.baggage import (
    BaggagePropagator,
    get_properties,
    set_baggage_with_properties,
)
from autotrace.propagation.tracecontext import TraceContextPropagator

TC = TraceContextPropagator()
BG = BaggagePropagator()

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"
VALID = f"00-{TID}-{SID}-01"


class ListGetter:
    """A server-style getter: every header maps to the list of its (repeated) values."""

    def get(self, carrier, key):
        values = carrier.get(key)
        return list(values) if values else None

    def keys(self, carrier):
        return list(carrier)


LIST_GETTER = ListGetter()


def span_context(ctx: Context) -> SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def extract_tc(traceparent=None, tracestate=None, getter=None):
    carrier = {}
    if traceparent is not None:
        carrier["traceparent"] = traceparent
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    if getter is None:
        return span_context(TC.extract(carrier))
    return span_context(TC.extract(carrier, getter=getter))


# --------------------------------------------------------------------------- traceparent


def test_valid_traceparent_exact():
    sc = extract_tc(VALID)
    assert sc.is_valid and sc.is_remote
    assert sc.trace_id == int(TID, 16)
    assert sc.span_id == int(SID, 16)
    assert sc.trace_flags == 1 and sc.trace_flags.sampled
    assert isinstance(sc.trace_flags, TraceFlags)
    assert len(sc.trace_state) == 0


@pytest.mark.parametrize(
    "flags, sampled, random",
    [("00", False, False), ("01", True, False), ("02", False, True), ("03", True, True), ("ff", True, True), ("a4", False, False)],
)
def test_all_flag_bits_kept(flags, sampled, random):
    sc = extract_tc(f"00-{TID}-{SID}-{flags}")
    assert sc.is_valid
    assert int(sc.trace_flags) == int(flags, 16)
    assert sc.trace_flags.sampled is sampled
    assert bool(sc.trace_flags & 0x02) is random  # Level 2 random-trace-id (API 1.27 lacks the property)


@pytest.mark.parametrize("value", [f" {VALID}", f"{VALID} ", f"\t {VALID} \t"])
def test_ows_trimmed(value):
    sc = extract_tc(value)
    assert sc.is_valid and sc.trace_id == int(TID, 16)


@pytest.mark.parametrize(
    "value, trace_id, span_id, flags",
    [
        (f"01-{TID}-{SID}-01", TID, SID, 1),
        (f"fe-{TID}-{SID}-03", TID, SID, 3),
        (f"cc-{TID}-{SID}-01-what-the-future-holds", TID, SID, 1),
        (f"cc-{TID}-{SID}-09-", TID, SID, 9),
        (f"02-{TID}-{SID}-01-ANYthing goes here?", TID, SID, 1),
    ],
)
def test_higher_versions_read_first_four_fields(value, trace_id, span_id, flags):
    sc = extract_tc(value)
    assert sc.is_valid
    assert (sc.trace_id, sc.span_id, int(sc.trace_flags)) == (int(trace_id, 16), int(span_id, 16), flags)


INVALID_TRACEPARENTS = [
    "",
    " ",
    "garbage",
    f"ff-{TID}-{SID}-01",  # version ff
    f"00-{TID}-{SID}-01-",  # version 00: exactly 55
    f"00-{TID}-{SID}-01-extra",
    f"00-{TID}-{SID}-1",  # short flags
    f"00-{TID}-{SID}-001",
    f"00-{TID[:-1]}-{SID}-01",  # short trace id
    f"00-{TID}0-{SID}-01",
    f"00-{TID}-{SID[:-1]}-01",
    f"00-{TID}-{SID}0-01",
    f"0-{TID}-{SID}-01",
    f"000-{TID}-{SID}-01",
    f"00-{'0' * 32}-{SID}-01",  # all-zero ids
    f"00-{TID}-{'0' * 16}-01",
    f"00-{TID.upper()}-{SID}-01",  # upper case anywhere
    f"00-{TID}-{SID.upper()}-01",
    f"00-{TID}-{SID}-0A",
    f"0A-{TID}-{SID}-01",
    f"0a-{TID}-{SID}-0B-x",
    f"00-{TID[:-1]}g-{SID}-01",  # non-hex
    f"00-{TID}-{SID[:-1]}z-01",
    f"00-{TID}-{SID}-0g",
    f"g0-{TID}-{SID}-01",
    f"00_{TID}_{SID}_01",  # wrong separators
    f"00-{TID}-{SID}_01",
    f"cc-{TID}-{SID}-01.",  # higher version: 56th char must be "-"
    f"cc-{TID}-{SID}-01x-more",
    f"cc-{TID}-{SID}-0",
    f"{VALID},{VALID}",  # comma: given more than once
    f"{VALID},",
    f"cc-{TID}-{SID}-01-a,b",
    f"\n{VALID}",  # not OWS
    f"{VALID}\r",
    f"00-{TID}-{SID}-01" + " " * 500,  # over 512 characters even though trimmable
    f"cc-{TID}-{SID}-01-" + "x" * 500,
    f"00-+{TID[1:]}-{SID}-01",  # int() would accept these
    f"00-{TID}-{SID}- 1",
    f"00-{TID[:-2]}_1-{SID}-01",
    "00-" + "٣" * 32 + f"-{SID}-01",  # non-ASCII digits
]


@pytest.mark.parametrize("value", INVALID_TRACEPARENTS)
@pytest.mark.parametrize("getter", [None, LIST_GETTER])
def test_invalid_traceparent_starts_new_trace(value, getter):
    tp = value if getter is None else [value]
    ts = "vendor=value" if getter is None else ["vendor=value"]
    assert not extract_tc(tp, ts, getter).is_valid


def test_higher_version_at_512_boundary():
    ok = f"cc-{TID}-{SID}-01-" + "x" * (512 - 56)
    assert len(ok) == 512 and extract_tc(ok).is_valid
    assert not extract_tc(ok + "x").is_valid


def test_repeated_traceparent_invalid_with_list_getter():
    assert extract_tc([VALID], getter=LIST_GETTER).is_valid
    assert not extract_tc([VALID, VALID], getter=LIST_GETTER).is_valid
    other = f"00-{TID}-{'1' * 16}-01"
    assert not extract_tc([VALID, other], getter=LIST_GETTER).is_valid
    assert not extract_tc([VALID, ""], getter=LIST_GETTER).is_valid
    # DefaultGetter turns a list value into several values too
    assert not span_context(TC.extract({"traceparent": [VALID, VALID]}, getter=DefaultGetter())).is_valid


def test_missing_or_odd_getter_results():
    assert not extract_tc().is_valid
    assert not extract_tc([], getter=LIST_GETTER).is_valid

    class StrGetter:  # returns a bare string instead of a list
        def get(self, carrier, key):
            return carrier.get(key)

        def keys(self, carrier):
            return list(carrier)

    assert extract_tc(VALID, getter=StrGetter()).is_valid

    class BadGetter(StrGetter):
        def get(self, carrier, key):
            return [42]

    assert not extract_tc(VALID, getter=BadGetter()).is_valid


@pytest.mark.parametrize("getter", [None, LIST_GETTER], ids=["default-getter", "list-getter"])
def test_header_names_in_any_case(getter):
    """W3C: vendors MUST expect the header name in any case (a dict carrier keeps it)."""

    def carrier(**headers):
        return {name: ([v] if getter else v) for name, v in headers.items()}

    def extract(headers):
        return TC.extract(headers) if getter is None else TC.extract(headers, getter=getter)

    ctx = extract(carrier(Traceparent=VALID, TRACESTATE="a=1,b=2"))
    assert span_context(ctx).trace_id == int(TID, 16)
    assert list(span_context(ctx).trace_state.items()) == [("a", "1"), ("b", "2")]
    assert not span_context(extract(carrier(TraceParent=f"00-{TID.upper()}-{SID}-01"))).is_valid
    # two names that differ only in case: the header given twice
    assert not span_context(extract(carrier(Traceparent=VALID, TRACEPARENT=VALID))).is_valid
    # ... and tracestate headers combined in order
    ctx = extract(carrier(traceparent=VALID, TraceState="a=1", TRACESTATE="b=2"))
    assert list(span_context(ctx).trace_state.items()) == [("a", "1"), ("b", "2")]
    ctx = extract(carrier(traceparent=VALID, TraceState="a=1", TRACESTATE="a=2"))
    assert span_context(ctx).is_valid and list(span_context(ctx).trace_state.items()) == [("a", "1")]  # first kept

    bags = carrier(Baggage="a=1", BAGGAGE="b=2;p")
    ctx = BG.extract(bags, Context()) if getter is None else BG.extract(bags, Context(), getter)
    assert dict(otel_baggage.get_all(ctx)) == {"a": "1", "b": "2"} and get_properties("b", ctx) == ("p",)


def test_any_case_lookup_reads_a_bounded_number_of_names():
    """A carrier with a huge number of keys: at most MAX_KEYS names are looked at."""
    from autotrace.propagation.fields import MAX_KEYS

    class ManyKeys:
        listed = 0

        def get(self, carrier, key):
            return None

        def keys(self, carrier):
            def names():
                for i in range(10**6):
                    self.listed += 1
                    yield "x" * 11 if i < 10**6 - 1 else "Traceparent"

            return names()

    getter, base = ManyKeys(), Context()
    assert TC.extract({}, base, getter=getter) is base
    assert getter.listed <= MAX_KEYS + 1


def test_invalid_traceparent_returns_context_unchanged():
    base = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(1, 2, is_remote=False)), Context()
    )
    assert TC.extract({"traceparent": "bad", "tracestate": "a=b"}, base) is base
    assert TC.extract({}, base) is base


def test_extract_replaces_span_in_given_context():
    base = trace.set_span_in_context(NonRecordingSpan(SpanContext(1, 2, is_remote=False)), Context())
    sc = span_context(TC.extract({"traceparent": VALID}, base))
    assert sc.trace_id == int(TID, 16) and sc.is_remote


# --------------------------------------------------------------------------- tracestate


def state_of(tracestate, getter=None):
    sc = extract_tc(VALID if getter is None else [VALID], tracestate, getter)
    assert sc.is_valid  # tracestate never invalidates the traceparent
    return list(sc.trace_state.items())


@pytest.mark.parametrize(
    "header, expected",
    [
        ("rojo=00f067aa0ba902b7", [("rojo", "00f067aa0ba902b7")]),
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]),
        (" a=1 ,\tb=2\t", [("a", "1"), ("b", "2")]),
        ("a=1,,b=2,", [("a", "1"), ("b", "2")]),
        (",,,", []),
        ("", []),
        ("a= x y", [("a", " x y")]),  # value may begin with a space
        ("a=~!#", [("a", "~!#")]),
        ("a1_-*/=v", [("a1_-*/", "v")]),
        ("tenant@vendor=v", [("tenant@vendor", "v")]),
        ("0tenant@v=1", [("0tenant@v", "1")]),
        ("1@a_-*/=1", [("1@a_-*/", "1")]),
        ("k" * 256 + "=v", [("k" * 256, "v")]),
        ("a=" + "v" * 256, [("a", "v" * 256)]),
        ("t" * 241 + "@" + "v" * 14 + "=1", [("t" * 241 + "@" + "v" * 14, "1")]),
        # the current key grammar: ( lcalpha / DIGIT ) 0*255 ( keychar ), "@" a keychar
        ("1a=1", [("1a", "1")]),
        ("foo@=1,bar=2", [("foo@", "1"), ("bar", "2")]),
        ("foo@@bar=1,bar=2", [("foo@@bar", "1"), ("bar", "2")]),
        ("foo@bar@baz=1,bar=2", [("foo@bar@baz", "1"), ("bar", "2")]),
        ("t" * 242 + "@v=1", [("t" * 242 + "@v", "1")]),  # no tenant limit
        ("t@" + "v" * 15 + "=1", [("t@" + "v" * 15, "1")]),  # no vendor limit
        ("t@1v=1", [("t@1v", "1")]),
        ("t@v@w=1", [("t@v@w", "1")]),
        ("z" * 255 + "@=1", [("z" * 255 + "@", "1")]),
        # duplicate keys: the first member kept, later ones discarded
        ("a=1,a=2", [("a", "1")]),
        ("a=1,b=2,a=1", [("a", "1"), ("b", "2")]),
        ("foo=1,foo=1", [("foo", "1")]),
        (",".join(f"k{i}=v" for i in range(31)) + ",k0=again", [(f"k{i}", "v") for i in range(31)]),
    ],
)
def test_valid_tracestate(header, expected):
    assert state_of(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "A=1",  # upper-case key
        "a=1,B=2",
        "_a=1",  # a key starts with lcalpha or a digit
        "*a=1",
        "a",  # no "="
        "a=",  # empty value
        "a= ",
        "=1",
        "a=1=2",  # "=" in value
        "a=x\x7f",
        "a=é",
        "a b=1",
        "a=1;b=2,c=3\x00",
        "k" * 257 + "=v",  # key too long
        "t" * 255 + "@v=1",
        "a=" + "v" * 257,  # value too long
        "@v=1",  # a key starts with lcalpha or a digit
        "@foo=1,bar=2",
        "foo.bar=1",
        "t@V=1",
        ",".join(f"k{i}=v" for i in range(33)),  # over 32 members
        ",".join(f"k{i}=v" for i in range(32)) + ",k0=again",  # a repeated key counts
        "a=" + "v" * 200 + "," + ",".join(f"k{i}=" + "v" * 250 for i in range(31)) + ",z" * 100,
    ],
)
def test_invalid_tracestate_dropped_traceparent_kept(header):
    assert state_of(header) == []


# the longest valid tracestate: 32 members of a 256-character key and value, 31 commas
LONGEST_MEMBERS = [f"k{i:02d}" + "a" * 253 + "=" + "v" * 255 + "~" for i in range(32)]


def test_tracestate_32_members_ok_and_length_bound():
    header = ",".join(f"k{i}=v" for i in range(32))
    assert len(state_of(header)) == 32
    longest = ",".join(LONGEST_MEMBERS)
    assert len(longest) == 32 * (256 + 1 + 256) + 31 == 16447
    assert state_of(longest) == [tuple(m.split("=")) for m in LONGEST_MEMBERS]
    assert state_of(LONGEST_MEMBERS, LIST_GETTER) == state_of(longest)  # one member a header
    # members padded with empty ones past the length bound: invalid before parsing
    assert state_of("a=1" + "," * 16444) == [("a", "1")]  # 16447 characters
    assert state_of("a=1" + "," * 16445) == []
    assert state_of(longest + ",") == []
    assert state_of(["a=1"] + [""] * 64, LIST_GETTER) == []  # more than 64 header values
    assert state_of(["a=1"] + [""] * 63, LIST_GETTER) == [("a", "1")]


def test_tracestate_repeated_headers_combined():
    assert state_of(["a=1", "b=2 , c=3"], LIST_GETTER) == [("a", "1"), ("b", "2"), ("c", "3")]
    assert state_of(["a=1", "a=2"], LIST_GETTER) == [("a", "1")]  # a repeated key across headers: the first kept
    assert state_of(["foo=1", "foo@=1,bar=2"], LIST_GETTER) == [("foo", "1"), ("foo@", "1"), ("bar", "2")]
    assert state_of(["a=1", "B=2"], LIST_GETTER) == []
    assert state_of(["a=1", ""], LIST_GETTER) == [("a", "1")]
    many = [f"k{i}=v" for i in range(32)]
    assert len(state_of(many, LIST_GETTER)) == 32
    assert state_of(many + ["x=1"], LIST_GETTER) == []


def test_invalid_traceparent_ignores_tracestate():
    ctx = TC.extract({"traceparent": f"00-{TID}-{SID}-0x", "tracestate": "a=1"})
    assert not span_context(ctx).is_valid


# --------------------------------------------------------------------------- inject


def ctx_with(trace_id, span_id, flags=0, state=None):
    sc = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(sc), Context())


def test_inject_exact():
    carrier = {}
    TC.inject(carrier, ctx_with(int(TID, 16), int(SID, 16), 0x03, TraceState([("b", "2"), ("a", "1")])))
    assert carrier == {"traceparent": f"00-{TID}-{SID}-03", "tracestate": "b=2,a=1"}

    carrier = {}
    TC.inject(carrier, ctx_with(1, 2, 0))
    assert carrier == {"traceparent": f"00-{'0' * 31}1-{'0' * 15}2-00"}


def test_inject_nothing_without_valid_span():
    carrier = {}
    TC.inject(carrier, Context())
    TC.inject(carrier, ctx_with(0, 2, 1))
    assert carrier == {}
    assert TC.fields == {"traceparent", "tracestate"}


def test_inject_sdk_span_keeps_random_flag():
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        carrier = {}
        TC.inject(carrier)
        sc = span.get_span_context()
    assert sc.trace_flags & 0x02  # the SDK's random trace ids set the Level 2 random flag
    assert carrier["traceparent"] == f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
    assert carrier["traceparent"].endswith("-03")
    back = span_context(TC.extract(carrier))
    assert back.trace_flags == sc.trace_flags

    # an incoming 03: an SDK child of it writes 03 again
    parent = TC.extract({"traceparent": f"00-{TID}-{SID}-03"})
    child = tracer.start_span("child", context=parent)
    carrier = {}
    TC.inject(carrier, trace.set_span_in_context(child))
    child.end()
    assert carrier["traceparent"] == f"00-{TID}-{child.get_span_context().span_id:016x}-03"


def test_an_entry_the_app_adds_is_injected_first_and_the_rest_keep_their_order():
    """The agent writes no tracestate entry of its own; the app's goes first (Level 2)."""
    from opentelemetry.sdk.trace import TracerProvider

    parent = TC.extract({"traceparent": VALID, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@v=x"})
    incoming = span_context(parent).trace_state
    for state, expected in [
        (incoming.add("app", "1"), "app=1,rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@v=x"),
        (incoming.update("congo", "new"), "congo=new,rojo=00f067aa0ba902b7,t@v=x"),  # updated: moved first
    ]:
        sc = span_context(parent)
        app_parent = trace.set_span_in_context(
            NonRecordingSpan(SpanContext(sc.trace_id, sc.span_id, True, sc.trace_flags, state)), Context()
        )
        child = TracerProvider().get_tracer("t").start_span("client", context=app_parent)
        carrier = {}
        TC.inject(carrier, trace.set_span_in_context(child))
        child.end()
        assert carrier["tracestate"] == expected
    # without the app's entry: exactly what came in
    child = TracerProvider().get_tracer("t").start_span("client", context=parent)
    carrier = {}
    TC.inject(carrier, trace.set_span_in_context(child))
    assert carrier["tracestate"] == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,t@v=x"


@pytest.mark.parametrize(
    "tracestate",
    ["foo@=1,bar=2", "foo@@bar=1,bar=2", "foo@bar@baz=1,bar=2", "1a=1", "t" * 242 + "@v=1", "t@" + "v" * 15 + "=1"],
)
def test_a_tracestate_of_the_current_grammar_survives_the_sdk(tracestate):
    """The API's TraceState checks the older grammar; the extracted state never meets those
    checks: an SDK child span (its sampler copies the parent's state) injects it unchanged,
    and the app's add/update/delete keep the other members."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    parent = TC.extract({"traceparent": VALID, "tracestate": tracestate})
    for sampler in (ParentBased(ALWAYS_ON), TraceIdRatioBased(1.0)):
        child = TracerProvider(sampler=sampler).get_tracer("t").start_span("client", context=parent)
        carrier = {}
        TC.inject(carrier, trace.set_span_in_context(child))
        child.end()
        assert carrier["tracestate"] == tracestate, sampler
    state = span_context(parent).trace_state
    first = tracestate.split(",")[0]
    assert state.add("app", "1").to_header() == "app=1," + tracestate
    assert state.update("app", "2").to_header() == "app=2," + tracestate
    assert state.update("zz@", "x").delete("zz@").to_header() == tracestate
    assert state.delete(first.split("=")[0]).to_header() == ",".join(tracestate.split(",")[1:])
    assert state.add("@bad", "1") is state and state.add("ok", "bad,value") is state


class RaisingGetter:
    def get(self, carrier, key):
        raise RuntimeError("broken carrier")

    def keys(self, carrier):
        raise RuntimeError("broken carrier")


class RaisingOnStateGetter(ListGetter):
    def get(self, carrier, key):
        if key == "tracestate":
            raise RuntimeError("broken carrier")
        return super().get(carrier, key)


def test_extract_survives_a_broken_getter():
    base = otel_baggage.set_baggage("keep", "1", Context())
    assert TC.extract({"traceparent": VALID}, base, getter=RaisingGetter()) is base
    assert BG.extract({"baggage": "a=1"}, base, getter=RaisingGetter()) is base
    # a tracestate that cannot be read is dropped, the traceparent kept
    sc = span_context(TC.extract({"traceparent": [VALID], "tracestate": ["a=1"]}, base, getter=RaisingOnStateGetter()))
    assert sc.is_valid and len(sc.trace_state) == 0


@pytest.mark.parametrize("flags", [0, 1, 2, 3, 0x80, 0xFF])
def test_round_trip(flags):
    state = TraceState([("congo", "t61rcWkgMzE"), ("t@v", " a b"), ("rojo", "00f067aa0ba902b7")])
    carrier = {}
    TC.inject(carrier, ctx_with(int(TID, 16), int(SID, 16), flags, state))
    sc = span_context(TC.extract(carrier))
    assert (sc.trace_id, sc.span_id, int(sc.trace_flags)) == (int(TID, 16), int(SID, 16), flags)
    assert list(sc.trace_state.items()) == list(state.items())
    assert sc.is_remote


# --------------------------------------------------------------------------- baggage


def bag(header, context=None, getter=None):
    carrier = {"baggage": header}
    ctx = BG.extract(carrier, context if context is not None else Context(), **({"getter": getter} if getter else {}))
    return ctx, dict(otel_baggage.get_all(ctx))


def test_baggage_basic_and_ows():
    _, entries = bag(" userId = alice , serverNode=DF%2028 ,isProduction=false ")
    assert entries == {"userId": "alice", "serverNode": "DF 28", "isProduction": "false"}


def test_baggage_percent_decoding_utf8():
    _, entries = bag("a=%E2%82%AC%20x,b=1+2,c=%zz,d=%FF,e=")
    assert entries == {"a": "€ x", "b": "1+2", "c": "%zz", "d": "\ufffd", "e": ""}


def test_baggage_properties_kept_and_written_back():
    ctx, entries = bag("key1=value1;property1;property2, key2 = value2 ; p = v%20w ;flag")
    assert entries == {"key1": "value1", "key2": "value2"}
    assert get_properties("key1", ctx) == ("property1", "property2")
    assert get_properties("key2", ctx) == ("p=v%20w", "flag")
    carrier = {}
    BG.inject(carrier, ctx)
    assert carrier == {"baggage": "key1=value1;property1;property2,key2=value2;p=v%20w;flag"}


def test_baggage_properties_dropped_when_value_changes():
    ctx, _ = bag("k=v;prop")
    ctx = otel_baggage.set_baggage("k", "new", ctx)
    assert get_properties("k", ctx) == ()
    carrier = {}
    BG.inject(carrier, ctx)
    assert carrier == {"baggage": "k=new"}


@pytest.mark.parametrize(
    "header, expected",
    [
        ("good=1,bad", {"good": "1"}),  # no "="
        ("bad key=1,good=1", {"good": "1"}),
        ("good=1,bad=a b", {"good": "1"}),  # space in value
        ('bad=a"b,good=1', {"good": "1"}),
        ("bad=a\\b,good=1", {"good": "1"}),
        ("bad=é,good=1", {"good": "1"}),
        ("bad=1;p r,good=1", {"good": "1"}),  # invalid property: member invalid
        ("bad=1;=x,good=1", {"good": "1"}),
        ("bad(x)=1,good=1", {"good": "1"}),
        ("=1,good=1", {"good": "1"}),
        (",,good=1,,", {"good": "1"}),
        ("a=1,a=2", {"a": "2"}),
    ],
)
def test_baggage_invalid_members_skipped(header, expected):
    assert bag(header)[1] == expected


def test_baggage_limits():
    header = ",".join(f"k{i}=v" for i in range(100))
    _, entries = bag(header)
    assert list(entries) == [f"k{i}" for i in range(64)]
    # header over 8192 bytes: ignored whole
    assert bag("a=1," + "b=" + "x" * 8190)[1] == {}
    assert bag("a=1," + "b=" + "x" * 8180)[1] == {"a": "1", "b": "x" * 8180}
    # the byte length counts, not characters
    assert bag("a=1,b=" + "é" * 4100)[1] == {}


def test_baggage_repeated_headers_combined():
    _, entries = bag(["a=1", "b=2;p", "bad"], getter=LIST_GETTER)
    assert entries == {"a": "1", "b": "2"}
    assert bag(["a=1", "b=" + "x" * 8190], getter=LIST_GETTER)[1] == {}
    # at most 64 values, as the servers' getters read them (fields.bounded_values)
    assert bag(["a=1"] + [""] * 63, getter=LIST_GETTER)[1] == {"a": "1"}
    assert bag(["a=1"] + [""] * 64, getter=LIST_GETTER)[1] == {}


def test_baggage_merges_existing_context():
    base = otel_baggage.set_baggage("keep", "1", Context())
    base = otel_baggage.set_baggage("over", "old", base)
    base = set_baggage_with_properties("withprop", "x", ("p=1", "bad prop"), base)
    ctx, entries = bag("over=new,added=2", base)
    assert entries == {"keep": "1", "over": "new", "withprop": "x", "added": "2"}
    assert get_properties("withprop", ctx) == ("p=1",)
    # no header or nothing valid: the context itself
    assert BG.extract({}, base) is base
    assert BG.extract({"baggage": "bad"}, base) is base


def test_baggage_extract_defaults_to_current_context():
    from opentelemetry import context as otel_context

    token = otel_context.attach(otel_baggage.set_baggage("cur", "1", Context()))
    try:
        ctx = BG.extract({"baggage": "a=2"})
    finally:
        otel_context.detach(token)
    assert dict(otel_baggage.get_all(ctx)) == {"cur": "1", "a": "2"}


def test_baggage_inject_encoding_and_skips():
    ctx = Context()
    for k, v in [("a", "x y,z;w=\"q\"\\%"), ("bad key", "1"), ("é", "1"), ("n", 5), ("u", "€")]:
        ctx = otel_baggage.set_baggage(k, v, ctx)
    carrier = {}
    BG.inject(carrier, ctx)
    assert carrier == {"baggage": "a=x%20y%2Cz%3Bw=%22q%22%5C%25,n=5,u=%E2%82%AC"}
    assert BG.fields == {"baggage"}
    carrier = {}
    BG.inject(carrier, Context())
    assert carrier == {}


def test_baggage_inject_limits():
    ctx = Context()
    for i in range(100):
        ctx = otel_baggage.set_baggage(f"k{i}", "v", ctx)
    carrier = {}
    BG.inject(carrier, ctx)
    assert carrier["baggage"].split(",") == [f"k{i}=v" for i in range(64)]

    ctx = otel_baggage.set_baggage("a", "x" * 5000, Context())
    ctx = otel_baggage.set_baggage("big", "y" * 5000, ctx)  # would exceed: dropped
    ctx = otel_baggage.set_baggage("small", "z", ctx)  # still fits
    carrier = {}
    BG.inject(carrier, ctx)
    assert carrier["baggage"] == "a=" + "x" * 5000 + ",small=z"
    assert len(carrier["baggage"].encode()) <= 8192


@pytest.mark.parametrize(
    "entries",
    [
        {"userId": "alice"},
        {"ü": "skipped-key", "k": "naïve € 🚀 漢字", "sp": " leading and trailing ", "sym": "%;,=\"\\+"},
        {"empty": "", "a-b.c_d~!#$&'*+^`|": "1"},
    ],
)
def test_baggage_round_trip(entries):
    ctx = Context()
    for k, v in entries.items():
        ctx = otel_baggage.set_baggage(k, v, ctx)
    ctx = set_baggage_with_properties("withprops", "v ü", ("p1", "p2=v%20x"), ctx)
    carrier = {}
    BG.inject(carrier, ctx)
    assert carrier["baggage"].isascii()
    back = BG.extract(carrier, Context())
    expected = {k: v for k, v in entries.items() if k.isascii()}
    expected["withprops"] = "v ü"
    assert dict(otel_baggage.get_all(back)) == expected
    assert get_properties("withprops", back) == ("p1", "p2=v%20x")


# --------------------------------------------------------------------------- properties

# independent statement of a valid traceparent (after OWS trimming), for cross-checks
_HEXN = "[0-9a-f]"
_REFERENCE = re.compile(
    rf"[ \t]*(?:00-{_HEXN}{{32}}-{_HEXN}{{16}}-{_HEXN}{{2}}"
    rf"|(?!ff|00){_HEXN}{{2}}-{_HEXN}{{32}}-{_HEXN}{{16}}-{_HEXN}{{2}}(?:-[^,]*)?)[ \t]*",
    re.DOTALL,
)


def reference_valid(value: str) -> bool:
    if len(value) > 512 or "," in value or not _REFERENCE.fullmatch(value):
        return False
    v = value.strip(" \t")
    return v[3:35] != "0" * 32 and v[36:52] != "0" * 16


hex_lower = st.text(alphabet="0123456789abcdef", min_size=0, max_size=40)
near_miss = st.builds(
    lambda v, t, s, f, sep, tail, ows: f"{ows}{v}{sep}{t}{sep}{s}{sep}{f}{tail}{ows}",
    st.sampled_from(["00", "01", "fe", "ff", "0A", "cc", "0"]),
    st.one_of(st.just(TID), st.just("0" * 32), hex_lower, st.just(TID.upper())),
    st.one_of(st.just(SID), st.just("0" * 16), hex_lower),
    st.sampled_from(["01", "00", "ff", "0F", "1", "0g"]),
    st.sampled_from(["-", "_", "--"]),
    st.one_of(st.just(""), st.text(max_size=20), st.just("-x" * 300)),
    st.sampled_from(["", " ", "\t", "\n"]),
)
header_text = st.one_of(
    st.text(max_size=100),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
    near_miss,
    near_miss.map(str.upper),
    near_miss.map(lambda s: s.swapcase()),
)
# No deadline: bounded work is checked by counting what is read, never by the clock.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(traceparent=header_text, tracestate=header_text)
def test_fuzz_traceparent_dict_getter(traceparent, tracestate):
    sc = extract_tc(traceparent, tracestate)
    assert sc.is_valid == reference_valid(traceparent)
    if sc.is_valid:
        v = traceparent.strip(" \t")
        assert sc.trace_id == int(v[3:35], 16)
        assert sc.span_id == int(v[36:52], 16)
        assert int(sc.trace_flags) == int(v[53:55], 16)


@FUZZ
@given(values=st.lists(header_text, max_size=5), states=st.lists(header_text, max_size=5))
def test_fuzz_traceparent_list_getter(values, states):
    sc = extract_tc(values, states, LIST_GETTER)
    assert sc.is_valid == (len(values) == 1 and reference_valid(values[0]))


@FUZZ
@given(
    base=st.sampled_from([VALID, f"cc-{TID}-{SID}-01-"]),
    filler=st.text(max_size=30),
    repeat=st.integers(min_value=1, max_value=20_000),
)
def test_fuzz_huge_values_bounded(base, filler, repeat):
    value = base + filler * repeat
    listed = (filler + ",") * repeat
    sc = extract_tc(value, listed)
    assert sc.is_valid == reference_valid(value)
    if len(listed) > 16447:  # over the tracestate limit: dropped whole, never read in part
        assert len(sc.trace_state) == 0
    entries = otel_baggage.get_all(BG.extract({"baggage": listed}, Context()))
    assert len(entries) <= 64
    if len(listed.encode("utf-8", "surrogatepass")) > 8192:
        assert len(entries) == 0
    carrier = {"traceparent": value, "tracestate": listed, "baggage": listed}
    tracemalloc.start()
    try:
        TC.extract(carrier, Context())
        BG.extract(carrier, Context())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # the input is made before: this is what extraction takes


@FUZZ
@given(n=st.integers(min_value=2, max_value=2000))
def test_fuzz_many_repeated_values(n):
    sc = extract_tc([VALID] * n, ["a=1"] * n, LIST_GETTER)
    assert not sc.is_valid
    sc = extract_tc([VALID], [f"k{i}=v" for i in range(n)], LIST_GETTER)
    assert sc.is_valid and len(sc.trace_state) == (n if n <= 32 else 0)
    values = [f"k{i}=v" for i in range(n)]
    ctx = BG.extract({"baggage": values}, Context(), LIST_GETTER)
    # more than 64 header values, or over 8192 bytes: the whole header is ignored
    assert len(otel_baggage.get_all(ctx)) == (n if n <= 64 and len(",".join(values)) <= 8192 else 0)


# independent statement of a tracestate list (W3C Trace Context Level 2, "tracestate
# Header Field Values"): key = ( lcalpha / DIGIT ) 0*255 ( keychar ), keychar = lcalpha /
# DIGIT / "_" / "-" / "*" / "/" / "@"; value = 0*255 ( chr ) nblk-chr; at most 32 members
# (as received) and 16447 characters; a duplicate key discarded ("Mutating the tracestate Field").
_LCALPHA_DIGIT = set("abcdefghijklmnopqrstuvwxyz0123456789")
_KEYCHAR = _LCALPHA_DIGIT | set("_-*/@")


def reference_tracestate(header: str) -> list[tuple[str, str]] | None:
    """The members of a valid ``tracestate`` in order, the first of a repeated key; None if invalid."""
    if len(header) > 16447:
        return None
    listed = [m.strip(" \t") for m in header.split(",") if m.strip(" \t")]
    if len(listed) > 32:
        return None
    members: dict[str, str] = {}
    for member in listed:
        key, eq, value = member.partition("=")
        key_ok = 1 <= len(key) <= 256 and key[0] in _LCALPHA_DIGIT and set(key) <= _KEYCHAR
        value_ok = 1 <= len(value) <= 256 and value[-1] != " " and all(" " <= c <= "~" and c not in ",=" for c in value)
        if not (eq and key_ok and value_ok):
            return None
        if key not in members:
            members[key] = value
    return list(members.items())


member = st.builds(
    lambda k, v: f"{k}={v}",
    st.text(alphabet="abcXYZ09_-*/@ .", min_size=0, max_size=8),
    st.text(alphabet="abc=, ~\x7f\x20é", min_size=0, max_size=8),
)
valid_member = st.from_regex(r"[a-z0-9][a-z0-9_\-*/@]{0,12}=[ -+\--<>-~]{0,6}[!-+\--<>-~]", fullmatch=True)
repeated = st.lists(st.one_of(member, valid_member), min_size=1, max_size=3).map(lambda ms: ms + ms[:1])  # a key again


@FUZZ
@given(members=st.lists(st.one_of(member, valid_member, repeated.map(",".join), header_text), max_size=40))
@example(members=["foo@=1", "foo@@bar=1", "foo@bar@baz=1", "1a=2", "foo@=2"])
@example(members=["t" * 242 + "@v=1", "t@" + "v" * 15 + "=1", "z" * 256 + "=1"])
def test_fuzz_tracestate(members):
    header = ",".join(members)
    sc = extract_tc(VALID, header)
    assert sc.is_valid
    expected = reference_tracestate(header) or []
    assert list(sc.trace_state.items()) == expected
    if expected:  # written back as it came, but for empty members, OWS and later duplicates
        carrier = {}
        TC.inject(carrier, trace.set_span_in_context(NonRecordingSpan(sc), Context()))
        assert carrier["tracestate"] == ",".join(f"{k}={v}" for k, v in expected)


@FUZZ
@given(header=st.one_of(header_text, st.lists(st.one_of(member, header_text), max_size=30).map(";".join)))
def test_fuzz_baggage_never_raises_and_round_trips(header):
    ctx = BG.extract({"baggage": header}, Context())
    entries = dict(otel_baggage.get_all(ctx))
    assert len(entries) <= 64
    carrier = {}
    BG.inject(carrier, ctx)
    if entries:
        back = BG.extract(carrier, Context())
        assert dict(otel_baggage.get_all(back)) == entries
        for name in entries:
            assert get_properties(name, back) == get_properties(name, ctx)


@FUZZ
@given(entries=st.dictionaries(st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}", fullmatch=True), st.text(max_size=20), max_size=10))
def test_fuzz_baggage_value_round_trip(entries):
    ctx = Context()
    for k, v in entries.items():
        ctx = otel_baggage.set_baggage(k, v, ctx)
    carrier = {}
    BG.inject(carrier, ctx)
    back = BG.extract(carrier, Context())
    # values decode back exactly, except unpaired surrogates (not UTF-8 encodable text)
    assert dict(otel_baggage.get_all(back)) == entries
