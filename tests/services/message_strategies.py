"""Hypothesis strategies for any protobuf request, built from its descriptor: extreme numbers, huge and odd
strings, nested messages, long lists, and plausible values often enough to get past the first check."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

_NOW_S: Final = int(datetime.now(UTC).timestamp())
_EVENT_IDS: Final = [str(uuid.UUID(int=n, version=4)) for n in (1, 2**100, 2**127 + 5)]

PLAUSIBLE_STRINGS: Final = [
    "",
    "env-a",
    "gw-1",
    "env-b",
    "gpt-4o",
    "openai",
    "USD",
    "req-1",
    "key-1",
    "UTC",
    "America/New_York",
    "tok_000000000000",
    *_EVENT_IDS,
]
"""Values the services know (the fuzzed gateway's environment and id, a model, a currency), so generated
requests reach past authorization and the first field checks."""

_ODD_TEXT: Final = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)

_hostile_strings: Final = st.one_of(
    _ODD_TEXT,
    st.sampled_from(["\x00", "\u202e", "\ufeff", "'; DROP TABLE tokens; --", "%s%n", "../../etc/passwd", " env-a "]),
    # Long: past every length limit and, echoed whole, past the client's 8 KiB metadata limit.
    st.tuples(st.sampled_from(["x", "é", "\U0001f600", "a-"]), st.sampled_from([300, 20_000])).map(
        lambda piece: piece[0] * piece[1]
    ),
)

_json_values: Final = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["after", "before", "t", "k", "q", "o", "x"]), inner, max_size=3),
    ),
    max_leaves=6,
)
_SERVER_TOKEN_KEYS: Final = ("after", "before", "t", "k", "q", "o")
"""The keys of the positions the List RPCs put in their own page tokens."""
_token_positions: Final = st.one_of(
    st.dictionaries(st.sampled_from(_SERVER_TOKEN_KEYS), _json_values, min_size=1, max_size=2),
    _json_values,
)
page_tokens: Final = st.one_of(
    _hostile_strings,
    # Forged: the shape of the server's own tokens with any JSON inside ({"after": 5}, {"t": 2**70}, ...).
    _token_positions.map(lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")),
)


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    """Hostile integers of a type: its edges, magnitudes no count or amount reaches, anything in range."""
    magnitudes = (low, high, low // 2, high // 2, 10**15, 2**53, 2**62)
    huge = st.sampled_from(sorted({v for v in magnitudes if low <= v <= high}))
    small = st.sampled_from([v for v in (0, -1, 2**31 - 1, 10**12) if low <= v <= high])
    # Twice as often huge: the ranges nobody checked are the ones a sum, a timedelta or a column overflows.
    return st.one_of(huge, huge, small, st.integers(low, high))


_INT_RANGES: Final = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}

_around_now: Final = st.integers(_NOW_S - 86_400, _NOW_S)  # inside retention and clock skew
_seconds: Final = st.one_of(
    st.integers(_NOW_S - 4000 * 86_400, _NOW_S + 86_400),
    st.sampled_from([-62_135_596_800, 253_402_300_799, 253_402_300_800, -(2**63), 2**63 - 1]),  # years 1, 9999..
    st.integers(-(2**63), 2**63 - 1),
)
_nanos: Final = st.one_of(st.just(0), st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1))
_WELL_KNOWN: Final = {
    "google.protobuf.Timestamp": st.fixed_dictionaries({"seconds": _seconds, "nanos": _nanos}),
    "google.protobuf.Duration": st.fixed_dictionaries({"seconds": _integers(-(2**63), 2**63 - 1), "nanos": _nanos}),
}


_plausible_strings: Final = st.sampled_from(PLAUSIBLE_STRINGS)
_PLAUSIBLE_BY_NAME: Final = {
    "environment_id": ["env-a"],
    "environment_ids": ["env-a"],
    "gateway_id": ["gw-1"],
    "gateway_ids": ["gw-1"],
    "event_id": _EVENT_IDS,
    "currency": ["USD"],
    "time_zone": ["UTC", "America/New_York"],
}
"""Fields whose plausible value is one the fuzzed server knows: a config for another environment would stop
at NOT_FOUND before any of its fields is read."""
_plausible_ints: Final = st.integers(0, 1000)
_PLAUSIBLE_WELL_KNOWN: Final = {
    "google.protobuf.Timestamp": st.fixed_dictionaries({"seconds": _around_now, "nanos": st.integers(0, 999_999_999)}),
    "google.protobuf.Duration": st.fixed_dictionaries(
        {"seconds": st.integers(0, 600), "nanos": st.integers(0, 999_999_999)}
    ),
}


def _scalar(field: FieldDescriptor, *, hostile: bool) -> st.SearchStrategy[Any]:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        assert field.enum_type is not None
        known_values = st.sampled_from([value.number for value in field.enum_type.values])
        return _integers(-(2**31), 2**31 - 1) if hostile else known_values  # proto3 enums are open: any int32 decodes
    if not hostile:
        if field.name == "page_token":
            return st.just("")
        if cpp != FieldDescriptor.CPPTYPE_STRING:
            return _plausible_ints
        names = _PLAUSIBLE_BY_NAME.get(field.name)
        return _plausible_strings if names is None else st.sampled_from(names)
    if field.name == "page_token":
        return page_tokens
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        return _hostile_strings if field.type == FieldDescriptor.TYPE_STRING else st.binary(max_size=64)
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if cpp == FieldDescriptor.CPPTYPE_FLOAT else 64)
    low, high = _INT_RANGES[cpp]
    return _integers(low, high)


def _entries(
    element: st.SearchStrategy[Any], *, hostile: bool, large: int, distinct: bool = False
) -> st.SearchStrategy[list[Any]]:
    few = st.lists(element, max_size=3)
    if not hostile:
        return few
    # A hostile list is longer than any limit allows. Limits count entries, so a few drawn entries repeated
    # make the same case as `large` drawn ones at a fraction of the drawing (a usage event is ~100 decisions);
    # map entries must differ (`distinct`), or the map would fold them into one.
    if distinct:
        return st.lists(element, min_size=large, max_size=large + 5)
    return st.tuples(st.lists(element, min_size=1, max_size=3), st.integers(large, large + 5)).map(
        lambda drawn: [drawn[0][index % len(drawn[0])] for index in range(drawn[1])]
    )


HOSTILITY: Final = (0, 10, 3)
"""About one field in N hostile (0: none). Mostly plausible requests get past the first check to the code
behind it; with many hostile fields, the first check is what is tested."""
MOST_DECISIONS: Final = 24
"""A request with exactly one hostile field picks it among its first this many value decisions."""


@st.composite
def messages(
    draw: st.DrawFn,
    descriptor: Descriptor,
    *,
    one_in: int,
    exactly: int | None = None,
    decisions: list[int] | None = None,
    depth: int = 0,
) -> Message:
    """A message of `descriptor`'s type with any subset of its fields set, about one field in `one_in`
    hostile (an extreme number, odd or huge text, a forged page token, a list over its limit), or, with
    `exactly`, only the value decided at that position (counted in `decisions`, shared with nested messages)."""
    counted = decisions if decisions is not None else [0]

    def hostile() -> bool:
        if exactly is not None:
            counted[0] += 1
            return counted[0] - 1 == exactly
        return one_in > 0 and draw(st.integers(1, one_in)) == 1

    message = GetMessageClass(descriptor)()
    if descriptor.full_name in _WELL_KNOWN:
        well_known = _WELL_KNOWN if hostile() else _PLAUSIBLE_WELL_KNOWN
        for name, value in draw(well_known[descriptor.full_name]).items():
            setattr(message, name, value)
        return message
    for field in descriptor.fields:
        if not draw(st.sampled_from([True, True, False])):
            continue
        entry_type = field.message_type
        target: Any = getattr(message, field.name) if field.is_repeated or entry_type is not None else None
        if entry_type is not None and entry_type.GetOptions().map_entry:
            key_field, value_field = entry_type.fields_by_name["key"], entry_type.fields_by_name["value"]
            element = st.tuples(_scalar(key_field, hostile=hostile()), _scalar(value_field, hostile=hostile()))
            target.update(dict(draw(_entries(element, hostile=hostile(), large=40, distinct=True))))
        elif entry_type is not None:
            if depth >= 4:
                continue
            inner = messages(entry_type, one_in=one_in, exactly=exactly, decisions=counted, depth=depth + 1)
            if field.is_repeated:
                for entry in draw(_entries(inner, hostile=hostile(), large=12)):
                    target.append(entry)
            else:
                target.CopyFrom(draw(inner))
        elif field.is_repeated:
            target.extend(draw(_entries(_scalar(field, hostile=hostile()), hostile=hostile(), large=120)))
        else:
            setattr(message, field.name, draw(_scalar(field, hostile=hostile())))
    return message


@st.composite
def _one_hostile_field(draw: st.DrawFn, descriptor: Descriptor) -> Message:
    exactly = draw(st.integers(0, MOST_DECISIONS - 1))
    return draw(messages(descriptor, one_in=0, exactly=exactly))


def bodies(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A serialized message of the type: exactly one hostile field (most often: it gets deepest), about
    one in N, none; or (less often) any bytes at all."""
    variants = [
        _one_hostile_field(descriptor),
        _one_hostile_field(descriptor),
        *(messages(descriptor, one_in=one_in) for one_in in HOSTILITY),
    ]
    serialized = [variant.map(lambda message: message.SerializeToString()) for variant in variants]
    return st.one_of(*serialized, st.binary(max_size=256))
