"""Saturating SQL (storage.dialect): sums and additions equal Python's exact ones clamped to int64, on both
engines, and never fail (SQLite's SUM raises on overflow; PostgreSQL's bigint addition does)."""

from __future__ import annotations

import random

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.accounting.bounds import INT64_MAX, INT64_MIN, saturated
from services.storage.dialect import saturating_add, saturating_sum

_metadata = sa.MetaData()
_figures = sa.Table(
    "saturation_probe",
    _metadata,
    sa.Column("row_id", sa.Integer, primary_key=True),
    sa.Column("group_id", sa.BigInteger, nullable=False),
    sa.Column("value", sa.BigInteger, nullable=True),
)
_EDGES = [INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, 2**62, -(2**62), 2**42, -(2**42), 2**21 - 1, -1, 0, 1]


def _value(rng: random.Random) -> int | None:
    roll = rng.random()
    if roll < 0.05:
        return None
    if roll < 0.5:
        return rng.choice(_EDGES)
    return rng.randint(INT64_MIN, INT64_MAX) >> rng.randint(0, 62)


async def test_saturating_sum_is_the_exact_sum_clamped_to_int64(engine: AsyncEngine) -> None:
    rng = random.Random(17)
    groups = {group: [_value(rng) for _ in range(rng.randint(1, 8))] for group in range(300)}
    async with engine.begin() as connection:
        await connection.run_sync(_metadata.create_all)
        await connection.execute(
            _figures.insert(),
            [
                {"row_id": group * 100 + index, "group_id": group, "value": value}
                for group, values in groups.items()
                for index, value in enumerate(values)
            ],
        )
        rows = await connection.execute(
            sa.select(_figures.c.group_id, saturating_sum(_figures.c.value)).group_by(_figures.c.group_id)
        )
        summed = {int(group): total for group, total in rows}
    expected = {
        group: None if all(v is None for v in values) else saturated(sum(v for v in values if v is not None))
        for group, values in groups.items()
    }
    assert summed == expected


async def test_saturating_add_is_the_exact_sum_clamped_to_int64(engine: AsyncEngine) -> None:
    rng = random.Random(18)
    pairs = [(rng.choice(_EDGES), rng.choice(_EDGES)) for _ in range(60)] + [(INT64_MAX, 1), (INT64_MIN, -1)]
    async with engine.begin() as connection:
        await connection.run_sync(_metadata.create_all)
        await connection.execute(
            _figures.insert(),
            [{"row_id": index, "group_id": added, "value": stored} for index, (stored, added) in enumerate(pairs)],
        )
        # group_id stands in for `excluded.value` of an upsert: a column of the same row.
        await connection.execute(
            _figures.update().values(
                value=saturating_add(_figures.c.value, _figures.c.group_id, dialect_name=engine.dialect.name)
            )
        )
        stored = dict((await connection.execute(sa.select(_figures.c.row_id, _figures.c.value))).all())
    assert [stored[index] for index in range(len(pairs))] == [saturated(a + b) for a, b in pairs]
