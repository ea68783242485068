"""The one place SQL differs between SQLite and PostgreSQL: conflict-aware INSERT statements, JSON objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

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


_INT64_MAX: Final = sa.literal_column("9223372036854775807", sa.BigInteger)
# Written as an expression: the literal 9223372036854775808 is not an integer to either engine's parser.
_INT64_MIN: Final = sa.literal_column("(-9223372036854775807 - 1)", sa.BigInteger)


def saturating_add(stored: ColumnElement[Any], added: ColumnElement[Any], *, dialect_name: str) -> ColumnElement[Any]:
    """``stored + added`` clamped to the int64 limits instead of overflowing (services.accounting.bounds).

    Each limit is compared before adding (``stored > MAX - added`` for a positive `added`), so no step
    overflows: PostgreSQL would raise "bigint out of range" and SQLite would turn the sum into a REAL. CASE
    evaluates its branches in order on both engines, so ``MAX - added`` is only computed for positive ones.
    A REAL left by an older version is healed into an integer on SQLite.
    """
    total: ColumnElement[Any] = stored + added
    if dialect_name == "sqlite":
        total = sa.cast(total, sa.BigInteger)
    zero = sa.literal_column("0", sa.BigInteger)  # inline: a bound 0 would be a parameter of every row
    return sa.case(
        (added > zero, sa.case((stored > _INT64_MAX - added, _INT64_MAX), else_=total)),
        (added < zero, sa.case((stored < _INT64_MIN - added, _INT64_MIN), else_=total)),
        else_=stored,
    )


_LOW_BITS: Final = 21
_LOW_MASK: Final = (1 << _LOW_BITS) - 1


def saturating_sum(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``SUM(column)`` that never fails and never leaves int64: exact within the limits, clamped beyond them
    (services.accounting.bounds); NULL when nothing was summed, as SUM. The same SQL on both engines.

    SQLite's SUM raises "integer overflow" (PostgreSQL's sums bigints as numeric, which a bigint column or
    an int64 field cannot take back). So each value is split into three parts (bits 42 and up, signed; bits
    21-41 and bits 0-20, unsigned) summed separately: every part is below 2^21 in magnitude, so a part's sum
    cannot overflow before 2^42 rows (more than SQLite's largest database, 2^48 bytes, holds, and far more
    than one report group reads). The parts are then carried into each other and recombined, or clamped when
    the high part is out of range. REAL values (left by older versions) are cut to integers, saturated, by
    SQLite's bit operators.
    """

    def number(value: int) -> ColumnElement[Any]:
        # Inline, not bound: SQLite computes an aggregate written twice once only if both are the same text.
        return sa.literal_column(str(value), sa.BigInteger)

    mask, bits = number(_LOW_MASK), number(_LOW_BITS)

    def part_sum(part: ColumnElement[Any]) -> ColumnElement[Any]:
        # PostgreSQL's SUM(bigint) is numeric, which has no bit operators; the part sums fit bigint.
        return sa.cast(sa.func.sum(part), sa.BigInteger)

    high = part_sum(column.op(">>")(number(2 * _LOW_BITS)))
    middle = part_sum(column.op(">>")(bits).op("&")(mask))
    low = part_sum(column.op("&")(mask))
    middle_carried = middle + low.op(">>")(bits)
    high_carried = high + middle_carried.op(">>")(bits)
    limit = 1 << _LOW_BITS
    return sa.case(
        (high_carried >= number(limit), _INT64_MAX),
        (high_carried < number(-limit), _INT64_MIN),
        else_=high_carried * number(1 << 2 * _LOW_BITS)
        + middle_carried.op("&")(mask) * number(1 << _LOW_BITS)
        + low.op("&")(mask),
    )


def upsert_adding(
    table: Table,
    *,
    dialect_name: str,
    key_columns: Sequence[str],
    add_columns: Sequence[str],
    replace_columns: Sequence[str] = (),
    counting_columns: frozenset[str] = frozenset(),
) -> Insert:
    """``INSERT ... ON CONFLICT (key_columns) DO UPDATE SET c = table.c + excluded.c`` for each add column
    (and ``SET r = excluded.r`` for each replace column).

    The addition happens in the database, so concurrent writers (several replicas) never lose an update.
    It saturates at the int64 limits (saturating_add), except for `counting_columns`: counts that grow by
    at most one per event, which cannot reach 2^63 (services.accounting.bounds), added plainly.
    Merge rows with equal keys before executing: PostgreSQL refuses to update one row twice in a
    statement. With executemany every row must carry the same keys (the first row decides the columns).
    """
    statement = _dialect_insert(table, dialect_name)
    updated: dict[str, Any] = {
        name: table.c[name] + statement.excluded[name]
        if name in counting_columns
        else saturating_add(table.c[name], statement.excluded[name], dialect_name=dialect_name)
        for name in add_columns
    }
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
