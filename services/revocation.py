"""Ends the open streams of revoked tokens: at once on this replica, within a poll interval on the others.

The poll is a job the server runs on every replica whatever it hosts (`poll_job`): every RPC is authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.jobs import PeriodicJob
from services.storage import tables
from services.storage.uow import UnitOfWork

log = structlog.get_logger("meterwire.auth")


class Revocations:
    """Tracks the tasks serving long-lived streams per token, and cancels them when the token is revoked.

    A stream is authenticated once, when it opens; without this a revoked agent token could keep streaming
    for as long as its connection lived.
    """

    def __init__(self, engine: AsyncEngine, *, poll_interval: timedelta) -> None:
        self._engine = engine
        self._poll_interval = poll_interval
        self._streams: dict[str, set[asyncio.Task[object]]] = {}
        self._revoked: set[str] = set()

    def poll_job(self) -> PeriodicJob:
        return PeriodicJob("revocation-poll", self._poll_interval, self.poll)

    @contextlib.contextmanager
    def track(self, token_id: str) -> Iterator[None]:
        """Registers the current task as serving a stream of `token_id` for the duration of the block."""
        task = asyncio.current_task()
        if task is None:
            yield
            return
        self._streams.setdefault(token_id, set()).add(task)
        try:
            yield
        finally:
            tasks = self._streams.get(token_id)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._streams[token_id]

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._revoked

    def revoke(self, token_id: str) -> None:
        """Cancels every stream of the token on this replica; their callers get UNAUTHENTICATED."""
        self._revoked.add(token_id)
        tasks = self._streams.get(token_id, set())
        if tasks:
            log.info("closing streams of a revoked token", token_id=token_id, streams=len(tasks))
        for task in list(tasks):
            task.cancel()

    async def poll(self) -> None:
        """Closes the streams this replica serves for tokens revoked elsewhere."""
        tracked = sorted(self._streams)
        if not tracked:
            return
        tok = tables.api_tokens
        query = sa.select(tok.c.token_id).where(tok.c.token_id.in_(tracked), tok.c.revoke_time.is_not(None))
        async with UnitOfWork(self._engine) as uow:
            revoked = list((await uow.connection.execute(query)).scalars())
        for token_id in revoked:
            self.revoke(token_id)
