"""Hourly and daily rollups keyed by API key and by user (with the environment), and five-minute rollups of the
narrow and per-model keys: rankings of keys and users, and time series finer than an hour, read tens of rows a
bucket instead of the full-key rollups' one per request and user (the usage console's pages at 10 M events).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 21:10:00.000000

Compaction fills them from then on; the planner reads them only for hours compaction has folded in since, so an
upgraded database marks every per-minute row dirty once, and the next compaction builds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen with this revision (the rollup layout of revisions 0001 and 0002).
_HISTOGRAM_BUCKETS = 50
_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "bucket_start": sa.BigInteger(),
    "environment_id": sa.Text(),
    "gateway_key": sa.Integer(),
    "requested_model": sa.Text(),
    "resolved_model": sa.Text(),
    "provider": sa.Text(),
    "api_key_id": sa.Text(),
    "user_id": sa.Text(),
    "route": sa.Text(),
    "request_type": sa.SmallInteger(),
    "credential_type": sa.SmallInteger(),
    "status_class": sa.SmallInteger(),
    "streaming": sa.Boolean(),
}
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
_NARROW_KEY = (
    "bucket_start",
    "environment_id",
    "gateway_key",
    "requested_model",
    "resolved_model",
    "provider",
    "route",
    "request_type",
    "credential_type",
    "status_class",
    "streaming",
)
_MODEL_KEY = _NARROW_KEY[:6]
_TABLES = {
    "usage_rollup_1h_key": ("bucket_start", "environment_id", "api_key_id"),
    "usage_rollup_1d_key": ("bucket_start", "environment_id", "api_key_id"),
    "usage_rollup_1h_user": ("bucket_start", "environment_id", "user_id"),
    "usage_rollup_1d_user": ("bucket_start", "environment_id", "user_id"),
    "usage_rollup_5m_narrow": _NARROW_KEY,
    "usage_rollup_5m_model": _MODEL_KEY,
}


def upgrade() -> None:
    for name, key in _TABLES.items():
        op.create_table(
            name,
            *(
                sa.Column(
                    column,
                    _TYPES[column],
                    nullable=False,
                    comment="Epoch seconds, bucket-aligned." if column == "bucket_start" else None,
                )
                for column in key
            ),
            *(
                sa.Column(
                    metric, sa.BigInteger(), server_default=sa.text("0"), nullable=False, comment=_COMMENTS.get(metric)
                )
                for metric in _METRICS
            ),
            sa.PrimaryKeyConstraint(*key, name=op.f(f"pk_{name}")),
        )
    # Every hour is rebuilt (every rollup, the new ones included) by the next compaction.
    op.execute(sa.text("UPDATE usage_rollup_1m SET compacted_attempt_count = 0"))


def downgrade() -> None:
    for name in reversed(_TABLES):
        op.drop_table(name)
