"""Writing the fleet's changed gateway states: one executemany per flush, isolated row by row if it fails."""

from __future__ import annotations

from typing import Any

import structlog
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.heartbeat import store
from services.storage.uow import UnitOfWork

log = structlog.get_logger("meterwire.heartbeat")

FLUSHES = Counter("meterwire_heartbeat_flushes_total", "Batched writes of heartbeat state (one statement each).")
FLUSHED_ROWS = Counter("meterwire_heartbeat_flushed_rows_total", "Gateway rows written by heartbeat flushes.")
FLUSH_FAILURES = Counter(
    "meterwire_heartbeat_flush_failures_total", "Gateway rows a heartbeat flush could not write (kept in memory)."
)


async def write_states(engine: AsyncEngine, rows: list[dict[str, Any]]) -> int:
    """Writes the rows (see store.flush_states) in one transaction; returns how many were written.

    If the batch fails, one gateway's row may be the cause, so the rows are written one by one and the others
    are saved. Rows that fail alone while others succeed are dropped (logged, counted), rather than failing
    every later flush at one transaction per gateway; that gateway's next change is written again. If none
    succeeds the database is the problem: this raises, and the caller keeps every row for the next flush."""
    try:
        await _write(engine, rows)
        return len(rows)
    except Exception:
        log.warning("batched heartbeat flush failed; writing gateways one by one", exc_info=True)
    failed: list[dict[str, Any]] = []
    for row in rows:
        try:
            await _write(engine, [row])
        except Exception:
            failed.append(row)
    if len(failed) == len(rows):
        raise RuntimeError(f"no heartbeat state could be written ({len(rows)} gateways); retrying next flush")
    for row in failed:
        FLUSH_FAILURES.inc()
        log.error(
            "heartbeat state of one gateway cannot be written; it is kept in memory only",
            environment=row["environment_id"],
            gateway=row["gateway_id"],
        )
    return len(rows) - len(failed)


async def _write(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with UnitOfWork(engine) as uow:
        await store.flush_states(uow.connection, rows)
        await uow.commit()
    FLUSHES.inc()
    FLUSHED_ROWS.inc(len(rows))
