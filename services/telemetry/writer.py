"""The group-commit writer: one task per process that stores queued usage batches, many per transaction."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from services.accounting.rollup import ROLLUP_COLUMNS, RollupKey, RollupRow, add_to_rollup, merge_rollups, rollup_rows
from services.errors import MeterwireError
from services.storage import dialect, tables
from services.storage.checkpoint import WalCheckpointer
from services.storage.engine import create_sqlite_thread_engine
from services.storage.uow import UnitOfWork
from services.telemetry import metrics
from services.telemetry.prepare import PreparedEvents
from services.telemetry.rows import EVENT_COLUMNS, TAG_COLUMNS, TagRow, UsageEventRow, event_values
from services.telemetry.sql import MAX_BIND_PARAMETERS, CompiledStatement, DriverStatement

log = structlog.get_logger("meterwire.telemetry.writer")

_EventKey = tuple[int, str]
"""(gateway_key, event_id): the idempotency key."""


class BatchNotStoredError(MeterwireError):
    """The transaction holding a batch failed: nothing of it was stored, and the client should resend it."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, batch_sequence: int, reason: str) -> None:
        super().__init__(f"usage batch {batch_sequence} was not stored ({reason}); nothing of it was kept: resend it")


@dataclass(slots=True, eq=False)
class PreparedBatch:
    """One validated, priced batch as rows, waiting for the writer."""

    environment_id: str
    gateway_id: str
    gateway_key: int
    batch_sequence: int
    events: PreparedEvents
    future: asyncio.Future[pb.UsageAck] = field(init=False)


def _retrieve_exception(future: asyncio.Future[pb.UsageAck]) -> None:
    # A stream that ended early no longer awaits its futures; reading the exception keeps asyncio quiet.
    if not future.cancelled():
        future.exception()


class GroupCommitWriter:
    """Coalesces batches from every stream into one transaction, then resolves each batch's ack future.

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
    ) -> None:
        self._engine = engine
        self._linger_s = linger_s
        self._max_events = max_events
        self._queue: deque[PreparedBatch] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        name = engine.dialect.name
        # SQLite: a synchronous connection of the writer's own, used only from its own thread, whose log is
        # checkpointed from another thread (its own commits never checkpoint).
        self._sqlite: tuple[sa.Engine, ThreadPoolExecutor] | None = None
        self._checkpointer: WalCheckpointer | None = None
        if name == "sqlite":
            self._sqlite = (
                create_sqlite_thread_engine(engine),
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer"),
            )
            self._checkpointer = WalCheckpointer(
                engine, interval_s=checkpoint_interval_s, truncate_bytes=wal_truncate_bytes
            )
        events = tables.usage_events
        # Duplicates. A transaction first inserts all its events, skipping stored ids, and counts what went in
        # (_insert_all): nearly always, all. Otherwise the insert is undone and the exact path learns which ids
        # were stored (_insert_new_events). SQLite asks, then inserts the others; it cannot use INSERT ...
        # RETURNING, whose rows SQLite hands back one driver step at a time, and every step releases and
        # retakes the GIL, so while the event loop was busy each row could wait a whole switch interval. The
        # transaction holds the write lock from BEGIN IMMEDIATE (create_sqlite_thread_engine), so nobody can
        # store an id between the question and the insert. PostgreSQL, where replicas insert concurrently,
        # decides it in the insert itself: ON CONFLICT DO NOTHING RETURNING, in one round trip.
        self._stored_event_ids = sa.select(events.c.event_id).where(
            events.c.gateway_key == sa.bindparam("gateway_key"),
            events.c.event_id.in_(sa.bindparam("event_ids", expanding=True)),
        )
        insert_events = dialect.insert_ignore_duplicates(
            events, dialect_name=name, index_elements=("gateway_key", "event_id")
        )
        # The first insert only counts (the driver's row count, on both engines); PostgreSQL's exact one
        # returns the keys it inserted.
        self._insert_events_counted = CompiledStatement(insert_events, engine.dialect, EVENT_COLUMNS)
        self._insert_events = (
            self._insert_events_counted
            if self._sqlite is not None
            else CompiledStatement(
                insert_events.returning(events.c.gateway_key, events.c.event_id), engine.dialect, EVENT_COLUMNS
            )
        )
        self._insert_tags = CompiledStatement(tables.usage_event_tags.insert(), engine.dialect, TAG_COLUMNS)
        self._upsert_rollups = CompiledStatement(
            dialect.upsert_adding(
                tables.usage_rollup_1m,
                dialect_name=name,
                key_columns=tables.ROLLUP_DIMENSIONS,
                add_columns=tables.ROLLUP_SUM_COLUMNS,
            ),
            engine.dialect,
            ROLLUP_COLUMNS,
        )
        gateways = tables.gateways
        new_sequence = sa.bindparam("new_sequence", type_=sa.BigInteger)
        self._advance_sequence = DriverStatement(
            gateways.update()
            .where(gateways.c.gateway_key == sa.bindparam("key", type_=sa.Integer))
            .values(
                last_acked_sequence=sa.case(
                    (gateways.c.last_acked_sequence < new_sequence, new_sequence),
                    else_=gateways.c.last_acked_sequence,
                )
            ),
            engine.dialect,
        )

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-group-commit")
            if self._checkpointer is not None:
                await self._checkpointer.start()

    def submit(self, batch: PreparedBatch) -> asyncio.Future[pb.UsageAck]:
        """Queues a batch; the future resolves with its ack after its transaction commits."""
        if self._stopping or self._task is None:
            raise BatchNotStoredError(batch.batch_sequence, "the server is shutting down")
        future: asyncio.Future[pb.UsageAck] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve_exception)
        batch.future = future
        metrics.BATCHES_IN_FLIGHT.inc()
        if not batch.events.count:
            # Every event was rejected: there is nothing to make durable, so the ack is final now.
            self._resolve(batch, _EMPTY_RESULT)
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

    async def _store(self, group: list[PreparedBatch]) -> list[_Result]:
        """One transaction for the whole group; returns each batch's (accepted, duplicate) counts."""
        started = time.perf_counter()
        if self._sqlite is not None:
            # The whole transaction is one hop to the writer's own thread: no statement waits for a turn of
            # the event loop (busy receiving and validating the next batches), and SQLite's work overlaps it.
            sqlite, thread = self._sqlite
            results = await asyncio.get_running_loop().run_in_executor(thread, self._in_sqlite_thread, sqlite, group)
        else:
            async with UnitOfWork(self._engine) as uow:
                results = await uow.connection.run_sync(self._write, group)
                await uow.commit()
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.TRANSACTION_EVENTS.observe(sum(batch.events.count for batch in group))
        return results

    def _in_sqlite_thread(self, engine: sa.Engine, group: list[PreparedBatch]) -> list[_Result]:
        with engine.begin() as connection:
            return self._write(connection, group)

    def _write(self, connection: sa.Connection, group: list[PreparedBatch]) -> list[_Result]:
        """The transaction's statements (the caller begins and commits): events, tags, rollups, sequences.

        Nearly every event is new, so the events of the whole group are inserted first as they are, and when
        every one went in, each batch's own rollups and tags are the transaction's: no Python runs per event
        here. Otherwise the insert is undone and the group is stored the exact way (_write_exactly).
        """
        now_us = time.time_ns() // 1000
        if self._insert_all(connection, group, now_us):
            results = [_Result(accepted=batch.events.count, duplicate=0) for batch in group]
            tag_rows = [row for batch in group for rows in batch.events.tag_rows.values() for row in rows]
            if len(group) == 1:
                rollups = group[0].events.rollups
            else:
                rollups = {}
                for batch in group:
                    merge_rollups(rollups, batch.events.rollups)
        else:
            results, tag_rows, rollups = self._write_exactly(connection, _plan(group, now_us))
        self._write_the_rest(connection, group, tag_rows, rollups)
        return results

    def _insert_all(self, connection: sa.Connection, group: list[PreparedBatch], now_us: int) -> bool:
        """Inserts every event of the group, skipping ids stored already, and tells whether all went in; if
        any was skipped (stored before, or twice in the group), the insert is undone and this returns False.

        A savepoint in driver SQL: SQLAlchemy's begin_nested() cost ~0.4 ms per transaction (measured).
        """
        values: list[Any] = []
        for batch in group:
            values += batch.events.values
        width = len(EVENT_COLUMNS)
        events = len(values) // width
        values[_INGEST_TIME::width] = [now_us] * events
        connection.exec_driver_sql("SAVEPOINT new_events")
        inserted = 0
        for sql, parameters in self._insert_events_counted.chunks_of_values(values):
            inserted += connection.exec_driver_sql(sql, parameters).rowcount
        if inserted == events:
            connection.exec_driver_sql("RELEASE new_events")
            return True
        connection.exec_driver_sql("ROLLBACK TO new_events")
        connection.exec_driver_sql("RELEASE new_events")
        return False

    def _write_exactly(
        self, connection: sa.Connection, plan: _Plan
    ) -> tuple[list[_Result], list[TagRow], dict[RollupKey, RollupRow]]:
        """Stores the plan's events that are new and counts only those (some ids are stored already)."""
        duplicates = self._insert_new_events(connection, plan)
        results: list[_Result] = []
        tag_rows: list[TagRow] = []
        rollups: dict[RollupKey, RollupRow] = {}
        for batch, rows, firsts in zip(plan.group, plan.rows, plan.candidates, strict=True):
            accepted = 0
            gateway_key = batch.gateway_key
            for index in firsts:
                row = rows[index]
                if (gateway_key, row["event_id"]) not in duplicates:
                    accepted += 1
                    add_to_rollup(rollups, row)
                    tags = batch.events.tag_rows.get(index)
                    if tags:
                        tag_rows.extend(tags)
            results.append(_Result(accepted=accepted, duplicate=batch.events.count - accepted))
        return results, tag_rows, rollups

    def _write_the_rest(
        self,
        connection: sa.Connection,
        group: list[PreparedBatch],
        tag_rows: list[TagRow],
        rollups: dict[RollupKey, RollupRow],
    ) -> None:
        """The new events' tags and rollups, and each gateway's acked sequence."""
        # Multi-row like the events: executemany steps SQLite once per row, and every step releases and retakes
        # the GIL (profiling showed this thread waiting for it behind the event loop preparing the next batches).
        for sql, parameters in self._insert_tags.chunks(tag_rows):
            connection.exec_driver_sql(sql, parameters)
        rows = rollup_rows(rollups)
        if self._sqlite is not None:
            for sql, parameters in self._upsert_rollups.chunks(rows):
                connection.exec_driver_sql(sql, parameters)
        elif rows:
            # asyncpg sends an executemany as one pipeline of plain values; unnest's arrays would cost it a type
            # check per element, 133 per rollup row (paced ingest: 64 -> 47-49 µs CPU per event).
            connection.exec_driver_sql(self._upsert_rollups.sql, rows)
        sequences: dict[int, int] = {}
        for batch in group:
            if batch.events.max_sequence > sequences.get(batch.gateway_key, 0):
                sequences[batch.gateway_key] = batch.events.max_sequence
        if sequences:
            advance = self._advance_sequence
            connection.exec_driver_sql(
                advance.sql,
                [advance.parameters(key=key, new_sequence=sequence) for key, sequence in sequences.items()],
            )

    def _insert_new_events(self, connection: sa.Connection, plan: _Plan) -> set[_EventKey]:
        """Inserts the plan's events that are not stored yet; returns the keys of those that were (duplicates).

        Statements, not rows, are the unit: each is one driver call of up to the bind-parameter limit, so the
        writer thread hands the GIL to the event loop a few times per transaction, not once per row.
        """
        if self._sqlite is None:
            inserted: set[_EventKey] = set()
            for sql, parameters in self._insert_events.chunks(plan.insert_rows):
                inserted.update(map(tuple, connection.exec_driver_sql(sql, parameters)))
            if len(inserted) == len(plan.insert_rows):
                return set()
            return {key for key in plan.event_keys() if key not in inserted}
        stored: set[_EventKey] = set()
        for gateway_key, event_ids in plan.event_ids.items():
            for start in range(0, len(event_ids), MAX_BIND_PARAMETERS - 1):
                found = connection.execute(
                    self._stored_event_ids,
                    {"gateway_key": gateway_key, "event_ids": event_ids[start : start + MAX_BIND_PARAMETERS - 1]},
                )
                stored.update((gateway_key, event_id) for (event_id,) in found)
        rows = plan.insert_rows
        if stored:
            rows = [row for row in rows if (row[_GATEWAY_KEY], row[_EVENT_ID]) not in stored]
        for sql, parameters in self._insert_events.chunks(rows):
            connection.exec_driver_sql(sql, parameters)
        return stored

    def _resolve(self, batch: PreparedBatch, result: _Result) -> None:
        metrics.BATCHES_IN_FLIGHT.dec()
        metrics.BATCHES_STORED.inc()
        metrics.EVENTS_ACCEPTED.inc(result.accepted)
        metrics.EVENTS_DUPLICATE.inc(result.duplicate)
        rejected = batch.events.rejected
        metrics.EVENTS_REJECTED.inc(len(rejected))
        if not batch.future.done():
            batch.future.set_result(
                pb.UsageAck(
                    batch_sequence=batch.batch_sequence,
                    accepted_count=result.accepted,
                    duplicate_count=result.duplicate,
                    rejected_count=len(rejected),
                    rejected=rejected,
                )
            )

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


@dataclass(frozen=True, slots=True)
class _Plan:
    """A group's candidate rows: each (gateway, event id) once, in submission order."""

    group: list[PreparedBatch]
    rows: list[list[UsageEventRow]]
    """Per batch, its events' rows (PreparedEvents.rows)."""
    insert_rows: list[tuple[object, ...]]
    """usage_events values (EVENT_COLUMNS order) of the first occurrence of each event in the group."""
    candidates: list[list[int]]
    """Per batch, the indexes of its rows that are first occurrences (the others are duplicates already)."""
    event_ids: dict[int, list[str]]
    """gateway_key -> the event ids of `insert_rows` of that gateway."""

    def event_keys(self) -> list[_EventKey]:
        return [(gateway_key, event_id) for gateway_key, ids in self.event_ids.items() for event_id in ids]


_GATEWAY_KEY: Final = EVENT_COLUMNS.index("gateway_key")
_INGEST_TIME: Final = EVENT_COLUMNS.index("ingest_time_us")
_EVENT_ID: Final = EVENT_COLUMNS.index("event_id")


def _plan(group: list[PreparedBatch], now_us: int) -> _Plan:
    seen: set[_EventKey] = set()
    batch_rows = [batch.events.rows() for batch in group]
    insert_rows: list[tuple[object, ...]] = []
    candidates: list[list[int]] = []
    event_ids: dict[int, list[str]] = {}
    for batch, rows in zip(group, batch_rows, strict=True):
        gateway_key = batch.gateway_key
        gateway_event_ids = event_ids.setdefault(gateway_key, [])
        firsts: list[int] = []
        for index, row in enumerate(rows):
            event_id = row["event_id"]
            key = (gateway_key, event_id)
            if key in seen:
                continue  # a later occurrence in this transaction: a duplicate of the first
            seen.add(key)
            row["ingest_time_us"] = now_us
            insert_rows.append(event_values(row))
            gateway_event_ids.append(event_id)
            firsts.append(index)
        candidates.append(firsts)
    return _Plan(group, batch_rows, insert_rows, candidates, event_ids)


@dataclass(frozen=True, slots=True)
class _Result:
    accepted: int
    duplicate: int


_EMPTY_RESULT: Final = _Result(accepted=0, duplicate=0)


def _reason(error: Exception) -> str:
    # The class name says what failed (OperationalError, IntegrityError, ...) without leaking SQL or data.
    return f"the database transaction failed: {type(error).__name__}"
