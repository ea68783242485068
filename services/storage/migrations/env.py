"""Alembic environment: runs migrations on the connection that services.storage.migrate hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from services.storage.migrate import MIGRATION_LOCK_KEY
from services.storage.tables import metadata


def _run_migrations(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=is_sqlite,
        compare_type=True,
        # SQLite does run DDL inside transactions; claiming so makes a failed migration roll back whole.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if is_sqlite:
            # The sqlite3 driver would not open a transaction before DDL; IMMEDIATE also takes the write
            # lock up front, so two processes migrating at once run one after the other.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            # Replicas starting together queue here; the later ones then find the schema at head.
            connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("meterwire migrations run online only: use `meterwire db upgrade`")
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "meterwire migrations need a connection from services.storage.migrate "
            "(`meterwire db upgrade`); the alembic command line is not supported"
        )
    _run_migrations(connection)


_main()
