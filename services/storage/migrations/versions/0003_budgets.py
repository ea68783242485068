"""Budgets as built: AND-combined scope selectors, a metric, the window counting starts in, idempotent creates;
the generation row ingest reads to count with the current budgets; alerts with their mode; webhooks and their
delivery outbox.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 14:30:00.000000

The budget tables of 0001 were never written (every BudgetService RPC answered UNIMPLEMENTED), so they are
replaced rather than altered (SQLite cannot alter a column's nullability in place).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("budget_alerts")
    op.drop_table("budget_windows")
    op.drop_table("budgets")
    op.create_table(
        "budget_generation",
        sa.Column("singleton", sa.SmallInteger(), nullable=False, comment="Always 1: one row."),
        sa.Column(
            "generation",
            sa.BigInteger(),
            nullable=False,
            comment="Bumped by every budget change; ingest reads it (FOR SHARE) to count with the current budgets.",
        ),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_budget_generation")),
    )
    op.create_table(
        "budgets",
        sa.Column("budget_id", sa.Text(), nullable=False),
        sa.Column("environment_id", sa.Text(), nullable=True, comment="Scope: NULL is organization-wide."),
        sa.Column(
            "gateway_id",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope selector; '' matches anything.",
        ),
        sa.Column(
            "api_key_id",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope selector; '' matches anything.",
        ),
        sa.Column(
            "user_id",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope selector; '' matches anything.",
        ),
        sa.Column(
            "requested_model",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope selector; '' matches anything.",
        ),
        sa.Column(
            "resolved_model",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope selector; '' matches anything.",
        ),
        sa.Column(
            "provider",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope selector; '' matches anything.",
        ),
        sa.Column(
            "route",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope selector; '' matches anything.",
        ),
        sa.Column(
            "tags",
            sa.Text(),
            server_default=sa.text("''"),
            nullable=False,
            comment="Scope: JSON object of tag selectors (sorted keys); '' none.",
        ),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("metric", sa.SmallInteger(), nullable=False, comment="budgeting.decision.Metric."),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("period", sa.SmallInteger(), nullable=False, comment="budgeting.windows.Period."),
        sa.Column("time_zone", sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
        sa.Column("mode", sa.SmallInteger(), nullable=False, comment="budgeting.decision.Mode."),
        sa.Column("alert_thresholds", sa.Text(), nullable=False, comment="JSON list of percents, e.g. [80, 100]."),
        sa.Column(
            "first_window_start",
            sa.BigInteger(),
            nullable=False,
            comment="Epoch seconds: the window the budget was created in; earlier windows are not counted.",
        ),
        sa.Column("revision", sa.BigInteger(), server_default=sa.text("1"), nullable=False),
        sa.Column("create_request_id", sa.Text(), nullable=True, comment="AIP-155 idempotency key."),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.environment_id"], name=op.f("fk_budgets_environment_id_environments")
        ),
        sa.PrimaryKeyConstraint("budget_id", name=op.f("pk_budgets")),
        sa.UniqueConstraint("create_request_id", name=op.f("uq_budgets_create_request_id")),
    )
    op.create_table(
        "budget_alerts",
        sa.Column("alert_id", sa.Text(), nullable=False, comment="Time-sortable: newer alerts sort after older ones."),
        sa.Column("budget_id", sa.Text(), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False, comment="Epoch seconds."),
        sa.Column("threshold_percent", sa.Integer(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("limit_value", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.SmallInteger(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.budget_id"], name=op.f("fk_budget_alerts_budget_id_budgets"), ondelete="CASCADE"
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
        sa.Column(
            "window_end", sa.BigInteger(), nullable=True, comment="Epoch seconds, exclusive; NULL: never (TOTAL)."
        ),
        sa.Column(
            "used",
            sa.BigInteger(),
            server_default=sa.text("0"),
            nullable=False,
            comment="In the budget's metric: micros, tokens or requests.",
        ),
        sa.Column("update_time_us", sa.BigInteger(), nullable=False, comment="Epoch microseconds."),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.budget_id"], name=op.f("fk_budget_windows_budget_id_budgets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("budget_id", "window_start", name=op.f("pk_budget_windows")),
    )
    op.create_table(
        "webhooks",
        sa.Column("webhook_id", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("environment_id", sa.Text(), nullable=True),
        sa.Column("budget_id", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=False, comment="HMAC-SHA256 signing key (the receiver holds it too)."),
        sa.Column("create_request_id", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"], ["budgets.budget_id"], name=op.f("fk_webhooks_budget_id_budgets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.environment_id"], name=op.f("fk_webhooks_environment_id_environments")
        ),
        sa.PrimaryKeyConstraint("webhook_id", name=op.f("pk_webhooks")),
        sa.UniqueConstraint("create_request_id", name=op.f("uq_webhooks_create_request_id")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("webhook_id", sa.Text(), nullable=False),
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_time_us", sa.BigInteger(), nullable=False, comment="Epoch microseconds."),
        sa.Column("delivered_time_us", sa.BigInteger(), nullable=True, comment="NULL: still pending (the outbox)."),
        sa.Column("last_error", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["budget_alerts.alert_id"],
            name=op.f("fk_webhook_deliveries_alert_id_budget_alerts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["webhook_id"],
            ["webhooks.webhook_id"],
            name=op.f("fk_webhook_deliveries_webhook_id_webhooks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("webhook_id", "alert_id", name=op.f("pk_webhook_deliveries")),
    )
    op.create_index(
        "ix_webhook_deliveries_pending",
        "webhook_deliveries",
        ["next_attempt_time_us"],
        unique=False,
        sqlite_where=sa.text("delivered_time_us IS NULL"),
        postgresql_where=sa.text("delivered_time_us IS NULL"),
    )

    op.bulk_insert(
        sa.table(
            "budget_generation", sa.column("singleton", sa.SmallInteger()), sa.column("generation", sa.BigInteger())
        ),
        [{"singleton": 1, "generation": 1}],
    )


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhooks", "budget_alerts", "budget_windows", "budget_generation", "budgets"):
        op.drop_table(table)
    # 0001's budget tables, as they were.
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
