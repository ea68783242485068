"""Checkpoints SQLite's write-ahead log from a thread of its own, so that no ingest commit waits for a disk flush."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Self

import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.jobs import JobRunner, PeriodicJob
from services.storage.engine import create_sqlite_autocommit_engine

log = structlog.get_logger("meterwire.storage.checkpoint")

WAL_BYTES: Final = Gauge(
    "meterwire_sqlite_wal_bytes", "Size of SQLite's write-ahead log after the last checkpoint (0: emptied)."
)
CHECKPOINT_SECONDS: Final = Histogram(
    "meterwire_sqlite_checkpoint_seconds",
    "Wall time of one checkpoint of SQLite's write-ahead log, by mode: passive (never blocks ingest) or "
    "truncate (waits for the ingest writer's transaction, then holds the next one back until done).",
    ["mode"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CHECKPOINT_FAILURES: Final = Counter(
    "meterwire_sqlite_checkpoint_failures_total", "Checkpoints that failed (retried at the next interval)."
)


TRUNCATE_WAIT_MS: Final = 100
"""How long an emptying checkpoint waits for the transactions in its way (the writer's, a reader's on an older
snapshot) before it gives up until the next pass. While it waits no writer may start, so this bounds the
pause it can cause; a long report or export only delays the emptying."""


@dataclass(frozen=True, slots=True)
class CheckpointPass:
    """What one pass left: the log's size in frames (0 once emptied), and whether it emptied the log."""

    log_frames: int
    truncated: bool


class WalCheckpointer:
    """Copies committed log frames into the database file every `interval_s`, on a connection and thread of
    its own.

    Why not SQLite's automatic checkpoint: it runs inside the COMMIT that crosses wal_autocheckpoint (1,000
    pages), on the committing connection, and with synchronous=NORMAL it flushes the log and the database file
    to disk. On this project's benchmark machine a checkpoint took up to 2.5 s, and every batch behind such a
    commit waited (paced ingest at half the top rate: ack p99 0.4-1 s with it, 42-94 ms without, runs of
    240,000 events). The ingest writer's connection has it off (create_sqlite_thread_engine) and this runs
    PASSIVE checkpoints instead, which never block a writer.

    A passive checkpoint copies the frames committed when it began, so while writes keep coming it never
    finds the whole log copied and the log is never reset: under sustained ingest the file would only grow.
    When the log is still larger than `truncate_bytes` after a pass, a TRUNCATE checkpoint waits for the
    writer's transaction in progress, copies the frames left (those of the last interval) and empties the file:
    one pause of tens of milliseconds per `truncate_bytes` of log, and never longer than TRUNCATE_WAIT_MS
    plus that copy.
    """

    def __init__(self, engine: AsyncEngine, *, interval_s: float, truncate_bytes: int) -> None:
        self._truncate_bytes = truncate_bytes
        self._engine = create_sqlite_autocommit_engine(engine, f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._page_size = 0
        self._jobs = JobRunner([PeriodicJob("sqlite-wal-checkpoint", timedelta(seconds=interval_s), self._pass)])
        self._stopped = False
        self._disposed = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Checkpoints every interval until shut down (a periodic job of its own: it belongs to the writer)."""
        if not self._stopped:
            await self._jobs.start()

    async def _pass(self) -> None:
        """One pass in the checkpointer's thread; a failed one is counted and logged, and the next retries."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.checkpoint)
        except SQLAlchemyError as error:
            CHECKPOINT_FAILURES.inc()
            log.warning("sqlite checkpoint failed; retrying", error=f"{type(error).__name__}: {error}")

    def checkpoint(self) -> CheckpointPass:
        """One pass (blocking; runs in the checkpointer's thread): PASSIVE, then TRUNCATE if the log is too big."""
        with self._engine.connect() as connection:
            if not self._page_size:
                self._page_size = int(connection.exec_driver_sql("PRAGMA page_size").scalar_one())
            started = time.perf_counter()
            _busy, log_frames, _copied = connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            CHECKPOINT_SECONDS.labels("passive").observe(time.perf_counter() - started)
            log_frames = max(log_frames, 0)  # -1: not in WAL mode
            truncated = False
            if log_frames * self._page_size > self._truncate_bytes:
                started = time.perf_counter()
                busy, left, _copied = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
                CHECKPOINT_SECONDS.labels("truncate").observe(time.perf_counter() - started)
                truncated = busy == 0 and left == 0
                log_frames = max(left, 0)
        WAL_BYTES.set(0 if truncated else log_frames * self._page_size)
        return CheckpointPass(log_frames=log_frames, truncated=truncated)

    async def shutdown(self) -> None:
        """Stops checkpointing (a pass in progress finishes first); safe to call twice."""
        self._stopped = True
        await self._jobs.shutdown()
        if not self._disposed:
            self._disposed = True
            # Queued behind a pass still running in the thread, so the connection is closed after it.
            await asyncio.get_running_loop().run_in_executor(self._thread, self._engine.dispose)
            self._thread.shutdown(wait=False)
