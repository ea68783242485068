"""The rollup key and the per-minute accumulation ingest runs for every new event, generated from MEASURES.

Why generated: add_to_rollup runs once per event on ingest's hottest path. Interpreting the measure table
per event (a loop over ~20 entries with a branch per kind) would cost several times the hand-written
function it replaces; instead the function's source is written out from MEASURES once, at import, and
compiled: each column the measures read is fetched from the row once, offsets are literal integers, and
there is no call or lookup per measure. ``ACCUMULATOR_SOURCE`` holds the generated text, and
tests/accounting checks it against the SQL form (sql.py) on random events on both engines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import add
from typing import Any, Final, cast

from services.accounting.measures import (
    BUDGET_MEASURES,
    MEASURES,
    AllUnknown,
    BudgetMeasures,
    Condition,
    IsIn,
    MeasureKind,
)
from services.histogram import bucket_index
from services.storage import tables

ROLLUP_BUCKET_SECONDS: Final = 60
"""The finest rollup bucket (usage_rollup_1m): an event counts in the minute of its event time."""
_US_PER_ROLLUP_BUCKET: Final = ROLLUP_BUCKET_SECONDS * 1_000_000

ROLLUP_COLUMNS: Final = (*tables.ROLLUP_DIMENSIONS, *tables.ROLLUP_SUM_COLUMNS)
"""A usage_rollup_1m row: the key's dimensions, then every measure's columns."""

RollupKey = tuple[Any, ...]
"""Values of tables.ROLLUP_DIMENSIONS, in that order."""
RollupRow = list[Any]
"""Values of ROLLUP_COLUMNS: a rollup key's dimensions, then its metrics."""

ROLLUP_KEY_SOURCES: Final = {
    dimension: "event_time_us" if dimension == "bucket_start" else dimension for dimension in tables.ROLLUP_DIMENSIONS
}
"""The usage_events column each key dimension comes from: bucket_start is the event time's minute (epoch
seconds), every other dimension is the event column of its name."""

_FIRST_METRIC: Final = len(tables.ROLLUP_DIMENSIONS)
_NO_METRICS: Final = (0,) * len(tables.ROLLUP_SUM_COLUMNS)


def _condition_code(condition: Condition, variable: Mapping[str, str]) -> str:
    if isinstance(condition, IsIn):
        if len(condition.values) == 1:
            return f"{variable[condition.column]} == {condition.values[0]!r}"
        return f"{variable[condition.column]} in {condition.values!r}"
    assert isinstance(condition, AllUnknown)
    return " and ".join(f"{variable[column]} is None" for column in condition.columns)


def _accumulator_source() -> str:
    """The text of add_to_rollup for MEASURES (see the module docstring)."""
    offset = {column: index for index, column in enumerate(ROLLUP_COLUMNS)}
    read: list[str] = []
    for measure in MEASURES:
        columns = [measure.source] if measure.source else []
        if isinstance(measure.condition, IsIn):
            columns.append(measure.condition.column)
        elif isinstance(measure.condition, AllUnknown):
            columns.extend(measure.condition.columns)
        read += [column for column in columns if column not in read]
    variable = {column: f"v{index}" for index, column in enumerate(read)}
    key = ", ".join(
        f"row[{source!r}] // {_US_PER_ROLLUP_BUCKET} * {ROLLUP_BUCKET_SECONDS}"
        if dimension == "bucket_start"
        else f"row[{source!r}]"
        for dimension, source in ROLLUP_KEY_SOURCES.items()
    )
    lines = [
        "def add_to_rollup(rollups, row):",
        f"    key = ({key},)",
        "    metrics = rollups.get(key)",
        "    if metrics is None:",
        "        metrics = rollups[key] = [*key, *_NO_METRICS]",
        *(f"    {variable[column]} = row[{column!r}]" for column in read),
    ]
    when_known: dict[str, list[str]] = {}
    for measure in MEASURES:
        index = offset[measure.columns[0]]
        if measure.kind is MeasureKind.COUNT:
            lines.append(f"    metrics[{index}] += 1")
        elif measure.kind is MeasureKind.COUNT_IF:
            assert measure.condition is not None
            lines += [f"    if {_condition_code(measure.condition, variable)}:", f"        metrics[{index}] += 1"]
        else:
            assert measure.source is not None
            value = variable[measure.source]
            step = {
                MeasureKind.SUM: f"metrics[{index}] += {value}",
                MeasureKind.COUNT_KNOWN: f"metrics[{index}] += 1",
                MeasureKind.HISTOGRAM: f"metrics[{index} + bucket_index({value})] += 1",
            }[measure.kind]
            when_known.setdefault(measure.source, []).append(step)
    for source, steps in when_known.items():
        lines.append(f"    if {variable[source]} is not None:")
        lines += [f"        {step}" for step in steps]
    return "\n".join(lines) + "\n"


ACCUMULATOR_SOURCE: Final = _accumulator_source()


def _compile_accumulator() -> Callable[[dict[RollupKey, RollupRow], Mapping[str, Any]], None]:
    namespace: dict[str, Any] = {"bucket_index": bucket_index, "_NO_METRICS": _NO_METRICS}
    exec(compile(ACCUMULATOR_SOURCE, "<services.accounting.rollup.add_to_rollup>", "exec"), namespace)
    function = namespace["add_to_rollup"]
    function.__doc__ = "Counts one NEW event's row into the per-minute rollup row of its key, by MEASURES."
    function.__module__ = __name__
    return cast(Callable[[dict[RollupKey, RollupRow], Mapping[str, Any]], None], function)


add_to_rollup: Final = _compile_accumulator()
"""add_to_rollup(rollups, row): counts one NEW event's row into the per-minute rollup row of its key."""


def merge_rollups(into: dict[RollupKey, RollupRow], rollups: dict[RollupKey, RollupRow]) -> None:
    """Adds `rollups` (add_to_rollup's rows) into `into`, metric by metric; `rollups` is left as it was."""
    for key, row in rollups.items():
        mine = into.get(key)
        if mine is None:
            into[key] = row.copy()
        else:
            mine[_FIRST_METRIC:] = map(add, mine[_FIRST_METRIC:], row[_FIRST_METRIC:])


def rollup_rows(rollups: dict[RollupKey, RollupRow]) -> list[tuple[Any, ...]]:
    """usage_rollup_1m rows (ROLLUP_COLUMNS values) for upsert_adding, as the tuples drivers take for an
    executemany or CompiledStatement.chunks: every dimension and every metric."""
    return [tuple(row) for row in rollups.values()]


_BUDGET_OFFSETS: Final = {
    metric: tuple(ROLLUP_COLUMNS.index(column) for column in columns) for metric, columns in BUDGET_MEASURES.items()
}


def budget_measures_of_rollup(row: RollupRow) -> BudgetMeasures:
    """What the events counted in a rollup row add to budgets: the sum of their measures.budget_measures.

    A transaction's rollups hold only its NEW events, keyed by minute and every dimension a budget scope
    selects on but tags, so budgets can be counted per rollup row (one update per matching window) rather
    than per event."""
    return BudgetMeasures(
        **{metric: sum(row[offset] for offset in offsets) for metric, offsets in _BUDGET_OFFSETS.items()}
    )
