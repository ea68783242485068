"""Config rules: validate, store the next version (only when content changed), read and list versions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.config.v1 import config_service_pb2 as pb
from services.admin import store as admin_store
from services.config import store
from services.config.hub import ConfigHub
from services.config.store import StoredConfig, content_sha256
from services.config.validation import ConfigLimits, validate_config
from services.errors import AbortedError, InvalidArgumentError, NotFoundError
from services.pagination import Page, encode_page_token, is_count, page_position, page_size
from services.storage.uow import UnitOfWork
from services.timestamps import Clock, utc_now
from services.validation import require_slug, require_text

log = structlog.get_logger("meterwire.config")
MAX_DESCRIPTION_BYTES = 1024
_PUT_ATTEMPTS = 5
"""Concurrent puts to one environment through other replicas collide on (environment, version); the loser
re-reads and retries. Puts through this process take turns per environment, so they never collide here."""


@dataclass(frozen=True, slots=True)
class PutOutcome:
    stored: StoredConfig
    created: bool


class ConfigService:
    def __init__(self, engine: AsyncEngine, hub: ConfigHub, limits: ConfigLimits, *, clock: Clock = utc_now):
        self._engine = engine
        self._hub = hub
        self._limits = limits
        self._clock = clock
        self._put_locks: dict[str, asyncio.Lock] = {}

    async def put(
        self,
        *,
        environment_id: str,
        config: pb.EnvironmentConfig,
        description: str,
        expected_version: int | None,
        validate_only: bool,
        created_by: str,
    ) -> PutOutcome:
        require_slug(environment_id, field="environment_id")
        require_text(description, field="description", max_bytes=MAX_DESCRIPTION_BYTES)
        if expected_version is not None and expected_version < 0:
            raise InvalidArgumentError("expected_version", f"must not be negative (got {expected_version})")
        validate_config(config, self._limits)
        digest = content_sha256(config)
        async with self._put_locks.setdefault(environment_id, asyncio.Lock()):
            return await self._put_checked(
                environment_id=environment_id,
                config=config,
                description=description,
                expected_version=expected_version,
                validate_only=validate_only,
                created_by=created_by,
                digest=digest,
            )

    async def _put_checked(
        self,
        *,
        environment_id: str,
        config: pb.EnvironmentConfig,
        description: str,
        expected_version: int | None,
        validate_only: bool,
        created_by: str,
        digest: str,
    ) -> PutOutcome:
        for _ in range(_PUT_ATTEMPTS):
            async with UnitOfWork(self._engine) as uow:
                if await admin_store.get_environment(uow.connection, environment_id) is None:
                    raise NotFoundError(f"environment_id: no environment {environment_id!r}; create it first")
                current = await store.get_version(uow.connection, environment_id)
                current_version = 0 if current is None else current.version
                if expected_version is not None and expected_version != current_version:
                    raise AbortedError(
                        f"expected_version: the current version of {environment_id!r} is {current_version}, "
                        f"not {expected_version}; someone changed it meanwhile: review it and retry"
                    )
                if current is not None and current.content_sha256 == digest:
                    return PutOutcome(current, created=False)
                if validate_only:
                    preview = StoredConfig(
                        environment_id=environment_id,
                        version=current_version + 1,
                        config=config,
                        content_sha256=digest,
                        description=description,
                        created_by=created_by,
                        create_time=self._clock(),
                    )
                    return PutOutcome(preview, created=False)
                try:
                    stored = await store.insert_next_version(
                        uow.connection,
                        environment_id=environment_id,
                        config=config,
                        description=description,
                        created_by=created_by,
                        now=self._clock(),
                    )
                    await uow.commit()
                except IntegrityError:
                    continue
            log.info(
                "config version stored",
                environment=environment_id,
                version=stored.version,
                content_sha256=stored.content_sha256,
                created_by=created_by,
            )
            self._hub.publish(stored)
            return PutOutcome(stored, created=True)
        raise AbortedError(f"environment_id: too many concurrent config changes to {environment_id!r}; retry")

    async def get(self, environment_id: str, version: int) -> StoredConfig:
        if version < 0:
            raise InvalidArgumentError("version", f"must not be negative (got {version}); 0 means the current one")
        async with UnitOfWork(self._engine) as uow:
            stored = await store.get_version(uow.connection, environment_id, version)
        if stored is None:
            if version:
                raise NotFoundError(f"version: environment {environment_id!r} has no config version {version}")
            raise NotFoundError(f"environment_id: environment {environment_id!r} has no config yet; put one first")
        return stored

    async def list_versions(
        self, environment_id: str, *, requested_page_size: int, page_token: str
    ) -> Page[StoredConfig]:
        limit = page_size(requested_page_size)
        before = page_position(page_token, "before", valid=is_count)
        async with UnitOfWork(self._engine) as uow:
            versions = await store.list_versions(uow.connection, environment_id, before=before, limit=limit + 1)
        more = len(versions) > limit
        versions = versions[:limit]
        return Page(versions, encode_page_token({"before": versions[-1].version}) if more else "")
