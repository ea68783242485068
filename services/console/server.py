"""Serves the console from the control plane's own event loop: a uvicorn server task, started after the shared
objects are loaded and shut down before they close."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import structlog
import uvicorn

from services.budget.service import BudgetService
from services.budget.webhooks import Webhooks
from services.console.app import build_app
from services.console.context import Console, template_environment
from services.console.exports import Exports
from services.console.sessions import Sessions
from services.lifecycle import Managed
from services.reporting.history import RequestHistory
from services.reporting.reports import UsageReports
from services.settings import parse_listen_address

if TYPE_CHECKING:
    from services.deps import ServiceDeps

log = structlog.get_logger("meterwire.console")

SHUTDOWN_GRACE_SECONDS: Final = 5
"""Open page loads get this long to finish when the server stops."""


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the control plane's entry point owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer(Managed):
    """`async with ConsoleServer(deps):` serves the console on settings.http_listen until shutdown()."""

    def __init__(self, deps: ServiceDeps) -> None:
        settings = deps.settings
        assert settings.http_listen is not None
        self._address = settings.http_listen
        self.console = Console(
            settings=settings,
            engine=deps.engine,
            admin=deps.admin,
            sessions=Sessions(deps.admin, idle_seconds=settings.console_session_idle.total_seconds()),
            reports=UsageReports(deps.engine, max_points=settings.reporting_max_points, prices=deps.prices),
            history=RequestHistory(deps.engine),
            fleet=deps.fleet,
            budgets=BudgetService(deps.engine),
            webhooks=Webhooks(deps.engine),
            prices=deps.prices,
            exports=Exports(
                deps.engine,
                deps.prices,
                settings.console_export_dir or settings.data_dir / "console-exports",
                max_buckets=settings.reporting_max_export_buckets,
            ),
            templates=template_environment(),
        )
        self.port = 0
        self._socket: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    def bind(self) -> int:
        """Takes the port now (before the database is touched), so a busy port fails start early."""
        host, port = parse_listen_address(self._address, setting="http_listen")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say they are
        # TCP, and accepted connections inherit the listening socket's protocol. With Nagle on, every response on
        # a kept-alive connection (what browsers use) waited ~40 ms for the delayed ACK of its first segment.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as error:
            sock.close()
            raise OSError(f"http_listen: cannot listen on {self._address}: {error.strerror}") from None
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    @property
    def url(self) -> str:
        host, _ = parse_listen_address(self._address, setting="http_listen")
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    async def start(self) -> None:
        if self._socket is None:
            self.bind()
        config = uvicorn.Config(
            build_app(self.console),
            log_config=None,
            access_log=False,  # page URLs carry filters only, but a log line per page load is noise
            lifespan="off",
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            server_header=False,
        )
        self._server = _EmbeddedServer(config)
        assert self._socket is not None
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="console-http")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the console's HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("usage console serving", url=self.url)

    async def shutdown(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._server = None
            self._task = None
        await self.console.exports.shutdown()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
