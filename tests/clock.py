"""A clock tests move by hand, so thresholds are crossed without sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class FakeClock:
    """A clock that moves only when told, so thresholds are crossed without sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        # Starts at the real time: a control plane derives loaded state once on the real clock at start.
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta
