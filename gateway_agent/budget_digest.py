"""What one of the gateway's own usage events adds to budgets (its digest), and which events a snapshot includes.

A digest keeps what budget matching and counting need (sequence, event time, the scope attributes and the amount
per metric), so the agent counts its events that the control plane's figures do not include yet without keeping
or re-reading the events themselves, and keeps counting acknowledged ones across a restart (the spool stores
their digests in the ack's transaction).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from budgeting.amounts import requests_of, spend_of, tokens_of
from budgeting.pricing import PriceBook, price_tokens
from meterwire.common.v1 import usage_pb2

_TOKEN_KINDS: Final = ("input", "output", "cache_read", "cache_write", "reasoning")
"""TokenCounts' fields for budgeting.amounts.TOKEN_KINDS (the categories are part of these)."""
_NO_TAGS: Final[Mapping[str, str]] = MappingProxyType({})

DigestRow = tuple[int, int, str, str, str, str, str, str, str, int, int, int]
"""A digest as the spool's budget_digests table stores it (column order of that table)."""


class UsageDigest(NamedTuple):
    """One own usage event as budgets see it."""

    sequence: int
    event_time_s: float
    api_key_id: str
    user_id: str
    requested_model: str
    resolved_model: str
    provider: str
    route: str
    tags: Mapping[str, str]
    spend_micros: int
    tokens: int
    requests: int

    def __getitem__(self, key: Any, /) -> Any:  # budgeting.scope.Scope.matches_event reads selectors by name
        if isinstance(key, str):
            return getattr(self, key)
        return tuple.__getitem__(self, key)

    def to_row(self) -> DigestRow:
        return (
            self.sequence,
            int(self.event_time_s * 1_000_000),
            self.api_key_id,
            self.user_id,
            self.requested_model,
            self.resolved_model,
            self.provider,
            self.route,
            json.dumps(dict(self.tags), sort_keys=True) if self.tags else "",
            self.spend_micros,
            self.tokens,
            self.requests,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> UsageDigest:
        return cls(
            sequence=int(row[0]),
            event_time_s=row[1] / 1_000_000,
            api_key_id=row[2],
            user_id=row[3],
            requested_model=row[4],
            resolved_model=row[5],
            provider=row[6],
            route=row[7],
            tags=json.loads(row[8]) if row[8] else {},
            spend_micros=int(row[9]),
            tokens=int(row[10]),
            requests=int(row[11]),
        )


def digest_of(event: usage_pb2.UsageEvent, prices: PriceBook) -> UsageDigest:
    """The digest of a recorded event (its sequence and event time filled in), priced as the control plane prices
    it at ingest: the reported cost, else the pricing table's price of its tokens (else unpriced: 0 spend)."""
    tokens = event.tokens
    reported = {descriptor.name: value for descriptor, value in tokens.ListFields()}
    cost: int | None = event.cost_micros if event.HasField("cost_micros") else None
    if cost is None and reported:
        price = prices.lookup(event.resolved_model, event.provider)
        if price is not None:
            derived = price_tokens(
                input_tokens=reported.get("input"),
                output_tokens=reported.get("output"),
                cache_read_tokens=reported.get("cache_read"),
                cache_write_tokens=reported.get("cache_write"),
                reasoning_tokens=reported.get("reasoning"),
                categories=tokens.categories,
                price=price,
            )
            cost = None if derived is None else derived.cost_micros
    moment = event.event_time
    return UsageDigest(
        event.sequence,
        moment.seconds + moment.nanos / 1e9,
        event.api_key_id,
        event.user_id,
        event.requested_model,
        event.resolved_model,
        event.provider,
        event.route,
        dict(event.tags) if event.tags else _NO_TAGS,
        spend_of(cost),
        tokens_of(reported.get(kind) for kind in _TOKEN_KINDS),
        requests_of(event.attempt),
    )


@dataclass(frozen=True)
class IncludedSet:
    """The gateway's events a snapshot's figures include: every sequence up to `through`, and those in `ranges`
    (closed, sorted, disjoint; batches committed out of order above it)."""

    through: int = 0
    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, through: int, ranges: Sequence[tuple[int, int]]) -> IncludedSet:
        kept = sorted((first, last) for first, last in ranges if last > through and first <= last)
        merged: list[tuple[int, int]] = []
        for first, last in kept:
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        while merged and merged[0][0] <= through + 1:
            through = max(through, merged.pop(0)[1])
        return cls(through, tuple(merged))

    def __contains__(self, sequence: object) -> bool:
        if not isinstance(sequence, int):
            return False
        if sequence <= self.through:
            return True
        ranges = self.ranges
        index = bisect_right(ranges, (sequence, 1 << 64)) - 1
        return index >= 0 and ranges[index][0] <= sequence <= ranges[index][1]
