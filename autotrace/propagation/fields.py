"""Propagation fields: their limits, and the one way every reader gets a field's values.

Used by the servers' getters (HTTP header lookups, gRPC metadata) and the propagators.
Imports nothing of OpenTelemetry: the servers' modules load it at start-up.

* :func:`lookup` finds a field in a carrier: by its lower-case name, then in any case
  (W3C: "vendors MUST expect the header name in any case").
* :func:`bounded_values` reads a field's raw values within limits; the servers' getters
  call it as the field's own rule, the propagators through :func:`read` with the limits
  of their format.
* :func:`single_value` is the one value a field holds (B3 and Jaeger headers).

An invalid field reads as ``[]`` (present, nothing usable), an absent one as None.
"""

from __future__ import annotations

import itertools

TYPE_CHECKING = False  # typing is not imported when a server's module loads this one
if TYPE_CHECKING:
    from typing import Iterable

MAX_VALUE_LENGTH = 8192  # longest value of a field other than tracestate
MAX_VALUES = 64  # more values than this for one field: invalid
MAX_KEYS = 1024  # field names a format scans (for another case, or a prefix)

# W3C Trace Context Level 2: at most 32 list members of a 256-character key, "=" and a
# 256-character value, with 31 commas between them.
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_LENGTH = MAX_TRACESTATE_MEMBERS * (256 + 1 + 256) + MAX_TRACESTATE_MEMBERS - 1

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_OWS = " \t"


def _get(getter: object, carrier: object, name: str) -> object:
    try:
        return getter.get(carrier, name)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a carrier the getter cannot read
        return None


def _each(value: object) -> Iterable[object]:
    return (value,) if isinstance(value, (str, bytes, bytearray)) else value  # type: ignore[return-value]


def lookup(getter: object, carrier: object, name: str) -> object:
    """The raw value(s) ``getter.get`` gives for field ``name`` (lower case), or None.

    The name is looked up as given first. When that finds nothing and the getter lists
    its keys (``getter.keys(carrier)``, the first ``MAX_KEYS``), every key that is
    ``name`` in another case is read, in order: two such keys (``Traceparent`` and
    ``TRACEPARENT`` in a dict) are the field given twice, their values chained lazily.
    A getter whose ``get`` matches names in any case itself (the servers' header
    lookups) says so with a true ``names_in_any_case`` attribute and is not scanned.
    A getter that raises reads as absent. Never raises.
    """
    got = _get(getter, carrier, name)
    if got is not None or getattr(getter, "names_in_any_case", False):
        return got
    try:
        keys = getter.keys(carrier)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a getter without keys
        return None
    if not keys:
        return None
    found: list[object] = []
    try:
        for key in itertools.islice(keys, MAX_KEYS):
            if isinstance(key, str) and len(key) == len(name) and key != name and key.lower() == name:
                value = _get(getter, carrier, key)
                if value is not None:
                    found.append(value)
    except Exception:  # noqa: BLE001 - keys that cannot be iterated
        return None
    if len(found) <= 1:
        return found[0] if found else None
    return itertools.chain.from_iterable(_each(value) for value in found)


def max_length(name: str) -> int:
    """The longest value field ``name`` (lower case) may have."""
    return MAX_TRACESTATE_LENGTH if name == TRACESTATE else MAX_VALUE_LENGTH


def bounded_values(
    name: str, raw: object, max_values: int = MAX_VALUES, limit: int | None = None, joined: bool = False
) -> list[str] | None:
    """The values of field ``name`` (lower case) in ``raw`` (None, one value, or an
    iterable of them), within limits: None when there are none, ``[]`` when the field is
    invalid. Bytes are read as Latin-1; at most ``max_values`` + 1 values are read.

    Invalid, in this order:

    1. more than ``max_values`` values, a value that is not text, or ``raw`` not iterable;
    2. ``traceparent`` given more than once (several values, or a comma in one): W3C
       Trace Context starts a new trace - whatever the sizes of the copies;
    3. a value longer than ``limit`` (default: the field's own, :func:`max_length`) or,
       with ``joined``, the values joined with commas longer than ``limit``: a
       list-valued field (``tracestate``, ``baggage``) is never read in part.
    """
    if type(raw) is list:
        if not raw:
            return None  # most lookups of a server's getter: the field is not in the request
    elif raw is None:
        return None
    elif isinstance(raw, (str, bytes, bytearray)):
        raw = (raw,)
    values: list[str] = []
    try:
        for value in raw:  # type: ignore[union-attr]
            if len(values) >= max_values:
                return []
            if type(value) is not str:
                if isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("latin-1")
                elif not isinstance(value, str):
                    return []
            values.append(value)
    except Exception:  # noqa: BLE001 - not iterable, or an iterator that raises
        return []
    if not values:
        return None
    if name == TRACEPARENT and (len(values) > 1 or "," in values[0]):
        return []
    if limit is None:
        limit = MAX_TRACESTATE_LENGTH if name == TRACESTATE else MAX_VALUE_LENGTH  # max_length(name)
    if (sum(map(len, values)) + len(values) - 1 if joined else max(map(len, values))) > limit:
        return []
    return values


def read(
    getter: object, carrier: object, name: str, max_values: int = MAX_VALUES, limit: int | None = None, joined: bool = False
) -> list[str] | None:
    """Field ``name`` (lower case) of ``carrier``, found by :func:`lookup` and read by
    :func:`bounded_values` within the given limits: None when the getter has nothing,
    ``[]`` when the field is invalid. A getter's empty answer is a field given with no
    usable value (a server's getter answers ``[]`` for a field it found invalid), so
    ``[]`` as well. Never raises."""
    raw = lookup(getter, carrier, name)
    if raw is None:
        return None
    values = bounded_values(name, raw, max_values, limit, joined)
    return [] if values is None else values


def single_value(values: list[str] | None) -> str | None:
    """The one value a field holds: repeated or comma-joined copies of one value are
    that value; differing values are invalid (None). Whitespace around it is trimmed."""
    if not values:
        return None
    found: str | None = None
    for value in values:
        for part in value.split(","):
            part = part.strip(_OWS)
            if found is None:
                found = part
            elif part != found:
                return None
    return found or None
