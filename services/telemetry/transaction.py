"""One usage transaction: the statements that store a group of prepared batches' events, tags, rollups, budget
windows, acked sequences and included sets, compiled once per engine, and how a group is written with them
(exactly once per event)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from services.accounting.measures import COUNT_COLUMNS
from services.accounting.rollup import ROLLUP_COLUMNS, RollupKey, RollupRow, add_to_rollup, merge_rollups, rollup_rows
from services.budget.counting import BudgetCounter
from services.budget.included import IncludedSet, SequenceRange
from services.storage import dialect as storage_dialect
from services.storage import tables
from services.telemetry.prepare import PreparedEvents
from services.telemetry.rows import EVENT_COLUMNS, TAG_COLUMNS, TagRow, UsageEventRow, event_values
from services.telemetry.sql import MAX_BIND_PARAMETERS, CompiledStatement, DriverStatement

TaggedEvent = tuple[UsageEventRow, dict[str, str]]
"""A new event that carries tags, with its tags (what tag-scoped budgets count)."""
_TAG_KEY: Final = TAG_COLUMNS.index("tag_key")
_TAG_VALUE: Final = TAG_COLUMNS.index("tag_value")

_EventKey = tuple[int, str]
"""(gateway_key, event_id): the idempotency key."""


@dataclass(frozen=True, slots=True)
class StoredCounts:
    """What storing one batch did: events stored now, and events stored before (or earlier in the group)."""

    accepted: int
    duplicate: int


NOTHING_STORED: Final = StoredCounts(accepted=0, duplicate=0)


@dataclass(frozen=True, slots=True)
class StoredGroup:
    """What one usage transaction did: each batch's counts, and the budgets whose windows it moved."""

    counts: list[StoredCounts]
    budget_ids: frozenset[str] = frozenset()


@dataclass(slots=True, eq=False)
class PreparedBatch:
    """One validated, priced batch as rows, waiting for the writer."""

    environment_id: str
    gateway_id: str
    gateway_key: int
    batch_sequence: int
    events: PreparedEvents
    committed_through: int = 0
    """The agent's committed_through_sequence (0: none): its events up to it are all stored."""
    future: asyncio.Future[StoredCounts] = field(init=False)


class UsageTransaction:
    """The statements of the ingest transaction for one engine's dialect; `write` runs them for a group."""

    def __init__(self, dialect: Dialect, *, sqlite: bool) -> None:
        self._sqlite = sqlite
        self._budgets = BudgetCounter()
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
        insert_events = storage_dialect.insert_ignore_duplicates(
            events, dialect_name=dialect.name, index_elements=("gateway_key", "event_id")
        )
        # The first insert only counts (the driver's row count, on both engines); PostgreSQL's exact one
        # returns the keys it inserted.
        self._insert_events_counted = CompiledStatement(insert_events, dialect, EVENT_COLUMNS)
        self._insert_events = (
            self._insert_events_counted
            if sqlite
            else CompiledStatement(
                insert_events.returning(events.c.gateway_key, events.c.event_id), dialect, EVENT_COLUMNS
            )
        )
        self._insert_tags = CompiledStatement(tables.usage_event_tags.insert(), dialect, TAG_COLUMNS)
        self._upsert_rollups = CompiledStatement(
            storage_dialect.upsert_adding(
                tables.usage_rollup_1m,
                dialect_name=dialect.name,
                key_columns=tables.ROLLUP_DIMENSIONS,
                add_columns=tables.ROLLUP_SUM_COLUMNS,
                counting_columns=COUNT_COLUMNS,
            ),
            dialect,
            ROLLUP_COLUMNS,
        )
        gateways = tables.gateways
        # Each gateway's acked sequence and included set (services.budget.included): read, merged in Python,
        # written back. PostgreSQL locks the rows first (replicas may store one gateway's batches at once);
        # SQLite's transaction holds the write lock already.
        sequences = sa.select(
            gateways.c.gateway_key,
            gateways.c.last_acked_sequence,
            gateways.c.included_through_sequence,
            gateways.c.included_ranges,
        ).where(gateways.c.gateway_key.in_(sa.bindparam("keys", expanding=True)))
        # FOR NO KEY UPDATE, not FOR UPDATE: the events' foreign key already holds FOR KEY SHARE on the row, which
        # FOR UPDATE would wait for (two transactions of one gateway would deadlock); this still serializes them.
        self._read_sequences = sequences if sqlite else sequences.with_for_update(key_share=True)
        self._write_sequences = DriverStatement(
            gateways.update()
            .where(gateways.c.gateway_key == sa.bindparam("key", type_=sa.Integer))
            .values(
                last_acked_sequence=sa.bindparam("acked", type_=sa.BigInteger),
                included_through_sequence=sa.bindparam("through", type_=sa.BigInteger),
                included_ranges=sa.bindparam("ranges", type_=sa.Text),
            ),
            dialect,
        )

    def write(self, connection: sa.Connection, group: Sequence[PreparedBatch]) -> StoredGroup:
        """The transaction's statements (the caller begins and commits): events, tags, rollups, sequences.

        Nearly every event is new, so the events of the whole group are inserted first as they are, and when
        every one went in, each batch's own rollups and tags are the transaction's: no Python runs per event
        here. Otherwise the insert is undone and the group is stored the exact way (_write_exactly).
        """
        now_us = time.time_ns() // 1000
        # First the budgets this transaction counts toward (on PostgreSQL also the share lock that orders it
        # against budget changes: services.budget.store).
        budgets = self._budgets
        budgets.begin(connection)
        tagged: list[TaggedEvent] | None = [] if budgets.needs_tagged_events else None
        if self._insert_all(connection, group, now_us):
            results = [StoredCounts(accepted=batch.events.count, duplicate=0) for batch in group]
            tag_rows = [row for batch in group for rows in batch.events.tag_rows.values() for row in rows]
            if len(group) == 1:
                rollups = group[0].events.rollups
            else:
                rollups = {}
                for batch in group:
                    merge_rollups(rollups, batch.events.rollups)
            if tagged is not None:
                for batch in group:
                    for index, rows in batch.events.tag_rows.items():
                        tagged.append((batch.events.row(index), _tags_of(rows)))
        else:
            results, tag_rows, rollups = self._write_exactly(connection, _plan(group, now_us), tagged)
        self._write_the_rest(connection, group, tag_rows, rollups)
        if not budgets.active:
            return StoredGroup(results)
        counted = budgets.count(
            connection,
            rollups=rollups.values(),
            tagged_events=tagged or (),
            gateways={batch.gateway_key: (batch.environment_id, batch.gateway_id) for batch in group},
            now=datetime.fromtimestamp(now_us / 1_000_000, tz=UTC),
        )
        return StoredGroup(results, counted.budget_ids)

    def _insert_all(self, connection: sa.Connection, group: Sequence[PreparedBatch], now_us: int) -> bool:
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
        self, connection: sa.Connection, plan: _Plan, tagged: list[TaggedEvent] | None
    ) -> tuple[list[StoredCounts], list[TagRow], dict[RollupKey, RollupRow]]:
        """Stores the plan's events that are new and counts only those (some ids are stored already)."""
        duplicates = self._insert_new_events(connection, plan)
        results: list[StoredCounts] = []
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
                        if tagged is not None:
                            tagged.append((row, _tags_of(tags)))
            results.append(StoredCounts(accepted=accepted, duplicate=batch.events.count - accepted))
        return results, tag_rows, rollups

    def _write_the_rest(
        self,
        connection: sa.Connection,
        group: Sequence[PreparedBatch],
        tag_rows: list[TagRow],
        rollups: dict[RollupKey, RollupRow],
    ) -> None:
        """The new events' tags and rollups, and each gateway's acked sequence."""
        # Multi-row like the events: executemany steps SQLite once per row, and every step releases and retakes
        # the GIL (profiling showed this thread waiting for it behind the event loop preparing the next batches).
        for sql, parameters in self._insert_tags.chunks(tag_rows):
            connection.exec_driver_sql(sql, parameters)
        rows = rollup_rows(rollups)
        if self._sqlite:
            for sql, parameters in self._upsert_rollups.chunks(rows):
                connection.exec_driver_sql(sql, parameters)
        elif rows:
            # asyncpg sends an executemany as one pipeline of plain values; unnest's arrays would cost it a type
            # check per element, 133 per rollup row (paced ingest: 64 -> 47-49 µs CPU per event).
            connection.exec_driver_sql(self._upsert_rollups.sql, rows)
        self._record_sequences(connection, group)

    def _record_sequences(self, connection: sa.Connection, group: Sequence[PreparedBatch]) -> None:
        """Each gateway's highest acked sequence and its included set: the agent's committed-through promise
        and the sequence range of every batch, stored, duplicate or rejected (services.budget.included)."""
        changes: dict[int, _SequenceChange] = {}
        for batch in group:
            events = batch.events
            if not (events.max_sequence or events.sequence_range or batch.committed_through):
                continue
            change = changes.setdefault(batch.gateway_key, _SequenceChange())
            change.acked = max(change.acked, events.max_sequence)
            change.through = max(change.through, batch.committed_through)
            if events.sequence_range is not None:
                change.ranges.append(events.sequence_range)
        if not changes:
            return
        write = self._write_sequences
        updates = []
        for key, acked, through, ranges in connection.execute(self._read_sequences, {"keys": sorted(changes)}):
            change = changes[key]
            included = IncludedSet.decode(int(through), ranges).adding(through=change.through, batches=change.ranges)
            updates.append(
                write.parameters(
                    key=key, acked=max(int(acked), change.acked), through=included.through, ranges=included.encode()
                )
            )
        if updates:
            connection.exec_driver_sql(write.sql, updates)

    def _insert_new_events(self, connection: sa.Connection, plan: _Plan) -> set[_EventKey]:
        """Inserts the plan's events that are not stored yet; returns the keys of those that were (duplicates).

        Statements, not rows, are the unit: each is one driver call of up to the bind-parameter limit, so the
        writer thread hands the GIL to the event loop a few times per transaction, not once per row.
        """
        if not self._sqlite:
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


@dataclass(slots=True)
class _SequenceChange:
    """What one transaction's batches of one gateway add to its sequences."""

    acked: int = 0
    through: int = 0
    ranges: list[SequenceRange] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A group's candidate rows: each (gateway, event id) once, in submission order."""

    group: Sequence[PreparedBatch]
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


def _tags_of(rows: list[TagRow]) -> dict[str, str]:
    return {row[_TAG_KEY]: row[_TAG_VALUE] for row in rows}


def _plan(group: Sequence[PreparedBatch], now_us: int) -> _Plan:
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
