"""Narrower-keyed hourly and daily rollups: without API key and user ("narrow"); by model only ("model");
and hourly and daily token category sums keyed like "model".

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:20:00.000000

Compaction fills them from then on; the planner reads them only for hours compaction has folded in since,
so an upgraded database marks every per-minute row dirty once, and the next compaction builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen with this revision (the rollup layout of revision 0001, less api_key_id and user_id).
_HISTOGRAM_BUCKETS = 50
_KEY: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("bucket_start", sa.BigInteger()),
    ("environment_id", sa.Text()),
    ("gateway_key", sa.Integer()),
    ("requested_model", sa.Text()),
    ("resolved_model", sa.Text()),
    ("provider", sa.Text()),
    ("route", sa.Text()),
    ("request_type", sa.SmallInteger()),
    ("credential_type", sa.SmallInteger()),
    ("status_class", sa.SmallInteger()),
    ("streaming", sa.Boolean()),
)
_COMMENTS = {
    "request_count": "Attempts with attempt = 1, i.e. gateway requests.",
    "tokens_unknown_count": "Attempts whose token counts were not reported.",
    "cost_unknown_count": "Attempts whose cost is unknown (not reported and no price).",
    "cost_derived_count": "Attempts whose cost was derived from the pricing table.",
}
_METRICS = (
    "attempt_count",
    "request_count",
    "success_count",
    "error_count",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "tokens_unknown_count",
    "cost_micros",
    "cost_unknown_count",
    "cost_derived_count",
    "cache_savings_micros",
    "latency_sum_us",
    "latency_count",
    "gateway_latency_sum_us",
    "gateway_latency_count",
    "ttft_sum_us",
    "ttft_count",
    *(f"latency_b{i:02d}" for i in range(_HISTOGRAM_BUCKETS)),
    *(f"ttft_b{i:02d}" for i in range(_HISTOGRAM_BUCKETS)),
)
_MODEL_KEY = ("bucket_start", "environment_id", "gateway_key", "requested_model", "resolved_model", "provider")
_TABLES = {
    "usage_rollup_1h_narrow": _KEY,
    "usage_rollup_1d_narrow": _KEY,
    "usage_rollup_1h_model": tuple(item for item in _KEY if item[0] in _MODEL_KEY),
    "usage_rollup_1d_model": tuple(item for item in _KEY if item[0] in _MODEL_KEY),
}


def _key_columns(key: tuple[tuple[str, sa.types.TypeEngine[Any]], ...]) -> list[sa.Column[Any]]:
    return [
        sa.Column(
            column,
            column_type,
            nullable=False,
            comment="Epoch seconds, bucket-aligned." if column == "bucket_start" else None,
        )
        for column, column_type in key
    ]


def upgrade() -> None:
    for name, key in _TABLES.items():
        op.create_table(
            name,
            *_key_columns(key),
            *(
                sa.Column(
                    metric, sa.BigInteger(), server_default=sa.text("0"), nullable=False, comment=_COMMENTS.get(metric)
                )
                for metric in _METRICS
            ),
            sa.PrimaryKeyConstraint(*(column for column, _ in key), name=op.f(f"pk_{name}")),
        )
    model_key = _TABLES["usage_rollup_1h_model"]
    for name in ("usage_token_categories_1h", "usage_token_categories_1d"):
        op.create_table(
            name,
            *_key_columns(model_key),
            sa.Column("category", sa.Text(), nullable=False),
            sa.Column("tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
            sa.PrimaryKeyConstraint(*(column for column, _ in model_key), "category", name=op.f(f"pk_{name}")),
        )
    # Every hour is rebuilt (1h, 1d and the new tables) by the next compaction.
    op.execute(sa.text("UPDATE usage_rollup_1m SET compacted_attempt_count = 0"))


def downgrade() -> None:
    for name in (*_TABLES, "usage_token_categories_1h", "usage_token_categories_1d"):
        op.drop_table(name)
