"""The rollup measures as SQL aggregates over raw usage_events, derived from MEASURES like ingest's Python.

Reports read raw events where no rollup answers (sub-minute edges, tag filters and groupings); these
expressions sum them into exactly the figures ingest would have added to the rollups.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from services.accounting.measures import MEASURES, AllUnknown, Condition, IsIn, MeasureKind
from services.histogram import bucket_bounds_us
from services.storage import dialect, tables


def condition_sql(condition: Condition, table: sa.Table) -> ColumnElement[bool]:
    """A measure's condition over an event table's columns (NULL never matches IsIn, as in Python)."""
    if isinstance(condition, IsIn):
        column = table.c[condition.column]
        return column == condition.values[0] if len(condition.values) == 1 else column.in_(condition.values)
    assert isinstance(condition, AllUnknown)
    return sa.and_(*(table.c[column].is_(None) for column in condition.columns))


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return sa.func.sum(sa.case((condition, 1), else_=0))


def _in_bucket(column: sa.Column[Any], index: int) -> ColumnElement[bool]:
    low, high = bucket_bounds_us(index)
    conditions: list[ColumnElement[bool]] = [column.is_not(None)]
    if low is not None:
        conditions.append(column >= low)
    if high is not None:
        conditions.append(column < high)
    return sa.and_(*conditions)


def raw_sum_expressions(table: sa.Table = tables.usage_events) -> dict[str, ColumnElement[Any]]:
    """Rollup column -> the aggregate over raw events that computes it."""
    expressions: dict[str, ColumnElement[Any]] = {}
    for measure in MEASURES:
        kind = measure.kind
        if kind is MeasureKind.COUNT:
            expressions[measure.name] = sa.func.count()
        elif kind is MeasureKind.COUNT_IF:
            assert measure.condition is not None
            expressions[measure.name] = _count_if(condition_sql(measure.condition, table))
        else:
            assert measure.source is not None
            source = table.c[measure.source]
            if kind is MeasureKind.SUM:
                # Per-event values: their sum may pass int64 (services.accounting.bounds).
                expressions[measure.name] = dialect.saturating_sum(source)
            elif kind is MeasureKind.COUNT_KNOWN:
                expressions[measure.name] = sa.func.count(source)
            else:
                for index, column in enumerate(measure.bucket_columns):
                    expressions[column] = _count_if(_in_bucket(source, index))
    return expressions


RAW_SUMS: Final = raw_sum_expressions()
"""raw_sum_expressions of usage_events, built once (constructing ~120 expressions per statement is slow)."""
