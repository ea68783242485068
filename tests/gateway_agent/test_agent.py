"""GatewayAgent in-process: ids and sequence numbers, local checks, config from cache, the daemon's local API."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

from gateway_agent import AgentClosedError, CheckRequest, GatewayAgent
from gateway_agent.agent import CONFIG_DIR, new_event_id
from gateway_agent.config_cache import CURRENT, PREVIOUS, ConfigCache
from gateway_agent.control import validate_config
from gateway_agent.daemon import AgentDaemon
from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc
from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb
from tests.gateway_agent.harness import ENVIRONMENT, agent_settings

UNREACHABLE = "127.0.0.1:9"


def offline_agent(data_dir: Path) -> GatewayAgent:
    return GatewayAgent(
        agent_settings(UNREACHABLE, "token", data_dir, initial_fetch_timeout=timedelta(milliseconds=200))
    )


def config_version(version: int, *, disabled: list[str]) -> config_pb.ConfigVersion:
    return config_pb.ConfigVersion(
        environment_id=ENVIRONMENT, version=version, config=config_pb.EnvironmentConfig(disabled_api_key_ids=disabled)
    )


def test_event_ids_are_time_sortable_uuid7() -> None:
    ids = [new_event_id() for _ in range(1000)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert len(set(ids)) == 1000
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)


async def test_record_assigns_ids_and_sequences_that_continue_after_a_restart(tmp_path: Path) -> None:
    async with offline_agent(tmp_path) as agent:
        first = await agent.record(usage_pb2.UsageEvent(request_id="r", attempt=1), wait_for_commit=True)
        given = await agent.record(usage_pb2.UsageEvent(event_id="my-id", request_id="r", attempt=2))
    assert first.committed
    assert uuid.UUID(first.event_id).version == 7
    # A new spool numbers from microseconds since the epoch, above any earlier install of the gateway.
    assert first.sequence > 1_000_000_000_000
    assert (given.sequence, given.event_id) == (first.sequence + 1, "my-id")

    async with offline_agent(tmp_path) as agent:
        third = await agent.record(usage_pb2.UsageEvent(request_id="r", attempt=3))
        assert agent.status().spool_depth == 3
    assert third.sequence == first.sequence + 2


async def test_record_after_shutdown_is_refused_and_shutdown_is_safe_twice(tmp_path: Path) -> None:
    agent = offline_agent(tmp_path)
    await agent.start()
    await agent.shutdown()
    await agent.shutdown()
    try:
        await agent.record(usage_pb2.UsageEvent())
    except AgentClosedError:
        pass
    else:
        raise AssertionError("record() after shutdown() must raise")


async def test_check_allows_without_budgets_and_denies_keys_disabled_by_cached_config(tmp_path: Path) -> None:
    ConfigCache(tmp_path / CONFIG_DIR).save(config_version(4, disabled=["key-bad"]))
    async with offline_agent(tmp_path) as agent:
        allowed = agent.check(CheckRequest(api_key_id="key-good"))
        denied = agent.check(CheckRequest(api_key_id="key-bad"))
        status = agent.status()
    assert (allowed.allowed, allowed.config_version, allowed.budgets) == (True, 4, ())
    assert "no budget state" in allowed.reason
    assert (denied.allowed, denied.http_status) == (False, 403)
    assert denied.response_headers["content-type"] == "application/json"
    assert '"api_key_disabled"' in denied.response_body
    assert "key-bad" in denied.reason
    assert status.config_source == "cache"
    assert status.config_state_message.startswith("serving cached config version 4 from ")


def test_a_corrupt_cache_falls_back_to_the_previous_good_version(tmp_path: Path) -> None:
    cache = ConfigCache(tmp_path)
    cache.save(config_version(1, disabled=["a"]))
    cache.save(config_version(2, disabled=["b"]))
    assert (tmp_path / PREVIOUS).exists()
    (tmp_path / CURRENT).write_text('{"payload": "not it"}')

    loaded = cache.load()
    assert loaded is not None
    assert (loaded.version, loaded.source) == (1, "previous")
    assert cache.corrupt_files_seen == 1


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022 umask, under which files are created readable by everyone unless made private."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_config_cache_files_and_their_directory_are_private(tmp_path: Path) -> None:
    cache = ConfigCache(tmp_path / "agent" / CONFIG_DIR)
    cache.save(config_version(1, disabled=["a"]))
    cache.save(config_version(2, disabled=["b"]))
    assert {name: mode_of(cache.directory / name) for name in (CURRENT, PREVIOUS)} == {CURRENT: 0o600, PREVIOUS: 0o600}
    assert mode_of(cache.directory) == 0o700


@pytest.mark.usefixtures("open_umask")
def test_config_cache_files_readable_by_others_are_made_private_when_loaded(tmp_path: Path) -> None:
    directory = tmp_path / CONFIG_DIR
    cache = ConfigCache(directory)
    cache.save(config_version(1, disabled=["a"]))
    cache.save(config_version(2, disabled=["b"]))
    for path in (directory, directory / CURRENT, directory / PREVIOUS):  # as an older agent left them
        path.chmod(0o755 if path.is_dir() else 0o644)

    with capture_logs() as logs:
        loaded = ConfigCache(directory).load()

    assert loaded is not None
    assert loaded.version == 2
    assert {name: mode_of(directory / name) for name in (CURRENT, PREVIOUS)} == {CURRENT: 0o600, PREVIOUS: 0o600}
    assert mode_of(directory) == 0o700
    assert sorted((entry["event"], Path(entry["path"]).name) for entry in logs) == [
        ("made an agent directory private", CONFIG_DIR),
        ("made an agent file private", CURRENT),
        ("made an agent file private", PREVIOUS),
    ]


def test_structural_config_problems_are_named_for_the_nack() -> None:
    good = config_version(3, disabled=["k"])
    assert validate_config(good, environment_id=ENVIRONMENT, applied_version=2) is None
    assert "older" in (validate_config(good, environment_id=ENVIRONMENT, applied_version=5) or "")
    assert "environment_id" in (validate_config(good, environment_id="other", applied_version=0) or "")
    no_targets = config_version(3, disabled=[])
    no_targets.config.aliases.add(alias="fast")
    assert validate_config(no_targets, environment_id=ENVIRONMENT, applied_version=0) == (
        "aliases[0].targets: alias 'fast' has no targets"
    )
    tampered = config_version(3, disabled=["k"])
    tampered.content_sha256 = "0" * 64
    assert "content_sha256" in (validate_config(tampered, environment_id=ENVIRONMENT, applied_version=0) or "")


async def test_the_daemon_serves_the_local_api_on_a_unix_socket(tmp_path: Path) -> None:
    ConfigCache(tmp_path / CONFIG_DIR).save(config_version(9, disabled=["key-x"]))
    socket = f"unix://{tmp_path}/agent.sock"
    async with AgentDaemon(offline_agent(tmp_path), listen=socket), grpc.aio.insecure_channel(socket) as channel:
        stub = agent_grpc.AgentServiceStub(channel)
        event = usage_pb2.UsageEvent(request_id="r", attempt=1)
        recorded = await stub.RecordUsage(agent_pb.RecordUsageRequest(event=event, wait_for_commit=True))
        streamed = await stub.RecordUsageStream(
            iter([agent_pb.RecordUsageStreamRequest(event=event, wait_for_commit=True)] * 5)
        )
        check = await stub.CheckRequest(agent_pb.CheckRequestRequest(api_key_id="key-x"))
        config = await stub.GetConfig(agent_pb.GetConfigRequest())
        status = (await stub.GetStatus(agent_pb.GetStatusRequest())).status
    assert recorded.outcome == agent_pb.RECORD_OUTCOME_COMMITTED
    first = recorded.sequence
    assert (streamed.recorded_count, streamed.first_sequence, streamed.last_sequence) == (5, first + 1, first + 5)
    assert (check.allowed, check.http_status, check.config_version) == (False, 403, 9)
    assert (config.config_version.version, config.source) == (9, agent_pb.CONFIG_SOURCE_CACHE)
    assert status.state.spool_depth == 6
    assert status.state.applied_config_version == 9
    assert status.pending_commit_count == 0
