"""The group-commit writer: one task per process that stores queued usage batches, many per transaction.

It decides WHEN batches are stored (grouping, retrying a failed group batch by batch, failing what cannot be
stored); transaction.py decides HOW (the statements); ingest.py turns the outcome into acks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import grpc
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.errors import MeterwireError
from services.storage.checkpoint import WalCheckpointer
from services.storage.engine import create_sqlite_thread_engine
from services.storage.uow import UnitOfWork
from services.telemetry import metrics
from services.telemetry.transaction import NOTHING_STORED, PreparedBatch, StoredCounts, StoredGroup, UsageTransaction

log = structlog.get_logger("meterwire.telemetry.writer")

CommitListener = Callable[[Sequence[PreparedBatch], frozenset[str]], None]
"""Told after every usage transaction commits: its batches, and the budgets whose windows it moved."""


class BatchNotStoredError(MeterwireError):
    """The transaction holding a batch failed: nothing of it was stored, and the client should resend it."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, batch_sequence: int, reason: str) -> None:
        super().__init__(f"usage batch {batch_sequence} was not stored ({reason}); nothing of it was kept: resend it")


def _retrieve_exception(future: asyncio.Future[StoredCounts]) -> None:
    # A stream that ended early no longer awaits its futures; reading the exception keeps asyncio quiet.
    if not future.cancelled():
        future.exception()


class GroupCommitWriter:
    """Coalesces batches from every stream into one transaction (transaction.py), then resolves each batch's
    future with what storing it did.

    Batches are stored in submission order, so batches of one stream commit in order and, within a
    transaction, the first occurrence of an event id wins. A failed group is retried batch by batch so one
    poison batch cannot fail its neighbours; a batch that still fails gets BatchNotStoredError.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        linger_s: float,
        max_events: int,
        checkpoint_interval_s: float,
        wal_truncate_bytes: int,
        on_commit: CommitListener | None = None,
    ) -> None:
        self._engine = engine
        self._on_commit = on_commit
        self._linger_s = linger_s
        self._max_events = max_events
        self._queue: deque[PreparedBatch] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # SQLite: a synchronous connection of the writer's own, used only from its own thread, whose log is
        # checkpointed from another thread (its own commits never checkpoint).
        self._sqlite: tuple[sa.Engine, ThreadPoolExecutor] | None = None
        self._checkpointer: WalCheckpointer | None = None
        if engine.dialect.name == "sqlite":
            self._sqlite = (
                create_sqlite_thread_engine(engine),
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer"),
            )
            self._checkpointer = WalCheckpointer(
                engine, interval_s=checkpoint_interval_s, truncate_bytes=wal_truncate_bytes
            )
        self._transaction = UsageTransaction(engine.dialect, sqlite=self._sqlite is not None)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-group-commit")
            if self._checkpointer is not None:
                await self._checkpointer.start()

    def submit(self, batch: PreparedBatch) -> asyncio.Future[StoredCounts]:
        """Queues a batch; the future resolves with what storing it did once its transaction commits."""
        if self._stopping or self._task is None:
            raise BatchNotStoredError(batch.batch_sequence, "the server is shutting down")
        future: asyncio.Future[StoredCounts] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve_exception)
        batch.future = future
        metrics.BATCHES_IN_FLIGHT.inc()
        events = batch.events
        if not events.count and events.sequence_range is None and not batch.committed_through:
            # Every event was rejected and none carries a sequence: there is nothing to make durable, so the ack
            # is final now. (One that does goes through a transaction: its range joins the included set.)
            self._resolve(batch, NOTHING_STORED)
            return future
        self._queue.append(batch)
        self._wakeup.set()
        return future

    async def shutdown(self) -> None:
        """Stores every batch already queued, then stops; safe to call twice."""
        self._stopping = True
        self._wakeup.set()
        task = self._task
        if task is not None:
            await asyncio.shield(task)
        if self._sqlite is not None:
            (sqlite, thread), self._sqlite = self._sqlite, None
            await asyncio.get_running_loop().run_in_executor(thread, sqlite.dispose)
            thread.shutdown(wait=False)
        if self._checkpointer is not None:
            await self._checkpointer.shutdown()

    async def _run(self) -> None:
        try:
            while group := await self._take_group():
                await self._commit(group)
        finally:
            # Only reached with batches left if the task was cancelled (the loop is closing).
            while self._queue:
                self._fail(self._queue.popleft(), "the server stopped")

    async def _take_group(self) -> list[PreparedBatch]:
        """The next transaction's batches: what is queued, waiting up to the linger for more, up to the cap."""
        queue = self._queue
        while not queue:
            if self._stopping:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        group = [queue.popleft()]
        events = group[0].events.count
        deadline = asyncio.get_running_loop().time() + self._linger_s
        while events < self._max_events:
            if queue:
                if events + queue[0].events.count > self._max_events:
                    break
                batch = queue.popleft()
                group.append(batch)
                events += batch.events.count
                continue
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._stopping:
                break
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break
        return group

    async def _commit(self, group: list[PreparedBatch]) -> None:
        try:
            results = await self._store(group)
        except Exception as error:
            if len(group) == 1:
                self._log_failure(group[0], error)
                self._fail(group[0], _reason(error))
                return
            log.warning("group commit failed; storing its batches one by one", batches=len(group), error=_reason(error))
            for batch in group:
                try:
                    (result,) = await self._store([batch])
                except Exception as single_error:
                    self._log_failure(batch, single_error)
                    self._fail(batch, _reason(single_error))
                else:
                    self._resolve(batch, result)
            return
        for batch, result in zip(group, results, strict=True):
            self._resolve(batch, result)

    async def _store(self, group: list[PreparedBatch]) -> list[StoredCounts]:
        """One transaction for the whole group; returns each batch's (accepted, duplicate) counts."""
        started = time.perf_counter()
        if self._sqlite is not None:
            # The whole transaction is one hop to the writer's own thread: no statement waits for a turn of
            # the event loop (busy receiving and validating the next batches), and SQLite's work overlaps it.
            sqlite, thread = self._sqlite
            stored = await asyncio.get_running_loop().run_in_executor(thread, self._in_sqlite_thread, sqlite, group)
        else:
            async with UnitOfWork(self._engine) as uow:
                stored = await uow.connection.run_sync(self._transaction.write, group)
                await uow.commit()
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.TRANSACTION_EVENTS.observe(sum(batch.events.count for batch in group))
        if self._on_commit is not None:
            try:
                self._on_commit(group, stored.budget_ids)
            except Exception:  # a listener's bug must not fail batches that are stored
                log.exception("a usage commit listener failed")
        return stored.counts

    def _in_sqlite_thread(self, engine: sa.Engine, group: list[PreparedBatch]) -> StoredGroup:
        with engine.begin() as connection:
            return self._transaction.write(connection, group)

    def _resolve(self, batch: PreparedBatch, result: StoredCounts) -> None:
        metrics.BATCHES_IN_FLIGHT.dec()
        metrics.BATCHES_STORED.inc()
        metrics.EVENTS_ACCEPTED.inc(result.accepted)
        metrics.EVENTS_DUPLICATE.inc(result.duplicate)
        metrics.EVENTS_REJECTED.inc(len(batch.events.rejected))
        if not batch.future.done():
            batch.future.set_result(result)

    def _fail(self, batch: PreparedBatch, reason: str) -> None:
        metrics.BATCHES_IN_FLIGHT.dec()
        metrics.BATCHES_FAILED.inc()
        if not batch.future.done():
            batch.future.set_exception(BatchNotStoredError(batch.batch_sequence, reason))

    @staticmethod
    def _log_failure(batch: PreparedBatch, error: Exception) -> None:
        # The driver's error and where it was raised. Not SQLAlchemy's wrapper of it, whose message holds the
        # whole statement and its parameters: for a multi-row insert of a group, hundreds of kB of usage data
        # per log line.
        cause: BaseException = error
        statement = None
        if isinstance(error, sa.exc.StatementError):
            cause = error.orig or error
            statement = (error.statement or "")[:_STATEMENT_HEAD]
        log.error(
            "usage batch not stored",
            environment_id=batch.environment_id,
            gateway_id=batch.gateway_id,
            batch_sequence=batch.batch_sequence,
            events=batch.events.count,
            error=f"{type(cause).__name__}: {cause}",
            statement=statement,
            exc_info=cause,
        )


_STATEMENT_HEAD: Final = 60
"""Characters of a failed statement that its log line keeps: enough to tell which one it was."""


def _reason(error: Exception) -> str:
    # The class name says what failed (OperationalError, IntegrityError, ...) without leaking SQL or data.
    return f"the database transaction failed: {type(error).__name__}"
