"""SQL for versioned environment configs: the one source of aliases, prices and agent settings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from meterwire.config.v1 import config_service_pb2 as pb
from services.storage import tables

_cv = tables.config_versions


@dataclass(frozen=True, slots=True)
class StoredConfig:
    environment_id: str
    version: int
    config: pb.EnvironmentConfig
    content_sha256: str
    description: str
    created_by: str
    create_time: datetime


def canonical_bytes(config: pb.EnvironmentConfig) -> bytes:
    """Deterministic serialization, so equal configs hash equal."""
    return config.SerializeToString(deterministic=True)


def content_sha256(config: pb.EnvironmentConfig) -> str:
    return hashlib.sha256(canonical_bytes(config)).hexdigest()


def _stored(row: sa.Row[tuple[object, ...]]) -> StoredConfig:
    return StoredConfig(
        environment_id=row.environment_id,
        version=row.version,
        config=pb.EnvironmentConfig.FromString(row.content),
        content_sha256=row.content_sha256,
        description=row.description,
        created_by=row.created_by,
        create_time=row.create_time,
    )


async def get_version(conn: AsyncConnection, environment_id: str, version: int = 0) -> StoredConfig | None:
    """A given version, or the latest when `version` is 0; None when there is none."""
    query = sa.select(_cv).where(_cv.c.environment_id == environment_id)
    query = query.where(_cv.c.version == version) if version else query.order_by(_cv.c.version.desc()).limit(1)
    row = (await conn.execute(query)).first()
    return None if row is None else _stored(row)


async def insert_next_version(
    conn: AsyncConnection,
    *,
    environment_id: str,
    config: pb.EnvironmentConfig,
    description: str,
    created_by: str,
    now: datetime,
) -> StoredConfig:
    """Stores `config` as version latest+1. Two concurrent writers collide on the primary key, so versions
    stay gapless and monotonic; the loser's transaction fails with IntegrityError and can retry."""
    latest = await conn.execute(sa.select(sa.func.max(_cv.c.version)).where(_cv.c.environment_id == environment_id))
    stored = StoredConfig(
        environment_id=environment_id,
        version=int(latest.scalar_one() or 0) + 1,
        config=config,
        content_sha256=content_sha256(config),
        description=description,
        created_by=created_by,
        create_time=now,
    )
    await conn.execute(
        _cv.insert().values(
            environment_id=environment_id,
            version=stored.version,
            content=canonical_bytes(config),
            content_sha256=stored.content_sha256,
            description=description,
            created_by=created_by,
            create_time=now,
        )
    )
    return stored


async def latest_of_every_environment(conn: AsyncConnection) -> list[StoredConfig]:
    """The current version of every environment that has one."""
    newest = (
        sa.select(_cv.c.environment_id, sa.func.max(_cv.c.version).label("version"))
        .group_by(_cv.c.environment_id)
        .subquery()
    )
    query = sa.select(_cv).join(
        newest, sa.and_(_cv.c.environment_id == newest.c.environment_id, _cv.c.version == newest.c.version)
    )
    return [_stored(row) for row in (await conn.execute(query)).all()]


async def latest_version_numbers(conn: AsyncConnection) -> dict[str, int]:
    """environment → its newest version number: one cheap indexed aggregate, polled by every replica."""
    query = sa.select(_cv.c.environment_id, sa.func.max(_cv.c.version)).group_by(_cv.c.environment_id)
    return {environment_id: int(version) for environment_id, version in (await conn.execute(query)).all()}


async def list_versions(
    conn: AsyncConnection, environment_id: str, *, before: int | None, limit: int
) -> list[StoredConfig]:
    """Versions newest first, those below `before` when given."""
    query = sa.select(_cv).where(_cv.c.environment_id == environment_id)
    if before is not None:
        query = query.where(_cv.c.version < before)
    query = query.order_by(_cv.c.version.desc()).limit(limit)
    return [_stored(row) for row in (await conn.execute(query)).all()]
