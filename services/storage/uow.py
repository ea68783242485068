"""The explicit transaction boundary: a unit of work over one connection that commits only when told."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class UnitOfWork:
    """``async with UnitOfWork(engine) as uow:`` runs statements on ``uow.connection`` in one transaction.

    Nothing is kept unless ``await uow.commit()`` is called; leaving the block without it, or with an
    exception, rolls back. Statements run after a commit start a new transaction, which the same rules
    govern.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None

    @property
    def connection(self) -> AsyncConnection:
        """The connection of the open unit of work."""
        if self._connection is None:
            raise RuntimeError("UnitOfWork.connection is only available inside `async with UnitOfWork(...)`")
        return self._connection

    async def __aenter__(self) -> Self:
        if self._connection is not None:
            raise RuntimeError("this UnitOfWork is already open; create one per transaction")
        connection = await self._engine.connect()
        try:
            await connection.begin()
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if connection.in_transaction():
                await connection.rollback()
        finally:
            await connection.close()

    async def commit(self) -> None:
        """Make everything done so far durable."""
        await self.connection.commit()

    async def rollback(self) -> None:
        """Discard everything done since the last commit."""
        await self.connection.rollback()
