"""The agent's durable usage spool: a SQLite (WAL) queue filled by group commits from a writer thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple

import structlog

from gateway_agent.private_files import private_directory
from gateway_agent.settings import Durability
from gateway_agent.spool_file import DeadLetter, connect, is_corruption, is_disk_full, iter_dead_letters, set_aside

# DeadLetter and iter_dead_letters live with the file they read; the CLI knows them from here.
__all__ = ["DeadLetter", "Rejection", "Spool", "SpooledEvent", "iter_dead_letters"]

log = structlog.get_logger("meterwire.agent.spool")

_OLDEST_EVENT = "SELECT seq, enqueue_us FROM events ORDER BY seq LIMIT 1"
_DIGEST_PARAMS: Final = ", ".join("?" * 12)


def _numbering_floor() -> int:
    """Where a new spool file's numbering starts (its first event gets one more): microseconds since the epoch.

    A gateway reinstalled with a fresh data directory, or whose spool was set aside as corrupt, must not reuse
    numbers the control plane already includes for it (its snapshots would claim the new events). An earlier
    spool numbered from an earlier start and, recording fewer than 10^6 events a second on average since, never
    reached this one's start.
    """
    return time.time_ns() // 1000


class SpooledEvent(NamedTuple):
    """One committed spool row as the sender reads it (a named tuple: a drain makes one per spooled event)."""

    sequence: int
    event_id: str
    enqueue_us: int
    payload: bytes


@dataclass(frozen=True)
class Rejection:
    """Why the server refused one event of an acked batch."""

    sequence: int
    reason: str
    field: str
    message: str


@dataclass(frozen=True)
class _Commit:
    """What one group commit did, reported back to the event loop."""

    first_sequence: int
    last_sequence: int
    """0 (with first_sequence 0) for a transaction that only deleted acked events."""
    stored: bool
    dropped_bytes: int
    oldest: tuple[int, int] | None
    """The sequence and record time of the oldest event left in the file after the commit (None: empty, or
    unknown when the transaction failed)."""


class Spool:
    """Events are queued in memory by `enqueue()` (never blocking the loop) and committed in groups by a thread.

    Counters (`depth`, `spooled_bytes`) are touched only on the event loop thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        durability: Durability,
        max_bytes: int,
        max_pending: int,
        commit_linger: timedelta,
        commit_max_events: int,
    ) -> None:
        self.path = path
        self._durability = durability
        self._max_bytes = max_bytes
        self._max_pending = max_pending
        self._linger_s = commit_linger.total_seconds()
        self._commit_max = commit_max_events
        self._pending: deque[tuple[int, str, int, bytes]] = deque()
        self._commands: deque[Callable[[sqlite3.Connection], None]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-reader")
        self._waiters: deque[tuple[int, asyncio.Future[bool]]] = deque()
        self.committed = asyncio.Event()
        """Set after each group commit that stored events; the sender clears it before reading."""
        self.next_sequence = 1
        self.committed_through = 0
        self.last_enqueued = 0
        """The sequence of the newest event accepted into the queue (dropped ones are never committed)."""
        self.depth = 0
        self.spooled_bytes = 0
        self.dead_letter_count = 0
        self.last_acked_sequence = 0
        self.dropped: dict[str, int] = {"spool_full": 0, "queue_full": 0, "disk_full": 0}
        self.corrupt_set_aside = 0
        self._oldest_stored: tuple[int, int] | None = None
        """Sequence and record time of the oldest event in the file, as the writer last saw it."""
        self.acked_floor = 0
        """At open: every event up to this sequence was acknowledged (or never stored): the lowest event left in
        the file, less one, else the highest sequence ever used."""
        self.ack_digests: Callable[[list[int], list[int]], list[tuple[Any, ...]]] | None = None
        """Given an acked batch's sequences and its rejected ones: the budget digest rows to keep for the
        accepted ones (written in the ack's transaction). Set by the agent."""
        self.on_lost: Callable[[int, int], None] | None = None
        """Told the first and last sequence of a group commit that could not store its events."""

    # --- opening -----------------------------------------------------------------------------------------

    def open(self) -> None:
        """Opens (or creates) the spool file; a damaged one is set aside loudly and a fresh one started."""
        private_directory(self.path.parent)
        try:
            self._open_file()
        except sqlite3.DatabaseError as error:
            if not is_corruption(error):
                raise
            self._recover_from_corruption(error)

    def _open_file(self) -> None:
        writer = connect(self.path, durability=self._durability)
        try:
            row = writer.execute(
                "SELECT (SELECT COUNT(*) FROM events), (SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM events),"
                " (SELECT COALESCE(MAX(seq), 0) FROM events), (SELECT COALESCE(MAX(seq), 0) FROM dead_letters),"
                " (SELECT COUNT(*) FROM dead_letters)"
            ).fetchone()
            meta = dict(writer.execute("SELECT key, value FROM meta").fetchall())
            oldest = writer.execute(_OLDEST_EVENT).fetchone()
        except BaseException:
            writer.close()
            raise
        depth, size, max_event, max_dead, dead = row
        self._writer = writer
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        # Sequence numbers are never reused: the meta row remembers the highest even after its events are gone.
        high = meta.get("high_sequence")
        if high is None and not max_event and not max_dead:
            # A new file (a new install, or a data directory lost): the control plane may already include an
            # earlier spool's numbers for this gateway, so start above any of them (see _numbering_floor).
            high = _numbering_floor()
            writer.execute("INSERT OR REPLACE INTO meta VALUES ('high_sequence', ?)", (high,))
        self.next_sequence = max(max_event, max_dead, high or 0) + 1
        self.committed_through = self.next_sequence - 1
        self.last_acked_sequence = meta.get("last_acked_sequence", 0)
        self.corrupt_set_aside = max(self.corrupt_set_aside, meta.get("corrupt_set_aside", 0))
        self.depth, self.spooled_bytes, self.dead_letter_count = depth, size, dead
        self._oldest_stored = None if oldest is None else (int(oldest[0]), int(oldest[1]))
        self.acked_floor = self.next_sequence - 1 if oldest is None else int(oldest[0]) - 1

    def _recover_from_corruption(self, error: BaseException) -> None:
        self._close_connections()
        moved = set_aside(self.path)
        self.corrupt_set_aside += 1
        log.error(
            "SPOOL FILE IS CORRUPT: set it aside and started a new spool; its unsent events are not delivered",
            path=str(self.path),
            moved_to=str(moved),
            error=str(error),
            corrupt_spools_set_aside=self.corrupt_set_aside,
        )
        floor = self.next_sequence
        # The old file's sequence numbers are unknown; the fresh file starts above them (_numbering_floor).
        self._open_file()
        self.next_sequence = max(floor, self.next_sequence)
        self.committed_through = self.next_sequence - 1
        assert self._writer is not None
        self._writer.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("high_sequence", self.next_sequence - 1), ("corrupt_set_aside", self.corrupt_set_aside)],
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._write_forever, name="spool-writer", daemon=True)
        self._thread.start()

    # --- the hot path (event loop thread) ----------------------------------------------------------------

    def enqueue(self, sequence: int, event_id: str, payload: bytes) -> str | None:
        """Queues one event for the next group commit; returns why it was dropped, or None."""
        if len(self._pending) >= self._max_pending:
            reason = "queue_full"
        elif self.spooled_bytes + len(payload) > self._max_bytes:
            reason = "spool_full"
        else:
            self._pending.append((sequence, event_id, time.time_ns() // 1000, payload))
            self.last_enqueued = sequence
            self.depth += 1
            self.spooled_bytes += len(payload)
            if not self._wake.is_set():
                self._wake.set()
            return None
        self.dropped[reason] += 1
        return reason

    def wait_committed(self, sequence: int) -> asyncio.Future[bool]:
        """Resolves True once `sequence` is committed, False if its group commit could not store it."""
        assert self._loop is not None
        future: asyncio.Future[bool] = self._loop.create_future()
        if sequence <= self.committed_through:
            future.set_result(True)
        else:
            self._waiters.append((sequence, future))
        return future

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def oldest_unsent_us(self) -> int | None:
        """When the oldest event not yet acked by the control plane was recorded (µs since the epoch); None if none.

        Taken from the spool itself (what the writer found oldest in the file after its last transaction, else
        the oldest event waiting for a group commit), whatever the sender is doing: a window emptied by an ack
        before newer events were committed, or a stream that keeps failing, leave it right. Just after an ack,
        until the writer has deleted the acked events, it may still name one of them: an over-estimate for a
        moment, never a backlog hidden.
        """
        if self.depth <= 0:
            return None
        if self._oldest_stored is not None:
            return self._oldest_stored[1]
        with contextlib.suppress(IndexError):  # the writer thread may take the last one meanwhile
            return self._pending[0][2]
        return None

    # --- acks (event loop thread; the writes happen in the writer thread) --------------------------------

    def acknowledge(self, sequences: list[int], payload_bytes: int, rejected: list[Rejection]) -> None:
        """Deletes an acked batch; its rejected events move to the dead-letter table."""
        last = sequences[-1]
        dead_time_us = time.time_ns() // 1000
        first = sequences[0]
        digests = self.ack_digests(sequences, [r.sequence for r in rejected]) if self.ack_digests else []

        def write(connection: sqlite3.Connection) -> None:
            if digests:
                connection.executemany(f"INSERT OR REPLACE INTO budget_digests VALUES ({_DIGEST_PARAMS})", digests)
            if rejected:
                connection.executemany(
                    "INSERT OR REPLACE INTO dead_letters SELECT seq, event_id, ?, ?, ?, ?, payload FROM events"
                    " WHERE seq = ?",
                    [(r.reason, r.field, r.message, dead_time_us, r.sequence) for r in rejected],
                )
            connection.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", (first, last))
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('last_acked_sequence', ?)", (last,))

        self.depth -= len(sequences)
        self.spooled_bytes -= payload_bytes
        self.dead_letter_count += len(rejected)
        self.last_acked_sequence = last
        self._commands.append(write)
        self._wake.set()

    # --- budget state (the agent's; kept here so acks and digests share one transaction) -------------------

    def save_budget_snapshot(self, snapshot: bytes, through: int, ranges: list[tuple[int, int]]) -> None:
        """Stores the last budget snapshot and drops the digests it includes, in one writer transaction."""

        def write(connection: sqlite3.Connection) -> None:
            connection.execute("INSERT OR REPLACE INTO budget_state VALUES ('snapshot', ?)", (snapshot,))
            connection.execute("DELETE FROM budget_digests WHERE seq <= ?", (through,))
            if ranges:
                connection.executemany("DELETE FROM budget_digests WHERE seq BETWEEN ? AND ?", ranges)

        self._commands.append(write)
        self._wake.set()

    def load_budget_state(self) -> tuple[bytes | None, list[tuple[Any, ...]]]:
        """Blocking, after open(): the stored snapshot and the acked digests, in sequence order."""
        assert self._reader is not None
        row = self._reader.execute("SELECT value FROM budget_state WHERE key = 'snapshot'").fetchone()
        digests = self._reader.execute("SELECT * FROM budget_digests ORDER BY seq").fetchall()
        return (None if row is None else bytes(row[0])), digests

    def spooled_payloads(self, chunk: int = 10_000) -> Iterator[list[bytes]]:
        """Blocking, after open(): the payloads of the spooled events in sequence order, a chunk at a time."""
        assert self._reader is not None
        cursor = self._reader.execute("SELECT payload FROM events ORDER BY seq")
        while rows := cursor.fetchmany(chunk):
            yield [row[0] for row in rows]

    # --- reads (a reader thread; WAL lets it run beside the writer) ---------------------------------------

    async def read_after(self, sequence: int, *, max_events: int, max_bytes: int) -> list[SpooledEvent]:
        """Committed events after `sequence`, in order, within the batch limits (at least one event if any)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_executor, self._read_after, sequence, max_events, max_bytes)

    def _read_after(self, sequence: int, max_events: int, max_bytes: int) -> list[SpooledEvent]:
        assert self._reader is not None
        rows = self._reader.execute(
            "SELECT seq, event_id, enqueue_us, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (sequence, max_events),
        ).fetchall()
        batch: list[SpooledEvent] = []
        size = 0
        for row in rows:
            size += len(row[3])
            if batch and size > max_bytes:
                break
            batch.append(SpooledEvent._make(row))
        return batch

    # --- the writer thread -------------------------------------------------------------------------------

    def _write_forever(self) -> None:
        while True:
            self._wake.wait()
            if self._linger_s and not self._stopping and len(self._pending) < self._commit_max:
                time.sleep(self._linger_s)
            self._wake.clear()
            if not self._pending and not self._commands:
                if self._stopping:
                    return
                continue
            self._write_group()
            # Work (or a stop request) that arrived during the commit must not wait for another wake-up.
            if self._pending or self._commands or self._stopping:
                self._wake.set()

    def _write_group(self) -> None:
        rows = [self._pending.popleft() for _ in range(min(len(self._pending), self._commit_max))]
        commands = [self._commands.popleft() for _ in range(len(self._commands))]
        assert self._writer is not None
        try:
            oldest = self._transaction(rows, commands)
        except sqlite3.DatabaseError as error:
            self._on_write_error(error, rows, commands)
            return
        first, last = (rows[0][0], rows[-1][0]) if rows else (0, 0)
        self._report(_Commit(first, last, True, 0, oldest))

    def _transaction(
        self, rows: list[tuple[int, str, int, bytes]], commands: list[Callable[..., None]]
    ) -> tuple[int, int] | None:
        """Runs the acked-batch commands and inserts `rows` in one transaction; returns the oldest event left."""
        assert self._writer is not None
        writer = self._writer
        writer.execute("BEGIN IMMEDIATE")
        try:
            for command in commands:
                command(writer)
            if rows:
                writer.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
                writer.execute("INSERT OR REPLACE INTO meta VALUES ('high_sequence', ?)", (rows[-1][0],))
            # The primary key's first entry: one index probe per group commit.
            oldest = writer.execute(_OLDEST_EVENT).fetchone()
            writer.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                writer.execute("ROLLBACK")
            raise
        return None if oldest is None else (int(oldest[0]), int(oldest[1]))

    def _on_write_error(
        self, error: sqlite3.DatabaseError, rows: list[tuple[int, str, int, bytes]], commands: list[Callable[..., None]]
    ) -> None:
        if is_corruption(error):
            # The unsent events of the damaged file are lost with it; counted and logged, then a fresh spool.
            try:
                self._recover_from_corruption(error)
            except Exception as reopen_error:
                log.error("cannot start a fresh spool after corruption", error=str(reopen_error))
        elif is_disk_full(error):
            log.error("SPOOL WRITE FAILED: disk full; dropping this group of events (fail open)", events=len(rows))
        else:
            log.error("spool write failed; dropping this group of events (fail open)", error=str(error))
        # Acked-batch deletes are retried next time: they matter for the spool size, never for correctness.
        self._commands.extendleft(reversed(commands))
        if rows:
            size = sum(len(row[3]) for row in rows)
            self._report(_Commit(rows[0][0], rows[-1][0], False, size, None))
        time.sleep(0.05)

    def _report(self, commit: _Commit) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._on_commit, commit)

    def _on_commit(self, commit: _Commit) -> None:
        if commit.stored:
            self._oldest_stored = commit.oldest
        if not commit.last_sequence:
            return
        count = commit.last_sequence - commit.first_sequence + 1
        if not commit.stored:
            if self.on_lost is not None:
                self.on_lost(commit.first_sequence, commit.last_sequence)
            # Sequence numbers are dense within a group, so the count is exact.
            self.dropped["disk_full"] += count
            self.depth -= count
            self.spooled_bytes -= commit.dropped_bytes
        self.committed_through = max(self.committed_through, commit.last_sequence)
        while self._waiters and self._waiters[0][0] <= commit.last_sequence:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(commit.stored)
        if commit.stored:
            self.committed.set()

    # --- closing -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Commits what is queued, then closes; blocking (call it in a thread). Safe to call twice."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._read_executor.shutdown(wait=True)
        self._close_connections()

    def _close_connections(self) -> None:
        for connection in (self._writer, self._reader):
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
        self._writer = self._reader = None
