"""Driver SQL of the ingest hot path: statements cut at the bind-parameter limit, rows given as tuples or values."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.ext.asyncio import create_async_engine

from services.storage import tables
from services.telemetry.rows import TAG_COLUMNS
from services.telemetry.sql import MAX_BIND_PARAMETERS, CompiledStatement


def _tag_rows(count: int) -> list[tuple[object, ...]]:
    return [(1, f"event-{n}", "team", f"team-{n % 3}", "env", n) for n in range(count)]


def test_sqlite_statements_hold_as_many_rows_as_the_bind_parameter_limit_allows() -> None:
    statement = CompiledStatement(tables.usage_event_tags.insert(), pysqlite.dialect(), TAG_COLUMNS)
    per_statement = MAX_BIND_PARAMETERS // len(TAG_COLUMNS)
    rows = _tag_rows(2 * per_statement + 7)
    chunks = statement.chunks(rows)
    assert [len(parameters) for _, parameters in chunks] == [
        per_statement * len(TAG_COLUMNS),
        per_statement * len(TAG_COLUMNS),
        7 * len(TAG_COLUMNS),
    ]
    assert [sql.count("(?, ?, ?, ?, ?, ?)") for sql, _ in chunks] == [per_statement, per_statement, 7]
    assert tuple(value for _, parameters in chunks for value in parameters) == tuple(v for row in rows for v in row)
    values = [value for row in rows for value in row]
    assert statement.chunks_of_values(values) == chunks


def test_postgresql_takes_one_array_per_column_in_one_statement() -> None:
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1/unused")  # never connects
    statement = CompiledStatement(tables.usage_event_tags.insert(), engine.dialect, TAG_COLUMNS)
    engine.sync_engine.dispose()
    rows = _tag_rows(5)
    ((sql, columns),) = statement.chunks(rows)
    assert "unnest(" in sql
    assert columns == tuple(list(column) for column in zip(*rows, strict=True))
    assert statement.chunks_of_values([value for row in rows for value in row]) == [(sql, columns)]


def test_values_that_are_not_whole_rows_are_refused() -> None:
    statement = CompiledStatement(tables.usage_event_tags.insert(), pysqlite.dialect(), TAG_COLUMNS)
    assert statement.chunks_of_values([]) == []
    with pytest.raises(ValueError, match="not whole rows of 6 columns"):
        statement.chunks_of_values([1, "event", "team"])
