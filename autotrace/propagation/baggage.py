"""W3C Baggage: the ``baggage`` header (https://www.w3.org/TR/baggage/).

What the OpenTelemetry API's ``W3CBaggagePropagator`` (opentelemetry-api 1.45) gets
wrong and this module gets right, by section of the specification:

* "value" (percent-encoding, RFC 3986): it reads ``+`` as a space and writes a space
  as ``+``, so ``a=1+2`` arrives as ``1 2`` and ``a b`` leaves as ``a+b`` (read ``a+b``
  downstream); here ``+`` is ``+`` and a space ``%20``.
* "property": a member's properties become part of its value and leave
  percent-encoded (``k=v;p`` goes on as ``k=v%3Bp``: value ``v;p``, no property); here
  they stay properties.
* "Multiple baggage headers are allowed": it reads the first only; here all, combined.

Reading: the header's values are combined into one list (joined with ``,``); a header
over 8192 bytes or given more than 64 times is ignored whole. Each list member is
``key OWS "=" OWS value`` followed by ``;``-separated properties (``key`` or
``key=value``), with optional whitespace around every part. Keys are RFC 7230 tokens, values percent-decoded as UTF-8 (invalid
sequences become U+FFFD; ``+`` stays ``+``). An invalid member is skipped, not the whole
header; at most 64 members are kept (the rest are dropped). The entries are merged into
the baggage already in the context, the extracted ones overriding. A getter that
raises reads as no header: the context is returned unchanged. The header name is
matched in any case (:func:`autotrace.propagation.fields.lookup`).

Properties: OpenTelemetry's baggage holds only name -> value. The properties of each
extracted entry are kept beside it, in the context under a private key, as
``{name: (value, (property, ...))}`` with each property normalised to ``key`` or
``key=value`` (its value as received, still percent-encoded). Writing adds an entry's
properties back only while its value is the one they came with: an app that sets a new
value with ``opentelemetry.baggage.set_baggage`` drops the old properties.
:func:`get_properties` reads them.

Writing: members in the baggage's order, keys that are not tokens skipped, values
percent-encoded (UTF-8); at most 64 members and 8192 bytes: a member that would exceed
the byte limit is dropped and the next ones still tried.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from opentelemetry import baggage as otel_baggage
from opentelemetry.context import create_key, get_current, get_value, set_value
from opentelemetry.context.context import Context
from opentelemetry.propagators import textmap

from .base import Propagator
from .fields import read

BAGGAGE = "baggage"
MAX_BAGGAGE_BYTES = 8192
MAX_BAGGAGE_MEMBERS = 64

_PROPERTIES_KEY = create_key("autotrace-baggage-properties")

_OWS = " \t"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_SAFE_BYTES = frozenset(
    b for b in range(0x21, 0x7F) if b not in (0x22, 0x2C, 0x3B, 0x5C, 0x25)
)  # baggage-octets except "%" (which starts an escape)


def _encode(text: str) -> str:
    return "".join(
        chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in text.encode("utf-8", "surrogatepass")
    )


def _parse_property(prop: str) -> str | None:
    """``key`` or ``key=value`` (OWS removed) from one property, or None if invalid."""
    key, eq, value = prop.partition("=")
    key = key.strip(_OWS)
    if not _TOKEN.fullmatch(key):
        return None
    if not eq:
        return key
    value = value.strip(_OWS)
    if not _VALUE.fullmatch(value):
        return None
    return f"{key}={value}"


def _parse_member(member: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``(name, decoded value, properties)`` of one list member, or None if invalid."""
    head, *props = member.split(";")
    key, eq, value = head.partition("=")
    if not eq:
        return None
    key = key.strip(_OWS)
    value = value.strip(_OWS)
    if not _TOKEN.fullmatch(key) or not _VALUE.fullmatch(value):
        return None
    parsed = []
    for prop in props:
        one = _parse_property(prop)
        if one is None:
            return None
        parsed.append(one)
    return key, unquote(value, encoding="utf-8", errors="replace"), tuple(parsed)


def get_properties(name: str, context: Context | None = None) -> tuple[str, ...]:
    """The W3C properties (``key`` or ``key=value``) kept with baggage entry ``name``."""
    value = otel_baggage.get_baggage(name, context)
    kept = (get_value(_PROPERTIES_KEY, context) or {}).get(name)
    if kept is None or value is None or str(value) != kept[0]:
        return ()
    return kept[1]


def set_baggage_with_properties(
    name: str, value: str, properties: tuple[str, ...] = (), context: Context | None = None
) -> Context:
    """Set a baggage entry with W3C properties (each ``key`` or ``key=value``, the value
    percent-encoded); invalid properties are left out."""
    context = otel_baggage.set_baggage(name, value, context)
    kept = dict(get_value(_PROPERTIES_KEY, context) or {})
    valid = tuple(p for p in map(_parse_property, properties) if p is not None)
    kept[name] = (str(value), valid)
    return set_value(_PROPERTIES_KEY, kept, context)


class BaggagePropagator(Propagator):
    """Extracts and injects W3C Baggage, keeping each entry's properties."""

    reads = frozenset({BAGGAGE})
    writes = reads

    def default_context(self) -> Context:
        """Without a context, extracted baggage is merged into the current one."""
        return get_current()

    def read(self, getter: textmap.Getter, carrier: object, context: Context) -> Context:
        values = read(getter, carrier, BAGGAGE, limit=MAX_BAGGAGE_BYTES, joined=True)
        if not values:
            return context
        header = ",".join(values)
        if len(header.encode("utf-8", "surrogatepass")) > MAX_BAGGAGE_BYTES:  # characters were counted
            return context

        entries: dict[str, tuple[str, tuple[str, ...]]] = {}
        for member in header.split(","):
            member = member.strip(_OWS)
            if not member:
                continue
            parsed = _parse_member(member)
            if parsed is None:
                continue
            name, value, props = parsed
            if name not in entries and len(entries) >= MAX_BAGGAGE_MEMBERS:
                continue
            entries[name] = (value, props)
        if not entries:
            return context

        kept = dict(get_value(_PROPERTIES_KEY, context) or {})
        for name, (value, props) in entries.items():
            context = otel_baggage.set_baggage(name, value, context)
            if props:
                kept[name] = (value, props)
            else:
                kept.pop(name, None)
        return set_value(_PROPERTIES_KEY, kept, context)

    def write(self, context: Context | None, setter: textmap.Setter, carrier: object) -> None:
        entries = otel_baggage.get_all(context)
        if entries:
            header = _header(entries, get_value(_PROPERTIES_KEY, context) or {})
            if header:
                setter.set(carrier, BAGGAGE, header)

    def write_values(self, span_context: object, context: Context | None, values: dict) -> None:
        """What :meth:`write` sets, into the dict ``values`` (``span_context`` is not read)."""
        if context is not None and _BAGGAGE_KEY is not None and not context.get(_BAGGAGE_KEY):
            return  # most requests carry no baggage: one look-up
        entries = otel_baggage.get_all(context)
        if entries:
            header = _header(entries, get_value(_PROPERTIES_KEY, context) or {})
            if header:
                values[BAGGAGE] = header


def _header(entries, kept: dict) -> str:
    """The ``baggage`` header of ``entries`` (name -> value), with the properties ``kept``."""
    members: list[str] = []
    size = 0
    for name, value in entries.items():
        if len(members) >= MAX_BAGGAGE_MEMBERS:
            break
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            continue
        text = str(value)
        member = f"{name}={_encode(text)}"
        props = kept.get(name)
        if props is not None and props[0] == text and props[1]:
            member += ";" + ";".join(props[1])
        extra = len(member) + (1 if members else 0)  # ASCII only: chars == bytes
        if size + extra > MAX_BAGGAGE_BYTES:
            continue
        members.append(member)
        size += extra
    return ",".join(members)


def _baggage_key() -> object:
    """The key the API keeps baggage under in a context, found through its public function."""
    try:
        keys = list(otel_baggage.set_baggage("k", "v", Context()))
        return keys[0] if len(keys) == 1 else None
    except Exception:  # noqa: BLE001 - another layout: get_all is used
        return None


_BAGGAGE_KEY = _baggage_key()
CONTEXT_KEY = _BAGGAGE_KEY  # the key the API keeps baggage under in a context (None: not known)
