"""Limits of propagation fields, and reading one field's raw values within them.

Used by the servers' getters (HTTP header lookups, gRPC metadata) and the propagators.
Imports nothing of OpenTelemetry: the servers' modules load it at start-up.

:func:`lookup` is how every propagator finds a field in a carrier: by its lower-case
name, then in any case (W3C: "vendors MUST expect the header name in any case").

:func:`bounded_values` applies, in this order:

1. more than ``MAX_VALUES`` values: the field is invalid;
2. ``traceparent`` given more than once (several values, or a comma in one): invalid
   (W3C Trace Context: a new trace starts) - counted on the raw values, before sizes;
3. a value over the field's length limit (``MAX_TRACESTATE_LENGTH`` for ``tracestate``,
   ``MAX_VALUE_LENGTH`` for any other field) makes the whole field invalid, so a
   list-valued field (``tracestate``, ``baggage``) is never read in part.

An invalid field reads as ``[]`` (present, nothing usable), an absent one as None.
"""

from __future__ import annotations

import itertools
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


def bounded_values(name: str, raw: Iterable[object]) -> list[str] | None:
    """The values of field ``name`` (lower case) within the limits (see the module
    docstring): None when there are none, ``[]`` when the field is invalid. Bytes are
    read as Latin-1; a value that is not text makes the field invalid."""
    values: list[str] = []
    for value in raw:
        if len(values) >= MAX_VALUES:
            return []
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("latin-1")
        elif not isinstance(value, str):
            return []
        values.append(value)
    if not values:
        return None
    if name == TRACEPARENT and (len(values) > 1 or "," in values[0]):
        return []
    limit = max_length(name)
    if any(len(value) > limit for value in values):
        return []
    return values
