"""The shape of long-running server parts: start, a shutdown safe to call twice, `async with`, task draining."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable


@runtime_checkable
class Lifecycle(Protocol):
    """Something with background work (timers, writers): started before serving, shut down after."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


class Managed(ABC):
    """`async with thing:` starts it and shuts it down, for any class with `start()` and `shutdown()`."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancels the tasks and waits until each has ended (a step cut off mid-transaction rolls back)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
