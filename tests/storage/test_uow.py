"""Tests of the unit of work's transaction boundary on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import Insert, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage import tables
from services.storage.uow import UnitOfWork

from .rows import CREATE_TIME


async def _environment_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        result = await connection.execute(
            select(tables.environments.c.environment_id).order_by(tables.environments.c.environment_id)
        )
        return list(result.scalars())


def _add_environment(environment_id: str) -> Insert:
    return insert(tables.environments).values(
        environment_id=environment_id, display_name=environment_id, create_time=CREATE_TIME
    )


async def test_unit_of_work_rolls_back_without_commit(engine: AsyncEngine) -> None:
    async with UnitOfWork(engine) as uow:
        await uow.connection.execute(_add_environment("staging"))
        count = (await uow.connection.execute(select(func.count()).select_from(tables.environments))).scalar()
        assert count == 1

    assert await _environment_ids(engine) == []


async def test_unit_of_work_keeps_committed_work(engine: AsyncEngine) -> None:
    async with UnitOfWork(engine) as uow:
        await uow.connection.execute(_add_environment("prod"))
        await uow.commit()
        # Work after the commit is a new transaction, discarded when the block ends without a commit.
        await uow.connection.execute(_add_environment("staging"))

    assert await _environment_ids(engine) == ["prod"]


async def test_unit_of_work_rolls_back_when_the_block_raises(engine: AsyncEngine) -> None:
    async def add_then_fail() -> None:
        async with UnitOfWork(engine) as uow:
            await uow.connection.execute(_add_environment("prod"))
            raise RuntimeError("pricing failed")

    with pytest.raises(RuntimeError, match="pricing failed"):
        await add_then_fail()

    assert await _environment_ids(engine) == []


async def test_unit_of_work_connection_is_only_available_inside_the_block(engine: AsyncEngine) -> None:
    uow = UnitOfWork(engine)
    with pytest.raises(RuntimeError, match="only available inside"):
        _ = uow.connection
    async with uow:
        assert uow.connection.in_transaction()
    with pytest.raises(RuntimeError, match="only available inside"):
        _ = uow.connection
