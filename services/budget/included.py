"""Which of one gateway's own usage events the control plane's figures include: a watermark and ranges above it.

An agent numbers its spool's events (UsageEvent.sequence: rising, never reused, also across reinstalls) and
sends them in batches, several in flight; a failed batch is resent later, so batches commit out of order and
"the highest acknowledged sequence" says nothing about the ones below it. The control plane therefore keeps,
per gateway, the exact set of sequence numbers whose batches it has stored:

- `through`: every sequence number up to it is included. It moves up with the agent's promise
  (committed_through_sequence: "everything of mine up to here was acknowledged") and when the ranges reach it.
- `ranges`: closed ranges above `through + 1`, one per batch committed out of order (merged when they touch).

A snapshot includes event e of gateway g iff e.sequence <= through or e.sequence lies in one of the ranges.

A batch adds the range [lowest, highest] of ALL its events that carry a sequence (0: not through an agent),
accepted, duplicates and rejected alike: rejected events never count anywhere, and duplicates were counted when
first stored, so a figure includes them either way. The agent's batches hold consecutive sequence numbers.

At most MAX_INCLUDED_RANGES ranges are kept. Beyond it the LOWEST ranges are dropped: an agent then counts
those events itself as well as in the server's figures (twice), so it denies early, never overspends, and the
next committed_through_sequence above them puts them back under the watermark.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

MAX_INCLUDED_RANGES: Final = 256
"""Ranges kept above the watermark per gateway (a window of batches in flight needs a handful)."""

SequenceRange = tuple[int, int]
"""A closed range of spool sequence numbers (first, last), first >= 1."""


@dataclass(frozen=True, slots=True)
class IncludedSet:
    """The sequence numbers of one gateway the stored figures include (see the module docstring)."""

    through: int = 0
    ranges: tuple[SequenceRange, ...] = ()
    """Sorted, disjoint, not touching each other nor through + 1."""

    def includes(self, sequence: int) -> bool:
        """Whether the event with this sequence number is included (0: not through an agent: always counted)."""
        if sequence <= self.through:
            return True
        return any(first <= sequence <= last for first, last in self.ranges)

    def adding(self, *, through: int = 0, batches: Iterable[SequenceRange] = ()) -> IncludedSet:
        """This set with the agent's promise `through` and the batches' ranges added, merged and folded."""
        watermark = max(self.through, through)
        merged: list[list[int]] = []
        for lowest, last in sorted([*self.ranges, *batches]):
            if last <= watermark:
                continue
            first = max(lowest, watermark + 1)
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        while merged and merged[0][0] <= watermark + 1:
            watermark = max(watermark, merged.pop(0)[1])
        if len(merged) > MAX_INCLUDED_RANGES:
            merged = merged[len(merged) - MAX_INCLUDED_RANGES :]
        return IncludedSet(watermark, tuple((first, last) for first, last in merged))

    def encode(self) -> str:
        """The ranges' stored form: "first-last,first-last" ('' for none)."""
        return ",".join(f"{first}-{last}" for first, last in self.ranges)

    @classmethod
    def decode(cls, through: int, ranges: str) -> IncludedSet:
        """The set stored as a watermark and `encode`'s text."""
        if not ranges:
            return cls(through)
        parsed: list[SequenceRange] = []
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            parsed.append((int(first), int(last)))
        return cls(through, tuple(parsed))
