"""Gateway registration: a gateway exists from its first authenticated contact, under a compact key."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.storage import dialect, tables
from services.storage.uow import UnitOfWork

_gw = tables.gateways


async def register_gateway(
    conn: AsyncConnection, *, environment_id: str, gateway_id: str, now: datetime
) -> tuple[int, bool]:
    """The gateway's key and whether this contact registered it (new, or back after an operator removed it).

    Safe under concurrent first contacts. A removed gateway keeps its row and key (usage refers to it), so
    registering it again only clears the removal mark."""
    insert = dialect.insert_ignore_duplicates(
        _gw, dialect_name=conn.dialect.name, index_elements=("environment_id", "gateway_id")
    )
    inserted = await conn.execute(
        insert.values(environment_id=environment_id, gateway_id=gateway_id, register_time=now)
    )
    revived = await conn.execute(
        sa.update(_gw)
        .where(_gw.c.environment_id == environment_id, _gw.c.gateway_id == gateway_id, _gw.c.delete_time.is_not(None))
        .values(delete_time=None, register_time=now)
    )
    query = sa.select(_gw.c.gateway_key).where(_gw.c.environment_id == environment_id, _gw.c.gateway_id == gateway_id)
    key = int((await conn.execute(query)).scalar_one())
    return key, bool(inserted.rowcount) or bool(revived.rowcount)


async def ensure_gateway(conn: AsyncConnection, *, environment_id: str, gateway_id: str, now: datetime) -> int:
    """The gateway's key, registering it if new (safe under concurrent first contacts)."""
    key, _ = await register_gateway(conn, environment_id=environment_id, gateway_id=gateway_id, now=now)
    return key


class GatewayKeys:
    """A process-wide cache of gateway keys (they never change while the gateway exists)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._keys: dict[tuple[str, str], int] = {}

    async def key(self, environment_id: str, gateway_id: str, *, now: datetime) -> int:
        cached = self._keys.get((environment_id, gateway_id))
        if cached is not None:
            return cached
        async with UnitOfWork(self._engine) as uow:
            key = await ensure_gateway(uow.connection, environment_id=environment_id, gateway_id=gateway_id, now=now)
            await uow.commit()
        self._keys[(environment_id, gateway_id)] = key
        return key

    def forget(self, environment_id: str, gateway_id: str) -> None:
        """Called when a gateway is deleted, so its next contact registers it anew."""
        self._keys.pop((environment_id, gateway_id), None)
