"""The one place SQL differs between SQLite and PostgreSQL: conflict-aware INSERT statements, JSON objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Insert, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from services.storage.errors import StorageConfigError


def _dialect_insert(table: Table, dialect_name: str) -> postgresql.Insert | sqlite.Insert:
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    raise StorageConfigError(f"unsupported SQL dialect {dialect_name!r}; use sqlite or postgresql")


def insert_ignore_duplicates(table: Table, *, dialect_name: str, index_elements: Sequence[str]) -> Insert:
    """``INSERT ... ON CONFLICT (index_elements) DO NOTHING``.

    Works with executemany; with ``.returning(...)`` it returns one row per row actually inserted, so the
    caller learns which rows were new and which were duplicates from a single statement. Do not ask for
    ``sort_by_parameter_order``: skipped rows cannot be matched back to parameters.
    """
    statement = _dialect_insert(table, dialect_name)
    return statement.on_conflict_do_nothing(index_elements=[table.c[name] for name in index_elements])


def upsert_adding(
    table: Table,
    *,
    dialect_name: str,
    key_columns: Sequence[str],
    add_columns: Sequence[str],
    replace_columns: Sequence[str] = (),
) -> Insert:
    """``INSERT ... ON CONFLICT (key_columns) DO UPDATE SET c = table.c + excluded.c`` for each add column
    (and ``SET r = excluded.r`` for each replace column).

    The addition happens in the database, so concurrent writers (several replicas) never lose an update.
    Merge rows with equal keys before executing: PostgreSQL refuses to update one row twice in a
    statement. With executemany every row must carry the same keys (the first row decides the columns).
    """
    statement = _dialect_insert(table, dialect_name)
    updated: dict[str, Any] = {name: table.c[name] + statement.excluded[name] for name in add_columns}
    updated.update({name: statement.excluded[name] for name in replace_columns})
    return statement.on_conflict_do_update(index_elements=[table.c[name] for name in key_columns], set_=updated)


def upsert_replacing(
    table: Table,
    *,
    dialect_name: str,
    key_columns: Sequence[str],
    replace_columns: Sequence[str],
    constants: Mapping[str, Any] | None = None,
) -> Insert:
    """``INSERT ... ON CONFLICT (key_columns) DO UPDATE SET c = excluded.c`` for each replace column (the last
    writer wins), plus ``SET c = value`` for each of `constants`."""
    statement = _dialect_insert(table, dialect_name)
    updated: dict[str, Any] = {name: statement.excluded[name] for name in replace_columns}
    updated.update(constants or {})
    return statement.on_conflict_do_update(index_elements=[table.c[name] for name in key_columns], set_=updated)


def json_integer_pairs(
    column: ColumnElement[Any], *, dialect_name: str
) -> tuple[sa.TableValuedAlias, ColumnElement[Any]]:
    """The key/value rows of a JSON object of integers stored as text, and the value as an integer.

    Join the first to the column's table with ``ON true``; select its ``key`` column and the second.
    """
    if dialect_name == "postgresql":
        pairs = sa.func.jsonb_each_text(sa.cast(column, JSONB)).table_valued("key", "value").render_derived()
        return pairs, sa.cast(pairs.c.value, sa.BigInteger)
    pairs = sa.func.json_each(column).table_valued("key", "value")
    return pairs, pairs.c.value
