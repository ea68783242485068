"""Usage ingest: validates, prices and stores gateways' usage batches, acknowledging each once it is durable.

Identity. The environment and gateway of every event are the authenticated gateway token's; nothing in the
payload can name another.

Idempotency and the dedupe horizon. ``(gateway, event_id)`` is unique in ``usage_events``; an event whose
id is already stored (by an earlier batch, or earlier in the same transaction: the first occurrence wins) is
a duplicate and is counted nowhere again. Dedupe holds as long as the raw event is kept, which is
``raw_event_retention`` (default 90 days). An event whose ``event_time`` is older than that is refused alone
with REJECTION_REASON_TOO_OLD, because its raw twin may already have been deleted and storing it could count
it twice; the agent keeps refused events in its dead-letter table, so nothing is lost silently.

Preparation. Validation, pricing and rows (prepare.py) are most of ingest's Python. They run in the event
loop, or with ``ingest_workers`` in worker processes (IngestWorkers), so one server uses more than one core
while the event loop keeps gRPC and the writer; handing batches over costs CPU and latency of its own.

Commit-then-ack. Batches go to one group-commit writer per process (writer.py), which stores the raw events,
their tags, the per-minute rollups, the budget windows they count toward, the gateway's acked spool sequence and
its included set (which of its sequence numbers are stored: services/budget/included.py) in ONE transaction and
only then resolves each batch's ack. A failed transaction stores nothing of its batches and fails their calls with
UNAVAILABLE; the agent resends them.

What an event counts toward. Each NEW event is added into ``usage_rollup_1m`` (keyed by minute and
``tables.ROLLUP_DIMENSIONS``) by services.accounting, which defines every measure once (accounting/measures.py).
Its stored ``status_class`` is accounting's StatusClass (0 unknown, 1 success, 2 client error, 3 server
error), NOT the numbering of meterwire.common.v1.StatusClass (whose 0 is UNSPECIFIED and 4 UNKNOWN).
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from services.auth import Principal
from services.budget.changes import BudgetChanges
from services.errors import InvalidArgumentError, MeterwireError, PermissionDeniedError
from services.gateway_registry import GatewayKeys
from services.pricing import PriceBooks
from services.settings import ServerSettings
from services.telemetry import metrics
from services.telemetry.prepare import PreparedEvents, prepare_events, prepare_serialized, start_worker
from services.telemetry.transaction import PreparedBatch, StoredCounts
from services.telemetry.validation import MAX_SEQUENCE, BatchLimits, check_batch
from services.telemetry.writer import BatchNotStoredError, GroupCommitWriter

log = structlog.get_logger("meterwire.telemetry")

MAX_BATCHES_IN_FLIGHT_PER_STREAM: Final = 32
"""Unacked batches one stream may have queued; beyond it the server stops reading, so HTTP/2 flow control
slows the client instead of the server buffering without bound."""


@dataclass(frozen=True, slots=True)
class Gateway:
    """The authenticated gateway a stream writes as."""

    environment_id: str
    gateway_id: str
    gateway_key: int


@dataclass(frozen=True, slots=True)
class QueuedBatch:
    """A batch handed to the writer; `ack()` waits for its transaction and answers the gateway."""

    batch_sequence: int
    rejected: list[pb.RejectedEvent]
    stored: asyncio.Future[StoredCounts]

    async def ack(self) -> pb.UsageAck:
        """The batch's ack once it is committed; BatchNotStoredError (UNAVAILABLE) if its transaction failed."""
        counts = await self.stored
        return pb.UsageAck(
            batch_sequence=self.batch_sequence,
            accepted_count=counts.accepted,
            duplicate_count=counts.duplicate,
            rejected_count=len(self.rejected),
            rejected=self.rejected,
        )


class IngestWorkers:
    """Processes that prepare usage batches (prepare.prepare_serialized): validation, pricing and rows are
    most of ingest's Python, and in worker processes they use other cores while the event loop keeps gRPC and
    the writer. A worker that dies fails the batches it held with UNAVAILABLE (the agent resends them) and the
    pool is made anew for the next batch.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    async def start(self) -> None:
        """Starts the pool and waits until a worker answers (spawning one and importing takes ~1 s), so the
        first batches do not wait for it."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._ensure_pool(), os.getpid)
        except BrokenProcessPool as error:
            raise RuntimeError(
                "the ingest worker processes could not start (their error is above); "
                "MW_INGEST_WORKERS=0 prepares usage batches in the server process instead"
            ) from error

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: a forked copy of a process running gRPC's threads can deadlock.
            self._pool = ProcessPoolExecutor(
                self._count, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker
            )
        return self._pool

    async def prepare(
        self,
        batch_sequence: int,
        batch: bytes,
        *,
        environment_id: str,
        gateway_key: int,
        pricing: bytes,
        now_us: int,
        limits: BatchLimits,
    ) -> PreparedEvents:
        """prepare_serialized of the batch in a worker; BatchNotStoredError if the worker died."""
        if self._closed:
            raise BatchNotStoredError(batch_sequence, "the server is shutting down")
        pool = self._ensure_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool,
                functools.partial(
                    prepare_serialized,
                    batch,
                    environment_id=environment_id,
                    gateway_key=gateway_key,
                    pricing=pricing,
                    now_us=now_us,
                    limits=limits,
                ),
            )
        except BrokenProcessPool as error:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False)
            metrics.BATCHES_FAILED.inc()
            log.error("an ingest worker process stopped; starting new ones", batch_sequence=batch_sequence)
            raise BatchNotStoredError(batch_sequence, "an ingest worker process stopped") from error

    async def shutdown(self) -> None:
        """Stops the workers once they have finished what they hold; safe to call twice."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)


class UsageIngest:
    """Turns usage batches into acks: validation and pricing here, storage in the group-commit writer."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: ServerSettings,
        prices: PriceBooks,
        *,
        budget_changes: BudgetChanges | None = None,
    ) -> None:
        self._limits = BatchLimits.of(settings)
        on_commit = None
        if budget_changes is not None:

            def on_commit(group: Sequence[PreparedBatch], budget_ids: frozenset[str]) -> None:
                budget_changes.usage_committed({(b.environment_id, b.gateway_id) for b in group}, budget_ids)

        self._writer = GroupCommitWriter(
            engine,
            linger_s=settings.ingest_commit_linger.total_seconds(),
            max_events=settings.ingest_commit_max_events,
            checkpoint_interval_s=settings.sqlite_checkpoint_interval.total_seconds(),
            wal_truncate_bytes=settings.sqlite_wal_truncate_bytes,
            on_commit=on_commit,
        )
        self._gateway_keys = GatewayKeys(engine)
        self._prices = prices
        self._workers = IngestWorkers(settings.ingest_workers) if settings.ingest_workers else None

    async def start(self) -> None:
        await self._writer.start()
        if self._workers is not None:
            await self._workers.start()

    async def shutdown(self) -> None:
        """Stores what is queued, then stops; safe to call twice."""
        await self._writer.shutdown()
        if self._workers is not None:
            await self._workers.shutdown()

    async def gateway(self, principal: Principal) -> Gateway:
        """The principal's gateway, registered on first contact. Only gateway tokens carry one."""
        if principal.environment_id is None or principal.gateway_id is None:
            raise PermissionDeniedError(f"usage ingest needs a gateway token; this is a {principal.role} token")
        key = await self._gateway_keys.key(principal.environment_id, principal.gateway_id, now=datetime.now(UTC))
        return Gateway(principal.environment_id, principal.gateway_id, key)

    async def submit(self, gateway: Gateway, request: pb.StreamUsageRequest | pb.ReportUsageRequest) -> QueuedBatch:
        """Validates and prices a batch and queues it for the writer; its ack comes once it is committed.

        Raises INVALID_ARGUMENT (nothing stored) for an empty or oversized batch.
        """
        batch_sequence = request.batch_sequence
        try:
            check_batch(len(request.events), request.ByteSize(), self._limits)
            if request.committed_through_sequence > MAX_SEQUENCE:
                raise InvalidArgumentError("committed_through_sequence", f"must be at most {MAX_SEQUENCE}")
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
        pricing = self._prices.get(gateway.environment_id)
        now_us = time.time_ns() // 1000
        environment_id, gateway_key = gateway.environment_id, gateway.gateway_key
        if self._workers is None:
            events = prepare_events(
                request.events,
                environment_id=environment_id,
                gateway_key=gateway_key,
                prices=pricing.book,
                now_us=now_us,
                limits=self._limits,
            )
        else:
            events = await self._workers.prepare(
                batch_sequence,
                request.SerializeToString(),
                environment_id=environment_id,
                gateway_key=gateway_key,
                pricing=pricing.serialized,
                now_us=now_us,
                limits=self._limits,
            )
        if events.rejected:
            log.info(
                "usage events rejected",
                environment_id=gateway.environment_id,
                gateway_id=gateway.gateway_id,
                batch_sequence=batch_sequence,
                rejected=len(events.rejected),
                first_field=events.rejected[0].field,
                first_reason=pb.RejectionReason.Name(events.rejected[0].reason),
            )
        batch = PreparedBatch(
            environment_id=gateway.environment_id,
            gateway_id=gateway.gateway_id,
            gateway_key=gateway.gateway_key,
            batch_sequence=batch_sequence,
            events=events,
            committed_through=request.committed_through_sequence,
        )
        return QueuedBatch(batch_sequence, events.rejected, self._writer.submit(batch))

    async def stream(
        self, gateway: Gateway, requests: AsyncIterator[pb.StreamUsageRequest]
    ) -> AsyncIterator[pb.UsageAck]:
        """Acks for a stream of batches, in the order sent, each once committed.

        Batches are read and submitted without waiting for earlier acks (several are in flight and can share
        a transaction); acks are yielded in submission order. An invalid batch ends the stream with its error
        after the acks of the batches before it.
        """
        pending: asyncio.Queue[QueuedBatch | BaseException | None] = asyncio.Queue()
        window = asyncio.Semaphore(MAX_BATCHES_IN_FLIGHT_PER_STREAM)

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    pending.put_nowait(await self.submit(gateway, request))
            except Exception as error:
                pending.put_nowait(error)
            else:
                pending.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read(), name="usage-stream-reader")
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                ack = await item.ack()
                window.release()
                yield ack
        finally:
            # The client went away or a batch failed: stop reading. Batches already queued are still
            # stored (an agent resending them later gets duplicates, never double counts).
            reader.cancel()
