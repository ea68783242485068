"""The fleet table: every gateway's latest heartbeat state in memory, its derived status, and its changes.

Heartbeats only touch memory; a flush writes the dirty gateways in one executemany per
`heartbeat_flush_interval`, a status check re-derives statuses so silence turns into STALE/OFFLINE with no
traffic, and a peer refresh reads back what other replicas flushed. The three are jobs the server runs
(`jobs()`); the server builds one fleet and hands it to the Heartbeat and Config services.

A little over 400 lines on purpose: one class owns the in-memory table and every path that changes it
(heartbeats, config answers, peers, removal, adoption), so its invariants (the dirty set, the watchers, the
flush lock) live in one place; rows, statuses, writes and protobuf are already in modules of their own.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import Counter as MetricCounter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.config.hub import ConfigHub
from services.errors import NotFoundError
from services.heartbeat import store
from services.heartbeat.flush import write_states
from services.heartbeat.records import (
    AgentState,
    GatewayChange,
    GatewayName,
    GatewayRecord,
    GatewayStatus,
    GatewayView,
    interval_from_row,
    state_from_row,
    state_row,
)
from services.heartbeat.status import StatusThresholds, derive_status
from services.heartbeat.watch import Watchers
from services.jobs import PeriodicJob
from services.pagination import Page, encode_page_token, page_position, page_size
from services.settings import ServerSettings
from services.storage.uow import UnitOfWork
from services.timestamps import Clock, utc_now

log = structlog.get_logger("meterwire.heartbeat")

HEARTBEATS = MetricCounter("meterwire_heartbeats_total", "Heartbeats received.")


class Fleet:
    """Every gateway's heartbeat state on this replica; implements config's ConfigAnswers for WatchConfig."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings, hub: ConfigHub, *, clock: Clock = utc_now):
        self.clock = clock
        self.hub = hub
        self.replica = f"{os.getpid()}-{secrets.token_hex(4)}"
        """Names this process in the rows it flushes, so the peer refresh reads only other replicas' rows."""
        self._engine = engine
        self._settings = settings
        self._thresholds = StatusThresholds.from_settings(settings)
        self._records: dict[GatewayName, GatewayRecord] = {}
        self._dirty: set[GatewayName] = set()
        self._local_streams: Counter[GatewayName] = Counter()
        self._watchers = Watchers(settings.heartbeat_watch_queue)
        self._flush_lock = asyncio.Lock()
        self._last_peer_refresh: datetime | None = None

    def jobs(self) -> list[PeriodicJob]:
        """The fleet's background work, run by the server; the last flush happens when the server drains."""
        s = self._settings
        return [
            PeriodicJob("heartbeat-flush", s.heartbeat_flush_interval, self.flush, final_step=self.flush),
            PeriodicJob("heartbeat-status", s.heartbeat_status_check_interval, self._tick_async),
            PeriodicJob("heartbeat-peers", s.heartbeat_peer_refresh_interval, self.refresh_from_peers),
        ]

    async def load(self) -> None:
        """Recovers the last flushed state, so a restarted control plane knows when each gateway was seen."""
        async with UnitOfWork(self._engine) as uow:
            rows = await store.load_gateways(uow.connection)
        self._adopt_rows(rows)
        log.info("fleet state loaded", gateways=len(rows))

    def _record_from_row(self, row: Any) -> GatewayRecord:
        return GatewayRecord(
            environment_id=row.environment_id,
            gateway_id=row.gateway_id,
            register_time=row.register_time,
            last_seen=row.last_seen_time,
            state=state_from_row(row),
            interval=interval_from_row(row, self.hub.heartbeat_interval(row.environment_id)),
        )

    # The heartbeat path.

    def register(self, environment_id: str, gateway_id: str) -> GatewayRecord:
        """The gateway's record, registering the gateway on its first contact (or after its removal).

        Only in memory: the next flush's upsert writes the row, so a reconnecting fleet of thousands
        costs one statement, not a transaction per gateway."""
        name = (environment_id, gateway_id)
        record = self._records.get(name)
        if record is None:
            now = self.clock()
            record = GatewayRecord(
                environment_id=environment_id,
                gateway_id=gateway_id,
                register_time=now,
                last_seen=None,
                state=AgentState(),
                interval=self.hub.heartbeat_interval(environment_id),
            )
            self._records[name] = record
            self._dirty.add(name)
            log.info("gateway registered", environment=environment_id, gateway=gateway_id)
            # Announced: watchers listed it as never seen (a token, no contact) or not at all, and its first
            # contact already counts (silence is judged from it), so its first heartbeat may change nothing.
            self._derive(record, now, previous=GatewayStatus.NEVER_SEEN)
        return record

    def stream_opened(self, name: GatewayName) -> None:
        self._local_streams[name] += 1

    def stream_closed(self, name: GatewayName) -> None:
        self._local_streams[name] -= 1
        if self._local_streams[name] <= 0:
            del self._local_streams[name]

    def current(self, name: GatewayName) -> GatewayRecord | None:
        return self._records.get(name)

    def record_heartbeat(self, record: GatewayRecord, state: AgentState) -> datetime:
        """Records one ping in memory (the flusher writes it later); returns the server time it was seen."""
        now = self.clock()
        HEARTBEATS.inc()
        record.last_seen = now
        record.state = state
        record.interval = self.hub.heartbeat_interval(record.environment_id)
        self._dirty.add(record.name)
        self._derive(record, now)
        return now

    def config_subscribed(self, environment_id: str, gateway_id: str) -> None:
        """A gateway opened WatchConfig: that is contact, so it is registered if new (ConfigAnswers)."""
        if self.current((environment_id, gateway_id)) is None:
            self.register(environment_id, gateway_id)

    def config_answered(self, environment_id: str, gateway_id: str, *, version: int, error: str | None) -> None:
        """An agent's ACK (error None) or NACK of a config version, from WatchConfig (ConfigAnswers).

        An answer is contact, so it moves the gateway's last-seen time: that is what makes the change reach
        the other replicas at their next peer refresh, not with the next heartbeat."""
        name = (environment_id, gateway_id)
        record = self.current(name) or self.register(*name)
        now = self.clock()
        if record.last_seen is None or record.last_seen < now:
            record.last_seen = now
        state = record.state
        if error is None:
            applied = max(state.applied_config_version, version)
            if state.nacked_config_version <= version:
                state = replace(state, applied_config_version=applied, nacked_config_version=0, config_error="")
            else:
                state = replace(state, applied_config_version=applied)
        else:
            state = replace(state, nacked_config_version=version, config_error=error)
        record.state = state
        self._dirty.add(record.name)
        self._derive(record, now, config_changed=True)

    def _derive(
        self,
        record: GatewayRecord,
        now: datetime,
        *,
        announce: bool = True,
        config_changed: bool = False,
        previous: GatewayStatus | None = None,
    ) -> None:
        """Derives the record's status; announces a change to watchers unless `announce` is False.

        `previous`: the status watchers knew, when the record does not hold it (a gateway just registered)."""
        verdict = derive_status(
            record.last_seen,
            record.state,
            interval=record.interval,
            now=now,
            thresholds=self._thresholds,
            registered=record.register_time,
        )
        previous = record.status if previous is None else previous
        record.status, record.reasons, record.recheck_at = verdict.status, verdict.reasons, verdict.recheck_at
        if not announce or (previous == verdict.status and not config_changed):
            return
        if previous != verdict.status:
            log.info(
                "gateway status changed",
                environment=record.environment_id,
                gateway=record.gateway_id,
                status=verdict.status.value,
                previous=None if previous is None else previous.value,
                reasons=list(verdict.reasons),
            )
        if self._watchers:
            self._announce(record, previous, now)

    def _announce(
        self, record: GatewayRecord, previous: GatewayStatus | None, now: datetime, *, deleted: bool = False
    ) -> None:
        self._watchers.publish(
            GatewayChange(gateway=self.view(record), change_time=now, previous_status=previous, deleted=deleted)
        )

    def view(self, record: GatewayRecord) -> GatewayView:
        """The gateway as operators see it now, with the config version it should be running."""
        return GatewayView.of(record, desired_config_version=self.hub.latest_version(record.environment_id))

    # Background work: the timer, the flusher and the peer refresh.

    def tick(self) -> int:
        """Re-derives every gateway whose next threshold has passed; returns how many were re-derived."""
        now = self.clock()
        moment = now.timestamp()
        due = [record for record in self._records.values() if record.recheck_at <= moment]
        for record in due:
            try:
                self._derive(record, now)
            except Exception:  # one gateway's state must never keep the others from turning STALE/OFFLINE
                record.recheck_at = math.inf
                log.exception(
                    "status check failed for one gateway", environment=record.environment_id, gateway=record.gateway_id
                )
        return len(due)

    async def _tick_async(self) -> None:
        self.tick()

    async def flush(self) -> int:
        """Writes every gateway changed since the last flush in ONE executemany; returns the rows written."""
        async with self._flush_lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> int:
        if not self._dirty:
            return 0
        names, self._dirty = self._dirty, set()
        rows = [state_row(record, self.replica) for name in names if (record := self._records.get(name)) is not None]
        try:
            return await write_states(self._engine, rows)
        except BaseException:
            self._dirty |= {name for name in names if name in self._records}
            raise

    async def refresh_from_peers(self) -> int:
        """Adopts state other replicas flushed (gateways connected there) and their removals."""
        now = self.clock()
        slack = self._settings.heartbeat_flush_interval * 2 + self._settings.heartbeat_peer_refresh_interval
        since = (self._last_peer_refresh or now) - slack
        self._last_peer_refresh = now
        async with UnitOfWork(self._engine) as uow:
            rows = await store.changed_since(uow.connection, since, replica=self.replica)
        adopted = 0
        for row in rows:
            name = (row.environment_id, row.gateway_id)
            record = self._records.get(name)
            if name in self._local_streams:
                # Heartbeating here: this replica's view is the fresher one, but for a config answer given
                # through another replica's WatchConfig since the last heartbeat here.
                if record is not None and row.delete_time is None and _later(row.last_seen_time, record.last_seen):
                    self._take_config_answer(record, row, now)
                    adopted += 1
                continue
            if row.delete_time is not None:
                if record is not None and (record.last_seen is None or record.last_seen <= row.delete_time):
                    self._forget(record, now)
                    adopted += 1
                continue
            if record is not None and record.last_seen is not None and record.last_seen >= row.last_seen_time:
                continue
            fresh = self._record_from_row(row)
            if record is not None:
                fresh.status = record.status
            self._records[name] = fresh
            self._derive(fresh, now)
            adopted += 1
        return adopted

    def _take_config_answer(self, record: GatewayRecord, row: Any, now: datetime) -> None:
        record.last_seen = row.last_seen_time
        record.state = replace(
            record.state,
            applied_config_version=max(record.state.applied_config_version, row.applied_config_version),
            nacked_config_version=row.nacked_config_version,
            config_error=row.config_error,
        )
        self._derive(record, now, config_changed=True)

    # Operator reads and removal.

    async def gateways(self, environment_ids: frozenset[str] | None) -> list[GatewayRecord]:
        """Every gateway the environments hold, never-seen ones (a token, no contact) included, by name."""
        async with UnitOfWork(self._engine) as uow:
            never_seen = await store.never_seen(uow.connection, environment_ids)
            self._adopt_rows(await store.without_heartbeat(uow.connection, environment_ids))
        found = {
            name: record
            for name, record in self._records.items()
            if environment_ids is None or record.environment_id in environment_ids
        }
        for name in never_seen:
            if name not in found:
                found[name] = self._never_seen(name)
        return [found[name] for name in sorted(found)]

    def _adopt_rows(self, rows: Sequence[Any]) -> None:
        """Takes in flushed gateways this fleet does not hold yet: at start, and later those registered without
        a heartbeat (usage or WatchConfig only, here or on another replica), so they are listed and judged by
        their silence."""
        now = self.clock()
        for row in rows:
            name = (row.environment_id, row.gateway_id)
            if name not in self._records:
                record = self._record_from_row(row)
                self._records[name] = record
                self._derive(record, now, announce=False)

    def _never_seen(self, name: GatewayName) -> GatewayRecord:
        return GatewayRecord(
            environment_id=name[0],
            gateway_id=name[1],
            register_time=None,
            last_seen=None,
            state=AgentState(),
            interval=self.hub.heartbeat_interval(name[0]),
            status=GatewayStatus.NEVER_SEEN,
            reasons=("a gateway token exists but the gateway never made contact",),
            recheck_at=math.inf,
        )

    async def list_gateways(
        self,
        environment_ids: frozenset[str] | None,
        statuses: frozenset[GatewayStatus],
        *,
        requested_page_size: int,
        page_token: str,
    ) -> Page[GatewayView]:
        """One page of gateways by name, only those in `statuses` when given."""
        limit = page_size(requested_page_size)
        after = page_position(page_token, "after", valid=_is_name)
        page: list[GatewayView] = []
        more = False
        for record in await self.gateways(environment_ids):
            if after is not None and record.name <= tuple(after):
                continue
            if statuses and record.status not in statuses:
                continue
            if len(page) == limit:
                more = True
                break
            page.append(self.view(record))
        last = page[-1] if more else None
        return Page(page, encode_page_token({"after": [last.environment_id, last.gateway_id]}) if last else "")

    async def gateway(self, name: GatewayName) -> GatewayView:
        record = self._records.get(name)
        if record is not None:
            return self.view(record)
        async with UnitOfWork(self._engine) as uow:
            silent = await store.without_heartbeat(uow.connection, frozenset({name[0]}))
            self._adopt_rows([row for row in silent if row.gateway_id == name[1]])
            if (record := self._records.get(name)) is not None:
                return self.view(record)
            if name in await store.never_seen(uow.connection, frozenset({name[0]})):
                return self.view(self._never_seen(name))
        raise NotFoundError(f"gateway_id: no gateway {name[1]!r} in environment {name[0]!r}")

    async def delete(self, name: GatewayName) -> None:
        """Removes a gateway and its state; its row (and key) stays for the usage that refers to it."""
        async with self._flush_lock:  # a flush in flight must not write the state back after the removal
            await self._flush_locked()  # a gateway first seen since the last flush has no row yet
            async with UnitOfWork(self._engine) as uow:
                removed = await store.mark_deleted(
                    uow.connection, environment_id=name[0], gateway_id=name[1], now=self.clock()
                )
                never_seen = not removed and name in await store.never_seen(uow.connection, frozenset({name[0]}))
                await uow.commit()
            record = self._records.get(name)
            if record is not None:
                self._forget(record, self.clock())
        if never_seen:
            raise NotFoundError(
                f"gateway_id: {name[1]!r} in {name[0]!r} never made contact, so there is nothing to remove; "
                "revoke its token (meterwire tokens revoke) to take it off the list"
            )
        if not removed and record is None:
            raise NotFoundError(f"gateway_id: no gateway {name[1]!r} in environment {name[0]!r}")
        log.info("gateway removed", environment=name[0], gateway=name[1])

    def _forget(self, record: GatewayRecord, now: datetime) -> None:
        del self._records[record.name]
        self._dirty.discard(record.name)
        if self._watchers:
            self._announce(record, record.status, now, deleted=True)

    async def watch(
        self, environment_ids: frozenset[str] | None, *, send_initial: bool
    ) -> AsyncIterator[GatewayChange]:
        """Changes as they happen; a full listing first if asked, and again whenever the watcher fell behind."""
        watcher = self._watchers.add(environment_ids)
        try:
            if send_initial:
                for response in await self._listing(environment_ids):
                    yield response
            while True:
                resync, changes = await watcher.next_batch()
                if resync:
                    log.warning("gateway watcher fell behind; resending the full listing")
                    changes = await self._listing(environment_ids)
                for change in changes:
                    yield change
        finally:
            self._watchers.remove(watcher)

    async def _listing(self, environment_ids: frozenset[str] | None) -> list[GatewayChange]:
        now = self.clock()
        return [
            GatewayChange(gateway=self.view(record), change_time=now) for record in await self.gateways(environment_ids)
        ]


def _is_name(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(part, str) for part in value)


def _later(moment: datetime | None, than: datetime | None) -> bool:
    return moment is not None and (than is None or moment > than)
