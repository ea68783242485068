"""Shared database fixtures: every storage-backed test runs on SQLite and on a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import shutil
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
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
async def storage_dialect(request: pytest.FixtureRequest) -> str:
    """The database engine a storage-backed test runs on; PostgreSQL fails or skips here when unreachable."""
    dialect: str = request.param
    if dialect == "postgresql":
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
    return dialect


@pytest.fixture
async def database_url(storage_dialect: str, tmp_path: Path, _postgres_databases: _PostgresDatabases) -> str:
    """The URL of an empty database: a SQLite file under tmp_path, or a fresh PostgreSQL database."""
    if storage_dialect == "sqlite":
        return sqlite_url(tmp_path / "data")
    return await _postgres_databases.create()


@pytest.fixture
async def migrated_database_url(
    storage_dialect: str, tmp_path: Path, _postgres_databases: _PostgresDatabases, _sqlite_template: _SqliteTemplate
) -> str:
    """The URL of a fresh database already at the head revision: a copy of one migrated once per session.

    Tests that start a control plane use this one: each would otherwise migrate an empty database again (a
    second on PostgreSQL), and tests/storage/test_migrations.py covers the migrations themselves."""
    if storage_dialect == "sqlite":
        return await _sqlite_template.copy_to(tmp_path / "data")
    return await _postgres_databases.create(migrated=True)


@pytest.fixture
async def engine(migrated_database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database migrated to head."""
    storage_engine = create_storage_engine(migrated_database_url)
    try:
        yield storage_engine
    finally:
        await storage_engine.dispose()


class _SqliteTemplate:
    """A SQLite database migrated to head once per session, copied for each test that wants one."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._migrated = False

    async def copy_to(self, data_dir: Path) -> str:
        if not self._migrated:
            template_engine = create_storage_engine(sqlite_url(self._directory))
            try:
                await upgrade(template_engine)
            finally:
                await template_engine.dispose()  # the last connection's close folds the WAL into the file
            self._migrated = True
        # Modes too: the database's directory is 0700 and its file 0600, as meterwire makes them.
        shutil.copytree(self._directory, data_dir)
        return sqlite_url(data_dir)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> _SqliteTemplate:
    return _SqliteTemplate(tmp_path_factory.mktemp("sqlite-template") / "data")


_T = TypeVar("_T")

_DROP_BATCH = 8
"""Used test databases dropped together: each DROP DATABASE waits for a checkpoint (about a second), and
concurrent drops share one."""


class _PostgresDatabases:
    """Makes each test's PostgreSQL database (empty, or a copy of a template migrated once per session) and
    drops used ones in batches, in a thread of its own while tests run: the next test's copy is made while the
    current test runs. A database is never reused, so every test still starts on a fresh one."""

    def __init__(self) -> None:
        self.server_url = _postgres_server_url()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-databases", daemon=True)
        self._thread.start()
        self._template: str | None = None
        self._template_lock = asyncio.Lock()  # used only on self._loop
        self._next_migrated: concurrent.futures.Future[str] | None = None
        self._used: list[str] = []
        self._pending: list[concurrent.futures.Future[object]] = []

    async def create(self, *, migrated: bool = False) -> str:
        """A new database's URL; called from a test's event loop."""
        if migrated:
            future = self._next_migrated or self._submit(self._make(migrated=True))
            self._next_migrated = self._submit(self._make(migrated=True))
        else:
            future = self._submit(self._make(migrated=False))
        if len(self._used) >= _DROP_BATCH:  # the tests that used these are over
            self._pending.append(self._submit(self._drop(self._used)))
            self._used = []
        database = await asyncio.wrap_future(future)
        self._used.append(database)
        return self._url(database)

    def drop_all(self) -> None:
        """Drops every database made, the template too, then stops the thread; raises what a drop raised."""
        try:
            unused = [self._next_migrated.result()] if self._next_migrated is not None else []
            self._submit(self._drop([*self._used, *unused, *([self._template] if self._template else [])])).result()
            for future in self._pending:
                future.result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _submit(self, work: Coroutine[object, object, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def _url(self, database: str) -> str:
        return make_url(self.server_url).set(database=database).render_as_string(hide_password=False)

    async def _make(self, *, migrated: bool) -> str:
        server = _server_engine(self.server_url)
        try:
            template = await self._migrated_template(server) if migrated else None
            database = f"mw_test_{secrets.token_hex(6)}"
            await _create_database(server, database, template)
            return database
        finally:
            await server.dispose()

    async def _migrated_template(self, server: AsyncEngine) -> str:
        async with self._template_lock:
            if self._template is None:
                template = f"mw_template_{secrets.token_hex(6)}"
                await _create_database(server, template, None)
                template_engine = create_storage_engine(self._url(template))
                try:
                    await upgrade(template_engine)
                finally:
                    await template_engine.dispose()
                self._template = template
            return self._template

    async def _drop(self, databases: list[str]) -> None:
        server = _server_engine(self.server_url)

        async def drop(database: str) -> None:
            async with server.connect() as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))

        try:
            await asyncio.gather(*(drop(database) for database in databases))
        finally:
            await server.dispose()


async def _create_database(server: AsyncEngine, database: str, template: str | None) -> None:
    statement = f'CREATE DATABASE "{database}"' + (f' TEMPLATE "{template}"' if template else "")
    for attempt in range(50):
        try:
            async with server.connect() as connection:
                await connection.execute(text(statement))
            return
        except DBAPIError as exc:
            # A template's last connection may still be closing on the server just after the engine let go.
            if template is None or "being accessed by other users" not in str(exc) or attempt == 49:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture(scope="session")
def _postgres_databases() -> Iterator[_PostgresDatabases]:
    databases = _PostgresDatabases()
    yield databases
    databases.drop_all()


# --- a real control plane on a loopback port, and clients for it (every folder's tests share these; a folder
# whose tests need other settings overrides `control_plane` in its own conftest) -------------------------------


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=migrated_database_url,
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
