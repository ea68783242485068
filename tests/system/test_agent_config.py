"""Config through the agent: applied and cached from a real control plane, served from cache when it is away."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from gateway_agent import CheckRequest, GatewayAgent
from gateway_agent.agent import CONFIG_DIR
from gateway_agent.config_cache import CURRENT, ConfigCache
from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from tests.gateway_agent.harness import ENVIRONMENT, ControlPlane, agent_settings, control_plane, eventually

pytestmark = pytest.mark.system


def put_config(cp: ControlPlane, *, disabled: list[str]) -> int:
    config = config_pb.EnvironmentConfig(disabled_api_key_ids=disabled)
    token = cp.process.admin_token_file.read_text().strip()
    with grpc.insecure_channel(cp.address) as channel:
        response = config_grpc.ConfigServiceStub(channel).PutConfig(
            config_pb.PutConfigRequest(environment_id=ENVIRONMENT, config=config, description="test"),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    return int(response.config_version.version)


def denied(agent: GatewayAgent, api_key_id: str) -> bool:
    return not agent.check(CheckRequest(api_key_id=api_key_id)).allowed


async def test_config_is_applied_cached_and_served_from_cache_while_the_control_plane_is_down(tmp_path: Path) -> None:
    agent_dir = tmp_path / "agent"
    with control_plane(tmp_path / "cp") as cp:
        assert put_config(cp, disabled=["key-01"]) == 1
        async with GatewayAgent(agent_settings(cp.address, cp.gateway_token, agent_dir)) as agent:
            assert agent.config_version == 1
            assert agent.status().config_source == "control_plane"
            assert denied(agent, "key-01")
            assert put_config(cp, disabled=["key-01", "key-02"]) == 2
            await eventually(lambda: agent.config_version == 2, within=20, what="version 2 over WatchConfig")
            assert denied(agent, "key-02")
            # A version the agent cannot apply (here: its cache cannot be written) is NACKed; the old one stays.
            blocker = agent_dir / CONFIG_DIR / f".{CURRENT}.tmp-{os.getpid()}"
            blocker.mkdir()
            assert put_config(cp, disabled=["key-03"]) == 3
            await eventually(lambda: agent.status().nacked_config_version == 3, within=20, what="the NACK of version 3")
            status = agent.status()
            assert agent.config_version == 2
            assert "cannot cache the config" in status.config_error
            assert agent.agent_state().nacked_config_version == 3
            assert denied(agent, "key-02")
            assert not denied(agent, "key-03")
            blocker.rmdir()
        token = cp.gateway_token

    # The control plane is gone: the agent starts from the cached version 2 and says so.
    offline = agent_settings("127.0.0.1:9", token, agent_dir)
    async with GatewayAgent(offline) as agent:
        status = agent.status()
        assert agent.config_version == 2
        assert status.config_source == "cache"
        assert status.config_state_message.startswith("serving cached config version 2 from ")
        assert denied(agent, "key-02")
        assert (await agent.record(usage_event())).spooled

    # A damaged current cache falls back to the previous good version.
    current = agent_dir / CONFIG_DIR / CURRENT
    current.write_bytes(current.read_bytes()[:-40] + b"garbage")
    async with GatewayAgent(offline) as agent:
        assert agent.config_version == 1
        assert agent.status().config_source == "cache"
        assert denied(agent, "key-01")
        assert not denied(agent, "key-02")


def usage_event() -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(request_id="r-1", attempt=1)


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """Accepts TCP connections and never says a word (no HTTP/2 settings frame)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_control_plane_that_never_answers_does_not_stop_the_agent_starting_from_cache(
    tmp_path: Path, silent_server: str
) -> None:
    cached = config_pb.ConfigVersion(
        environment_id=ENVIRONMENT, version=7, config=config_pb.EnvironmentConfig(disabled_api_key_ids=["key-07"])
    )
    ConfigCache(tmp_path / "agent" / CONFIG_DIR).save(cached)

    async with GatewayAgent(agent_settings(silent_server, "gateway-token", tmp_path / "agent")) as agent:
        status = agent.status()
        assert agent.config_version == 7
        assert status.config_source == "cache"
        assert status.config_state_message.startswith("serving cached config version 7 from ")
        assert denied(agent, "key-07")
        result = await agent.record(usage_event(), wait_for_commit=True)
        assert result.committed
        assert not agent.status().connected


async def test_a_cached_config_the_control_plane_still_has_is_confirmed_after_reconnecting(tmp_path: Path) -> None:
    agent_dir = tmp_path / "agent"
    with control_plane(tmp_path / "cp") as cp:
        assert put_config(cp, disabled=["key-01"]) == 1
        token, port = cp.gateway_token, int(cp.address.rpartition(":")[2])
        async with GatewayAgent(agent_settings(cp.address, token, agent_dir)) as agent:
            assert agent.status().config_source == "control_plane"
    # The control plane is down when the agent starts: it serves version 1 from its cache...
    async with GatewayAgent(agent_settings(f"127.0.0.1:{port}", token, agent_dir)) as agent:
        assert agent.status().config_source == "cache"
        # ...and comes back with the same version 1: the agent must say its config is the control plane's again.
        with control_plane(tmp_path / "cp", port=port, token=token):
            await eventually(
                lambda: agent.status().config_source == "control_plane", within=30, what="the config confirmed"
            )
            status = agent.status()
    assert status.config_version == 1
    assert status.config_state_message.startswith("serving config version 1 from the control plane")
    assert status.nacked_config_version == 0


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022 umask, under which files are created readable by everyone unless made private."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
async def test_a_running_agent_keeps_its_spool_config_cache_and_data_dir_private(tmp_path: Path) -> None:
    agent_dir = tmp_path / "agent"
    with control_plane(tmp_path / "cp") as cp:
        put_config(cp, disabled=["key-01"])
        async with GatewayAgent(agent_settings(cp.address, cp.gateway_token, agent_dir)) as agent:
            assert (await agent.record(usage_event(), wait_for_commit=True)).committed
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the event delivered")
            # SQLite made the spool's -wal and -shm files lazily; they exist while the agent runs.
            files = ["spool.db", "spool.db-wal", "spool.db-shm", f"{CONFIG_DIR}/{CURRENT}"]
            modes = {name: stat.S_IMODE((agent_dir / name).stat().st_mode) for name in files}
            directories = {name: stat.S_IMODE((agent_dir / name).stat().st_mode) for name in (".", CONFIG_DIR)}
    assert modes == dict.fromkeys(files, 0o600)
    assert directories == {".": 0o700, CONFIG_DIR: 0o700}
