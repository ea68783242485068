"""Tests of the Alembic migrations and of the startup schema check."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage import tables
from services.storage.engine import create_engine
from services.storage.errors import SchemaTooNewError
from services.storage.migrate import (
    HEAD_REVISION,
    SchemaReport,
    current_revision,
    prepare_schema,
    upgrade,
)


def test_head_revision_is_the_newest_migration() -> None:
    assert HEAD_REVISION == "0001"


async def test_migrations_upgrade_an_empty_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) is None

        report = await prepare_schema(engine)

        assert report == SchemaReport(from_revision=None, to_revision="0001")
        assert report.upgraded
        assert await current_revision(engine) == "0001"
        async with engine.connect() as connection:
            table_names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert table_names == set(tables.metadata.tables) | {"alembic_version"}


async def test_prepare_schema_leaves_a_current_schema_alone(engine: AsyncEngine) -> None:
    report = await prepare_schema(engine)

    assert report == SchemaReport(from_revision="0001", to_revision="0001")
    assert not report.upgraded


async def test_serve_refuses_a_schema_newer_than_it_knows(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '0002_from_the_future'"))

    with pytest.raises(SchemaTooNewError) as raised:
        await prepare_schema(engine)

    assert str(raised.value) == (
        "database schema is at revision 0002_from_the_future, newer than this meterwire knows "
        "(head 0001); upgrade meterwire"
    )
    assert await current_revision(engine) == "0002_from_the_future"


async def test_concurrent_upgrades_apply_the_schema_once(database_url: str) -> None:
    replicas = [create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade(replica) for replica in replicas))

        assert await current_revision(replicas[0]) == "0001"
        async with replicas[0].connect() as connection:
            versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    finally:
        for replica in replicas:
            await replica.dispose()
    assert [tuple(row) for row in versions] == [("0001",)]


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(context, tables.metadata))


async def test_migrated_schema_matches_the_table_definitions(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_schema_differences)

    assert differences == []


_UPGRADE_IN_A_SUBPROCESS = """
import asyncio, sys
from services.storage.engine import create_engine
from services.storage.migrate import upgrade

async def main() -> None:
    engine = create_engine(sys.argv[1])
    await upgrade(engine)
    await engine.dispose()

asyncio.run(main())
"""


async def test_replica_processes_starting_together_migrate_once(database_url: str) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _UPGRADE_IN_A_SUBPROCESS,
            database_url,
            cwd=Path(__file__).parents[2],
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outcomes = [(await _stderr(process), process.returncode) for process in processes]

    assert outcomes == [("", 0)] * 3
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) == "0001"
    finally:
        await engine.dispose()


async def _stderr(process: asyncio.subprocess.Process) -> str:
    _, stderr = await process.communicate()
    return stderr.decode()
