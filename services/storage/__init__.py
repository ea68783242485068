"""Storage for the control plane: engine, Core tables, migrations, dialect helpers and the unit of work."""

from __future__ import annotations

from services.storage.engine import check_connection, create_engine, sqlite_url
from services.storage.errors import (
    DatabaseUnreachableError,
    SchemaTooNewError,
    StorageConfigError,
    StorageError,
)
from services.storage.migrate import HEAD_REVISION, SchemaReport, current_revision, prepare_schema, upgrade
from services.storage.uow import UnitOfWork

__all__ = [
    "HEAD_REVISION",
    "DatabaseUnreachableError",
    "SchemaReport",
    "SchemaTooNewError",
    "StorageConfigError",
    "StorageError",
    "UnitOfWork",
    "check_connection",
    "create_engine",
    "current_revision",
    "prepare_schema",
    "sqlite_url",
    "upgrade",
]
