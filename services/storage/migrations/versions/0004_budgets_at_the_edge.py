"""Budgets at the edge: per gateway, the exact set of its spool sequence numbers the stored figures include (a
watermark and the ranges committed above it, services/budget/included.py), and the budget state its agent last
reported (the snapshot time and the per-budget denial counts).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 17:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("gateways") as batch:
        batch.add_column(
            sa.Column(
                "included_through_sequence",
                sa.BigInteger(),
                server_default=sa.text("0"),
                nullable=False,
                comment="Every spool sequence number up to this one is stored (budget snapshots include it).",
            )
        )
        batch.add_column(
            sa.Column(
                "included_ranges",
                sa.Text(),
                server_default=sa.text("''"),
                nullable=False,
                comment="Sequence ranges stored above included_through_sequence: 'first-last,first-last'.",
            )
        )
        batch.add_column(
            sa.Column(
                "budget_snapshot_time",
                sa.DateTime(timezone=True),
                nullable=True,
                comment="The agent's last budget snapshot (heartbeat); NULL: none reported.",
            )
        )
        batch.add_column(
            sa.Column(
                "budget_enforcement",
                sa.Text(),
                server_default=sa.text("''"),
                nullable=False,
                comment="The agent's denials per budget (heartbeat), JSON: {budget_id: [denied, shadow_denied]}.",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("gateways") as batch:
        for name in ("budget_enforcement", "budget_snapshot_time", "included_ranges", "included_through_sequence"):
            batch.drop_column(name)
