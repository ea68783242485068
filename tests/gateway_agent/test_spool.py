"""Spool: group commit, sequence numbers that survive restarts, caps, corrupt files, acks and dead letters."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway_agent.settings import Durability
from gateway_agent.spool import Rejection, Spool, iter_dead_letters


def make_spool(path: Path, *, max_bytes: int = 1 << 30, max_pending: int = 100_000) -> Spool:
    return Spool(
        path,
        durability=Durability.OS_BUFFERED,
        max_bytes=max_bytes,
        max_pending=max_pending,
        commit_linger=timedelta(milliseconds=1),
        commit_max_events=1000,
    )


async def open_spool(path: Path, **kwargs: int) -> Spool:
    spool = make_spool(path, **kwargs)
    await asyncio.to_thread(spool.open)
    spool.start(asyncio.get_running_loop())
    return spool


async def add(spool: Spool, count: int, payload: bytes = b"x" * 10) -> list[int]:
    sequences = []
    for _ in range(count):
        sequence = spool.next_sequence
        spool.next_sequence += 1
        assert spool.enqueue(sequence, f"id-{sequence}", payload) is None
        sequences.append(sequence)
    assert await spool.wait_committed(sequences[-1])
    return sequences


async def test_sequence_numbers_continue_after_a_restart(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "spool.db")
    first = spool.next_sequence
    assert await add(spool, 5) == [first, first + 1, first + 2, first + 3, first + 4]
    await asyncio.to_thread(spool.close)

    reopened = await open_spool(tmp_path / "spool.db")
    assert reopened.next_sequence == first + 5
    assert reopened.depth == 5
    await asyncio.to_thread(reopened.close)


async def test_sequence_numbers_are_not_reused_after_every_event_was_acked(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "spool.db")
    sequences = await add(spool, 3)
    spool.acknowledge(sequences, 30, [])
    await asyncio.to_thread(spool.close)

    reopened = await open_spool(tmp_path / "spool.db")
    assert reopened.depth == 0
    assert reopened.next_sequence == sequences[-1] + 1
    assert reopened.last_acked_sequence == sequences[-1]
    await asyncio.to_thread(reopened.close)


async def test_a_new_spool_numbers_above_any_earlier_spool_of_the_gateway(tmp_path: Path) -> None:
    """A reinstall with a fresh data dir must not reuse the numbers the control plane includes for the old one:
    a new file starts at microseconds since the epoch, so a later one starts above every number an earlier one
    gave (at fewer than 10^6 events a second since it started), and an empty one keeps its start."""
    before_us = time.time_ns() // 1000
    old = await open_spool(tmp_path / "old" / "spool.db")
    old_sequences = await add(old, 50)
    await asyncio.to_thread(old.close)
    assert old_sequences[0] > before_us

    new = await open_spool(tmp_path / "new" / "spool.db")
    start = new.next_sequence
    assert start > old_sequences[-1]
    assert (new.committed_through, new.acked_floor) == (start - 1, start - 1)
    await asyncio.to_thread(new.close)
    reopened = await open_spool(tmp_path / "new" / "spool.db")
    assert reopened.next_sequence == start
    assert await add(reopened, 2) == [start, start + 1]
    await asyncio.to_thread(reopened.close)


async def test_a_corrupt_spool_is_set_aside_and_a_fresh_one_started(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a sqlite database at all" * 200)

    spool = await open_spool(path)

    assert spool.corrupt_set_aside == 1
    aside = await asyncio.to_thread(lambda: [p.read_bytes() for p in tmp_path.glob("spool.db.corrupt-*")])
    assert len(aside) == 1
    assert aside[0].startswith(b"this is not a sqlite")
    # The old file's numbers are unknown, so new ones start above anything a count could have reached.
    assert spool.next_sequence > 1_000_000_000_000
    first = spool.next_sequence
    assert await add(spool, 2) == [first, first + 1]
    await asyncio.to_thread(spool.close)

    reopened = await open_spool(path)
    assert reopened.corrupt_set_aside == 1
    assert reopened.next_sequence == first + 2
    await asyncio.to_thread(reopened.close)


async def test_a_full_spool_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "spool.db", max_bytes=100)
    await add(spool, 10)  # exactly 100 payload bytes
    assert spool.enqueue(spool.next_sequence, "over", b"y" * 10) == "spool_full"
    assert spool.dropped["spool_full"] == 1
    assert spool.depth == 10
    await asyncio.to_thread(spool.close)


async def test_a_bounded_queue_drops_when_the_writer_falls_behind(tmp_path: Path) -> None:
    spool = make_spool(tmp_path / "spool.db", max_pending=3)
    await asyncio.to_thread(spool.open)  # writer not started: nothing leaves the queue
    outcomes = [spool.enqueue(i, f"id-{i}", b"p") for i in range(1, 6)]
    assert outcomes == [None, None, None, "queue_full", "queue_full"]
    assert spool.dropped["queue_full"] == 2
    await asyncio.to_thread(spool.close)


async def test_reads_respect_the_batch_limits_and_always_make_progress(tmp_path: Path) -> None:
    spool = await open_spool(tmp_path / "spool.db")
    s = await add(spool, 10, payload=b"z" * 100)

    by_count = await spool.read_after(0, max_events=4, max_bytes=1 << 20)
    assert [e.sequence for e in by_count] == s[:4]
    by_bytes = await spool.read_after(s[3], max_events=100, max_bytes=250)
    assert [e.sequence for e in by_bytes] == s[4:6]
    oversized = await spool.read_after(0, max_events=100, max_bytes=10)
    assert [e.sequence for e in oversized] == s[:1]  # one event over the byte limit still goes alone
    await asyncio.to_thread(spool.close)


async def test_acked_events_are_deleted_and_rejected_ones_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = await open_spool(path)
    sequences = await add(spool, 4)
    rejected = Rejection(sequences[1], "REJECTION_REASON_INVALID_FIELD", "request_id", "empty")
    spool.acknowledge(sequences[:3], 30, [rejected])
    sequences += await add(spool, 1)  # the ack's deletes commit with the next group

    remaining = await spool.read_after(0, max_events=100, max_bytes=1 << 20)
    assert [e.sequence for e in remaining] == sequences[3:]
    assert spool.dead_letter_count == 1
    assert spool.last_acked_sequence == sequences[2]
    await asyncio.to_thread(spool.close)

    dead = list(iter_dead_letters(path))
    assert [(d.sequence, d.event_id, d.reason, d.field) for d in dead] == [
        (sequences[1], f"id-{sequences[1]}", "REJECTION_REASON_INVALID_FIELD", "request_id")
    ]
    assert dead[0].payload == b"x" * 10


async def settled(spool: Spool) -> None:
    """Waits until the writer has run everything queued (acked-batch deletes included) and reported it."""
    marker = spool.next_sequence
    spool.next_sequence += 1
    assert spool.enqueue(marker, f"id-{marker}", b"m") is None
    assert await spool.wait_committed(marker)


async def record_times(spool: Spool) -> dict[int, int]:
    return {e.sequence: e.enqueue_us for e in await spool.read_after(0, max_events=1000, max_bytes=1 << 30)}


async def test_the_oldest_unsent_event_comes_from_the_spool_through_acks_new_commits_and_a_restart(
    tmp_path: Path,
) -> None:
    spool = await open_spool(tmp_path / "spool.db")
    assert spool.oldest_unsent_us is None
    first = await add(spool, 3)
    times = await record_times(spool)
    assert spool.oldest_unsent_us == times[first[0]]

    # An ack empties everything that was committed; nothing newer is there yet.
    spool.acknowledge(first, 30, [])
    assert spool.oldest_unsent_us is None
    # Events committed afterwards are unsent from the moment they are spooled, whatever the sender does next
    # (its stream may never be answered, or fail and retry forever).
    later = await add(spool, 4)
    times = await record_times(spool)
    assert spool.oldest_unsent_us == times[later[0]]

    # A partial ack moves the oldest to the first event it left, once the writer has deleted the acked ones.
    spool.acknowledge(later[:2], 20, [])
    await settled(spool)
    assert spool.oldest_unsent_us == times[later[2]]
    await asyncio.to_thread(spool.close)

    reopened = await open_spool(tmp_path / "spool.db")
    assert reopened.oldest_unsent_us == times[later[2]]
    await asyncio.to_thread(reopened.close)


async def test_events_waiting_for_a_group_commit_count_as_unsent(tmp_path: Path) -> None:
    spool = make_spool(tmp_path / "spool.db")
    await asyncio.to_thread(spool.open)  # writer not started: the events stay queued in memory
    before = time.time_ns() // 1000
    assert spool.enqueue(1, "id-1", b"p") is None
    assert spool.enqueue(2, "id-2", b"p") is None
    oldest = spool.oldest_unsent_us
    await asyncio.to_thread(spool.close)
    assert oldest is not None
    assert before <= oldest <= time.time_ns() // 1000


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022 umask, under which files are created readable by everyone unless made private."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
async def test_a_new_spool_its_wal_and_its_directory_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    spool = await open_spool(data_dir / "spool.db")
    sequences = await add(spool, 3)
    rejected = Rejection(sequences[0], "REJECTION_REASON_INVALID_FIELD", "request_id", "empty")
    spool.acknowledge(sequences[:1], 10, [rejected])
    await settled(spool)
    # SQLite made the -wal and -shm files on the first connection in WAL mode; they exist while it is open.
    modes = {name: mode_of(data_dir / name) for name in ("spool.db", "spool.db-wal", "spool.db-shm")}
    await asyncio.to_thread(spool.close)
    assert modes == {"spool.db": 0o600, "spool.db-wal": 0o600, "spool.db-shm": 0o600}
    assert mode_of(data_dir) == 0o700


@pytest.mark.usefixtures("open_umask")
async def test_a_spool_and_data_dir_readable_by_others_are_made_private_when_opened(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    data_dir.mkdir(mode=0o755)
    path = data_dir / "spool.db"
    # As an older agent left them: 0644, with a connection keeping the -wal and -shm files in place.
    older = sqlite3.connect(path, isolation_level=None)
    try:
        older.execute("PRAGMA journal_mode=WAL")
        older.execute("CREATE TABLE t (x INTEGER)")
        assert {mode_of(data_dir / name) for name in ("spool.db", "spool.db-wal", "spool.db-shm")} == {0o644}
        with capture_logs() as logs:
            spool = await open_spool(path)
        await add(spool, 1)
        modes = {name: mode_of(data_dir / name) for name in ("spool.db", "spool.db-wal", "spool.db-shm")}
        await asyncio.to_thread(spool.close)
    finally:
        older.close()
    assert modes == {"spool.db": 0o600, "spool.db-wal": 0o600, "spool.db-shm": 0o600}
    assert mode_of(data_dir) == 0o700
    assert sorted((entry["event"], Path(entry["path"]).name, entry["mode"]) for entry in logs) == [
        ("made an agent directory private", "agent", "0755"),
        ("made an agent file private", "spool.db", "0644"),
        ("made an agent file private", "spool.db-shm", "0644"),
        ("made an agent file private", "spool.db-wal", "0644"),
    ]
