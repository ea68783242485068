"""Rollup maintenance as the server's periodic jobs: compaction, then pruning, in every replica that ingests
or reports (a telemetry-only replica writes rollups, so it must compact and prune them too)."""

from __future__ import annotations

import functools

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.accounting.compaction import CompactionReport, PruneReport, compact, prune
from services.jobs import PeriodicJob
from services.settings import ServerSettings

log = structlog.get_logger("meterwire.accounting.maintenance")

ROLLUP_MAINTENANCE_JOB = "rollup-maintenance"


async def maintain(engine: AsyncEngine, settings: ServerSettings) -> tuple[CompactionReport, PruneReport]:
    """One maintenance run: compaction first (dirty minutes must reach 1h and 1d before they may go), then
    pruning. A failed run is retried at the next interval; reports stay exact meanwhile (the planner reads
    minutes where hours are not compacted yet)."""
    compacted = await compact(engine)
    pruned = await prune(engine, settings)
    if compacted.hours or pruned.raw_events or any(pruned.rollup_rows.values()):
        log.info(
            "rollups maintained",
            hours_compacted=compacted.hours,
            days_compacted=compacted.days,
            raw_events_pruned=pruned.raw_events,
            rollup_rows_pruned=pruned.rollup_rows,
        )
    return compacted, pruned


def rollup_maintenance_jobs(engine: AsyncEngine, settings: ServerSettings) -> list[PeriodicJob]:
    """The jobs keeping rollups compacted and storage within retention, every `rollup_compaction_interval`
    (zero disables them). Several replicas may run them at once: compaction replaces rather than adds and
    retries serialization failures, and pruning deletes by range."""
    return [
        PeriodicJob(
            name=ROLLUP_MAINTENANCE_JOB,
            interval=settings.rollup_compaction_interval,
            step=functools.partial(maintain, engine, settings),
            run_at_start=True,
        )
    ]
