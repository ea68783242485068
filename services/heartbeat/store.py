"""SQL for gateway heartbeat state: load at start, batched upserts, peer refresh, never-seen tokens, removal."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import Insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.storage import dialect, tables

_gw = tables.gateways
_tok = tables.api_tokens

STATE_COLUMNS: Final = (
    "last_seen_time",
    "connected_since",
    "agent_version",
    "gateway_version",
    "applied_config_version",
    "nacked_config_version",
    "config_error",
    "spool_depth",
    "oldest_unsent_age_ms",
    "dead_letter_count",
    "dropped_event_count",
    "heartbeat_interval_ms",
    "budget_snapshot_time",
    "budget_enforcement",
)
"""What a flush writes: the latest heartbeat state (last_acked_sequence belongs to telemetry ingest)."""

_SELECTED: Final = (
    _gw.c.environment_id,
    _gw.c.gateway_id,
    _gw.c.register_time,
    _gw.c.delete_time,
    *(_gw.c[name] for name in STATE_COLUMNS),
)


def _flush_statement(dialect_name: str) -> Insert:
    """``INSERT ... ON CONFLICT (environment_id, gateway_id) DO UPDATE SET <state>``: one statement both
    registers gateways first seen since the last flush and updates the rest, so first contacts cost no
    transaction of their own. A heartbeating gateway is registered again, even if an operator removed it
    meanwhile (see the proto)."""
    return dialect.upsert_replacing(
        _gw,
        dialect_name=dialect_name,
        key_columns=("environment_id", "gateway_id"),
        replace_columns=(*STATE_COLUMNS, "heartbeat_replica"),
        constants={"delete_time": None},
    )


_FLUSH: Final = {name: _flush_statement(name) for name in ("sqlite", "postgresql")}


async def load_gateways(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
    """Every registered, not removed gateway with its last flushed state."""
    return (await conn.execute(sa.select(*_SELECTED).where(_gw.c.delete_time.is_(None)))).all()


async def changed_since(conn: AsyncConnection, since: datetime, *, replica: str) -> Sequence[sa.Row[Any]]:
    """Gateways whose state another replica than `replica` flushed, or that were removed, at or after `since`
    (a single replica reads no rows at all)."""
    query = sa.select(*_SELECTED).where(
        sa.or_(
            sa.and_(_gw.c.last_seen_time >= since, _gw.c.heartbeat_replica != replica),
            _gw.c.delete_time >= since,
        )
    )
    return (await conn.execute(query)).all()


async def flush_states(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Registers or updates many gateways in one executemany; each row has environment_id, gateway_id,
    register_time, heartbeat_replica and the STATE_COLUMNS."""
    if rows:
        await conn.execute(_FLUSH[conn.dialect.name], rows)


async def without_heartbeat(conn: AsyncConnection, environment_ids: frozenset[str] | None) -> Sequence[sa.Row[Any]]:
    """Registered gateways that never heartbeated: they made contact by usage or WatchConfig only, perhaps
    through another replica, so the fleet's memory may not hold them."""
    query = sa.select(*_SELECTED).where(_gw.c.delete_time.is_(None), _gw.c.last_seen_time.is_(None))
    if environment_ids is not None:
        query = query.where(_gw.c.environment_id.in_(sorted(environment_ids)))
    return (await conn.execute(query)).all()


async def never_seen(conn: AsyncConnection, environment_ids: frozenset[str] | None) -> list[tuple[str, str]]:
    """(environment, gateway) pairs with a live gateway token and no gateway row: they never made contact.

    A removed gateway keeps its row, so a token left behind after decommissioning does not bring it back."""
    registered = sa.select(_gw.c.gateway_key).where(
        _gw.c.environment_id == _tok.c.environment_id, _gw.c.gateway_id == _tok.c.gateway_id
    )
    query = (
        sa.select(_tok.c.environment_id, _tok.c.gateway_id)
        .distinct()
        .where(_tok.c.role == "gateway", _tok.c.revoke_time.is_(None), ~registered.exists())
    )
    if environment_ids is not None:
        query = query.where(_tok.c.environment_id.in_(sorted(environment_ids)))
    return [(row.environment_id, row.gateway_id) for row in (await conn.execute(query)).all()]


async def mark_deleted(conn: AsyncConnection, *, environment_id: str, gateway_id: str, now: datetime) -> bool:
    """Removes a gateway from the fleet: its state is cleared and the row marked, never deleted, because
    usage events and rollups refer to its key. False when there is no such registered gateway."""
    cleared: dict[str, Any] = dict.fromkeys(STATE_COLUMNS, 0)
    cleared.update(
        last_seen_time=None,
        connected_since=None,
        agent_version="",
        gateway_version="",
        config_error="",
        budget_snapshot_time=None,
        budget_enforcement="",
        delete_time=now,
    )
    statement = (
        sa.update(_gw)
        .where(
            _gw.c.environment_id == environment_id,
            _gw.c.gateway_id == gateway_id,
            _gw.c.delete_time.is_(None),
        )
        .values(**cleared)
    )
    result = await conn.execute(statement)
    return bool(result.rowcount)
