"""Settings of the gateway agent: where it spools, how it batches, and how it reaches the control plane."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path


class Durability(StrEnum):
    """How hard each spool group commit is pushed to disk."""

    FSYNC = "fsync"
    """Every group commit is fsynced (SQLite synchronous=FULL): survives power loss."""
    OS_BUFFERED = "os_buffered"
    """Commits reach the OS page cache (synchronous=NORMAL): survives an agent crash, not a power cut."""


@dataclass(frozen=True)
class TlsSettings:
    """TLS (and, with a client certificate, mutual TLS) towards the control plane."""

    ca_file: Path | None = None
    """CA bundle (PEM) that signed the control plane's certificate; None: the system roots."""
    cert_file: Path | None = None
    """Client certificate (PEM) for mutual TLS; with key_file."""
    key_file: Path | None = None
    """Client private key (PEM) for mutual TLS; with cert_file."""
    server_name_override: str | None = None
    """Name to verify in the server certificate when it differs from the address host (tests)."""


@dataclass(frozen=True)
class AgentSettings:
    """Everything one gateway agent needs. Only the first four have no default."""

    control_plane: str
    """The ONE control-plane address (host:port); every service is reached there by its method path."""
    token: str
    """The gateway's bearer token (role gateway, bound to one environment and gateway id)."""
    environment_id: str
    """The environment the token is bound to; the agent subscribes to its config."""
    data_dir: Path
    """Holds spool.db and the config cache; one data dir per agent. Kept private: 0700, its files 0600."""
    gateway_id: str = ""
    """The gateway id the token is bound to; used in logs only (the server takes it from the token)."""
    gateway_version: str = ""
    """The gateway software beside the agent, e.g. "acme-gateway/2.3.1"; reported in heartbeats."""
    tls: TlsSettings | None = None
    """None: plaintext (loopback and tests only)."""
    durability: Durability = Durability.FSYNC
    """Whether each spool group commit is fsynced."""
    spool_max_bytes: int = 1024 * 1024 * 1024
    """Spool cap on disk (event payload bytes); beyond it record() drops and counts (fail open)."""
    max_pending_events: int = 100_000
    """Events queued in memory waiting for a group commit; beyond it record() drops and counts."""
    commit_linger: timedelta = timedelta(milliseconds=2)
    """How long the spool writer waits for more events to share one group commit."""
    commit_max_events: int = 5_000
    """Most events in one group commit."""
    max_batch_events: int = 500
    """Most events per StreamUsage batch (the server's config may change it)."""
    max_batch_bytes: int = 1024 * 1024
    """Most serialized event bytes per batch."""
    batch_linger: timedelta = timedelta(milliseconds=50)
    """How long the sender waits to fill a batch before sending a partial one."""
    max_unacked_batches: int = 8
    """Batches in flight without an ack, at most."""
    ack_timeout: timedelta = timedelta(seconds=60)
    """An unanswered batch older than this fails the stream (a server alive on HTTP/2 but stuck)."""
    backoff_initial: timedelta = timedelta(milliseconds=100)
    """First reconnect delay cap; full jitter picks uniformly in [0, cap]."""
    backoff_max: timedelta = timedelta(seconds=30)
    """Largest reconnect delay cap."""
    keepalive_time: timedelta = timedelta(seconds=15)
    """HTTP/2 ping interval after the last byte received; the server permits pings every 10 s or more
    (`MW_MIN_CLIENT_PING_INTERVAL`): shorter, and an idle connection gets GOAWAY too_many_pings."""
    keepalive_timeout: timedelta = timedelta(seconds=10)
    """A ping unanswered this long closes the connection, so a dead link (accepted, nothing comes back) fails
    every stream within keepalive_time + keepalive_timeout (25 s) and they reconnect. A heartbeat unanswered
    this long already marks the agent not connected (within heartbeat_interval + keepalive_timeout)."""
    initial_fetch_timeout: timedelta = timedelta(seconds=5)
    """On start, how long to wait for the control plane's config before serving the cached one."""
    heartbeat_interval: timedelta = timedelta(seconds=10)
    """Until the server says otherwise."""
    shutdown_flush_timeout: timedelta = timedelta(seconds=10)
    """On shutdown, how long the sender may keep delivering the spool before it stops (the rest stays spooled)."""
    reservation_ttl: timedelta = timedelta(minutes=10)
    """A budget reservation not settled by its usage event (nor released) within this is released."""
    max_reservation_micros: int = 10_000_000
    """The most one reservation holds against a spend budget (10 units of the currency); also what a HARD_STOP
    spend budget holds for an estimate it cannot price."""
    max_reservation_tokens: int = 1_000_000
    """The most one reservation holds against a token budget."""
    extra_channel_options: tuple[tuple[str, int | str], ...] = field(default_factory=tuple)
    """Raw grpc channel options appended last (advanced)."""

    def __post_init__(self) -> None:
        if not self.control_plane:
            raise ValueError("control_plane: give the control-plane address, host:port")
        if not self.token:
            raise ValueError("token: give the gateway token (meterwire tokens create gateway ...)")
        if not self.environment_id:
            raise ValueError("environment_id: give the environment the gateway token is bound to")
        for name in ("spool_max_bytes", "max_pending_events", "commit_max_events", "max_batch_events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.max_reservation_micros < 0 or self.max_reservation_tokens < 0:
            raise ValueError("max_reservation_micros, max_reservation_tokens: must not be negative")
        if self.reservation_ttl <= timedelta(0):
            raise ValueError("reservation_ttl: must be positive")
        if self.max_unacked_batches < 1:
            raise ValueError("max_unacked_batches: must be at least 1")
        if self.tls is not None and (self.tls.cert_file is None) != (self.tls.key_file is None):
            raise ValueError("tls: cert_file and key_file go together")
