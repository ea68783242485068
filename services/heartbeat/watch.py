"""Fan-out of gateway changes to WatchGateways streams, each with its own bounded queue."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from services.heartbeat.records import GatewayChange


@dataclass(eq=False)
class Watcher:
    """One WatchGateways stream's pending changes. Publishing never waits: a watcher that falls `limit`
    changes behind drops them and is sent a fresh full listing instead (a resync), so one slow client
    cannot hold up the fleet or the other watchers."""

    environment_ids: frozenset[str] | None
    limit: int
    pending: deque[GatewayChange] = field(default_factory=deque)
    resync: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, change: GatewayChange) -> None:
        if self.resync:
            return
        if len(self.pending) >= self.limit:
            self.pending.clear()
            self.resync = True
        else:
            self.pending.append(change)
        self.wakeup.set()

    async def next_batch(self) -> tuple[bool, list[GatewayChange]]:
        """Waits for changes; returns (resync needed, changes). After a resync the changes list is empty:
        the listing the caller sends supersedes them."""
        while not self.pending and not self.resync:
            self.wakeup.clear()
            await self.wakeup.wait()
        resync, self.resync = self.resync, False
        changes = list(self.pending)
        self.pending.clear()
        return resync, ([] if resync else changes)


class Watchers:
    """Every open WatchGateways stream of this process."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._watchers: set[Watcher] = set()

    def add(self, environment_ids: frozenset[str] | None) -> Watcher:
        watcher = Watcher(environment_ids=environment_ids, limit=self._limit)
        self._watchers.add(watcher)
        return watcher

    def remove(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def __bool__(self) -> bool:
        return bool(self._watchers)

    def publish(self, change: GatewayChange) -> None:
        environment_id = change.gateway.environment_id
        for watcher in self._watchers:
            if watcher.environment_ids is None or environment_id in watcher.environment_ids:
                watcher.offer(change)
