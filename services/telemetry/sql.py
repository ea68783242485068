"""Driver-level SQL for the ingest hot path, compiled once from the Core statements of storage.dialect.

Why: with executemany, Core processes every parameter dict in Python (``construct_params``); profiling ingest
showed that at ~40 us per event, more than validation and pricing together. The statements here are the SAME
Core statements, compiled once per dialect to text; rows are then passed as plain tuples in the compiled
parameter order through ``Connection.exec_driver_sql``. Only the multi-row form of an
``INSERT ... RETURNING`` (so it reports every new row in one statement; sqlite3's executemany drops
RETURNING rows) is made here from the compiled VALUES group: on SQLite by repeating the group per row; on
PostgreSQL, whose driver renders typed placeholders (``$1::VARCHAR``), as
``SELECT * FROM unnest($1::VARCHAR[], ...)`` with one array per column, which is ONE fixed statement
(prepared once) instead of a new 30,000-parameter statement per row count. PostgreSQL's bulk path is
StagedInsert: COPY into a session's temporary table, then one INSERT ... SELECT.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy import Insert, Table, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.interfaces import AdaptedConnection

MAX_BIND_PARAMETERS: Final = 32_766
"""SQLite's default SQLITE_MAX_VARIABLE_NUMBER; PostgreSQL allows 65,535. Bounds a multi-row statement."""

_DOLLAR_PARAMETER: Final = re.compile(r"\$(\d+)")
_TYPED_DOLLAR_PARAMETER: Final = re.compile(r"(\$\d+::[A-Z ]+)")


class CompiledStatement:
    """A Core INSERT compiled to driver SQL for the given columns; rows are tuples in `columns` order."""

    def __init__(self, statement: Insert, dialect: Dialect, columns: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))
        order = tuple(compiled.positiontup or ())
        if order != tuple(columns):
            raise RuntimeError(f"compiled parameter order {order} differs from the columns {tuple(columns)}")
        self.columns: tuple[str, ...] = tuple(columns)
        self.sql: str = str(compiled)
        self._dollar = dialect.paramstyle == "numeric_dollar"
        self._head, self._group, self._tail = _split_values_group(self.sql)
        self.max_rows_per_statement = max(1, MAX_BIND_PARAMETERS // len(self.columns))
        self._unnest_sql: str | None = None
        typed = _TYPED_DOLLAR_PARAMETER.findall(self._group)
        if self._dollar and len(typed) == len(self.columns):
            arrays = ", ".join(f"{placeholder.strip()}[]" for placeholder in typed)
            self._unnest_sql = f"{self._head.removesuffix('VALUES ')}SELECT * FROM unnest({arrays}){self._tail}"

    @lru_cache(maxsize=64)  # noqa: B019 - a few statements per process, each kept for the process's life
    def multirow_sql(self, rows: int) -> str:
        """The statement with `rows` VALUES groups; parameters are the rows' tuples concatenated."""
        if not self._dollar:
            return self._head + ", ".join([self._group] * rows) + self._tail
        width = len(self.columns)
        groups = [_renumber(self._group, row * width) for row in range(rows)]
        return self._head + ", ".join(groups) + self._tail

    def chunks(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, tuple[Any, ...]]]:
        """(sql, parameters) per statement needed to insert `rows`: one unnest statement on PostgreSQL,
        multi-row VALUES of at most `max_rows_per_statement` rows otherwise."""
        values: list[Any] = []
        for row in rows:
            values.extend(row)
        return self.chunks_of_values(values)

    def chunks_of_values(self, values: list[Any]) -> list[tuple[str, tuple[Any, ...]]]:
        """`chunks` of rows given as their values concatenated (each row's in `columns` order): slicing them
        into statements or columns takes no Python per row."""
        if not values:
            return []
        width = len(self.columns)
        if len(values) % width:
            raise ValueError(f"{len(values)} values are not whole rows of {width} columns")
        if self._unnest_sql is not None:
            return [(self._unnest_sql, tuple(values[column::width] for column in range(width)))]
        rows = len(values) // width
        step = self.max_rows_per_statement
        return [
            (self.multirow_sql(min(step, rows - start)), tuple(values[start * width : (start + step) * width]))
            for start in range(0, rows, step)
        ]


class DriverStatement:
    """A Core UPDATE compiled once to driver SQL; `parameters` orders values as its placeholders take
    them (a bind parameter used twice is bound twice on SQLite, once on PostgreSQL)."""

    def __init__(self, statement: Update, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = str(compiled)
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ())

    def parameters(self, **values: Any) -> tuple[Any, ...]:
        return tuple(values[name] for name in self._names)


def _renumber(group: str, offset: int) -> str:
    """Shifts $n placeholders by `offset`, for the next row's VALUES group."""
    return _DOLLAR_PARAMETER.sub(lambda match: f"${int(match.group(1)) + offset}", group)


def _split_values_group(sql: str) -> tuple[str, str, str]:
    """Splits "... VALUES (a, b) tail" into ("... VALUES ", "(a, b)", " tail"), respecting nested parentheses."""
    start = sql.index(" VALUES (") + len(" VALUES ")
    depth = 0
    for position in range(start, len(sql)):
        if sql[position] == "(":
            depth += 1
        elif sql[position] == ")":
            depth -= 1
            if depth == 0:
                return sql[:start], sql[start : position + 1], sql[position + 1 :]
    raise RuntimeError(f"no VALUES group in {sql!r}")


class StagedInsert:
    """PostgreSQL: rows are COPYed (asyncpg's binary COPY) into a temporary table of the session, then moved
    into `table` by ONE ``INSERT ... SELECT``, which `insert_from` makes from the staging SELECT (conflict
    clause included).

    Why: measured on the ingest benchmark's 500-event batches (the same rows, a transaction each, two rounds),
    COPY + INSERT ... SELECT took 8.6-10.7 ms for the events where an unnest INSERT took 13.8-16.5 ms, and
    8.5-10.0 ms for their ~170 rollup rows where an executemany pipeline of an upsert per row took 13.0-19.0 ms;
    the commit, which empties the staging tables, took 1.8-2.2 ms instead of 1.1-1.5 ms.

    The staging table is made by the transaction that first needs it on a connection (``IF NOT EXISTS``: a
    transaction that rolled back took its table with it; through a transaction-pooling proxy the next
    transaction may be on another server session) and is emptied by every commit (``ON COMMIT DELETE ROWS``,
    which PostgreSQL skips in transactions that touch no temporary table). It has the columns and types of
    `table` and no constraints, so staging never fails; the INSERT decides.
    """

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        dialect: Dialect,
        insert_from: Callable[[sa.Select[Any]], Insert],
    ) -> None:
        self.columns: tuple[str, ...] = tuple(columns)
        self.staging_table = f"mw_staged_{table.name}"
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(column) for column in self.columns)
        self.create_sql = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {self.staging_table} ON COMMIT DELETE ROWS AS "
            f"SELECT {names} FROM {quote(table.name)} WITH NO DATA"
        )
        staged = sa.table(self.staging_table, *(sa.column(column) for column in self.columns))
        self.insert_sql: str = str(insert_from(sa.select(*staged.c)).compile(dialect=dialect))

    def stage(self, connection: sa.Connection, rows: Iterable[Sequence[Any]]) -> None:
        """COPYs `rows` (values in `columns` order) into the staging table, inside the connection's transaction."""
        # Any statement through SQLAlchemy begins the driver's transaction first, so the COPY is part of it.
        connection.exec_driver_sql(self.create_sql)
        driver = cast(AdaptedConnection, connection.connection.dbapi_connection)
        driver.run_async(
            lambda asyncpg: asyncpg.copy_records_to_table(self.staging_table, records=rows, columns=self.columns)
        )

    def insert(self, connection: sa.Connection) -> int:
        """Moves what is staged into the table; returns the rows the INSERT took (the driver's row count)."""
        return int(connection.exec_driver_sql(self.insert_sql).rowcount)
