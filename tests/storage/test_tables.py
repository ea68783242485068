"""Tests that the schema's constraints hold on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage import tables
from services.storage.uow import UnitOfWork

from .rows import CREATE_TIME, add_gateway, usage_event_row


def _token(token_id: str, role: str, **binding: Any) -> dict[str, Any]:
    return {
        "token_id": token_id,
        "secret_sha256": "ab" * 32,
        "role": role,
        "create_time": CREATE_TIME,
        # executemany takes its columns from the first row, so every row names the binding columns.
        "environment_id": None,
        "gateway_id": None,
        **binding,
    }


@pytest.mark.parametrize(
    "token",
    [
        _token("gw-unbound", "gateway"),
        _token("gw-no-gateway", "gateway", environment_id="prod"),
        _token("admin-bound", "admin", environment_id="prod", gateway_id="gw-1"),
        _token("superuser", "superuser"),
    ],
    ids=["gateway-without-binding", "gateway-without-gateway-id", "admin-with-binding", "unknown-role"],
)
async def test_token_roles_and_gateway_bindings_are_checked(engine: AsyncEngine, token: dict[str, Any]) -> None:
    async with UnitOfWork(engine) as uow:
        await add_gateway(uow.connection)
        await uow.connection.execute(
            insert(tables.api_tokens),
            [
                _token("admin-1", "admin"),
                _token("gateway-1", "gateway", environment_id="prod", gateway_id="gw-1"),
            ],
        )
        await uow.commit()
        with pytest.raises(IntegrityError):
            await uow.connection.execute(insert(tables.api_tokens).values(**token))

    async with engine.connect() as connection:
        stored = (await connection.execute(select(tables.api_tokens.c.token_id))).scalars().all()
    assert sorted(stored) == ["admin-1", "gateway-1"]


async def test_foreign_keys_are_enforced(engine: AsyncEngine) -> None:
    async with UnitOfWork(engine) as uow:
        with pytest.raises(IntegrityError):
            await uow.connection.execute(
                insert(tables.gateways).values(
                    environment_id="no-such-environment", gateway_id="gw-1", register_time=CREATE_TIME
                )
            )


async def test_deleting_events_deletes_their_tags(engine: AsyncEngine) -> None:
    async with UnitOfWork(engine) as uow:
        gateway_key = await add_gateway(uow.connection)
        await uow.connection.execute(
            insert(tables.usage_events),
            [usage_event_row(gateway_key, event_id=event_id) for event_id in ("e-1", "e-2")],
        )
        await uow.connection.execute(
            insert(tables.usage_event_tags),
            [
                {
                    "gateway_key": gateway_key,
                    "event_id": event_id,
                    "tag_key": "team",
                    "tag_value": "search",
                    "environment_id": "prod",
                    "event_time_us": 1,
                }
                for event_id in ("e-1", "e-2")
            ],
        )
        await uow.connection.execute(delete(tables.usage_events).where(tables.usage_events.c.event_id == "e-1"))
        await uow.commit()

    async with engine.connect() as connection:
        tagged = (await connection.execute(select(tables.usage_event_tags.c.event_id))).scalars().all()
        events = (await connection.execute(select(func.count()).select_from(tables.usage_events))).scalar()
    assert tagged == ["e-2"]
    assert events == 1


def test_rollup_tables_share_one_layout() -> None:
    layouts = {
        tuple(column.name for column in table.columns if column.name != "compacted_attempt_count")
        for table in (tables.usage_rollup_1m, tables.usage_rollup_1h, tables.usage_rollup_1d)
    }

    assert layouts == {tables.ROLLUP_DIMENSIONS + tables.ROLLUP_SUM_COLUMNS}
    # Only the per-minute table carries compaction's watermark (what it has already folded into 1h and 1d).
    assert "compacted_attempt_count" in tables.usage_rollup_1m.c
    assert "compacted_attempt_count" not in tables.usage_rollup_1h.c
    assert tuple(column.name for column in tables.usage_rollup_1m.primary_key) == tables.ROLLUP_DIMENSIONS
    assert len(tables.ROLLUP_SUM_COLUMNS) == 20 + 2 * 50
