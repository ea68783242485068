"""This gateway's own usage that the last budget snapshot does not include, held compactly in memory.

An agent cut off for long may hold a million events; one object per event would take hundreds of MB. So each
event is a row of parallel arrays (sequence, event time, the three amounts: about 40 bytes), and its scope
attributes are an index into a table of the distinct combinations seen (few: keys, users, models, routes, tags).
Rows stay in sequence order (record() numbers events in order), so a snapshot's watermark drops a prefix.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping
from typing import Any, Final, NamedTuple

from gateway_agent.budget_digest import IncludedSet, UsageDigest

_MAX_ATTRIBUTE_SETS: Final = 1_000_000
"""Distinct attribute combinations kept interned (beyond it, each event keeps its own)."""


AttributeKey = tuple[str, str, str, str, str, str, tuple[tuple[str, str], ...]]


def attribute_key(digest: UsageDigest) -> AttributeKey:
    """What tells apart events for scope matching: the selectors and the sorted tags."""
    return (
        digest.api_key_id,
        digest.user_id,
        digest.requested_model,
        digest.resolved_model,
        digest.provider,
        digest.route,
        tuple(sorted(digest.tags.items())) if digest.tags else (),
    )


class Attributes:
    """One distinct combination of scope attributes, shared by every event that carries it."""

    __slots__ = ("api_key_id", "provider", "requested_model", "resolved_model", "route", "tags", "user_id")

    def __init__(self, digest: UsageDigest) -> None:
        self.api_key_id = digest.api_key_id
        self.user_id = digest.user_id
        self.requested_model = digest.requested_model
        self.resolved_model = digest.resolved_model
        self.provider = digest.provider
        self.route = digest.route
        self.tags: Mapping[str, str] = digest.tags

    def __getitem__(self, key: str, /) -> Any:  # budgeting.scope.Scope.matches_event reads selectors by name
        return getattr(self, key)


class OwnEvent(NamedTuple):
    """One event as budgets count it."""

    attributes: Attributes
    event_time_s: float
    amounts: tuple[int, int, int]
    """(spend, tokens, requests)."""


class OwnUsage:
    """Own events not included in the snapshot, by sequence number (not thread-safe: the BudgetView locks)."""

    def __init__(self) -> None:
        self._sequences = array("Q")
        self._times = array("d")
        self._spend = array("q")
        self._tokens = array("q")
        self._requests = array("b")
        self._attribute_ids = array("I")
        self._alive = bytearray()
        self._attributes: list[Attributes] = []
        self._attribute_index: dict[AttributeKey, int] = {}
        self.count = 0
        """Events held (alive)."""

    def __len__(self) -> int:
        return self.count

    def _attribute_id(self, digest: UsageDigest, key: AttributeKey) -> int:
        known = self._attribute_index.get(key)
        if known is not None:
            return known
        self._attributes.append(Attributes(digest))
        attribute_id = len(self._attributes) - 1
        if len(self._attribute_index) < _MAX_ATTRIBUTE_SETS:
            self._attribute_index[key] = attribute_id
        return attribute_id

    def add(self, digest: UsageDigest, key: AttributeKey | None = None) -> OwnEvent | None:
        """Holds an event (`key`: its attribute_key, when known already); None when its sequence is held already."""
        sequence = digest.sequence
        sequences = self._sequences
        at = len(sequences)
        if at and sequences[-1] >= sequence:  # only when restoring out of order
            at = bisect_left(sequences, sequence)
            if at < len(sequences) and sequences[at] == sequence:
                return None
        attribute_id = self._attribute_id(digest, key or attribute_key(digest))
        row = (digest.spend_micros, digest.tokens, digest.requests)
        if at == len(sequences):
            sequences.append(sequence)
            self._times.append(digest.event_time_s)
            self._spend.append(row[0])
            self._tokens.append(row[1])
            self._requests.append(row[2])
            self._attribute_ids.append(attribute_id)
            self._alive.append(1)
        else:
            sequences.insert(at, sequence)
            self._times.insert(at, digest.event_time_s)
            self._spend.insert(at, row[0])
            self._tokens.insert(at, row[1])
            self._requests.insert(at, row[2])
            self._attribute_ids.insert(at, attribute_id)
            self._alive.insert(at, 1)
        self.count += 1
        return OwnEvent(self._attributes[attribute_id], digest.event_time_s, row)

    def _index(self, sequence: int) -> int | None:
        at = bisect_left(self._sequences, sequence)
        if at < len(self._sequences) and self._sequences[at] == sequence and self._alive[at]:
            return at
        return None

    def _event(self, at: int) -> OwnEvent:
        return OwnEvent(
            self._attributes[self._attribute_ids[at]],
            self._times[at],
            (self._spend[at], self._tokens[at], self._requests[at]),
        )

    def __contains__(self, sequence: object) -> bool:
        return isinstance(sequence, int) and self._index(sequence) is not None

    def remove(self, sequence: int) -> OwnEvent | None:
        """Stops holding an event (rejected, or never stored); returns it, or None if not held."""
        at = self._index(sequence)
        if at is None:
            return None
        self._alive[at] = 0
        self.count -= 1
        return self._event(at)

    def digest(self, sequence: int) -> UsageDigest | None:
        at = self._index(sequence)
        if at is None:
            return None
        attributes = self._attributes[self._attribute_ids[at]]
        return UsageDigest(
            sequence,
            self._times[at],
            attributes.api_key_id,
            attributes.user_id,
            attributes.requested_model,
            attributes.resolved_model,
            attributes.provider,
            attributes.route,
            attributes.tags,
            self._spend[at],
            self._tokens[at],
            self._requests[at],
        )

    def drop_included(self, included: IncludedSet) -> list[OwnEvent]:
        """Stops holding the events a snapshot includes; returns them (to take out of the local figures)."""
        dropped: list[OwnEvent] = []
        sequences = self._sequences
        for first, last in included.ranges:
            for at in range(bisect_left(sequences, first), bisect_right(sequences, last)):
                if self._alive[at]:
                    self._alive[at] = 0
                    self.count -= 1
                    dropped.append(self._event(at))
        prefix = bisect_right(sequences, included.through)
        if prefix:
            for at in range(prefix):
                if self._alive[at]:
                    dropped.append(self._event(at))
            self.count -= sum(self._alive[:prefix])
            for column in (sequences, self._times, self._spend, self._tokens, self._requests, self._attribute_ids):
                del column[:prefix]
            del self._alive[:prefix]
        return dropped

    def __iter__(self) -> Iterator[OwnEvent]:
        for at, alive in enumerate(self._alive):
            if alive:
                yield self._event(at)
