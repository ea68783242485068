"""Driver-level SQL for the ingest hot path, compiled once from the Core statements of storage.dialect.

Why: with executemany, Core processes every parameter dict in Python (``construct_params``); profiling ingest
showed that at ~40 us per event, more than validation and pricing together. The statements here are the SAME
Core statements, compiled once per dialect to text; rows are then passed as plain tuples in the compiled
parameter order through ``Connection.exec_driver_sql``. Only the multi-row form of an
``INSERT ... RETURNING`` (so it reports every new row in one statement; sqlite3's executemany drops
RETURNING rows) is made here from the compiled VALUES group: on SQLite by repeating the group per row; on
PostgreSQL, whose driver renders typed placeholders (``$1::VARCHAR``), as
``SELECT * FROM unnest($1::VARCHAR[], ...)`` with one array per column, which is ONE fixed statement
(prepared once) instead of a new 30,000-parameter statement per row count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import Insert, Update
from sqlalchemy.engine import Dialect

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
