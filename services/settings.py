"""Control-plane settings: command-line flags over MW_* environment variables over defaults."""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Self

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.logs import LogFormat


class ServiceName(StrEnum):
    """The services one control-plane process can host; `--services` picks a subset."""

    TELEMETRY = "telemetry"
    HEARTBEAT = "heartbeat"
    CONFIG = "config"
    BUDGET = "budget"
    REPORTING = "reporting"
    ADMIN = "admin"


class SettingsError(Exception):
    """A setting is unusable; the message names it."""


def parse_listen_address(value: str, *, setting: str) -> tuple[str, int]:
    """Splits "host:port" (IPv6 hosts in brackets) and checks the port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"{setting}: {value!r} is not host:port (e.g. 127.0.0.1:50051 or [::]:50051)")
    return host.strip("[]"), int(port_text)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str, *, setting: str) -> timedelta:
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration; write seconds (10) or with a unit: 250ms, 10s, 5m, 2h, 90d")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class ServerSettings(BaseSettings):
    """Everything `meterwire serve` needs. Durations are seconds in env vars (MW_SHUTDOWN_GRACE=10)."""

    model_config = SettingsConfigDict(env_prefix="MW_", frozen=True, extra="forbid")

    listen: str = "127.0.0.1:50051"
    """gRPC listen address, host:port. Port 0 picks a free port (tests)."""
    data_dir: Path = Path("var")
    """Holds the SQLite database (by default) and admin.token."""
    database_url: str | None = None
    """sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db; default: SQLite in data_dir."""
    metrics_listen: str | None = None
    """host:port for Prometheus /metrics over HTTP; unset: no metrics endpoint."""
    services: frozenset[ServiceName] = frozenset(ServiceName)
    """The services this process hosts."""
    tls_cert: Path | None = None
    """Server certificate (PEM) for TLS; with tls_key."""
    tls_key: Path | None = None
    """Server private key (PEM) for TLS; with tls_cert."""
    tls_client_ca: Path | None = None
    """CA bundle (PEM) for mutual TLS: clients must present a certificate it signed."""
    drain_delay: timedelta = timedelta(seconds=2)
    """On SIGTERM: how long health reports NOT_SERVING while RPCs are still accepted, so balancers move away."""
    shutdown_grace: timedelta = timedelta(seconds=10)
    """Then: how long in-flight RPCs may take before they are cancelled."""
    keepalive_time: timedelta = timedelta(seconds=20)
    """Server pings idle connections this often, so dead peers are found (agents expect < 30 s)."""
    keepalive_timeout: timedelta = timedelta(seconds=10)
    """A ping unanswered for this long closes the connection."""
    min_client_ping_interval: timedelta = timedelta(seconds=10)
    """Clients may ping this often while the server sends nothing (agents: every keepalive_time, 15 s); the third
    ping sooner than this closes the connection with GOAWAY too_many_pings (grpc core's ping strikes)."""
    max_connection_age: timedelta = timedelta(minutes=30)
    """Connections are closed (GOAWAY) after this long, so agents rebalance across replicas."""
    max_connection_age_grace: timedelta = timedelta(minutes=1)
    """Streams get this long to finish after GOAWAY; agents resend anything unacknowledged."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    """Largest gRPC message accepted or sent (a usage batch must fit)."""
    log_format: LogFormat = "console"
    log_level: str = "info"
    revocation_poll_interval: timedelta = timedelta(seconds=10)
    """A token revoked on another replica is refused, and its open streams closed, within this long (at once on
    this one): authenticated tokens are cached for this long."""

    # Telemetry ingest
    ingest_max_batch_events: int = Field(default=2000, ge=1, le=100_000)
    """Most events in one usage batch; a larger batch is refused whole with INVALID_ARGUMENT."""
    ingest_max_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    """Most serialized bytes in one usage batch (must stay below max_message_bytes)."""
    ingest_max_clock_skew: timedelta = timedelta(minutes=5)
    """An event_time further than this in the future is rejected (REJECTION_REASON_FROM_THE_FUTURE)."""
    raw_event_retention: timedelta = timedelta(days=90)
    """Raw events are kept at least this long (pruning works in whole days, one day behind); it is also the
    dedupe horizon: an older event is rejected TOO_OLD, because the server could no longer tell whether it
    was counted already."""
    ingest_commit_linger: timedelta = timedelta(milliseconds=2)
    """Group commit: how long the writer waits for more batches to share one transaction."""
    ingest_commit_max_events: int = Field(default=10_000, ge=1, le=100_000)
    """Group commit: most events in one transaction (at most 100,000: services.accounting.bounds relies on it)."""
    ingest_workers: int = Field(default=0, ge=0, le=64)
    """Processes that validate, price and turn usage batches into rows beside the event loop (0: in the event
    loop). They raise the most one server ingests when cores are spare, and cost CPU and latency to hand
    batches over (benchmarks/ingest.py; README)."""
    sqlite_checkpoint_interval: timedelta = timedelta(milliseconds=250)
    """SQLite: how often the write-ahead log is copied into the database file, from a thread of its own (ingest
    commits never wait for it)."""
    sqlite_wal_truncate_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    """SQLite: a log still larger than this after a copy is emptied, holding ingest back for the frames left."""

    # Heartbeats
    heartbeat_interval: timedelta = timedelta(seconds=10)
    """The interval agents are told to heartbeat at (an environment's config may override it)."""
    heartbeat_stale_intervals: float = Field(default=2.0, gt=0)
    """A gateway whose last heartbeat is older than this many intervals is STALE."""
    heartbeat_offline_intervals: float = Field(default=6.0, gt=0)
    """... and older than this many intervals, OFFLINE."""
    heartbeat_degraded_backlog: timedelta = timedelta(minutes=5)
    """A gateway whose oldest unsent usage event is older than this is DEGRADED."""
    heartbeat_flush_interval: timedelta = timedelta(seconds=1)
    """Latest heartbeat states are written to the database in one batch this often."""

    # Heartbeat and config internals (fleet timer, watchers, replicas sharing one database)
    heartbeat_status_check_interval: timedelta = timedelta(seconds=1)
    """Statuses are re-derived this often with no traffic, so a silent gateway turns STALE/OFFLINE on time."""
    heartbeat_watch_queue: int = Field(default=1000, ge=1)
    """Most unsent changes per WatchGateways stream; a slower watcher is resynchronised with a full listing."""
    heartbeat_peer_refresh_interval: timedelta = timedelta(seconds=5)
    """How often heartbeat states flushed by other replicas are read back (replicas sharing PostgreSQL)."""
    config_poll_interval: timedelta = timedelta(seconds=2)
    """How often the latest config version per environment is read, so versions stored through another
    replica reach the agents connected here."""

    @field_validator("services", mode="before")
    @classmethod
    def _split_services(cls, value: object) -> object:
        if isinstance(value, str):
            names = [part.strip() for part in value.split(",") if part.strip()]
            known = {s.value for s in ServiceName}
            unknown = [n for n in names if n not in known]
            if unknown or not names:
                raise ValueError(f"unknown service(s) {unknown or names}; choose from {', '.join(sorted(known))}")
            return frozenset(ServiceName(n) for n in names)
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _durations_in_plain_units(cls, value: object, info: ValidationInfo) -> object:
        """Durations read as seconds ("10", "0.5") or with a unit ("250ms", "10s", "5m", "2h", "90d")."""
        if isinstance(value, str) and cls.model_fields[info.field_name or ""].annotation in (timedelta, "timedelta"):
            return parse_duration(value, setting=info.field_name or "duration")
        return value

    @field_validator("listen", "metrics_listen", "http_listen")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_listen_address(value, setting="address")
            except SettingsError as error:
                raise ValueError(str(error).removeprefix("address: ")) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///path/to/file.db or postgresql+asyncpg://user@host:5432/dbname")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.ingest_max_batch_bytes >= self.max_message_bytes:
            raise ValueError("ingest_max_batch_bytes must be below max_message_bytes")
        if self.heartbeat_offline_intervals <= self.heartbeat_stale_intervals:
            raise ValueError("heartbeat_offline_intervals must be above heartbeat_stale_intervals")
        return self

    @property
    def resolved_database_url(self) -> str:
        # Imported here, not at the top: the engine module loads SQLAlchemy's engine (~0.3 s), which every
        # `meterwire` command would pay, and the CLI's client commands never need it.
        from services.storage.engine import sqlite_url

        return self.database_url or sqlite_url(self.data_dir)

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"

    # Reporting: rollup compaction and retention (services/reporting/compaction.py)
    rollup_1m_retention: timedelta = timedelta(days=90)
    """Per-minute rollups are kept this long; at least raw_event_retention, because a late event (accepted up
    to raw_event_retention old) re-compacts its hour from the per-minute rows."""
    rollup_1h_retention: timedelta = timedelta(days=400)
    """Hourly rollups are kept this long; at least rollup_1m_retention (days are re-compacted from hours)."""
    rollup_1d_retention: timedelta = timedelta(days=3650)
    """Daily rollups are kept this long; at least rollup_1h_retention."""
    rollup_compaction_interval: timedelta = timedelta(minutes=1)
    """How often the reporting service folds new per-minute rollups into hourly and daily ones and prunes
    what is past retention; 0 turns the background job off (run `meterwire db prune` instead)."""
    webhook_delivery_interval: timedelta = timedelta(seconds=1)
    """How often a replica hosting the budget service looks for budget alerts due for webhook delivery; 0 turns
    delivery off in this replica (another replica delivers)."""
    webhook_timeout: timedelta = timedelta(seconds=10)
    """How long one webhook POST may take before it counts as failed and is retried."""
    webhook_max_backoff: timedelta = timedelta(minutes=10)
    """Longest wait between retries of a failing webhook (exponential backoff with full jitter up to it)."""
    webhook_deliveries_per_round: int = Field(default=50, ge=1, le=1000)
    """Deliveries one round claims and sends at most (concurrently, across webhooks)."""
    budget_alert_poll_interval: timedelta = timedelta(seconds=1)
    """How often WatchBudgetAlerts streams look for alerts any replica stored."""
    budget_snapshot_min_interval: timedelta = timedelta(milliseconds=250)
    """Budget snapshots pushed to one agent (WatchBudgetStates) are at least this far apart: changes meanwhile
    are coalesced into the next one."""
    budget_snapshot_poll_interval: timedelta = timedelta(seconds=1)
    """How often a replica hosting the budget service looks for budget and usage changes other replicas stored,
    to push fresh snapshots to the agents connected to it; 0 turns the poll off (the heartbeat-interval refresh
    still bounds how stale a snapshot gets)."""
    heartbeat_budget_stale_intervals: float = Field(default=3.0, gt=0)
    """A live gateway whose agent enforces budgets from a snapshot older than this many heartbeat intervals is
    DEGRADED ("enforcing budgets from state ... old")."""
    retention_prune_chunk_rows: int = Field(default=10_000, ge=1)
    """Rows one prune statement deletes, so pruning never holds a long lock on the tables ingest writes."""
    reporting_max_points: int = Field(default=10_000, ge=1)
    """Most time buckets one time series may ask for."""
    reporting_max_export_buckets: int = Field(default=1_000_000, ge=1, le=100_000_000)
    """Most time buckets one grouped export may span (about two years of minutes); it is refused before any work,
    and streamed a window of buckets at a time."""

    @model_validator(mode="after")
    def _check_retention_order(self) -> Self:
        chain = (
            ("raw_event_retention", self.raw_event_retention),
            ("rollup_1m_retention", self.rollup_1m_retention),
            ("rollup_1h_retention", self.rollup_1h_retention),
            ("rollup_1d_retention", self.rollup_1d_retention),
        )
        for (shorter, short), (longer, long) in pairwise(chain):
            if long < short:
                raise ValueError(f"{longer} must be at least {shorter}")
        return self

    # The usage console (services/console)
    http_listen: str | None = None
    """host:port for the web usage console over HTTP; unset: no console. Served from the same process."""
    console_session_idle: timedelta = timedelta(hours=8)
    """A console session unused for this long is signed out."""
    console_export_dir: Path | None = None
    """Where console exports are written until downloaded; default: data_dir/console-exports."""
