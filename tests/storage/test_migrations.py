"""Tests of the Alembic migrations and of the startup schema check."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
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
    assert HEAD_REVISION == "0006"


async def test_migrations_upgrade_an_empty_database(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) is None

        report = await prepare_schema(engine)

        assert report == SchemaReport(from_revision=None, to_revision=HEAD_REVISION)
        assert report.upgraded
        assert await current_revision(engine) == HEAD_REVISION
        async with engine.connect() as connection:
            table_names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert table_names == set(tables.metadata.tables) | {"alembic_version"}


async def test_prepare_schema_leaves_a_current_schema_alone(engine: AsyncEngine) -> None:
    report = await prepare_schema(engine)

    assert report == SchemaReport(from_revision=HEAD_REVISION, to_revision=HEAD_REVISION)
    assert not report.upgraded


async def test_serve_refuses_a_schema_newer_than_it_knows(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))

    with pytest.raises(SchemaTooNewError) as raised:
        await prepare_schema(engine)

    assert str(raised.value) == (
        "database schema is at revision 9999_from_the_future, newer than this meterwire knows "
        f"(head {HEAD_REVISION}); upgrade meterwire"
    )
    assert await current_revision(engine) == "9999_from_the_future"


async def test_concurrent_upgrades_apply_the_schema_once(database_url: str) -> None:
    replicas = [create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade(replica) for replica in replicas))

        assert await current_revision(replicas[0]) == HEAD_REVISION
        async with replicas[0].connect() as connection:
            versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    finally:
        for replica in replicas:
            await replica.dispose()
    assert [tuple(row) for row in versions] == [(HEAD_REVISION,)]


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
        assert await current_revision(engine) == HEAD_REVISION
    finally:
        await engine.dispose()


async def _stderr(process: asyncio.subprocess.Process) -> str:
    _, stderr = await process.communicate()
    return stderr.decode()


@pytest.mark.parametrize(
    "before",
    [
        pytest.param("0001", id="0002 narrow and per-model rollups"),
        pytest.param("0005", id="0006 per-key, per-user and five-minute rollups"),
    ],
)
async def test_an_upgrade_adding_rollups_has_the_next_compaction_build_them(database_url: str, before: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, before)
        minute = {name: "" for name in ("requested_model", "resolved_model", "provider", "api_key_id", "user_id")}
        async with engine.begin() as connection:
            await connection.execute(
                tables.usage_rollup_1m.insert().values(
                    bucket_start=1_700_000_040,
                    environment_id="prod",
                    gateway_key=1,
                    route="",
                    request_type=1,
                    credential_type=1,
                    status_class=1,
                    streaming=False,
                    attempt_count=3,
                    compacted_attempt_count=3,  # folded into 1h and 1d before the new rollups existed
                    **minute,
                )
            )

        await upgrade(engine)

        async with engine.connect() as connection:
            watermark = await connection.scalar(sa.select(tables.usage_rollup_1m.c.compacted_attempt_count))
    finally:
        await engine.dispose()
    assert watermark == 0  # dirty again: the planner reads minutes there until compaction has run


async def test_0003_replaces_the_unused_budget_tables_and_seeds_the_generation(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, "0002")
        await upgrade(engine)
        async with engine.connect() as connection:
            rows = (await connection.execute(sa.select(tables.budget_generation))).all()
    finally:
        await engine.dispose()
    assert [tuple(row) for row in rows] == [(1, 1)]
