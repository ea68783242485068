"""Row builders shared by the storage tests: an environment, a gateway and usage events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.storage import tables

CREATE_TIME = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
EVENT_TIME_US = 1_767_323_045_000_000


async def add_gateway(connection: AsyncConnection, environment_id: str = "prod", gateway_id: str = "gw-1") -> int:
    """Insert an environment and a gateway in it; return the gateway's key."""
    await connection.execute(
        insert(tables.environments).values(
            environment_id=environment_id, display_name=environment_id.title(), create_time=CREATE_TIME
        )
    )
    result = await connection.execute(
        insert(tables.gateways)
        .values(environment_id=environment_id, gateway_id=gateway_id, register_time=CREATE_TIME)
        .returning(tables.gateways.c.gateway_key)
    )
    return int(result.scalar_one())


def usage_event_row(gateway_key: int, *, event_id: str | None = None, request_id: str = "req-1") -> dict[str, Any]:
    """A complete usage_events row with the required columns set."""
    return {
        "environment_id": "prod",
        "gateway_key": gateway_key,
        "event_id": event_id or str(uuid.uuid4()),
        "request_id": request_id,
        "attempt": 1,
        "event_time_us": EVENT_TIME_US,
        "ingest_time_us": EVENT_TIME_US + 1_000,
        "request_type": 1,
        "credential_type": 1,
        "streaming": False,
        "status_code": 200,
        "status_class": 1,
        "cost_micros": 1_500,
        "cost_source": 1,
    }
