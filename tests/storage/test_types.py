"""Tests of UtcDateTime on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage import tables


async def test_utc_datetime_round_trips_aware_utc(engine: AsyncEngine) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    created = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=india)
    async with engine.begin() as connection:
        await connection.execute(
            insert(tables.environments).values(environment_id="prod", display_name="Prod", create_time=created)
        )

    async with engine.connect() as connection:
        stored = (await connection.execute(select(tables.environments.c.create_time))).scalar_one()

    assert stored == created
    assert stored.tzinfo == UTC
    assert stored == datetime(2026, 3, 28, 20, 0, 15, 123456, tzinfo=UTC)


async def test_utc_datetime_rejects_naive_datetimes(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        with pytest.raises(StatementError, match="needs a timezone-aware datetime"):
            await connection.execute(
                insert(tables.environments).values(
                    environment_id="prod", display_name="Prod", create_time=datetime(2026, 1, 1, 12, 0)
                )
            )
