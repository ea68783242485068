"""The SQLite log checkpointer: copies the ingest writer's log, empties it past its cap, survives shutdowns."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage.checkpoint import TRUNCATE_WAIT_MS, WalCheckpointer
from services.storage.engine import create_engine, create_sqlite_thread_engine, sqlite_url
from tests.telemetry.events import wait_until

_MIB = 1024 * 1024

Checkpointers = Callable[..., WalCheckpointer]
"""WalCheckpointer(the test's database, interval_s=..., truncate_bytes=...), shut down when the test ends."""


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(sqlite_url(tmp_path))
    yield engine
    await engine.dispose()


@pytest.fixture
def writer(sqlite_engine: AsyncEngine) -> Iterator[Engine]:
    """The ingest writer's kind of engine on the test's database, which holds a table of blobs."""
    writer = create_sqlite_thread_engine(sqlite_engine)
    with writer.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE blobs (payload BLOB)")
    yield writer
    writer.dispose()


@pytest.fixture
async def checkpointers(sqlite_engine: AsyncEngine) -> AsyncIterator[Checkpointers]:
    made: list[WalCheckpointer] = []

    def make(*, interval_s: float, truncate_bytes: int) -> WalCheckpointer:
        made.append(WalCheckpointer(sqlite_engine, interval_s=interval_s, truncate_bytes=truncate_bytes))
        return made[-1]

    yield make
    for checkpointer in made:
        await checkpointer.shutdown()


def _write(writer: Engine, *, transactions: int, bytes_each: int) -> None:
    for _ in range(transactions):
        with writer.begin() as connection:
            connection.exec_driver_sql("INSERT INTO blobs (payload) VALUES (randomblob(?))", (bytes_each,))


def _reported_wal_bytes() -> float | None:
    return REGISTRY.get_sample_value("meterwire_sqlite_wal_bytes")


def _wal_bytes(data_dir: Path) -> int:
    wal = data_dir / "meterwire.db-wal"
    return wal.stat().st_size if wal.exists() else 0


async def test_the_writer_leaves_its_log_to_the_checkpointer_which_empties_it_past_its_cap(
    writer: Engine, checkpointers: Checkpointers, tmp_path: Path
) -> None:
    checkpointer = checkpointers(interval_s=3600, truncate_bytes=2 * _MIB)
    with writer.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 0
    # 8 MiB is 2,000 pages: SQLite's own checkpoint would have run twice by now.
    await asyncio.to_thread(_write, writer, transactions=8, bytes_each=_MIB)
    assert _wal_bytes(tmp_path) > 8 * _MIB

    emptied = await asyncio.to_thread(checkpointer.checkpoint)

    assert emptied.truncated
    assert emptied.log_frames == 0
    assert _wal_bytes(tmp_path) == 0
    assert _reported_wal_bytes() == 0

    # Under the cap the log is copied but kept, and reported.
    await asyncio.to_thread(_write, writer, transactions=1, bytes_each=_MIB // 4)
    copied = await asyncio.to_thread(checkpointer.checkpoint)

    assert not copied.truncated
    assert copied.log_frames > 0
    with writer.connect() as connection:
        page_size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
        assert connection.exec_driver_sql("SELECT count(*) FROM blobs").scalar_one() == 9
    assert _reported_wal_bytes() == copied.log_frames * page_size


async def test_the_checkpointer_runs_every_interval_until_shut_down_twice(
    writer: Engine, checkpointers: Checkpointers, tmp_path: Path
) -> None:
    checkpointer = checkpointers(interval_s=0.01, truncate_bytes=_MIB)
    await asyncio.to_thread(_write, writer, transactions=4, bytes_each=_MIB)
    assert _wal_bytes(tmp_path) > 4 * _MIB

    async def log_emptied() -> bool:
        return _wal_bytes(tmp_path) == 0

    async with checkpointer:
        await wait_until(log_emptied)

    await checkpointer.shutdown()  # again: nothing happens
    await asyncio.to_thread(_write, writer, transactions=2, bytes_each=_MIB)
    await asyncio.sleep(0.1)
    assert _wal_bytes(tmp_path) > 2 * _MIB  # nothing checkpoints after the shutdown


async def test_a_reader_on_an_old_snapshot_delays_the_emptying_but_not_the_writer(
    writer: Engine, checkpointers: Checkpointers, tmp_path: Path
) -> None:
    checkpointer = checkpointers(interval_s=3600, truncate_bytes=_MIB)
    reader = sqlite3.connect(tmp_path / "meterwire.db", isolation_level=None)
    try:
        await asyncio.to_thread(_write, writer, transactions=2, bytes_each=_MIB)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM blobs").fetchone() == (2,)  # holds this snapshot
        await asyncio.to_thread(_write, writer, transactions=2, bytes_each=_MIB)

        delayed = await asyncio.to_thread(checkpointer.checkpoint)
        await asyncio.to_thread(_write, writer, transactions=1, bytes_each=1024)

        assert not delayed.truncated
        assert _wal_bytes(tmp_path) > 4 * _MIB
        with checkpointer._engine.connect() as connection:  # the bounded wait is the guarantee
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == TRUNCATE_WAIT_MS
        reader.execute("COMMIT")
        emptied = await asyncio.to_thread(checkpointer.checkpoint)
        assert emptied.truncated
        assert _wal_bytes(tmp_path) == 0
    finally:
        reader.close()
