"""The agent's control streams: heartbeats up, config versions down (validated, applied, cached, ACKed or NACKed),
budget snapshots down (WatchBudgetStates)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from gateway_agent.channel import EOF_MARKER, Backoff, LinkState, describe_rpc_error, open_bidi
from gateway_agent.config_cache import CachedConfig, ConfigCache
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as heartbeat_grpc

log = structlog.get_logger("meterwire.agent.control")

_MIN_HEARTBEAT = timedelta(seconds=1)
_MAX_HEARTBEAT = timedelta(minutes=5)
# A heartbeat the server does not answer within this many intervals (at least this many seconds) fails the stream.
_HEARTBEAT_ANSWER_INTERVALS = 3
_HEARTBEAT_ANSWER_MIN_S = 20.0
# A control plane that does not host the budget service (UNIMPLEMENTED) is asked again this rarely.
_BUDGET_SERVICE_ABSENT_RETRY_S = 60.0


def validate_config(
    config_version: config_pb.ConfigVersion, *, environment_id: str, applied_version: int
) -> str | None:
    """The structural checks an agent can make; returns the first problem (for the NACK), or None."""
    if config_version.environment_id and config_version.environment_id != environment_id:
        return f"environment_id: {config_version.environment_id!r} is not this agent's {environment_id!r}"
    if config_version.version <= 0:
        return f"version: {config_version.version} is not positive"
    if config_version.version < applied_version:
        return f"version: {config_version.version} is older than the applied version {applied_version}"
    config = config_version.config
    if config_version.content_sha256:
        digest = hashlib.sha256(config.SerializeToString(deterministic=True)).hexdigest()
        if digest != config_version.content_sha256:
            return "content_sha256: does not match the config's content (damaged in transit or storage)"
    seen: set[str] = set()
    for i, alias in enumerate(config.aliases):
        if not alias.alias:
            return f"aliases[{i}].alias: empty"
        if alias.alias in seen:
            return f"aliases[{i}].alias: {alias.alias!r} appears twice"
        seen.add(alias.alias)
        if not alias.targets:
            return f"aliases[{i}].targets: alias {alias.alias!r} has no targets"
        for j, target in enumerate(alias.targets):
            if not target.model:
                return f"aliases[{i}].targets[{j}].model: empty in alias {alias.alias!r}"
    if config.pricing.models and not config.pricing.currency:
        return "pricing.currency: required when there are prices"
    for i, price in enumerate(config.pricing.models):
        if not price.model:
            return f"pricing.models[{i}].model: empty"
        if price.input_micros_per_million < 0 or price.output_micros_per_million < 0:
            return f"pricing.models[{i}]: prices must not be negative ({price.model!r})"
    agent = config.agent
    if agent.HasField("heartbeat_interval"):
        interval = agent.heartbeat_interval.ToTimedelta()
        if not _MIN_HEARTBEAT <= interval <= _MAX_HEARTBEAT:
            return f"agent.heartbeat_interval: {interval.total_seconds()}s is outside 1 s to 5 min"
    if agent.spool_max_bytes < 0:
        return "agent.spool_max_bytes: must not be negative"
    for i, key in enumerate(config.disabled_api_key_ids):
        if not key:
            return f"disabled_api_key_ids[{i}]: empty"
    return None


class ConfigKeeper:
    """Holds the applied config: offered versions are validated, cached atomically and applied, or rejected."""

    def __init__(
        self, *, environment_id: str, cache: ConfigCache, on_apply: Callable[[config_pb.ConfigVersion], None]
    ) -> None:
        self._environment_id = environment_id
        self._cache = cache
        self._on_apply = on_apply
        self.current: config_pb.ConfigVersion | None = None
        self.applied_time: datetime | None = None
        self.source = "none"
        self.nacked_version = 0
        self.config_error = ""

    @property
    def version(self) -> int:
        return 0 if self.current is None else int(self.current.version)

    @property
    def confirmed_version(self) -> int:
        """The version the control plane is known to have sent; 0 while the applied one came from the cache.

        WatchConfig sends a version only when it is newer than the one the agent says it knows, so an agent that
        said it knows its cached version would never hear that the version is still current (and keep calling
        its config source "cache"); saying 0 makes the server send its current version, which confirms the cached
        one (applied already: only ACKed) or replaces it.
        """
        return self.version if self.source == "control_plane" else 0

    def load_cache(self) -> CachedConfig | None:
        """Blocking: applies the cached version (current, else previous good) if there is one."""
        cached = self._cache.load()
        if cached is not None:
            self.current, self.applied_time, self.source = cached.config_version, cached.applied_time, "cache"
            self._on_apply(cached.config_version)
        return cached

    async def offer(self, config_version: config_pb.ConfigVersion) -> str | None:
        """Applies a version from the control plane; returns the NACK error, or None when applied."""
        if self.current is not None and config_version.version == self.current.version:
            self.source = "control_plane"
            return None
        error = validate_config(config_version, environment_id=self._environment_id, applied_version=self.version)
        if error is None:
            try:
                applied_time = datetime.now(UTC)
                await asyncio.to_thread(self._cache.save, config_version, applied_time=applied_time)
            except OSError as save_error:
                error = f"cannot cache the config on disk: {save_error}"
        if error is not None:
            self.nacked_version, self.config_error = int(config_version.version), error
            log.error("config version rejected; keeping the current one", version=config_version.version, error=error)
            return error
        self.current, self.applied_time, self.source = config_version, applied_time, "control_plane"
        self.nacked_version, self.config_error = 0, ""
        self._on_apply(config_version)
        log.info("config version applied", version=config_version.version)
        return None

    @property
    def state_message(self) -> str:
        if self.current is None:
            return "no config: none cached and the control plane not reached yet; usage is still recorded"
        when = self.applied_time.isoformat() if self.applied_time else "unknown time"
        if self.source == "cache":
            return f"serving cached config version {self.version} from {when}"
        return f"serving config version {self.version} from the control plane (applied {when})"


class ControlStreams:
    """Heartbeat and WatchConfig, each reconnecting with backoff for as long as the agent runs."""

    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        environment_id: str,
        keeper: ConfigKeeper,
        agent_state: Callable[[], heartbeat_pb.AgentState],
        heartbeat_interval: timedelta,
        answer_timeout: timedelta,
        backoff: Backoff,
        link: LinkState,
        on_budget_snapshot: Callable[[budget_pb.BudgetSnapshot], None] | None = None,
    ) -> None:
        self._config_stub = config_grpc.ConfigServiceStub(channel)
        self._budget_stub = budget_grpc.BudgetServiceStub(channel)
        self._on_budget_snapshot = on_budget_snapshot
        self.budget_snapshots_received = 0
        self.budget_service_absent = False
        self._heartbeat_stub = heartbeat_grpc.HeartbeatServiceStub(channel)
        self._metadata = metadata
        self._environment_id = environment_id
        self._keeper = keeper
        self._agent_state = agent_state
        self.heartbeat_interval = heartbeat_interval
        self._suspect_after_s = answer_timeout.total_seconds()
        self._backoff = backoff
        self._link = link
        self._stopping = asyncio.Event()
        self.heartbeats_answered = 0
        self.last_gateway_status = ""

    async def initial_fetch(self, deadline: timedelta) -> bool:
        """Asks for the current config; True if the control plane answered within `deadline`."""
        request = config_pb.GetConfigRequest(environment_id=self._environment_id)
        try:
            response = await self._config_stub.GetConfig(
                request, metadata=self._metadata, timeout=deadline.total_seconds(), wait_for_ready=True
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                log.info("the control plane has no config for this environment yet", environment=self._environment_id)
                return True
            log.warning("initial config fetch failed", error=describe_rpc_error(error))
            return False
        await self._keeper.offer(response.config_version)
        return True

    async def run(self) -> None:
        streams = [self._forever("heartbeat", self._heartbeat_once), self._forever("config", self._watch_once)]
        if self._on_budget_snapshot is not None:
            streams.append(self._budgets_forever())
        await asyncio.gather(*streams)

    async def _budgets_forever(self) -> None:
        """WatchBudgetStates, reconnecting with backoff; a control plane without the budget service is asked again
        only every minute, logged once."""
        attempt = 0
        while not self._stopping.is_set():
            received_before = self.budget_snapshots_received
            delay: float | None = None
            try:
                await self._watch_budgets_once()
                error_text = "the control plane ended the budget stream"
            except asyncio.CancelledError:
                raise
            except Exception as error:
                error_text = describe_rpc_error(error)
                if isinstance(error, grpc.aio.AioRpcError) and error.code() is grpc.StatusCode.UNIMPLEMENTED:
                    if not self.budget_service_absent:
                        log.info("the control plane does not host budgets; asking again every minute")
                    self.budget_service_absent = True
                    delay = _BUDGET_SERVICE_ABSENT_RETRY_S
            if self._stopping.is_set():
                return
            if self.budget_snapshots_received > received_before:
                attempt = 0
            if delay is None:
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning("budget stream down; retrying", error=error_text, retry_in_s=round(delay, 3))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _watch_budgets_once(self) -> None:
        assert self._on_budget_snapshot is not None
        call = self._budget_stub.WatchBudgetStates(
            budget_pb.WatchBudgetStatesRequest(environment_id=self._environment_id), metadata=self._metadata
        )
        try:
            async for response in call:
                self.budget_service_absent = False
                self.budget_snapshots_received += 1
                self._on_budget_snapshot(response.snapshot)
        finally:
            call.cancel()

    def request_stop(self) -> None:
        self._stopping.set()

    async def _forever(self, stream: str, once: Callable[[Callable[[], None]], object]) -> None:
        attempt = 0

        def progressed() -> None:
            nonlocal attempt
            attempt = 0
            self._link.mark_up(stream)

        while not self._stopping.is_set():
            try:
                await once(progressed)  # type: ignore[misc]
            except asyncio.CancelledError:
                raise
            except Exception as error:
                message = describe_rpc_error(error)
                self._link.mark_down(stream, message)
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning(f"{stream} stream down; retrying", error=message, retry_in_s=round(delay, 3))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _heartbeat_once(self, progressed: Callable[[], None]) -> None:
        call = open_bidi(self._heartbeat_stub.Heartbeat, self._metadata)
        # One read is always pending, so a stream that dies between pings is noticed at once, not at the next ping.
        reading: asyncio.Future[Any] | None = None
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                send_time = Timestamp()
                send_time.GetCurrentTime()
                await call.write(heartbeat_pb.HeartbeatRequest(send_time=send_time, state=self._agent_state()))
                if reading is None:
                    reading = asyncio.ensure_future(call.read())
                answer_timeout = max(_HEARTBEAT_ANSWER_MIN_S, _HEARTBEAT_ANSWER_INTERVALS * self._interval_s())
                suspect_after = min(self._suspect_after_s, answer_timeout)
                done, _ = await asyncio.wait([reading], timeout=suspect_after)
                if not done:
                    # The server answers a heartbeat at once; one this late means the link is probably dead.
                    # Keepalive (or the answer timeout below) fails the stream; until then, do not claim a link.
                    self._link.mark_suspect(f"no heartbeat answer in {suspect_after:g}s: the link looks dead")
                    done, _ = await asyncio.wait([reading], timeout=answer_timeout - suspect_after)
                if not done:
                    raise TimeoutError(f"no heartbeat answer in {answer_timeout}s")
                self._on_heartbeat_answer(reading.result())
                progressed()
                reading = asyncio.ensure_future(call.read())
                await asyncio.wait([reading, stop], timeout=self._interval_s(), return_when=asyncio.FIRST_COMPLETED)
                if reading.done():
                    self._on_heartbeat_answer(reading.result())  # raises if the stream ended
                    reading = None
        finally:
            stop.cancel()
            if reading is not None:
                reading.cancel()
            call.cancel()

    def _on_heartbeat_answer(self, response: Any) -> None:
        if response is EOF_MARKER:
            raise ConnectionError("the control plane ended the heartbeat stream")
        self.heartbeats_answered += 1
        self.last_gateway_status = heartbeat_pb.GatewayStatus.Name(response.status)
        if response.HasField("interval") and response.interval.ToTimedelta() > timedelta(0):
            interval = response.interval.ToTimedelta()
            self.heartbeat_interval = min(max(interval, _MIN_HEARTBEAT), _MAX_HEARTBEAT)

    def _interval_s(self) -> float:
        return self.heartbeat_interval.total_seconds()

    async def _watch_once(self, progressed: Callable[[], None]) -> None:
        call = open_bidi(self._config_stub.WatchConfig, self._metadata)
        try:
            subscribe = config_pb.ConfigSubscribe(
                environment_id=self._environment_id, known_version=self._keeper.confirmed_version
            )
            await call.write(config_pb.WatchConfigRequest(subscribe=subscribe))
            while not self._stopping.is_set():
                response = await call.read()
                if response is EOF_MARKER:
                    raise ConnectionError("the control plane ended the config stream")
                progressed()
                offered = response.config_version
                error = await self._keeper.offer(offered)
                if error is None:
                    reply = config_pb.WatchConfigRequest(ack=config_pb.ConfigAck(version=offered.version))
                else:
                    reply = config_pb.WatchConfigRequest(
                        nack=config_pb.ConfigNack(version=offered.version, error=error)
                    )
                await call.write(reply)
        finally:
            call.cancel()
