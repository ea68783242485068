"""Initial schema: admin tables, gateways, usage events and rollups, budgets and config versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 09:29:56.759278
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Frozen with this revision: the histogram layout of services/histogram.py when it was written.
_HISTOGRAM_BUCKETS = 50
_ROLLUP_DIMENSIONS = (
    "bucket_start",
    "environment_id",
    "gateway_key",
    "requested_model",
    "resolved_model",
    "provider",
    "api_key_id",
    "user_id",
    "route",
    "request_type",
    "credential_type",
    "status_class",
    "streaming",
)
_ROLLUP_METRICS: tuple[tuple[str, str | None], ...] = (
    ("attempt_count", None),
    ("request_count", "Attempts with attempt = 1, i.e. gateway requests."),
    ("success_count", None),
    ("error_count", None),
    ("input_tokens", None),
    ("output_tokens", None),
    ("cache_read_tokens", None),
    ("cache_write_tokens", None),
    ("reasoning_tokens", None),
    ("tokens_unknown_count", "Attempts whose token counts were not reported."),
    ("cost_micros", None),
    ("cost_unknown_count", "Attempts whose cost is unknown (not reported and no price)."),
    ("cost_derived_count", "Attempts whose cost was derived from the pricing table."),
    ("cache_savings_micros", None),
    ("latency_sum_us", None),
    ("latency_count", None),
    ("gateway_latency_sum_us", None),
    ("gateway_latency_count", None),
    ("ttft_sum_us", None),
    ("ttft_count", None),
    *((f"latency_b{i:02d}", None) for i in range(_HISTOGRAM_BUCKETS)),
    *((f"ttft_b{i:02d}", None) for i in range(_HISTOGRAM_BUCKETS)),
)


def _create_rollup_table(name: str, *extra: sa.Column[int]) -> None:
    """The 1m, 1h and 1d rollups share their columns; every metric is a BIGINT counter from 0."""
    op.create_table(
        name,
        sa.Column("bucket_start", sa.BigInteger(), nullable=False, comment="Epoch seconds, bucket-aligned."),
        sa.Column("environment_id", sa.Text(), nullable=False),
        sa.Column("gateway_key", sa.Integer(), nullable=False),
        sa.Column("requested_model", sa.Text(), nullable=False),
        sa.Column("resolved_model", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("api_key_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("request_type", sa.SmallInteger(), nullable=False),
        sa.Column("credential_type", sa.SmallInteger(), nullable=False),
        sa.Column("status_class", sa.SmallInteger(), nullable=False),
        sa.Column("streaming", sa.Boolean(), nullable=False),
        *(
            sa.Column(metric, sa.BigInteger(), server_default=sa.text("0"), nullable=False, comment=comment)
            for metric, comment in _ROLLUP_METRICS
        ),
        *extra,
        sa.PrimaryKeyConstraint(*_ROLLUP_DIMENSIONS, name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    op.create_table(
        "environments",
        sa.Column("environment_id", sa.Text(), nullable=False, comment="A slug such as 'prod'."),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("environment_id", name=op.f("pk_environments")),
    )
    _create_rollup_table(
        "usage_rollup_1m",
        sa.Column(
            "compacted_attempt_count",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="attempt_count when compaction last folded this row into 1h and 1d.",
        ),
    )
    _dirty = sa.text("attempt_count <> compacted_attempt_count")
    op.create_index(
        "ix_usage_rollup_1m_dirty",
        "usage_rollup_1m",
        ["bucket_start"],
        unique=False,
        sqlite_where=_dirty,
        postgresql_where=_dirty,
    )
    for name in ("usage_rollup_1h", "usage_rollup_1d"):
        _create_rollup_table(name)
    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.Text(), nullable=False, comment="Public token id, the part before the secret."),
        sa.Column("secret_sha256", sa.Text(), nullable=False, comment="Hex SHA-256 of the secret; never the secret."),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("environment_id", sa.Text(), nullable=True),
        sa.Column("gateway_id", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=True, comment="Token id of the creator; NULL for bootstrap."),
        sa.CheckConstraint(
            "(role = 'gateway') = (environment_id IS NOT NULL AND gateway_id IS NOT NULL)",
            name=op.f("ck_api_tokens_gateway_binding"),
        ),
        sa.CheckConstraint("role IN ('admin', 'reporter', 'gateway')", name=op.f("ck_api_tokens_role")),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.environment_id"],
            name=op.f("fk_api_tokens_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_api_tokens")),
    )
    op.create_table(
        "budgets",
        sa.Column("budget_id", sa.Text(), nullable=False),
        sa.Column("environment_id", sa.Text(), nullable=True, comment="NULL: organization-wide."),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("scope_kind", sa.SmallInteger(), nullable=False),
        sa.Column("scope_value", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("scope_tag_key", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("limit_kind", sa.SmallInteger(), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("period", sa.SmallInteger(), nullable=False),
        sa.Column("time_zone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column("mode", sa.SmallInteger(), nullable=False),
        sa.Column(
            "alert_thresholds",
            sa.Text(),
            nullable=False,
            comment="JSON list of percents, e.g. [50, 80, 100].",
        ),
        sa.Column("revision", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.environment_id"],
            name=op.f("fk_budgets_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("budget_id", name=op.f("pk_budgets")),
    )
    op.create_table(
        "config_versions",
        sa.Column("environment_id", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False, comment="Serialized protobuf configuration."),
        sa.Column("content_sha256", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("created_by", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.environment_id"],
            name=op.f("fk_config_versions_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("environment_id", "version", name=op.f("pk_config_versions")),
    )
    op.create_table(
        "gateways",
        sa.Column("gateway_key", sa.Integer(), autoincrement=True, nullable=False, comment="Compact surrogate key."),
        sa.Column("environment_id", sa.Text(), nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False, comment="The gateway's name within its environment."),
        sa.Column("register_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("connected_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_version", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("gateway_version", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("applied_config_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("nacked_config_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("config_error", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("spool_depth", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("oldest_unsent_age_ms", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("dead_letter_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("dropped_event_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("heartbeat_interval_ms", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "last_acked_sequence",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="Highest agent spool sequence number ingested.",
        ),
        sa.Column(
            "delete_time",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Set when an operator removed the gateway; the row stays because usage refers to its key.",
        ),
        sa.Column(
            "heartbeat_replica",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="The control-plane process that last wrote the heartbeat state.",
        ),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.environment_id"],
            name=op.f("fk_gateways_environment_id_environments"),
        ),
        sa.PrimaryKeyConstraint("gateway_key", name=op.f("pk_gateways")),
        sa.UniqueConstraint("environment_id", "gateway_id", name=op.f("uq_gateways_environment_id_gateway_id")),
    )
    op.create_table(
        "api_token_environments",
        sa.Column("token_id", sa.Text(), nullable=False),
        sa.Column("environment_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.environment_id"],
            name=op.f("fk_api_token_environments_environment_id_environments"),
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_tokens.token_id"],
            name=op.f("fk_api_token_environments_token_id_api_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_id", "environment_id", name=op.f("pk_api_token_environments")),
        comment="A reporter token's environment scope; no rows means every environment.",
    )
    op.create_table(
        "budget_alerts",
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("budget_id", sa.Text(), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False, comment="Epoch seconds."),
        sa.Column("threshold_percent", sa.Integer(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.budget_id"],
            name=op.f("fk_budget_alerts_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_budget_alerts")),
        sa.UniqueConstraint(
            "budget_id",
            "window_start",
            "threshold_percent",
            name=op.f("uq_budget_alerts_budget_id_window_start_threshold_percent"),
        ),
    )
    op.create_table(
        "budget_windows",
        sa.Column("budget_id", sa.Text(), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False, comment="Epoch seconds."),
        sa.Column("window_end", sa.BigInteger(), nullable=False, comment="Epoch seconds, exclusive."),
        sa.Column(
            "used",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="In the budget's limit unit: micros, tokens or requests.",
        ),
        sa.Column("update_time_us", sa.BigInteger(), nullable=False, comment="Epoch microseconds."),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.budget_id"],
            name=op.f("fk_budget_windows_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("budget_id", "window_start", name=op.f("pk_budget_windows")),
    )
    op.create_table(
        "usage_events",
        sa.Column(
            "event_key",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("environment_id", sa.Text(), nullable=False),
        sa.Column("gateway_key", sa.Integer(), nullable=False),
        sa.Column(
            "event_id",
            sa.Text(),
            nullable=False,
            comment="UUIDv7 text made by the agent; the idempotency key.",
        ),
        sa.Column(
            "sequence",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="The agent's spool sequence number; 0 when not sent through an agent.",
        ),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("event_time_us", sa.BigInteger(), nullable=False, comment="Attempt start, epoch microseconds UTC."),
        sa.Column("ingest_time_us", sa.BigInteger(), nullable=False, comment="Commit time, epoch microseconds UTC."),
        sa.Column("api_key_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("user_id", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("route", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("request_type", sa.SmallInteger(), nullable=False, comment="meterwire.common.v1.RequestType"),
        sa.Column("requested_model", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("resolved_model", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("provider", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("credential_type", sa.SmallInteger(), nullable=False, comment="meterwire.common.v1.CredentialType"),
        sa.Column("streaming", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column(
            "status_class",
            sa.SmallInteger(),
            nullable=False,
            comment="meterwire.common.v1.StatusClass: 0 unknown, 1 success, 2 client error, 3 server error",
        ),
        sa.Column("error_type", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("error_message", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("latency_us", sa.BigInteger(), nullable=True),
        sa.Column("gateway_latency_us", sa.BigInteger(), nullable=True),
        sa.Column("ttft_us", sa.BigInteger(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True, comment="NULL: unknown (differs from 0)."),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=True),
        sa.Column("reasoning_tokens", sa.BigInteger(), nullable=True),
        sa.Column("token_categories", sa.Text(), nullable=True, comment="JSON object: category -> tokens."),
        sa.Column("cost_micros", sa.BigInteger(), nullable=True, comment="NULL: unknown, never 0 for unknown."),
        sa.Column("cache_savings_micros", sa.BigInteger(), nullable=True),
        sa.Column("cost_source", sa.SmallInteger(), nullable=False, comment="0 unknown, 1 reported, 2 derived"),
        sa.Column(
            "tags",
            sa.Text(),
            nullable=True,
            comment="JSON object, for display; filters use usage_event_tags.",
        ),
        sa.ForeignKeyConstraint(
            ["gateway_key"], ["gateways.gateway_key"], name=op.f("fk_usage_events_gateway_key_gateways")
        ),
        sa.PrimaryKeyConstraint("event_key", name=op.f("pk_usage_events")),
        sa.UniqueConstraint("gateway_key", "event_id", name=op.f("uq_usage_events_gateway_key_event_id")),
    )
    op.create_index(
        "ix_usage_events_environment_request", "usage_events", ["environment_id", "request_id"], unique=False
    )
    op.create_index(
        "ix_usage_events_environment_time", "usage_events", ["environment_id", "event_time_us"], unique=False
    )
    _has_categories = sa.text("token_categories IS NOT NULL")
    op.create_index(
        "ix_usage_events_categories",
        "usage_events",
        ["event_time_us"],
        unique=False,
        sqlite_where=_has_categories,
        postgresql_where=_has_categories,
    )
    op.create_table(
        "usage_event_tags",
        sa.Column("gateway_key", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("tag_key", sa.Text(), nullable=False),
        sa.Column("tag_value", sa.Text(), nullable=False),
        sa.Column("environment_id", sa.Text(), nullable=False),
        sa.Column(
            "event_time_us",
            sa.BigInteger(),
            nullable=False,
            comment="Copied from the event, epoch microseconds.",
        ),
        sa.ForeignKeyConstraint(
            ["gateway_key", "event_id"],
            ["usage_events.gateway_key", "usage_events.event_id"],
            name=op.f("fk_usage_event_tags_gateway_key_usage_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("gateway_key", "event_id", "tag_key", name=op.f("pk_usage_event_tags")),
    )
    op.create_index(
        "ix_usage_event_tags_match",
        "usage_event_tags",
        ["environment_id", "tag_key", "tag_value", "event_time_us"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_event_tags_match", table_name="usage_event_tags")
    op.drop_table("usage_event_tags")
    op.drop_index("ix_usage_events_categories", table_name="usage_events")
    op.drop_index("ix_usage_events_environment_time", table_name="usage_events")
    op.drop_index("ix_usage_events_environment_request", table_name="usage_events")
    op.drop_table("usage_events")
    op.drop_table("budget_windows")
    op.drop_table("budget_alerts")
    op.drop_table("api_token_environments")
    op.drop_table("gateways")
    op.drop_table("config_versions")
    op.drop_table("budgets")
    op.drop_table("api_tokens")
    op.drop_index("ix_usage_rollup_1m_dirty", table_name="usage_rollup_1m")
    op.drop_table("usage_rollup_1m")
    op.drop_table("usage_rollup_1h")
    op.drop_table("usage_rollup_1d")
    op.drop_table("environments")
