"""Environment and token rules: validation, issuing, revocation and authentication."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.admin import store
from services.admin.store import EnvironmentRecord, TokenRecord
from services.admin.token_lookup import TokenLookup
from services.auth import Principal, Role, issue_token, secret_matches, token_id_of
from services.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnauthenticatedError
from services.pagination import Page, encode_page_token, is_text, page_position, page_size
from services.revocation import Revocations
from services.storage.engine import PRIVATE_DIRECTORY_MODE
from services.storage.uow import UnitOfWork
from services.timestamps import Clock, utc_now
from services.validation import require_slug, require_text

MAX_DESCRIPTION_BYTES = 1024


class AdminService:
    """Environments and tokens; every method takes its own unit of work."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = utc_now,
        revocations: Revocations | None = None,
        token_cache_ttl: timedelta = timedelta(seconds=10),
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._revocations = revocations
        self.tokens = TokenLookup(engine, ttl=token_cache_ttl.total_seconds())

    async def create_environment(
        self, *, environment_id: str, display_name: str, description: str
    ) -> tuple[EnvironmentRecord, bool]:
        require_slug(environment_id, field="environment.environment_id")
        require_text(display_name, field="environment.display_name", max_bytes=256)
        require_text(description, field="environment.description", max_bytes=MAX_DESCRIPTION_BYTES)
        wanted = EnvironmentRecord(
            environment_id=environment_id,
            display_name=display_name or environment_id,
            description=description,
            create_time=self._clock(),
        )
        for _ in range(2):  # a concurrent create of the same id loses the insert and re-reads
            async with UnitOfWork(self._engine) as uow:
                existing = await store.get_environment(uow.connection, environment_id)
                if existing is not None:
                    if (existing.display_name, existing.description) != (
                        wanted.display_name,
                        wanted.description,
                    ):
                        raise AlreadyExistsError(
                            f"environment {environment_id!r} already exists with a different "
                            "display_name or description"
                        )
                    return existing, False
                try:
                    await store.insert_environment(uow.connection, wanted)
                    await uow.commit()
                except IntegrityError:
                    continue
                return wanted, True
        raise AlreadyExistsError(f"environment {environment_id!r} was created concurrently; retry")

    async def list_environments(
        self, principal: Principal, *, requested_page_size: int, page_token: str
    ) -> Page[EnvironmentRecord]:
        limit = page_size(requested_page_size)
        after = page_position(page_token, "after", valid=is_text)
        async with UnitOfWork(self._engine) as uow:
            rows = await store.list_environments(
                uow.connection,
                after=after,
                limit=limit + 1,
                only=principal.visible_environments((), field="environment_ids"),
            )
        next_token = encode_page_token({"after": rows[limit - 1].environment_id}) if len(rows) > limit else ""
        return Page(rows[:limit], next_token)

    async def create_token(
        self,
        creator: Principal,
        *,
        role: Role,
        environment_id: str,
        gateway_id: str,
        environment_ids: Sequence[str],
        description: str,
    ) -> tuple[TokenRecord, str]:
        """Issues a token; returns it and its secret, which is never stored or shown again."""
        require_text(description, field="description", max_bytes=MAX_DESCRIPTION_BYTES)
        scope = tuple(sorted(set(environment_ids)))
        if role is Role.GATEWAY:
            require_slug(environment_id, field="environment_id")
            require_slug(gateway_id, field="gateway_id")
            if scope:
                raise InvalidArgumentError("environment_ids", "only reporter tokens are limited by environment_ids")
            wanted_environments = frozenset({environment_id})
        else:
            if environment_id or gateway_id:
                field = "environment_id" if environment_id else "gateway_id"
                raise InvalidArgumentError(field, f"only gateway tokens are bound to one; this is a {role} token")
            if role is Role.ADMIN and scope:
                raise InvalidArgumentError("environment_ids", "admin tokens cannot be limited to environments")
            for index, env in enumerate(scope):
                require_slug(env, field=f"environment_ids[{index}]")
            wanted_environments = frozenset(scope)
        issued = issue_token()
        record = TokenRecord(
            token_id=issued.token_id,
            role=role,
            environment_id=environment_id or None,
            gateway_id=gateway_id or None,
            environment_ids=scope,
            description=description,
            create_time=self._clock(),
            revoke_time=None,
            created_by=creator.token_id or None,
        )
        async with UnitOfWork(self._engine) as uow:
            missing = await store.missing_environments(uow.connection, wanted_environments)
            if missing:
                field = "environment_id" if role is Role.GATEWAY else "environment_ids"
                raise NotFoundError(
                    f"{field}: no environment {', '.join(map(repr, missing))}; create it first (meterwire envs create)"
                )
            await store.insert_token(uow.connection, record, secret_sha256=issued.secret_sha256)
            await uow.commit()
        return record, issued.secret

    async def list_tokens(self, *, show_revoked: bool, requested_page_size: int, page_token: str) -> Page[TokenRecord]:
        limit = page_size(requested_page_size)
        after = page_position(page_token, "after", valid=is_text)
        async with UnitOfWork(self._engine) as uow:
            rows = await store.list_tokens(uow.connection, show_revoked=show_revoked, after=after, limit=limit + 1)
        next_token = encode_page_token({"after": rows[limit - 1].token_id}) if len(rows) > limit else ""
        return Page(rows[:limit], next_token)

    async def revoke_token(self, token_id: str) -> TokenRecord:
        if not token_id:
            raise InvalidArgumentError("token_id", "is required")
        async with UnitOfWork(self._engine) as uow:
            if not await store.revoke_token(uow.connection, token_id, now=self._clock()):
                raise NotFoundError(f"token_id: no token {token_id!r}")
            found = await store.get_token(uow.connection, token_id)
            await uow.commit()
        assert found is not None
        self.tokens.forget(token_id)
        if self._revocations is not None:
            self._revocations.revoke(token_id)
        return found[0]

    async def authenticate(self, secret: str) -> Principal:
        """The principal of a bearer secret; UNAUTHENTICATED for unknown, malformed or revoked tokens."""
        token_id = token_id_of(secret)
        if token_id is None:
            raise UnauthenticatedError("the bearer token is not a meterwire token (they start with 'mw_')")
        if self._revocations is not None and self._revocations.is_revoked(token_id):
            # Known revoked here (through this replica, or found by the revocation poll): no cached copy of the
            # token may let it in again, not even for a stream reconnecting at once.
            raise UnauthenticatedError(f"token {token_id} was revoked")
        found = await self.tokens.find(token_id)
        if found is None or not secret_matches(secret, found[1]):
            raise UnauthenticatedError(f"unknown token {token_id}")
        record = found[0]
        if record.revoke_time is not None:
            raise UnauthenticatedError(f"token {token_id} was revoked at {record.revoke_time.isoformat()}")
        return record.principal()

    async def bootstrap_admin_token(self, path: Path) -> bool:
        """On a database with no tokens at all, issues the first admin token into `path` (mode 0600)."""
        async with UnitOfWork(self._engine) as uow:
            if await store.count_tokens(uow.connection) > 0:
                return False
        bootstrap = Principal(token_id="", role=Role.ADMIN)
        _, secret = await self.create_token(
            bootstrap,
            role=Role.ADMIN,
            environment_id="",
            gateway_id="",
            environment_ids=(),
            description="bootstrap admin token (created on first start)",
        )
        await asyncio.to_thread(_write_private_file, path, secret + "\n")
        return True


def _write_private_file(path: Path, text: str) -> None:
    # A data dir made here (PostgreSQL: the database does not make it) is private like the SQLite one.
    path.parent.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed
