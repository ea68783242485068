"""Tests of the dialect-specific INSERT helpers on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage import tables
from services.storage.dialect import insert_ignore_duplicates, upsert_adding
from services.storage.errors import StorageConfigError
from services.storage.uow import UnitOfWork

from .rows import add_gateway, usage_event_row


async def test_duplicate_event_ids_are_ignored_and_reported(engine: AsyncEngine) -> None:
    dialect_name = engine.dialect.name
    statement = insert_ignore_duplicates(
        tables.usage_events, dialect_name=dialect_name, index_elements=["gateway_key", "event_id"]
    ).returning(tables.usage_events.c.event_id)
    async with UnitOfWork(engine) as uow:
        gateway_key = await add_gateway(uow.connection)
        first = [usage_event_row(gateway_key, event_id=f"event-{i:04d}") for i in range(0, 1000, 5)]
        first += [usage_event_row(gateway_key, event_id=f"event-{i:04d}") for i in range(1, 1000, 5)]
        inserted_first = (await uow.connection.execute(statement, first)).scalars().all()
        await uow.commit()
    assert len(inserted_first) == 400

    # Resend everything with a different request id: the 400 already stored must stay untouched.
    batch = [usage_event_row(gateway_key, event_id=f"event-{i:04d}", request_id="resent") for i in range(1000)]
    async with UnitOfWork(engine) as uow:
        inserted = set((await uow.connection.execute(statement, batch)).scalars().all())
        await uow.commit()

    stored_first = {row["event_id"] for row in first}
    assert inserted == {row["event_id"] for row in batch} - stored_first
    assert len(inserted) == 600
    async with engine.connect() as connection:
        counted = await connection.execute(
            select(tables.usage_events.c.request_id, func.count()).group_by(tables.usage_events.c.request_id)
        )
        by_request = {request_id: count for request_id, count in counted}
    assert by_request == {"req-1": 400, "resent": 600}


def _rollup_row(model: str, **metrics: int) -> dict[str, Any]:
    return {
        "bucket_start": 1_767_323_040,
        "environment_id": "prod",
        "gateway_key": 1,
        "requested_model": model,
        "resolved_model": model,
        "provider": "openai",
        "api_key_id": "key-1",
        "user_id": "",
        "route": "",
        "request_type": 1,
        "credential_type": 1,
        "status_class": 1,
        "streaming": False,
        # executemany needs the same keys in every row, so every metric is given.
        **dict.fromkeys(tables.ROLLUP_SUM_COLUMNS, 0),
        **metrics,
    }


async def test_upsert_adds_metric_columns(engine: AsyncEngine) -> None:
    rollup = tables.usage_rollup_1m
    statement = upsert_adding(
        rollup,
        dialect_name=engine.dialect.name,
        key_columns=tables.ROLLUP_DIMENSIONS,
        add_columns=tables.ROLLUP_SUM_COLUMNS,
    )
    async with UnitOfWork(engine) as uow:
        await uow.connection.execute(
            statement,
            [
                _rollup_row("gpt-a", attempt_count=2, cost_micros=1_000, latency_b10=2),
                _rollup_row("gpt-b", attempt_count=1, cost_micros=7, latency_b10=1),
            ],
        )
        await uow.connection.execute(
            statement,
            [
                _rollup_row("gpt-a", attempt_count=3, cost_micros=500, latency_b10=1, latency_b49=2),
                _rollup_row("gpt-c", attempt_count=4, cost_micros=9, latency_b10=4),
            ],
        )
        await uow.commit()

    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(
                    rollup.c.requested_model,
                    rollup.c.attempt_count,
                    rollup.c.cost_micros,
                    rollup.c.latency_b10,
                    rollup.c.latency_b49,
                    rollup.c.error_count,
                ).order_by(rollup.c.requested_model)
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("gpt-a", 5, 1_500, 3, 2, 0),
        ("gpt-b", 1, 7, 1, 0, 0),
        ("gpt-c", 4, 9, 4, 0, 0),
    ]


def test_unknown_dialects_are_rejected() -> None:
    with pytest.raises(StorageConfigError, match="unsupported SQL dialect 'mysql'"):
        insert_ignore_duplicates(tables.usage_events, dialect_name="mysql", index_elements=["event_id"])
