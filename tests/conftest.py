"""Shared database fixtures: every storage-backed test runs on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from services.heartbeat.fleet import Fleet
from services.logs import configure_logging
from services.server import ControlPlane
from services.settings import ServerSettings
from services.storage.engine import CONNECT_TIMEOUT_S, redact, sqlite_url
from services.storage.engine import create_engine as create_storage_engine
from services.storage.migrate import upgrade
from tests.clients import Tokens
from tests.clock import FakeClock

# In-process servers log as `meterwire serve` does. structlog's own default renders a logged exception as a rich
# traceback with every frame's locals: 3 s for one failed usage batch, whose frames hold its rows.
configure_logging()

_DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
# Probed once per session: None means reachable, a string is why not.
_postgres_unreachable: dict[str, str | None] = {}


def _postgres_server_url() -> str:
    return os.environ.get("MW_TEST_POSTGRES_URL", _DEFAULT_POSTGRES_URL)


def _postgres_required() -> bool:
    return os.environ.get("MW_REQUIRE_POSTGRES") == "1" or os.environ.get("CI", "").lower() == "true"


def _server_engine(server_url: str) -> AsyncEngine:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return create_async_engine(
        server_url,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"timeout": CONNECT_TIMEOUT_S},
    )


async def _why_postgres_unreachable(server_url: str) -> str | None:
    if server_url not in _postgres_unreachable:
        engine = _server_engine(server_url)
        reason: str | None = None
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to connect means "unreachable" for the test run
            reason = " ".join(str(exc).split()) or type(exc).__name__
        finally:
            await engine.dispose()
        _postgres_unreachable[server_url] = reason
    return _postgres_unreachable[server_url]


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "data")
        return
    server_url = _postgres_server_url()
    reason = await _why_postgres_unreachable(server_url)
    if reason is not None:
        if _postgres_required():
            pytest.fail(
                f"PostgreSQL required (MW_REQUIRE_POSTGRES/CI) but unreachable at {redact(server_url)}: {reason}"
            )
        pytest.skip(
            f"PostgreSQL unreachable at {redact(server_url)} ({reason}); start it or set "
            "MW_TEST_POSTGRES_URL, and set MW_REQUIRE_POSTGRES=1 to make this a failure"
        )
    database = f"mw_test_{secrets.token_hex(6)}"
    server = _server_engine(server_url)
    try:
        async with server.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{database}"'))
        yield make_url(server_url).set(database=database).render_as_string(hide_password=False)
        async with server.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    finally:
        await server.dispose()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database migrated to head."""
    storage_engine = create_storage_engine(database_url)
    try:
        await upgrade(storage_engine)
        yield storage_engine
    finally:
        await storage_engine.dispose()


# --- a real control plane on a loopback port, and clients for it (every folder's tests share these; a folder
# whose tests need other settings overrides `control_plane` in its own conftest) -------------------------------


@pytest.fixture
async def control_plane(database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=database_url,
        drain_delay=timedelta(0),
        ingest_workers=0,  # tests/telemetry prepares batches both ways
        shutdown_grace=timedelta(seconds=1),
    )
    async with ControlPlane(settings) as plane:
        yield plane


@pytest.fixture
async def channel(control_plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as client_channel:
        yield client_channel


@pytest.fixture
def admin_secret(control_plane: ControlPlane) -> str:
    return control_plane.settings.admin_token_path.read_text().strip()


@pytest.fixture
async def tokens(channel: grpc.aio.Channel, admin_secret: str) -> Tokens:
    return Tokens(channel, admin_secret)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fleet(control_plane: ControlPlane, clock: FakeClock) -> Fleet:
    """The live control plane's fleet (heartbeat and config tests), on the hand-moved clock."""
    fleet = control_plane.deps.fleet
    fleet.clock = clock
    return fleet
