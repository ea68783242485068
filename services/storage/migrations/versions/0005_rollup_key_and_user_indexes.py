"""Indexes on the full-key hourly and daily rollups by API key and by user (then bucket_start): a breakdown by
key or user ranks every group from its ranking metric alone, then sums every metric of only the groups on its
page, reading just their rows through these (services/reporting/reports.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = [
    (f"ix_{table}_{suffix}", table, [column, "bucket_start"])
    for table in ("usage_rollup_1h", "usage_rollup_1d")
    for suffix, column in (("api_key", "api_key_id"), ("user", "user_id"))
]


def upgrade() -> None:
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
