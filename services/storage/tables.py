"""The database schema as SQLAlchemy Core tables; the Alembic migrations must always match it.

Longer than the house's ~400 lines on purpose: the schema is read and checked as a whole (the migrations test
compares it to the migrated database), and splitting it by table would scatter one picture over many files.

Time conventions: admin tables store aware UTC datetimes (UtcDateTime). Hot-path tables store integer
epoch values, which index and compare cheaply on both dialects: ``*_time_us`` are epoch microseconds and
rollup ``bucket_start`` / budget ``window_*`` are epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from services.histogram import BUCKET_COUNT
from services.storage.types import UtcDateTime

# Stable constraint and index names, so Alembic can find (and later alter or drop) them by name.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata: Final = MetaData(naming_convention=NAMING_CONVENTION)

ROLES: Final = ("admin", "reporter", "gateway")


def _text_or_empty(name: str, comment: str | None = None) -> Column[str]:
    """A TEXT column where '' means unknown or none, so it can take part in unique keys (NULLs cannot)."""
    return Column(name, Text, nullable=False, server_default=text("''"), comment=comment)


def _zero(name: str, comment: str | None = None) -> Column[int]:
    return Column(name, BigInteger, nullable=False, server_default=text("0"), comment=comment)


environments: Final = Table(
    "environments",
    metadata,
    Column("environment_id", Text, primary_key=True, comment="A slug such as 'prod'."),
    Column("display_name", Text, nullable=False),
    _text_or_empty("description"),
    Column("create_time", UtcDateTime, nullable=False),
)

api_tokens: Final = Table(
    "api_tokens",
    metadata,
    Column("token_id", Text, primary_key=True, comment="Public token id, the part before the secret."),
    Column("secret_sha256", Text, nullable=False, comment="Hex SHA-256 of the secret; never the secret."),
    Column("role", Text, nullable=False),
    Column("environment_id", Text, ForeignKey("environments.environment_id"), nullable=True),
    Column("gateway_id", Text, nullable=True),
    _text_or_empty("description"),
    Column("create_time", UtcDateTime, nullable=False),
    Column("revoke_time", UtcDateTime, nullable=True),
    Column("created_by", Text, nullable=True, comment="Token id of the creator; NULL for bootstrap."),
    CheckConstraint("role IN ('admin', 'reporter', 'gateway')", name="role"),
    CheckConstraint(
        "(role = 'gateway') = (environment_id IS NOT NULL AND gateway_id IS NOT NULL)",
        name="gateway_binding",
    ),
)

api_token_environments: Final = Table(
    "api_token_environments",
    metadata,
    Column("token_id", Text, ForeignKey("api_tokens.token_id", ondelete="CASCADE"), primary_key=True),
    Column("environment_id", Text, ForeignKey("environments.environment_id"), primary_key=True),
    comment="A reporter token's environment scope; no rows means every environment.",
)

gateways: Final = Table(
    "gateways",
    metadata,
    Column("gateway_key", Integer, primary_key=True, autoincrement=True, comment="Compact surrogate key."),
    Column("environment_id", Text, ForeignKey("environments.environment_id"), nullable=False),
    Column("gateway_id", Text, nullable=False, comment="The gateway's name within its environment."),
    Column("register_time", UtcDateTime, nullable=False),
    Column("last_seen_time", UtcDateTime, nullable=True),
    Column("connected_since", UtcDateTime, nullable=True),
    _text_or_empty("agent_version"),
    _text_or_empty("gateway_version"),
    _zero("applied_config_version"),
    _zero("nacked_config_version"),
    _text_or_empty("config_error"),
    _zero("spool_depth"),
    _zero("oldest_unsent_age_ms"),
    _zero("dead_letter_count"),
    _zero("dropped_event_count"),
    _zero("heartbeat_interval_ms"),
    _zero("last_acked_sequence", comment="Highest agent spool sequence number ingested."),
    Column(
        "delete_time",
        UtcDateTime,
        nullable=True,
        comment="Set when an operator removed the gateway; the row stays because usage refers to its key.",
    ),
    _text_or_empty("heartbeat_replica", comment="The control-plane process that last wrote the heartbeat state."),
    _zero(
        "included_through_sequence",
        comment="Every spool sequence number up to this one is stored (budget snapshots include it).",
    ),
    _text_or_empty(
        "included_ranges",
        comment="Sequence ranges stored above included_through_sequence: 'first-last,first-last'.",
    ),
    Column(
        "budget_snapshot_time",
        UtcDateTime,
        nullable=True,
        comment="The agent's last budget snapshot (heartbeat); NULL: none reported.",
    ),
    _text_or_empty(
        "budget_enforcement",
        comment="The agent's denials per budget (heartbeat), JSON: {budget_id: [denied, shadow_denied]}.",
    ),
    UniqueConstraint("environment_id", "gateway_id"),
)

usage_events: Final = Table(
    "usage_events",
    metadata,
    # SQLite only makes an INTEGER PRIMARY KEY an alias of the rowid (compact, auto-assigned).
    Column("event_key", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    # Denormalised from the gateway (no foreign key: it is implied by gateway_key) so that
    # environment-scoped queries use one index.
    Column("environment_id", Text, nullable=False),
    Column("gateway_key", Integer, ForeignKey("gateways.gateway_key"), nullable=False),
    Column("event_id", Text, nullable=False, comment="UUIDv7 text made by the agent; the idempotency key."),
    _zero("sequence", comment="The agent's spool sequence number; 0 when not sent through an agent."),
    Column("request_id", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("event_time_us", BigInteger, nullable=False, comment="Attempt start, epoch microseconds UTC."),
    Column("ingest_time_us", BigInteger, nullable=False, comment="Commit time, epoch microseconds UTC."),
    _text_or_empty("api_key_id"),
    _text_or_empty("user_id"),
    _text_or_empty("route"),
    Column("request_type", SmallInteger, nullable=False, comment="meterwire.common.v1.RequestType"),
    _text_or_empty("requested_model"),
    _text_or_empty("resolved_model"),
    _text_or_empty("provider"),
    Column("credential_type", SmallInteger, nullable=False, comment="meterwire.common.v1.CredentialType"),
    Column("streaming", Boolean, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column(
        "status_class",
        SmallInteger,
        nullable=False,
        comment="meterwire.common.v1.StatusClass: 0 unknown, 1 success, 2 client error, 3 server error",
    ),
    _text_or_empty("error_type"),
    _text_or_empty("error_message"),
    Column("latency_us", BigInteger, nullable=True),
    Column("gateway_latency_us", BigInteger, nullable=True),
    Column("ttft_us", BigInteger, nullable=True),
    Column("input_tokens", BigInteger, nullable=True, comment="NULL: unknown (differs from 0)."),
    Column("output_tokens", BigInteger, nullable=True),
    Column("cache_read_tokens", BigInteger, nullable=True),
    Column("cache_write_tokens", BigInteger, nullable=True),
    Column("reasoning_tokens", BigInteger, nullable=True),
    Column("token_categories", Text, nullable=True, comment="JSON object: category -> tokens."),
    Column("cost_micros", BigInteger, nullable=True, comment="NULL: unknown, never 0 for unknown."),
    Column("cache_savings_micros", BigInteger, nullable=True),
    Column("cost_source", SmallInteger, nullable=False, comment="0 unknown, 1 reported, 2 derived"),
    Column("tags", Text, nullable=True, comment="JSON object, for display; filters use usage_event_tags."),
    UniqueConstraint("gateway_key", "event_id"),
    Index("ix_usage_events_environment_time", "environment_id", "event_time_us"),
    Index("ix_usage_events_environment_request", "environment_id", "request_id"),
    # Reporting reads token categories (which no rollup holds) through this; it stays small while few
    # events carry categories.
    Index(
        "ix_usage_events_categories",
        "event_time_us",
        sqlite_where=text("token_categories IS NOT NULL"),
        postgresql_where=text("token_categories IS NOT NULL"),
    ),
)

usage_event_tags: Final = Table(
    "usage_event_tags",
    metadata,
    Column("gateway_key", Integer, primary_key=True),
    Column("event_id", Text, primary_key=True),
    Column("tag_key", Text, primary_key=True),
    Column("tag_value", Text, nullable=False),
    Column("environment_id", Text, nullable=False),
    Column("event_time_us", BigInteger, nullable=False, comment="Copied from the event, epoch microseconds."),
    # Deleting raw events (retention) takes their tags with them.
    ForeignKeyConstraint(
        ["gateway_key", "event_id"],
        ["usage_events.gateway_key", "usage_events.event_id"],
        ondelete="CASCADE",
    ),
    Index("ix_usage_event_tags_match", "environment_id", "tag_key", "tag_value", "event_time_us"),
)

ROLLUP_DIMENSIONS: Final = (
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
"""The rollup key: one row per bucket and combination of these."""

LATENCY_BUCKET_COLUMNS: Final = tuple(f"latency_b{i:02d}" for i in range(BUCKET_COUNT))
TTFT_BUCKET_COLUMNS: Final = tuple(f"ttft_b{i:02d}" for i in range(BUCKET_COUNT))

ROLLUP_SUM_COLUMNS: Final = (
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
    *LATENCY_BUCKET_COLUMNS,
    *TTFT_BUCKET_COLUMNS,
)
"""Every rollup metric; all are additive, so rows merge by adding column-wise (upsert_adding)."""

_ROLLUP_METRIC_COMMENTS: Final = {
    "request_count": "Attempts with attempt = 1, i.e. gateway requests.",
    "tokens_unknown_count": "Attempts whose token counts were not reported.",
    "cost_unknown_count": "Attempts whose cost is unknown (not reported and no price).",
    "cost_derived_count": "Attempts whose cost was derived from the pricing table.",
}


NARROW_ROLLUP_DIMENSIONS: Final = tuple(name for name in ROLLUP_DIMENSIONS if name not in ("api_key_id", "user_id"))
"""The key of the narrow hourly and daily rollups: the full key without API key and user.

Keys and users are the high-cardinality dimensions (thousands, against tens of models and gateways), so the
full-key rollups hold nearly a row per request and user; without them an hour of a busy fleet folds into a
few hundred rows."""

MODEL_ROLLUP_DIMENSIONS: Final = ROLLUP_DIMENSIONS[: ROLLUP_DIMENSIONS.index("provider") + 1]
"""The key of the per-model hourly and daily rollups (the full key up to provider): where traffic went,
nothing about how it went.

The commonest reports (fleet totals, spend by model, gateway or provider) read these: a day of a fleet is
a row per gateway and model. Every rollup row sums ROLLUP_SUM_COLUMNS (120 of them, histograms included),
so the number of rows read is what a report costs."""

_DIMENSION_TYPES: Final = {
    "bucket_start": BigInteger,
    "gateway_key": Integer,
    "request_type": SmallInteger,
    "credential_type": SmallInteger,
    "status_class": SmallInteger,
    "streaming": Boolean,
}


def rollup_table(name: str, *extra: Column[int] | Index, dimensions: tuple[str, ...] = ROLLUP_DIMENSIONS) -> Table:
    """A usage rollup table keyed by `dimensions` (bucket_start first); every metric of ROLLUP_SUM_COLUMNS.

    No foreign key to gateways: rollups are written on the ingest hot path and gateways are never deleted.
    """
    key: list[Column[Any]] = [
        Column(
            dimension,
            _DIMENSION_TYPES.get(dimension, Text),
            primary_key=True,
            comment="Epoch seconds, bucket-aligned." if dimension == "bucket_start" else None,
        )
        for dimension in dimensions
    ]
    return Table(
        name,
        metadata,
        *key,
        *(_zero(column, _ROLLUP_METRIC_COMMENTS.get(column)) for column in ROLLUP_SUM_COLUMNS),
        *extra,
    )


ROLLUP_1M_DIRTY: Final = text("attempt_count <> compacted_attempt_count")
"""A per-minute row ingest touched since compaction last folded it into 1h and 1d (ix_usage_rollup_1m_dirty)."""

usage_rollup_1m: Final = rollup_table(
    "usage_rollup_1m",
    # Compaction (services/accounting/compaction.py) owns this column; ingest never writes it, so
    # a row ingest touched after its last compaction has attempt_count above it ("dirty").
    _zero("compacted_attempt_count", "attempt_count when compaction last folded this row into 1h and 1d."),
    Index(
        "ix_usage_rollup_1m_dirty",
        "bucket_start",
        sqlite_where=ROLLUP_1M_DIRTY,
        postgresql_where=ROLLUP_1M_DIRTY,
    ),
)


def _by_key_and_user(name: str) -> tuple[Index, Index]:
    """Breakdowns by API key or user sum every metric of only the groups their page shows, read through these
    (services/reporting/reports.py, _ranked_groups): a handful of keys' rows, not every row of the range."""
    return (
        Index(f"ix_{name}_api_key", "api_key_id", "bucket_start"),
        Index(f"ix_{name}_user", "user_id", "bucket_start"),
    )


usage_rollup_1h: Final = rollup_table("usage_rollup_1h", *_by_key_and_user("usage_rollup_1h"))
usage_rollup_1d: Final = rollup_table("usage_rollup_1d", *_by_key_and_user("usage_rollup_1d"))
usage_rollup_1h_narrow: Final = rollup_table("usage_rollup_1h_narrow", dimensions=NARROW_ROLLUP_DIMENSIONS)
usage_rollup_1d_narrow: Final = rollup_table("usage_rollup_1d_narrow", dimensions=NARROW_ROLLUP_DIMENSIONS)
usage_rollup_1h_model: Final = rollup_table("usage_rollup_1h_model", dimensions=MODEL_ROLLUP_DIMENSIONS)
usage_rollup_1d_model: Final = rollup_table("usage_rollup_1d_model", dimensions=MODEL_ROLLUP_DIMENSIONS)


def token_category_rollup_table(name: str) -> Table:
    """Token sums per pricing category, keyed like the per-model rollups plus the category.

    Compaction builds them from raw events' token_categories for the hours it has compacted, so reports
    read categories from here for clean hours instead of parsing the JSON of every such event."""
    key = [Column(c.name, c.type, primary_key=True, comment=c.comment) for c in usage_rollup_1h_model.primary_key]
    return Table(
        name,
        metadata,
        *key,
        Column("category", Text, primary_key=True),
        _zero("tokens"),
    )


token_categories_1h: Final = token_category_rollup_table("usage_token_categories_1h")
token_categories_1d: Final = token_category_rollup_table("usage_token_categories_1d")

KEY_ROLLUP_DIMENSIONS: Final = ("bucket_start", "environment_id", "api_key_id")
"""The key of the per-API-key hourly and daily rollups: what rankings of keys read (tens of rows an hour)."""
USER_ROLLUP_DIMENSIONS: Final = ("bucket_start", "environment_id", "user_id")
"""The key of the per-user hourly and daily rollups: what rankings of users read (a row per active user an hour,
against one per request and user in the full-key rollups)."""

usage_rollup_1h_key: Final = rollup_table("usage_rollup_1h_key", dimensions=KEY_ROLLUP_DIMENSIONS)
usage_rollup_1d_key: Final = rollup_table("usage_rollup_1d_key", dimensions=KEY_ROLLUP_DIMENSIONS)
usage_rollup_1h_user: Final = rollup_table("usage_rollup_1h_user", dimensions=USER_ROLLUP_DIMENSIONS)
usage_rollup_1d_user: Final = rollup_table("usage_rollup_1d_user", dimensions=USER_ROLLUP_DIMENSIONS)
usage_rollup_5m_narrow: Final = rollup_table("usage_rollup_5m_narrow", dimensions=NARROW_ROLLUP_DIMENSIONS)
usage_rollup_5m_model: Final = rollup_table("usage_rollup_5m_model", dimensions=MODEL_ROLLUP_DIMENSIONS)


@dataclass(frozen=True)
class RollupLayout:
    """One key of the rollups compaction keeps: its hourly and daily tables, and five-minute ones where they pay."""

    hourly: Table
    daily: Table
    built_from: Table
    """What compaction sums its hours from: the per-minute rows (full key), or a wider key's hours."""
    five_minutes: Table | None = None
    """Five-minute buckets of compacted hours, for time series finer than an hour (summed like the hours: from
    the per-minute rows, or the wider key's five minutes). Only the narrow keys have them: by the full key, five
    minutes hold nearly as many rows as their minutes do."""

    @property
    def key(self) -> frozenset[str]:
        return frozenset(self.hourly.primary_key.columns.keys())


_FULL_LAYOUT: Final = RollupLayout(usage_rollup_1h, usage_rollup_1d, built_from=usage_rollup_1m)
_NARROW_LAYOUT: Final = RollupLayout(
    usage_rollup_1h_narrow, usage_rollup_1d_narrow, built_from=usage_rollup_1h, five_minutes=usage_rollup_5m_narrow
)
COARSE_ROLLUPS: Final = (
    RollupLayout(
        usage_rollup_1h_model, usage_rollup_1d_model, built_from=usage_rollup_1h_narrow,
        five_minutes=usage_rollup_5m_model,
    ),
    _NARROW_LAYOUT,
    RollupLayout(usage_rollup_1h_key, usage_rollup_1d_key, built_from=usage_rollup_1h),
    RollupLayout(usage_rollup_1h_user, usage_rollup_1d_user, built_from=usage_rollup_1h),
    _FULL_LAYOUT,
)  # fmt: skip
"""Every rollup key compaction keeps, fewest rows first: the planner reads the first whose key holds every
dimension a report filters or groups by. Each is built from a wider key (`built_from`), which compaction
builds first (it goes through them last to first)."""

budgets: Final = Table(
    "budgets",
    metadata,
    Column("budget_id", Text, primary_key=True),
    Column(
        "environment_id",
        Text,
        ForeignKey("environments.environment_id"),
        nullable=True,
        comment="Scope: NULL is organization-wide.",
    ),
    *(
        _text_or_empty(selector, comment="Scope selector; '' matches anything.")
        for selector in (
            "gateway_id",
            "api_key_id",
            "user_id",
            "requested_model",
            "resolved_model",
            "provider",
            "route",
        )
    ),
    _text_or_empty("tags", comment="Scope: JSON object of tag selectors (sorted keys); '' none."),
    Column("display_name", Text, nullable=False),
    Column("metric", SmallInteger, nullable=False, comment="budgeting.decision.Metric."),
    Column("limit_value", BigInteger, nullable=False),
    _text_or_empty("currency"),
    Column("period", SmallInteger, nullable=False, comment="budgeting.windows.Period."),
    Column("time_zone", Text, nullable=False, server_default=text("'UTC'")),
    Column("mode", SmallInteger, nullable=False, comment="budgeting.decision.Mode."),
    Column("alert_thresholds", Text, nullable=False, comment="JSON list of percents, e.g. [80, 100]."),
    Column(
        "first_window_start",
        BigInteger,
        nullable=False,
        comment="Epoch seconds: the window the budget was created in; earlier windows are not counted.",
    ),
    Column("revision", BigInteger, nullable=False, server_default=text("1")),
    Column("create_request_id", Text, nullable=True, unique=True, comment="AIP-155 idempotency key."),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("delete_time", UtcDateTime, nullable=True),
)

budget_generation: Final = Table(
    "budget_generation",
    metadata,
    Column("singleton", SmallInteger, primary_key=True, comment="Always 1: one row."),
    Column(
        "generation",
        BigInteger,
        nullable=False,
        comment="Bumped by every budget change; ingest reads it (FOR SHARE) to count with the current budgets.",
    ),
)

budget_windows: Final = Table(
    "budget_windows",
    metadata,
    Column("budget_id", Text, ForeignKey("budgets.budget_id", ondelete="CASCADE"), primary_key=True),
    Column("window_start", BigInteger, primary_key=True, comment="Epoch seconds."),
    Column("window_end", BigInteger, nullable=True, comment="Epoch seconds, exclusive; NULL: never (TOTAL)."),
    _zero("used", comment="In the budget's metric: micros, tokens or requests."),
    Column("update_time_us", BigInteger, nullable=False, comment="Epoch microseconds."),
)

budget_alerts: Final = Table(
    "budget_alerts",
    metadata,
    Column("alert_id", Text, primary_key=True, comment="Time-sortable: newer alerts sort after older ones."),
    Column("budget_id", Text, ForeignKey("budgets.budget_id", ondelete="CASCADE"), nullable=False),
    Column("window_start", BigInteger, nullable=False, comment="Epoch seconds."),
    Column("threshold_percent", Integer, nullable=False),
    Column("used", BigInteger, nullable=False),
    Column("limit_value", BigInteger, nullable=False),
    Column("mode", SmallInteger, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    UniqueConstraint("budget_id", "window_start", "threshold_percent"),
)

webhooks: Final = Table(
    "webhooks",
    metadata,
    Column("webhook_id", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("environment_id", Text, ForeignKey("environments.environment_id"), nullable=True),
    Column("budget_id", Text, ForeignKey("budgets.budget_id", ondelete="CASCADE"), nullable=True),
    Column("secret", Text, nullable=False, comment="HMAC-SHA256 signing key (the receiver holds it too)."),
    Column("create_request_id", Text, nullable=True, unique=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("delete_time", UtcDateTime, nullable=True),
    Column("last_attempt_time", UtcDateTime, nullable=True),
    Column("last_success_time", UtcDateTime, nullable=True),
    _text_or_empty("last_error"),
)

webhook_deliveries: Final = Table(
    "webhook_deliveries",
    metadata,
    Column("webhook_id", Text, ForeignKey("webhooks.webhook_id", ondelete="CASCADE"), primary_key=True),
    Column("alert_id", Text, ForeignKey("budget_alerts.alert_id", ondelete="CASCADE"), primary_key=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_time_us", BigInteger, nullable=False, comment="Epoch microseconds."),
    Column("delivered_time_us", BigInteger, nullable=True, comment="NULL: still pending (the outbox)."),
    _text_or_empty("last_error"),
    Index(
        "ix_webhook_deliveries_pending",
        "next_attempt_time_us",
        sqlite_where=text("delivered_time_us IS NULL"),
        postgresql_where=text("delivered_time_us IS NULL"),
    ),
)

config_versions: Final = Table(
    "config_versions",
    metadata,
    Column("environment_id", Text, ForeignKey("environments.environment_id"), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("content", LargeBinary, nullable=False, comment="Serialized protobuf configuration."),
    Column("content_sha256", Text, nullable=False),
    _text_or_empty("description"),
    _text_or_empty("created_by"),
    Column("create_time", UtcDateTime, nullable=False),
)
