"""Tests of engine creation, SQLite pragmas and the reachability check."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from services.server import ControlPlane
from services.settings import ServerSettings
from services.storage import tables
from services.storage.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    check_connection,
    create_engine,
    create_sqlite_thread_engine,
    maintenance_warnings,
    sqlite_url,
)
from services.storage.errors import DatabaseUnreachableError, StorageConfigError, StorageError


def test_sqlite_url_points_at_meterwire_db_in_the_absolute_data_dir(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "data")

    assert url == f"sqlite+aiosqlite:///{tmp_path}/data/meterwire.db"
    assert make_url(url).database == str(tmp_path / "data" / "meterwire.db")


async def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    engine = create_engine(sqlite_url(tmp_path / "missing" / "dir"))
    try:
        assert (tmp_path / "missing" / "dir").is_dir()
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar_one()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    finally:
        await engine.dispose()

    # synchronous: 1 is NORMAL.
    assert pragmas == {
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
    }


async def test_the_writer_engine_holds_the_write_lock_from_the_start_of_each_transaction(tmp_path: Path) -> None:
    # When the ingest writer's insert skipped stored event ids, it asks which and inserts the others: no other
    # connection may write in between, so its transactions take the write lock before their first statement
    # (a deferred transaction would take it at its first write, or fail to upgrade a read without waiting).
    engine = create_engine(sqlite_url(tmp_path))
    writer = create_sqlite_thread_engine(engine)
    other = sqlite3.connect(tmp_path / "meterwire.db", timeout=0, isolation_level=None)
    try:
        other.execute("CREATE TABLE t (x INTEGER)")
        with writer.begin() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("INSERT INTO t VALUES (1)")
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
        other.execute("INSERT INTO t VALUES (3)")  # committed: the lock is released
        with writer.connect() as connection:
            assert connection.exec_driver_sql("SELECT x FROM t ORDER BY x").scalars().all() == [2, 3]
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        other.close()
        writer.dispose()
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql+aiomysql://meter:s3cret@db.example/meterwire", "mysql+aiomysql://meter:***@db.example/meterwire"),
        ("postgresql://meter:s3cret@db.example/meterwire", "postgresql://meter:***@db.example/meterwire"),
        ("sqlite:////var/lib/meterwire/meterwire.db", "sqlite:////var/lib/meterwire/meterwire.db"),
    ],
)
def test_unsupported_driver_is_rejected_naming_the_supported_forms(url: str, shown: str) -> None:
    with pytest.raises(StorageConfigError) as raised:
        create_engine(url)

    message = str(raised.value)
    assert f"unsupported database URL {shown};" in message
    assert "s3cret" not in message
    assert "sqlite+aiosqlite:///" in message
    assert "postgresql+asyncpg://" in message
    assert isinstance(raised.value, StorageError)


async def test_a_failed_statement_does_not_show_its_parameters(engine: AsyncEngine) -> None:
    # What a statement binds is the stored data (user and API key ids of usage events); an error that is
    # logged must not copy it into the log. Also for the SQLite writer's own engine.
    created = datetime(2026, 1, 1, tzinfo=UTC)
    insert = tables.environments.insert().values(environment_id="env-1", display_name="d", create_time=created)
    async with engine.begin() as connection:
        await connection.execute(insert)
    duplicate = tables.environments.insert()
    parameters = {"environment_id": "env-1", "display_name": "user-7f3a-private", "create_time": created}
    with pytest.raises(StatementError) as failed:
        async with engine.begin() as connection:
            await connection.execute(duplicate, parameters)
    assert "user-7f3a-private" not in str(failed.value)
    assert "INSERT INTO environments" in str(failed.value)  # which statement failed is still said
    if engine.dialect.name == "sqlite":
        writer = create_sqlite_thread_engine(engine)
        try:
            with pytest.raises(StatementError) as failed_there, writer.begin() as connection:
                connection.execute(duplicate, parameters)
        finally:
            writer.dispose()
        assert "user-7f3a-private" not in str(failed_there.value)


async def test_check_connection_accepts_a_reachable_database(engine: AsyncEngine) -> None:
    await check_connection(engine)

    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT 41 + 1"))).scalar_one() == 42


async def test_unreachable_database_error_names_the_url(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        # A directory where the database file should be: SQLite cannot open it.
        url = sqlite_url(tmp_path / "blocked")
        (tmp_path / "blocked" / "meterwire.db").mkdir(parents=True)
        expected_prefix = f"cannot reach database {url}: "
        expected_reason = "unable to open database file"
    else:
        # Port 1 refuses connections; the password must not show up in the message.
        unreachable = make_url(database_url).set(port=1, password="s3cret")
        url = unreachable.render_as_string(hide_password=False)
        expected_prefix = f"cannot reach database {unreachable.render_as_string(hide_password=True)}: "
        expected_reason = "Connection refused"
    engine = create_engine(url)
    threads_before = set(threading.enumerate())
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnreachableError) as raised:
            await check_connection(engine)
    finally:
        await engine.dispose()
        # aiosqlite stops a connection that failed to open without waiting for its worker thread, which then
        # resolves a future on this test's loop: let it finish before the loop closes.
        for thread in set(threading.enumerate()) - threads_before:
            if "_connection_worker_thread" in thread.name:
                await asyncio.to_thread(thread.join, 10)

    message = str(raised.value)
    assert message.startswith(expected_prefix)
    assert expected_reason.lower() in message.lower()
    assert "s3cret" not in message
    assert "\n" not in message
    assert time.monotonic() - started < 10


async def test_maintenance_warnings_name_autovacuum_off_for_the_server_or_a_table(engine: AsyncEngine) -> None:
    names = list(tables.metadata.tables)
    if engine.dialect.name != "postgresql":
        assert await maintenance_warnings(engine, names) == []
        return
    async with engine.connect() as connection:
        server_off = await connection.scalar(text("SHOW autovacuum")) == "off"
    warnings = await maintenance_warnings(engine, names)
    assert any("autovacuum is off on this PostgreSQL server" in w for w in warnings) == server_off
    assert not any("usage_rollup_1m" in w for w in warnings)

    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE usage_rollup_1m SET (autovacuum_enabled = off)"))
    warnings = await maintenance_warnings(engine, names)
    assert [w for w in warnings if "usage_rollup_1m" in w] == [
        "autovacuum is disabled for table usage_rollup_1m (ALTER TABLE usage_rollup_1m RESET (autovacuum_enabled) "
        "turns it back on): its dead rows are never reclaimed, so it slows down over time"
    ]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022 umask, under which files are created readable by everyone unless made private."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sqlite_files(database: Path) -> list[Path]:
    return [database, *(database.with_name(database.name + suffix) for suffix in ("-wal", "-shm"))]


@pytest.mark.usefixtures("open_umask")
async def test_a_new_sqlite_database_its_wal_and_its_directory_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    engine = create_engine(sqlite_url(data_dir))
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER)"))
            await connection.execute(text("INSERT INTO t VALUES (1)"))
        # The writer's and the checkpointer's engines open the same files from their own connections.
        writer = create_sqlite_thread_engine(engine)
        with writer.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
        # SQLite made the -wal and -shm files lazily, on the first connection in WAL mode; they exist while
        # a connection is open.
        modes = {path.name: mode_of(path) for path in sqlite_files(data_dir / "meterwire.db")}
        writer.dispose()
    finally:
        await engine.dispose()
    assert modes == {"meterwire.db": 0o600, "meterwire.db-wal": 0o600, "meterwire.db-shm": 0o600}
    assert mode_of(data_dir) == 0o700


@pytest.mark.usefixtures("open_umask")
async def test_existing_database_files_and_directory_readable_by_others_are_made_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    database = data_dir / "meterwire.db"
    # Made as an older version did: 0644 files, and a connection keeps the -wal and -shm files in place.
    older = sqlite3.connect(database, isolation_level=None)
    try:
        older.execute("PRAGMA journal_mode=WAL")
        older.execute("CREATE TABLE t (x INTEGER)")
        older.execute("INSERT INTO t VALUES (1)")
        assert {mode_of(path) for path in sqlite_files(database)} == {0o644}
        with capture_logs() as logs:
            engine = create_engine(sqlite_url(data_dir))
        try:
            async with engine.connect() as connection:
                assert (await connection.execute(text("SELECT x FROM t"))).scalar_one() == 1
        finally:
            await engine.dispose()
        modes = {path.name: mode_of(path) for path in sqlite_files(database)}
    finally:
        older.close()
    assert modes == {"meterwire.db": 0o600, "meterwire.db-wal": 0o600, "meterwire.db-shm": 0o600}
    assert mode_of(data_dir) == 0o700
    made_private = sorted((entry["event"], Path(entry["path"]).name, entry["mode"]) for entry in logs)
    assert made_private == [
        ("made a database file private", "meterwire.db", "0644"),
        ("made a database file private", "meterwire.db-shm", "0644"),
        ("made a database file private", "meterwire.db-wal", "0644"),
        ("made the database's directory private", "data", "0755"),
    ]


@pytest.mark.usefixtures("open_umask")
async def test_a_shared_sticky_directory_is_left_open_and_only_the_database_files_are_made_private(
    tmp_path: Path,
) -> None:
    # A database put straight into a shared directory like /tmp: closing the directory would break everyone
    # else using it, so it is left alone (and said so), while the database files are private.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with capture_logs() as logs:
        engine = create_engine(f"sqlite+aiosqlite:///{shared / 'other-name.db'}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER)"))
            modes = {path.name: mode_of(path) for path in sqlite_files(shared / "other-name.db")}
    finally:
        await engine.dispose()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert modes == {"other-name.db": 0o600, "other-name.db-wal": 0o600, "other-name.db-shm": 0o600}
    assert [entry["event"] for entry in logs] == [
        "the database's directory is open to other users; the database files themselves are private"
    ]


@pytest.mark.usefixtures("open_umask")
async def test_a_started_control_plane_keeps_its_database_wal_token_and_data_directory_private(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    settings = ServerSettings(
        listen="127.0.0.1:0", data_dir=data_dir, drain_delay=timedelta(0), shutdown_grace=timedelta(seconds=1)
    )
    async with ControlPlane(settings) as plane:
        # Startup migrated the database and stored the first admin token: SQLite has made its -wal and -shm
        # files by now, lazily, on its first connection in WAL mode.
        async with plane.engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM api_tokens"))).scalar_one() == 1
        modes = {
            path.name: mode_of(path) for path in [*sqlite_files(data_dir / "meterwire.db"), data_dir / "admin.token"]
        }
        directory_mode = mode_of(data_dir)
    assert modes == {"meterwire.db": 0o600, "meterwire.db-wal": 0o600, "meterwire.db-shm": 0o600, "admin.token": 0o600}
    assert directory_mode == 0o700
