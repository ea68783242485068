"""Console exports: the current view written to CSV or XLSX in the background, with progress, then downloaded.

Rows come from the Reporting export code (grouped rows from `export_groups`, raw events from the request history),
and are written by the CLI's export writers, so a console file and `meterwire usage export` agree column for
column. Files are written from a worker thread (never on the event loop) and kept until their session has
started MAX_JOBS_PER_OWNER newer ones, or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.errors import NotFoundError
from services.lifecycle import cancel_and_wait
from services.pricing import PriceBooks
from services.reporting.export import export_groups
from services.reporting.filters import Grouping, UsageSelection
from services.reporting.history import RequestHistory
from services.reporting.messages import stored_event_message
from services.storage.engine import PRIVATE_DIRECTORY_MODE
from services.usage_terms.records import (
    EVENT_COLUMNS,
    ExportWriter,
    Record,
    event_record,
    grouped_columns,
    grouped_record,
    open_writer,
)

log = structlog.get_logger("meterwire.console")

FORMATS: Final = ("csv", "xlsx")
MAX_JOBS_PER_OWNER: Final = 5


@dataclass(slots=True)
class ExportJob:
    """One export: how far it got, and its file once done."""

    job_id: str
    owner: str
    """The session that asked; nobody else sees the job."""
    file_format: str
    filename: str
    path: Path
    start_us: int
    end_us: int
    rows: int = 0
    progress: float = 0.0
    """0..1: how far through the time range the rows written so far reach."""
    done: bool = False
    error: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def reached(self, moment_us: int) -> None:
        span = self.end_us - self.start_us
        self.progress = max(self.progress, min(1.0, (moment_us - self.start_us) / span)) if span > 0 else 1.0


@dataclass(frozen=True, slots=True)
class ExportShape:
    """What an export holds: grouped rows per bucket (`groupings` given) or one row per raw event."""

    groupings: tuple[Grouping, ...]
    group_names: tuple[str, ...]
    granularity: int
    zone_name: str


class Exports:
    """Running and finished console exports."""

    def __init__(self, engine: AsyncEngine, prices: PriceBooks, directory: Path, *, max_buckets: int) -> None:
        self._engine = engine
        self._max_buckets = max_buckets
        """Buckets one grouped export may span (reporting_max_export_buckets, as for ExportUsage)."""
        self._prices = prices
        self._history = RequestHistory(engine)
        self._directory = directory
        self._jobs: dict[str, ExportJob] = {}

    async def start(self, *, owner: str, selection: UsageSelection, shape: ExportShape, file_format: str) -> ExportJob:
        if file_format not in FORMATS:
            raise ValueError(f"unknown export format {file_format!r}")
        job_id = secrets.token_urlsafe(16)
        kind = "-".join(shape.group_names) if shape.groupings else "events"
        job = ExportJob(
            job_id=job_id,
            owner=owner,
            file_format=file_format,
            filename=f"usage-{kind}.{file_format}",
            path=self._directory / f"{job_id}.{file_format}",
            start_us=selection.start_us,
            end_us=selection.end_us,
        )
        await asyncio.to_thread(_remove, self._forget_old(owner))
        self._jobs[job_id] = job
        job.task = asyncio.create_task(self._run(job, selection, shape), name=f"console-export-{job_id}")
        return job

    def get(self, job_id: str, *, owner: str) -> ExportJob:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFoundError("export: no such export for this session (it may have expired)")
        return job

    async def shutdown(self) -> None:
        jobs, self._jobs = list(self._jobs.values()), {}
        await cancel_and_wait([job.task for job in jobs if job.task is not None])
        await asyncio.to_thread(_remove, [job.path for job in jobs])

    def _forget_old(self, owner: str) -> list[Path]:
        """Drops the owner's oldest jobs beyond MAX_JOBS_PER_OWNER - 1; returns their files to remove."""
        mine = [job for job in self._jobs.values() if job.owner == owner]
        dropped = mine[: max(0, len(mine) - MAX_JOBS_PER_OWNER + 1)]
        for job in dropped:
            del self._jobs[job.job_id]
            if job.task is not None:
                job.task.cancel()
        return [job.path for job in dropped]

    async def _run(self, job: ExportJob, selection: UsageSelection, shape: ExportShape) -> None:
        columns = grouped_columns(shape.group_names) if shape.groupings else EVENT_COLUMNS
        try:
            writer = await asyncio.to_thread(self._open, job, columns)
            try:
                if shape.groupings:
                    await self._grouped(job, writer, selection, shape)
                else:
                    await self._events(job, writer, selection)
            finally:
                await asyncio.to_thread(writer.close)
            job.progress, job.done = 1.0, True
            log.info("console export written", rows=job.rows, format=job.file_format)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            job.error, job.done = str(error) or type(error).__name__, True
            log.exception("console export failed")

    def _open(self, job: ExportJob, columns: Sequence[str]) -> ExportWriter:
        self._directory.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        return open_writer(job.path, job.file_format, columns)

    async def _grouped(
        self, job: ExportJob, writer: ExportWriter, selection: UsageSelection, shape: ExportShape
    ) -> None:
        async for rows in export_groups(
            self._engine,
            selection,
            shape.groupings,
            granularity=shape.granularity,
            zone_name=shape.zone_name,
            prices=self._prices,
            max_buckets=self._max_buckets,
        ):
            records = [grouped_record(row, shape.group_names) for row in rows]
            await asyncio.to_thread(_write_all, writer, records)
            job.rows += len(records)
            job.reached(rows[-1].bucket_start_time.ToMicroseconds())

    async def _events(self, job: ExportJob, writer: ExportWriter, selection: UsageSelection) -> None:
        async for events in self._history.export_events(selection):
            records = [event_record(stored_event_message(stored)) for stored in events]
            await asyncio.to_thread(_write_all, writer, records)
            job.rows += len(records)
            job.reached(max(stored["event_time_us"] for stored in events))


def _write_all(writer: ExportWriter, records: list[Record]) -> None:
    for record in records:
        writer.write(record)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
