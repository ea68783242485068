"""The public GatewayAgent API a Python gateway embeds: record usage, check requests, read config and status."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata as importlib_metadata
from types import TracebackType
from typing import Self

import grpc
import structlog
from google.protobuf.duration_pb2 import Duration

from gateway_agent.budget_decision import BudgetFigures, CheckRequest, Decision
from gateway_agent.budget_digest import UsageDigest
from gateway_agent.budget_view import BudgetView, ReservationLimits
from gateway_agent.channel import Backoff, LinkState, bearer_metadata, open_channel
from gateway_agent.config_cache import ConfigCache
from gateway_agent.control import ConfigKeeper, ControlStreams
from gateway_agent.sender import BatchLimits, Sender
from gateway_agent.settings import AgentSettings
from gateway_agent.spool import Spool
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb

log = structlog.get_logger("meterwire.agent")

SPOOL_FILE = "spool.db"
CONFIG_DIR = "config"
# Dropped events are logged at most this often, so a full disk cannot flood the log.
_DROP_LOG_EVERY_S = 5.0
# Most budgets a heartbeat reports enforcement counts for (heartbeat_service.proto).
_MAX_HEARTBEAT_BUDGETS = 100

try:
    AGENT_VERSION = importlib_metadata.version("meterwire")
except importlib_metadata.PackageNotFoundError:  # running from a source tree
    AGENT_VERSION = "0.0.0+source"


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562) in canonical text: 48 bits of Unix milliseconds, then random bits; time-sortable."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class AgentClosedError(RuntimeError):
    """record() was called after shutdown() began."""


@dataclass(frozen=True)
class RecordResult:
    """What record() did with one event."""

    event_id: str
    sequence: int
    spooled: bool
    """False: the event was dropped (fail open) and counted; `dropped_reason` says why."""
    committed: bool = False
    """True when record() waited for the group commit (wait_for_commit=True) and it succeeded."""
    dropped_reason: str = ""
    """"spool_full", "queue_full" or "disk_full" when not spooled."""


@dataclass(frozen=True)
class AgentStatus:
    """A snapshot of the agent's state (no I/O to take it)."""

    environment_id: str
    gateway_id: str
    agent_version: str
    connected: bool
    connected_since: datetime | None
    last_error: str
    config_version: int
    config_source: str
    """"none", "cache" or "control_plane"."""
    config_state_message: str
    nacked_config_version: int
    config_error: str
    spool_depth: int
    spool_bytes: int
    pending_commit: int
    oldest_unsent_age: timedelta | None
    dead_letter_count: int
    dropped_event_count: int
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    corrupt_spools_set_aside: int = 0
    last_acked_sequence: int = 0
    next_sequence: int = 0
    batches_acked: int = 0
    events_accepted: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    stream_failures: int = 0
    unacked_batches: int = 0
    uptime: timedelta = timedelta(0)
    budgets: tuple[BudgetFigures, ...] = ()
    """Every budget that applies to this gateway, as the agent sees it now, in budget id order."""
    budget_snapshot_time: datetime | None = None
    """When the control plane last refreshed the budget state (None: never)."""
    open_reservations: int = 0
    budget_enforcement: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per budget id: (denied, shadow denied) requests since the agent started."""


class GatewayAgent:
    """One gateway's agent. `async with GatewayAgent(settings) as agent:` starts it; `shutdown()` flushes."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self._link = LinkState()
        self._backoff = Backoff(initial=settings.backoff_initial, maximum=settings.backoff_max)
        self._spool = Spool(
            settings.data_dir / SPOOL_FILE,
            durability=settings.durability,
            max_bytes=settings.spool_max_bytes,
            max_pending=settings.max_pending_events,
            commit_linger=settings.commit_linger,
            commit_max_events=settings.commit_max_events,
        )
        self._budget_view = BudgetView(
            reservations=ReservationLimits(
                ttl=settings.reservation_ttl,
                max_micros=settings.max_reservation_micros,
                max_tokens=settings.max_reservation_tokens,
            ),
            lease_retry_after_s=lambda: max(1, int(self._heartbeat_interval.total_seconds())),
        )
        self._spool.ack_digests = self._budget_view.acknowledged
        self._spool.on_lost = lambda first, last: self._budget_view.forget_usage(range(first, last + 1))
        self._keeper = ConfigKeeper(
            environment_id=settings.environment_id,
            cache=ConfigCache(settings.data_dir / CONFIG_DIR),
            on_apply=self._apply_config,
        )
        self._channel: grpc.aio.Channel | None = None
        self._sender: Sender | None = None
        self._control: ControlStreams | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._stopped = asyncio.Event()
        self._shutdown_task: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self._last_drop_log = 0.0
        self._heartbeat_interval = settings.heartbeat_interval

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the spool and the config cache, fetches config (bounded by initial_fetch_timeout), starts streams."""
        if self._started:
            return
        self._started = True
        s = self.settings
        await asyncio.to_thread(self._spool.open)
        self._spool.start(asyncio.get_running_loop())
        cached = await asyncio.to_thread(self._keeper.load_cache)
        await asyncio.to_thread(self._restore_budget_state)
        self._channel = open_channel(s)
        metadata = bearer_metadata(s.token)
        self._sender = Sender(
            spool=self._spool,
            channel=self._channel,
            metadata=metadata,
            limits=self._limits_from(self._keeper.current),
            backoff=self._backoff,
            link=self._link,
            ack_timeout=s.ack_timeout,
        )
        self._control = ControlStreams(
            channel=self._channel,
            metadata=metadata,
            environment_id=s.environment_id,
            keeper=self._keeper,
            agent_state=self.agent_state,
            heartbeat_interval=self._heartbeat_interval,
            answer_timeout=s.keepalive_timeout,
            backoff=self._backoff,
            link=self._link,
            on_budget_snapshot=self._apply_budget_snapshot,
        )
        self._tasks.append(asyncio.create_task(self._sender.run(), name="usage-sender"))
        self._tasks.append(asyncio.create_task(self._expire_reservations(), name="budget-reservations"))
        answered = await self._control.initial_fetch(s.initial_fetch_timeout)
        self._tasks.append(asyncio.create_task(self._control.run(), name="control-streams"))
        log.info(
            self._keeper.state_message,
            environment=s.environment_id,
            gateway=s.gateway_id,
            control_plane_answered=answered,
            cached_version=cached.version if cached else 0,
            spool_depth=self._spool.depth,
            next_sequence=self._spool.next_sequence,
        )

    def _restore_budget_state(self) -> None:
        """Blocking: the persisted snapshot and every own event it does not include (acked, then spooled)."""
        stored, digest_rows = self._spool.load_budget_state()
        if stored is None:
            return
        snapshot = budget_pb.BudgetSnapshot.FromString(stored)
        view = self._budget_view
        digests = itertools.chain(
            (UsageDigest.from_row(row) for row in digest_rows),
            itertools.chain.from_iterable(map(view.digest_payloads, self._spool.spooled_payloads())),
        )
        view.restore(snapshot, digests)
        log.info("budget state restored", budgets=len(snapshot.budgets), own_events_not_included=view.pending_digests)

    def _apply_budget_snapshot(self, snapshot: budget_pb.BudgetSnapshot) -> None:
        self._budget_view.apply_snapshot(snapshot)
        included = self._budget_view.included
        self._spool.save_budget_snapshot(snapshot.SerializeToString(), included.through, list(included.ranges))

    async def _expire_reservations(self) -> None:
        period = min(1.0, max(0.01, self.settings.reservation_ttl.total_seconds() / 10))
        while True:
            await asyncio.sleep(period)
            self._budget_view.expire_reservations()

    async def run(self) -> None:
        """Starts if needed and runs until shutdown() has finished."""
        await self.start()
        await self._stopped.wait()

    async def shutdown(self) -> None:
        """Stops recording, commits the queue, delivers what it can within shutdown_flush_timeout; safe twice."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        self._closed = True
        if self._started:
            await self.flush()
            if self._control is not None:
                self._control.request_stop()
            if self._sender is not None and self._tasks:
                self._sender.request_stop()
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(
                        asyncio.shield(self._tasks[0]), self.settings.shutdown_flush_timeout.total_seconds()
                    )
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._channel is not None:
                await self._channel.close(None)
            await asyncio.to_thread(self._spool.close)
            log.info(
                "agent stopped", spool_depth=self._spool.depth, last_acked_sequence=self._spool.last_acked_sequence
            )
        self._stopped.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    # --- the gateway's hot path --------------------------------------------------------------------------

    async def record(self, event: usage_pb2.UsageEvent, *, wait_for_commit: bool = False) -> RecordResult:
        """Queues one usage event for the spool and returns; never waits for the network.

        Fills `event.event_id` (a UUIDv7, when empty), `event.sequence` and, when unset, `event.event_time` on
        the message given. With `wait_for_commit`, returns only once the spool committed it (survives a crash).
        """
        if self._closed or not self._started:
            raise AgentClosedError("the agent is not running: start() it first, and do not record after shutdown()")
        if not event.event_id:
            event.event_id = new_event_id()
        if not event.HasField("event_time"):
            event.event_time.GetCurrentTime()
        spool = self._spool
        sequence = spool.next_sequence
        spool.next_sequence = sequence + 1
        event.sequence = sequence
        dropped = spool.enqueue(sequence, event.event_id, event.SerializeToString())
        if dropped is not None:
            if event.reservation_id:  # never delivered, never counted: its reservation goes too
                self._budget_view.release_reservation(event.reservation_id)
            self._log_drop(dropped)
            return RecordResult(event.event_id, sequence, spooled=False, dropped_reason=dropped)
        self._budget_view.count_event(event)
        if not wait_for_commit:
            return RecordResult(event.event_id, sequence, spooled=True)
        if await spool.wait_committed(sequence):
            return RecordResult(event.event_id, sequence, spooled=True, committed=True)
        return RecordResult(event.event_id, sequence, spooled=False, dropped_reason="disk_full")

    def _log_drop(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.error(
                "USAGE EVENTS DROPPED: the spool cannot take them (fail open: traffic keeps flowing)",
                reason=reason,
                dropped_by_reason=dict(self._spool.dropped),
                spool_bytes=self._spool.spooled_bytes,
                spool_max_bytes=self.settings.spool_max_bytes,
            )

    async def flush(self) -> None:
        """Waits until every event recorded so far is committed to the spool (not delivered)."""
        if self._started and self._spool.last_enqueued > self._spool.committed_through:
            await self._spool.wait_committed(self._spool.last_enqueued)

    def check(self, request: CheckRequest) -> Decision:
        """A local decision in microseconds, safe from any thread: disabled API keys are denied (403); budgets
        from the last snapshot, this gateway's usage since and its open reservations (DENY, WARN or ALLOW).
        Admitted with an estimate, the request holds a reservation (Decision.reservation_id) until its usage event
        carries it back (UsageEvent.reservation_id), release_reservation() or the reservation TTL."""
        return self._budget_view.check(request)

    def release_reservation(self, reservation_id: str) -> bool:
        """Gives back the reservation of a request that never ran; False when unknown (settled or expired)."""
        return self._budget_view.release_reservation(reservation_id)

    # --- config ------------------------------------------------------------------------------------------

    @property
    def config(self) -> config_pb.EnvironmentConfig | None:
        """The config the agent serves with; None until one is cached or fetched."""
        current = self._keeper.current
        return None if current is None else current.config

    @property
    def config_version(self) -> int:
        return self._keeper.version

    @property
    def config_record(self) -> config_pb.ConfigVersion | None:
        """The applied ConfigVersion with its metadata (environment, checksum, create time)."""
        return self._keeper.current

    @property
    def config_applied_time(self) -> datetime | None:
        return self._keeper.applied_time

    def _limits_from(self, config_version: config_pb.ConfigVersion | None) -> BatchLimits:
        s = self.settings
        agent = config_version.config.agent if config_version is not None else config_pb.AgentSettings()
        return BatchLimits(
            max_events=agent.max_batch_events or s.max_batch_events,
            max_bytes=agent.max_batch_bytes or s.max_batch_bytes,
            linger=agent.batch_linger.ToTimedelta() if agent.HasField("batch_linger") else s.batch_linger,
            max_unacked=agent.max_unacked_batches or s.max_unacked_batches,
        )

    def _apply_config(self, config_version: config_pb.ConfigVersion) -> None:
        self._budget_view.apply_config(config_version)
        if self._sender is not None:
            self._sender.update_limits(self._limits_from(config_version))
        agent = config_version.config.agent
        if agent.HasField("heartbeat_interval"):
            self._heartbeat_interval = agent.heartbeat_interval.ToTimedelta()
            if self._control is not None:
                self._control.heartbeat_interval = self._heartbeat_interval

    # --- status ------------------------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        spool, sender, keeper = self._spool, self._sender, self._keeper
        oldest_us = spool.oldest_unsent_us
        oldest_age = None
        if oldest_us is not None:
            oldest_age = timedelta(microseconds=max(0, time.time_ns() // 1000 - oldest_us))
        return AgentStatus(
            environment_id=self.settings.environment_id,
            gateway_id=self.settings.gateway_id,
            agent_version=AGENT_VERSION,
            connected=self._link.connected,
            connected_since=self._link.connected_since,
            last_error=(sender.last_error if sender and sender.last_error else self._link.last_error),
            config_version=keeper.version,
            config_source=keeper.source,
            config_state_message=keeper.state_message,
            nacked_config_version=keeper.nacked_version,
            config_error=keeper.config_error,
            spool_depth=spool.depth,
            spool_bytes=spool.spooled_bytes,
            pending_commit=spool.pending,
            oldest_unsent_age=oldest_age,
            dead_letter_count=spool.dead_letter_count,
            dropped_event_count=sum(spool.dropped.values()),
            dropped_by_reason=dict(spool.dropped),
            corrupt_spools_set_aside=spool.corrupt_set_aside,
            last_acked_sequence=spool.last_acked_sequence,
            next_sequence=spool.next_sequence,
            batches_acked=sender.batches_acked if sender else 0,
            events_accepted=sender.events_accepted if sender else 0,
            events_duplicate=sender.events_duplicate if sender else 0,
            events_rejected=sender.events_rejected if sender else 0,
            stream_failures=sender.stream_failures if sender else 0,
            unacked_batches=sender.unacked_batches if sender else 0,
            uptime=timedelta(seconds=time.monotonic() - self._started_at),
            budgets=self._budget_view.budgets(),
            budget_snapshot_time=self._budget_snapshot_time(),
            open_reservations=self._budget_view.open_reservations,
            budget_enforcement=self._budget_view.enforcement_counts(),
        )

    def _budget_snapshot_time(self) -> datetime | None:
        seconds = self._budget_view.snapshot_time_s
        return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)

    def agent_state(self) -> heartbeat_pb.AgentState:
        """The status as the Heartbeat contract carries it."""
        status = self.status()
        state = heartbeat_pb.AgentState(
            agent_version=status.agent_version,
            gateway_version=self.settings.gateway_version,
            applied_config_version=status.config_version,
            nacked_config_version=status.nacked_config_version,
            config_error=status.config_error,
            spool_depth=status.spool_depth,
            dead_letter_count=status.dead_letter_count,
            dropped_event_count=status.dropped_event_count,
            spool_bytes=status.spool_bytes,
            last_acked_sequence=status.last_acked_sequence,
        )
        if status.oldest_unsent_age is not None:
            state.oldest_unsent_age.CopyFrom(Duration(seconds=int(status.oldest_unsent_age.total_seconds())))
        if status.connected_since is not None:
            state.connected_since.FromDatetime(status.connected_since)
        if status.budget_snapshot_time is not None:
            state.budget_snapshot_time.FromDatetime(status.budget_snapshot_time)
        for budget_id, (denied, shadow) in list(status.budget_enforcement.items())[:_MAX_HEARTBEAT_BUDGETS]:
            state.budget_enforcement.add(budget_id=budget_id, denied_requests=denied, shadow_denied_requests=shadow)
        return state
