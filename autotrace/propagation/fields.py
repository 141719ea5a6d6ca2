"""Limits of propagation fields, and reading one field's raw values within them.

Used by the servers' getters (HTTP header lookups, gRPC metadata) and the propagators.
Imports nothing of OpenTelemetry: the servers' modules load it at start-up.

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
