"""The agent's one connection to the control plane: channel options, credentials, backoff and link state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

import grpc

from gateway_agent.settings import AgentSettings


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def channel_options(settings: AgentSettings) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = [
        # Pings on an open connection, even with no call active, so a silent peer is noticed within
        # keepalive_time + keepalive_timeout; the server permits pings every 10 s or more. grpc core bounds a
        # ping's wait by its own ping timeout (60 s unless set), whatever keepalive_timeout says: without it a
        # dead link took ~72 s to close.
        ("grpc.keepalive_time_ms", _ms(settings.keepalive_time)),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout)),
        ("grpc.http2.ping_timeout_ms", _ms(settings.keepalive_timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Our own backoff paces reconnects; keep grpc's short so a restarted server is found promptly.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        # Each agent has its own channel; never share a subchannel with another agent in the process.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if settings.tls is not None and settings.tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", settings.tls.server_name_override))
    options.extend(settings.extra_channel_options)
    return options


def open_channel(settings: AgentSettings) -> grpc.aio.Channel:
    """One channel for every service: they are all reached at the same address by method path."""
    if settings.tls is None:
        return grpc.aio.insecure_channel(settings.control_plane, options=channel_options(settings))
    tls = settings.tls
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes() if tls.ca_file else None,
        private_key=tls.key_file.read_bytes() if tls.key_file else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None,
    )
    return grpc.aio.secure_channel(settings.control_plane, credentials, options=channel_options(settings))


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(max, initial * 2**n)]."""

    initial: timedelta = timedelta(milliseconds=100)
    maximum: timedelta = timedelta(seconds=30)
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def cap(self, attempt: int) -> float:
        """The upper bound of attempt `attempt`'s delay, in seconds."""
        initial = self.initial.total_seconds()
        # Past 2**32 the product only overflows; the cap has long been reached.
        return float(min(self.maximum.total_seconds(), initial * (2 ** min(attempt, 32))))

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, self.cap(attempt))


@dataclass
class LinkState:
    """Which control-plane streams are up, and since when the connection has been."""

    up: set[str] = field(default_factory=set)
    connected_since: datetime | None = None
    last_error: str = ""

    def mark_up(self, stream: str) -> None:
        if not self.up:
            self.connected_since = datetime.now(UTC)
        self.up.add(stream)

    def mark_down(self, stream: str, error: str) -> None:
        self.up.discard(stream)
        self.last_error = error
        if not self.up:
            self.connected_since = None

    def mark_suspect(self, error: str) -> None:
        """The connection under every stream looks dead (an answer is overdue): not connected until a stream
        hears from the control plane again, although no stream has failed yet."""
        self.up.clear()
        self.last_error = error
        self.connected_since = None

    @property
    def connected(self) -> bool:
        return bool(self.up)


def describe_rpc_error(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


EOF_MARKER: object = getattr(grpc.aio, "EOF")  # noqa: B009 - grpc-stubs does not declare grpc.aio.EOF


class BidiCall(Protocol):
    """The part of a grpc.aio bidi call the agent uses (grpc-stubs types it too loosely to be useful)."""

    async def write(self, request: Any) -> None: ...

    async def read(self) -> Any: ...

    async def done_writing(self) -> None: ...

    def cancel(self) -> bool: ...


def open_bidi(multi_callable: Any, metadata: tuple[tuple[str, str], ...]) -> BidiCall:
    """Starts a bidi call whose requests are written with call.write()."""
    return cast(BidiCall, multi_callable(metadata=metadata))
