"""SQL for environments and API tokens (the admin service's storage)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.auth import Principal, Role
from services.storage import tables


@dataclass(frozen=True, slots=True)
class EnvironmentRecord:
    environment_id: str
    display_name: str
    description: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    role: Role
    environment_id: str | None
    gateway_id: str | None
    environment_ids: tuple[str, ...]
    description: str
    create_time: datetime
    revoke_time: datetime | None
    created_by: str | None

    def principal(self) -> Principal:
        return Principal(
            token_id=self.token_id,
            role=self.role,
            environment_id=self.environment_id,
            gateway_id=self.gateway_id,
            environment_ids=frozenset(self.environment_ids) if self.environment_ids else None,
        )


_env = tables.environments
_tok = tables.api_tokens
_tok_env = tables.api_token_environments


def _environment(row: Any) -> EnvironmentRecord:
    return EnvironmentRecord(
        environment_id=row.environment_id,
        display_name=row.display_name,
        description=row.description,
        create_time=row.create_time,
    )


async def get_environment(conn: AsyncConnection, environment_id: str) -> EnvironmentRecord | None:
    query = sa.select(_env.c.environment_id, _env.c.display_name, _env.c.description, _env.c.create_time)
    row = (await conn.execute(query.where(_env.c.environment_id == environment_id))).first()
    return None if row is None else _environment(row)


async def insert_environment(conn: AsyncConnection, record: EnvironmentRecord) -> None:
    await conn.execute(
        _env.insert().values(
            environment_id=record.environment_id,
            display_name=record.display_name,
            description=record.description,
            create_time=record.create_time,
        )
    )


async def list_environments(
    conn: AsyncConnection, *, after: str | None, limit: int, only: frozenset[str] | None
) -> list[EnvironmentRecord]:
    query = sa.select(_env.c.environment_id, _env.c.display_name, _env.c.description, _env.c.create_time)
    if after is not None:
        query = query.where(_env.c.environment_id > after)
    if only is not None:
        query = query.where(_env.c.environment_id.in_(sorted(only)))
    rows = await conn.execute(query.order_by(_env.c.environment_id).limit(limit))
    return [_environment(row) for row in rows]


async def missing_environments(conn: AsyncConnection, environment_ids: frozenset[str]) -> list[str]:
    """The ids among `environment_ids` that do not exist, sorted."""
    if not environment_ids:
        return []
    query = sa.select(_env.c.environment_id).where(_env.c.environment_id.in_(sorted(environment_ids)))
    found = set((await conn.execute(query)).scalars())
    return sorted(environment_ids - found)


async def insert_token(conn: AsyncConnection, record: TokenRecord, *, secret_sha256: str) -> None:
    await conn.execute(
        _tok.insert().values(
            token_id=record.token_id,
            secret_sha256=secret_sha256,
            role=record.role.value,
            environment_id=record.environment_id,
            gateway_id=record.gateway_id,
            description=record.description,
            create_time=record.create_time,
            revoke_time=None,
            created_by=record.created_by,
        )
    )
    if record.environment_ids:
        await conn.execute(
            _tok_env.insert(),
            [{"token_id": record.token_id, "environment_id": e} for e in record.environment_ids],
        )


_TOKEN_COLUMNS = (
    _tok.c.token_id,
    _tok.c.role,
    _tok.c.environment_id,
    _tok.c.gateway_id,
    _tok.c.description,
    _tok.c.create_time,
    _tok.c.revoke_time,
    _tok.c.created_by,
)


async def _with_scopes(conn: AsyncConnection, rows: Sequence[Any]) -> list[TokenRecord]:
    ids = [row.token_id for row in rows]
    scopes: dict[str, list[str]] = {token_id: [] for token_id in ids}
    if ids:
        query = (
            sa.select(_tok_env.c.token_id, _tok_env.c.environment_id)
            .where(_tok_env.c.token_id.in_(ids))
            .order_by(_tok_env.c.token_id, _tok_env.c.environment_id)
        )
        for token_id, environment_id in await conn.execute(query):
            scopes[token_id].append(environment_id)
    return [
        TokenRecord(
            token_id=row.token_id,
            role=Role(row.role),
            environment_id=row.environment_id,
            gateway_id=row.gateway_id,
            environment_ids=tuple(scopes[row.token_id]),
            description=row.description,
            create_time=row.create_time,
            revoke_time=row.revoke_time,
            created_by=row.created_by,
        )
        for row in rows
    ]


async def get_token(conn: AsyncConnection, token_id: str) -> tuple[TokenRecord, str] | None:
    """The token and its stored secret hash."""
    query = sa.select(*_TOKEN_COLUMNS, _tok.c.secret_sha256).where(_tok.c.token_id == token_id)
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    (record,) = await _with_scopes(conn, [row])
    return record, row.secret_sha256


async def get_tokens(conn: AsyncConnection, token_ids: Sequence[str]) -> dict[str, tuple[TokenRecord, str]]:
    """The tokens among `token_ids` that exist, each with its stored secret hash, in two queries."""
    query = sa.select(*_TOKEN_COLUMNS, _tok.c.secret_sha256).where(_tok.c.token_id.in_(token_ids))
    rows = list(await conn.execute(query))
    records = await _with_scopes(conn, rows)
    return {record.token_id: (record, row.secret_sha256) for record, row in zip(records, rows, strict=True)}


async def list_tokens(conn: AsyncConnection, *, show_revoked: bool, after: str | None, limit: int) -> list[TokenRecord]:
    query = sa.select(*_TOKEN_COLUMNS)
    if not show_revoked:
        query = query.where(_tok.c.revoke_time.is_(None))
    if after is not None:
        query = query.where(_tok.c.token_id > after)
    rows = list(await conn.execute(query.order_by(_tok.c.token_id).limit(limit)))
    return await _with_scopes(conn, rows)


async def revoke_token(conn: AsyncConnection, token_id: str, *, now: datetime) -> bool:
    """Sets the revoke time unless already revoked; returns whether the token exists."""
    await conn.execute(
        _tok.update().where(_tok.c.token_id == token_id, _tok.c.revoke_time.is_(None)).values(revoke_time=now)
    )
    exists = await conn.execute(sa.select(_tok.c.token_id).where(_tok.c.token_id == token_id))
    return exists.first() is not None


async def count_active_admin_tokens(conn: AsyncConnection) -> int:
    query = sa.select(sa.func.count()).where(_tok.c.role == Role.ADMIN.value, _tok.c.revoke_time.is_(None))
    return int((await conn.execute(query)).scalar_one())


async def count_tokens(conn: AsyncConnection) -> int:
    return int((await conn.execute(sa.select(sa.func.count()).select_from(_tok))).scalar_one())
