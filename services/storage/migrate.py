"""Schema migrations: Alembic driven from code, and the startup check that refuses unknown schemas."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.storage.errors import SchemaTooNewError

MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"

MIGRATION_LOCK_KEY: Final = 0x6D657465_72776972
"""PostgreSQL advisory lock id held while migrating (the bytes of "meterwir"), unique to meterwire."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for meterwire's migrations, built in code (no alembic.ini)."""
    config = Config()
    # ConfigParser interpolates '%', which a checkout path may contain.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def _head_revision() -> str:
    head = _script_directory().get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


HEAD_REVISION: Final[str] = _head_revision()
"""The newest schema revision this build knows."""

KNOWN_REVISIONS: Final[frozenset[str]] = frozenset(script.revision for script in _script_directory().walk_revisions())


@dataclass(frozen=True)
class SchemaReport:
    """What prepare_schema found and did."""

    from_revision: str | None
    """The revision the database was at; None for an empty database."""
    to_revision: str
    """The revision the database is at now (always HEAD_REVISION)."""

    @property
    def upgraded(self) -> bool:
        """Whether prepare_schema applied migrations."""
        return self.from_revision != self.to_revision


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's schema revision; None when it has never been migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection), revision)


def _process_migration_lock() -> asyncio.Lock:
    # Alembic keeps the running migration in module globals (alembic.context, alembic.op), so two
    # migrations interleaving on one event loop would corrupt each other. Locks are per loop because an
    # asyncio.Lock cannot be shared between loops.
    loop = asyncio.get_running_loop()
    lock = _migration_locks.get(loop)
    if lock is None:
        lock = _migration_locks[loop] = asyncio.Lock()
    return lock


_migration_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database to ``revision``; safe to run from several tasks or processes at once.

    Processes are serialised by the database (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on
    SQLite, both taken in env.py); tasks of this process by a lock, as Alembic's state is global.
    """
    async with _process_migration_lock(), engine.connect() as connection:
        await connection.run_sync(_upgrade, revision)
        await connection.commit()


async def prepare_schema(engine: AsyncEngine) -> SchemaReport:
    """Bring the schema to HEAD_REVISION before serving; refuse a schema newer than this build knows.

    Raises SchemaTooNewError when the database is at a revision this build has no migration for, which
    happens when a newer meterwire migrated it: running old code on it could corrupt data.
    """
    found = await current_revision(engine)
    if found is not None and found not in KNOWN_REVISIONS:
        raise SchemaTooNewError(
            f"database schema is at revision {found}, newer than this meterwire knows "
            f"(head {HEAD_REVISION}); upgrade meterwire"
        )
    if found != HEAD_REVISION:
        await upgrade(engine)
    return SchemaReport(from_revision=found, to_revision=HEAD_REVISION)
