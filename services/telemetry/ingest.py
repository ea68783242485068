"""Usage ingest: validates, prices and stores gateways' usage batches, acknowledging each once it is durable.

Identity. The environment and gateway of every event are the authenticated gateway token's; nothing in the
payload can name another.

Idempotency and the dedupe horizon. ``(gateway, event_id)`` is unique in ``usage_events``; an event whose
id is already stored (by an earlier batch, or earlier in the same transaction: the first occurrence wins) is
a duplicate and is counted nowhere again. Dedupe holds as long as the raw event is kept, which is
``raw_event_retention`` (default 90 days). An event whose ``event_time`` is older than that is refused alone
with REJECTION_REASON_TOO_OLD, because its raw twin may already have been deleted and storing it could count
it twice; the agent keeps refused events in its dead-letter table, so nothing is lost silently.

Commit-then-ack. Batches go to one group-commit writer per process (writer.py), which stores the raw events,
their tags, the per-minute rollups and the gateway's acked spool sequence in ONE transaction and only then
resolves each batch's ack. A failed transaction stores nothing of its batches and fails their calls with
UNAVAILABLE; the agent resends them.

Rollup semantics (``usage_rollup_1m``, counted for NEW events only, keyed by minute and the dimensions of
``tables.ROLLUP_DIMENSIONS``):

- ``attempt_count``: events; ``request_count``: events with ``attempt == 1`` (gateway requests);
- ``success_count``: HTTP 1xx-3xx; ``error_count``: 4xx and 5xx; an unknown status counts in neither, and
  ``status_class`` follows meterwire.common.v1.StatusClass (0 unknown, 1 success, 2 client, 3 server error);
- token sums add only reported counts; ``tokens_unknown_count`` counts events that reported no token kind;
- ``cost_micros`` adds every known cost, reported or derived from the pricing table;
  ``cost_derived_count`` counts derived ones and ``cost_unknown_count`` unpriced ones (unknown is never 0);
  ``cache_savings_micros`` adds every known saving;
- latency, gateway latency and TTFT: sums in microseconds and counts of events that reported them, and
  latency and TTFT histogram buckets (services.histogram) so percentiles come from rollups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from services.auth import Principal
from services.config.store import get_version
from services.errors import MeterwireError, PermissionDeniedError
from services.gateway_registry import GatewayKeys
from services.pricing import PriceBook
from services.settings import ServerSettings
from services.telemetry import metrics
from services.telemetry.rows import (
    RollupKey,
    RollupRow,
    TagRow,
    UsageEventRow,
    add_to_rollup,
    tag_items,
    usage_event_row,
    usage_event_tag_rows,
)
from services.telemetry.validation import BatchLimits, check_batch, rejection_of
from services.telemetry.writer import GroupCommitWriter, PreparedBatch

log = structlog.get_logger("meterwire.telemetry")

PRICING_REFRESH_S: Final = 5.0
"""How long an environment's pricing table is reused before it is read again (a new config takes effect
within this long)."""

MAX_BATCHES_IN_FLIGHT_PER_STREAM: Final = 32
"""Unacked batches one stream may have queued; beyond it the server stops reading, so HTTP/2 flow control
slows the client instead of the server buffering without bound."""


def _us(delta_seconds: float) -> int:
    return int(delta_seconds * 1_000_000)


@dataclass(frozen=True, slots=True)
class Gateway:
    """The authenticated gateway a stream writes as."""

    environment_id: str
    gateway_id: str
    gateway_key: int


class PriceBooks:
    """Each environment's pricing table (the Config service's latest version), re-read every few seconds."""

    def __init__(self, engine: AsyncEngine, *, refresh_s: float = PRICING_REFRESH_S) -> None:
        self._engine = engine
        self._refresh_s = refresh_s
        self._books: dict[str, tuple[float, PriceBook]] = {}

    async def get(self, environment_id: str) -> PriceBook:
        now = time.monotonic()
        cached = self._books.get(environment_id)
        if cached is not None and now - cached[0] < self._refresh_s:
            return cached[1]
        async with self._engine.connect() as connection:
            stored = await get_version(connection, environment_id)
        book = PriceBook(stored.config.pricing if stored is not None and stored.config.HasField("pricing") else None)
        self._books[environment_id] = (now, book)
        return book


class UsageIngest:
    """Turns usage batches into acks: validation and pricing here, storage in the group-commit writer."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings) -> None:
        self._limits = BatchLimits(
            max_events=settings.ingest_max_batch_events,
            max_bytes=settings.ingest_max_batch_bytes,
            max_clock_skew_us=_us(settings.ingest_max_clock_skew.total_seconds()),
            dedupe_horizon_us=_us(settings.raw_event_retention.total_seconds()),
        )
        self._writer = GroupCommitWriter(
            engine,
            linger_s=settings.ingest_commit_linger.total_seconds(),
            max_events=settings.ingest_commit_max_events,
            checkpoint_interval_s=settings.sqlite_checkpoint_interval.total_seconds(),
            wal_truncate_bytes=settings.sqlite_wal_truncate_bytes,
        )
        self._gateway_keys = GatewayKeys(engine)
        self._prices = PriceBooks(engine)

    async def start(self) -> None:
        await self._writer.start()

    async def shutdown(self) -> None:
        """Stores what is queued, then stops; safe to call twice."""
        await self._writer.shutdown()

    async def gateway(self, principal: Principal) -> Gateway:
        """The principal's gateway, registered on first contact. Only gateway tokens carry one."""
        if principal.environment_id is None or principal.gateway_id is None:
            raise PermissionDeniedError(f"usage ingest needs a gateway token; this is a {principal.role} token")
        key = await self._gateway_keys.key(principal.environment_id, principal.gateway_id, now=datetime.now(UTC))
        return Gateway(principal.environment_id, principal.gateway_id, key)

    async def submit(
        self,
        gateway: Gateway,
        *,
        batch_sequence: int,
        events: Sequence[usage_pb2.UsageEvent],
        byte_size: int,
    ) -> asyncio.Future[pb.UsageAck]:
        """Validates and prices a batch and queues it; the future resolves with its ack once committed.

        Raises INVALID_ARGUMENT (nothing stored) for an empty or oversized batch.
        """
        try:
            check_batch(len(events), byte_size, self._limits)
        except MeterwireError as error:
            metrics.BATCHES_REFUSED.inc()
            log.info(
                "usage batch refused",
                environment_id=gateway.environment_id,
                gateway_id=gateway.gateway_id,
                batch_sequence=batch_sequence,
                reason=str(error),
            )
            raise
        prices = await self._prices.get(gateway.environment_id)
        now_us = time.time_ns() // 1000
        limits = self._limits
        environment_id = gateway.environment_id
        gateway_key = gateway.gateway_key
        rows: list[UsageEventRow] = []
        values: list[Any] = []
        tag_rows: dict[int, list[TagRow]] = {}
        rollups: dict[RollupKey, RollupRow] = {}
        rejected: list[pb.RejectedEvent] = []
        max_sequence = 0
        for index, event in enumerate(events):
            tags = tag_items(event)
            row = usage_event_row(
                event, environment_id=environment_id, gateway_key=gateway_key, prices=prices, tags=tags
            )
            rejection = rejection_of(event, row, tags, index, now_us, limits)
            if rejection is not None:
                rejected.append(rejection)
                continue
            if tags:
                tag_rows[len(rows)] = usage_event_tag_rows(tags, row)
            rows.append(row)
            values.extend(row.values())  # EVENT_COLUMNS order (rows.event_values)
            add_to_rollup(rollups, row)
            max_sequence = max(max_sequence, row["sequence"])
        if rejected:
            log.info(
                "usage events rejected",
                environment_id=environment_id,
                gateway_id=gateway.gateway_id,
                batch_sequence=batch_sequence,
                rejected=len(rejected),
                first_field=rejected[0].field,
                first_reason=pb.RejectionReason.Name(rejected[0].reason),
            )
        batch = PreparedBatch(
            environment_id=environment_id,
            gateway_id=gateway.gateway_id,
            gateway_key=gateway_key,
            batch_sequence=batch_sequence,
            rows=rows,
            values=values,
            tag_rows=tag_rows,
            rollups=rollups,
            rejected=rejected,
            max_sequence=max_sequence,
        )
        return self._writer.submit(batch)

    async def stream(
        self, gateway: Gateway, requests: AsyncIterator[pb.StreamUsageRequest]
    ) -> AsyncIterator[pb.UsageAck]:
        """Acks for a stream of batches, in the order sent, each once committed.

        Batches are read and submitted without waiting for earlier acks (several are in flight and can share
        a transaction); acks are yielded in submission order. An invalid batch ends the stream with its error
        after the acks of the batches before it.
        """
        pending: asyncio.Queue[asyncio.Future[pb.UsageAck] | BaseException | None] = asyncio.Queue()
        window = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT_PER_STREAM)

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    future = await self.submit(
                        gateway,
                        batch_sequence=request.batch_sequence,
                        events=request.events,
                        byte_size=request.ByteSize(),
                    )
                    pending.put_nowait(future)
            except Exception as error:
                pending.put_nowait(error)
            else:
                pending.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read(), name="usage-stream-reader")
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                ack = await item
                window.release()
                yield ack
        finally:
            # The client went away or a batch failed: stop reading. Batches already queued are still
            # stored (an agent resending them later gets duplicates, never double counts).
            reader.cancel()
