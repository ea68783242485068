"""Faults around a real LiteLLM proxy with the embedded agent: the control plane away (the proxy keeps serving, the
usage arrives once after), and the proxy SIGKILLed right after its responses (what the agent committed arrives)."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.gateway_agent.harness import ENVIRONMENT, GATEWAY, create_gateway_token
from tests.litellm.proxy import AgentEnv, ProxyProcess, proxy, require_litellm, spooled_event_ids, write_config
from tests.litellm.reports import DELIVERY_TIMEOUT_S, Reports
from tests.system.serve import ServeProcess, serve

pytestmark = pytest.mark.system


def agent_env_for(cp: ServeProcess, directory: Path) -> AgentEnv:
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "gateway.token"
    token_file.write_text(create_gateway_token(cp))
    token_file.chmod(0o600)
    return AgentEnv(cp.address, token_file, ENVIRONMENT, GATEWAY, directory / "agent")


def reports_of(cp: ServeProcess, stack: ExitStack) -> Reports:
    client = Reports(cp.address, cp.admin_token_file.read_text().strip(), ENVIRONMENT)
    stack.callback(client.close)
    return client


def served_call_ids(litellm_proxy: ProxyProcess, count: int, *, model: str = "gpt-4o") -> list[str]:
    ids = []
    for index in range(count):
        response = litellm_proxy.chat(model, f"request {index}")
        assert response.status_code == 200, response.text
        ids.append(response.headers["x-litellm-call-id"])
    return ids


def wait_for_events(reports: Reports, expected: set[str]) -> None:
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while not expected <= set(reports.event_ids()):
        assert time.monotonic() < deadline, f"never delivered: {sorted(expected - set(reports.event_ids()))}"
        time.sleep(0.2)


@pytest.fixture
def control_plane_dir(tmp_path: Path) -> Path:
    require_litellm()
    return tmp_path / "control-plane" / "var"


def test_proxy_serves_while_the_control_plane_is_down_and_the_usage_arrives_once_after(
    control_plane_dir: Path, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        cp = stack.enter_context(serve(control_plane_dir))
        port = int(cp.address.rpartition(":")[2])
        env = agent_env_for(cp, tmp_path / "proxy")
        litellm_proxy = stack.enter_context(proxy(write_config(tmp_path / "proxy"), agent=env))
        before = served_call_ids(litellm_proxy, 2)
        wait_for_events(reports_of(cp, stack), set(before))

        assert cp.stop() == 0
        during = served_call_ids(litellm_proxy, 5)
        streamed, lines = litellm_proxy.stream_chat("gpt-4o", "streamed while the control plane is away")
        assert streamed.status_code == 200
        assert lines[-1] == "[DONE]"
        during.append(streamed.headers["x-litellm-call-id"])
        fallback = litellm_proxy.chat("primary", "a fallback while away")
        assert fallback.status_code == 200

        restarted = stack.enter_context(serve(control_plane_dir, port=port))
        reports = reports_of(restarted, stack)
        fallback_request = reports.wait_for_request(fallback.headers["x-litellm-call-id"], attempts=2)
        wait_for_events(reports, set(before) | set(during))
        stored = reports.event_ids()

    fallback_events = {stored_event.event.event_id for stored_event in fallback_request.attempts}
    assert set(stored) == set(before) | set(during) | fallback_events
    assert all(count == 1 for count in stored.values()), stored


def test_sigkilled_proxy_delivers_every_response_whose_usage_the_agent_committed(
    control_plane_dir: Path, tmp_path: Path
) -> None:
    config_dir = tmp_path / "proxy"
    with ExitStack() as stack:
        cp = stack.enter_context(serve(control_plane_dir))
        reports = reports_of(cp, stack)
        env = agent_env_for(cp, config_dir)
        config = write_config(config_dir)

        first = ProxyProcess(config, agent=env)
        stack.callback(first.kill)
        settled = served_call_ids(first, 3)
        wait_for_events(reports, set(settled))
        burst = served_call_ids(first, 20)
        first.kill()  # right after the last response: some usage may still be on its way to the spool

        committed = set(reports.event_ids()) | set(spooled_event_ids(env.spool))
        assert set(settled) <= committed
        assert committed <= set(settled) | set(burst), "the spool holds usage of no response"

        second = stack.enter_context(proxy(config, agent=env))  # the same data dir: the agent resumes its spool
        wait_for_events(reports, committed)
        after_restart = served_call_ids(second, 1)
        wait_for_events(reports, set(after_restart))
        stored = reports.event_ids()

    print(f"{len(committed & set(burst))} of {len(burst)} responses right before the kill were committed")
    assert set(stored) == committed | set(after_restart)
    assert all(count == 1 for count in stored.values()), stored
