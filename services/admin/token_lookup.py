"""Bearer-token lookups for the auth interceptor: cached briefly, and concurrent misses resolved in one query.

Every RPC (and every stream, once, when it opens) is authenticated. Without this, a fleet reconnecting at once —
10,000 agents after a control-plane restart — would mean 10,000 single-row queries queued on a pool of a few
connections, and streams timing out before they are authenticated. Instead the misses that arrive while one lookup
is running are gathered and answered by the next one (`WHERE token_id IN (...)`, up to `MAX_LOOKUP_BATCH` ids),
and a found token is kept for `ttl`.

Revocation: a token revoked through this replica is forgotten at once (`forget`); one revoked through another
replica is refused here within `ttl` — the same bound within which its open streams are closed (services/revocation).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.admin import store
from services.admin.store import TokenRecord
from services.storage.uow import UnitOfWork

log = structlog.get_logger("meterwire.auth")

MAX_LOOKUP_BATCH = 500
"""Ids per lookup query: well under SQLite's and asyncpg's bound-parameter limits."""
MAX_CACHED_TOKENS = 100_000
"""Beyond this the cache is cleared rather than grown: one lookup per token to refill it is cheap."""


@dataclass(frozen=True, slots=True)
class _Entry:
    record: TokenRecord
    secret_sha256: str
    expires: float


Found = tuple[TokenRecord, str] | None


class TokenLookup:
    """`find(token_id)` → the token and its secret hash (or None), served from a short-lived cache."""

    def __init__(self, engine: AsyncEngine, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._waiting: dict[str, asyncio.Future[Found]] = {}
        self._lookup: asyncio.Task[None] | None = None
        self.queries = 0
        """Lookup queries run so far (for tests and the heartbeat benchmark)."""

    async def find(self, token_id: str) -> Found:
        entry = self._cache.get(token_id)
        if entry is not None and entry.expires > self._clock():
            return entry.record, entry.secret_sha256
        future = self._waiting.get(token_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[token_id] = future
            if self._lookup is None:
                self._lookup = asyncio.create_task(self._look_up(), name="token-lookup")
        # Shielded: one caller giving up must not cancel the answer the others wait for.
        return await asyncio.shield(future)

    def forget(self, token_id: str) -> None:
        """Drops a token from the cache (it was revoked here); its next use is looked up again."""
        self._cache.pop(token_id, None)

    async def _look_up(self) -> None:
        """Answers the waiting ids batch after batch, until no caller waits."""
        try:
            while self._waiting:
                batch = dict(list(self._waiting.items())[:MAX_LOOKUP_BATCH])
                for token_id in batch:
                    del self._waiting[token_id]
                try:
                    async with UnitOfWork(self._engine) as uow:
                        found = await store.get_tokens(uow.connection, list(batch))
                    self.queries += 1
                except Exception as error:
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(error)
                    continue
                self._remember(found)
                for token_id, future in batch.items():
                    if not future.done():
                        future.set_result(found.get(token_id))
        finally:
            self._lookup = None
            for future in self._waiting.values():  # only on cancellation (shutdown)
                future.cancel()
            self._waiting.clear()

    def _remember(self, found: dict[str, tuple[TokenRecord, str]]) -> None:
        if len(self._cache) + len(found) > MAX_CACHED_TOKENS:
            log.info("token cache full; clearing it", entries=len(self._cache))
            self._cache.clear()
        expires = self._clock() + self._ttl
        for token_id, (record, secret_sha256) in found.items():
            self._cache[token_id] = _Entry(record, secret_sha256, expires)
