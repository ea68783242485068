"""Token lookups behind authentication: coalesced under a reconnect storm, cached briefly, revocation honoured."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.admin.service import AdminService
from services.auth import Principal, Role
from services.errors import UnauthenticatedError
from services.storage import tables


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _gateway_tokens(admin: AdminService, count: int) -> list[str]:
    creator = Principal(token_id="", role=Role.ADMIN)
    await admin.create_environment(environment_id="prod", display_name="", description="")
    secrets = []
    for index in range(count):
        _, secret = await admin.create_token(
            creator,
            role=Role.GATEWAY,
            environment_id="prod",
            gateway_id=f"gw-{index}",
            environment_ids=(),
            description="",
        )
        secrets.append(secret)
    return secrets


async def test_a_reconnect_storm_is_answered_by_a_few_batched_queries(engine: AsyncEngine) -> None:
    admin = AdminService(engine)
    secrets = await _gateway_tokens(admin, 600)
    principals = await asyncio.gather(*(admin.authenticate(secret) for secret in secrets))
    assert [p.gateway_id for p in principals] == [f"gw-{i}" for i in range(600)]
    # 600 concurrent misses: the first lookup runs alone, the rest wait and share batches of at most 500 ids.
    assert admin.tokens.queries <= 3
    await asyncio.gather(*(admin.authenticate(secret) for secret in secrets))
    assert admin.tokens.queries <= 3, "cached tokens must not be looked up again"


async def test_a_wrong_secret_for_a_cached_token_is_refused(engine: AsyncEngine) -> None:
    admin = AdminService(engine)
    (secret,) = await _gateway_tokens(admin, 1)
    await admin.authenticate(secret)
    with pytest.raises(UnauthenticatedError, match="unknown token"):
        await admin.authenticate(secret[:-4] + "AAAA")


async def test_a_token_revoked_here_is_refused_at_once(engine: AsyncEngine) -> None:
    admin = AdminService(engine, token_cache_ttl=timedelta(hours=1))
    (secret,) = await _gateway_tokens(admin, 1)
    principal = await admin.authenticate(secret)
    await admin.revoke_token(principal.token_id)
    with pytest.raises(UnauthenticatedError, match="was revoked"):
        await admin.authenticate(secret)


async def test_a_token_revoked_elsewhere_is_refused_once_the_cache_expires(engine: AsyncEngine) -> None:
    admin = AdminService(engine, token_cache_ttl=timedelta(seconds=10))
    clock = FakeMonotonic()
    admin.tokens._clock = clock  # the cache's clock only; the database is real
    (secret,) = await _gateway_tokens(admin, 1)
    principal = await admin.authenticate(secret)
    async with engine.begin() as conn:  # as another replica would: straight to the shared database
        await conn.execute(
            sa.update(tables.api_tokens)
            .where(tables.api_tokens.c.token_id == principal.token_id)
            .values(revoke_time=datetime.now(UTC))
        )
    clock.now += 9
    assert await admin.authenticate(secret) == principal, "within the documented bound the cache may still answer"
    clock.now += 2
    with pytest.raises(UnauthenticatedError, match="was revoked"):
        await admin.authenticate(secret)


async def test_unknown_tokens_are_refused_and_not_cached(engine: AsyncEngine) -> None:
    admin = AdminService(engine)
    stranger = "mw_" + "0" * 12 + "_not-a-real-secret"
    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            await admin.authenticate(stranger)
    assert admin.tokens.queries == 2
