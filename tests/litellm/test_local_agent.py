"""The callback pointed at a `meterwire agent run` beside the proxy (MW_AGENT) instead of embedding one: the same
usage reaches the reports through the daemon's spool, and the daemon's config denies a disabled key."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.gateway_agent.harness import AgentProcess, create_gateway_token
from tests.litellm.proxy import MASTER_KEY_ID, ProxyProcess, apply_config, proxy, write_config
from tests.litellm.reports import Reports
from tests.system.serve import ServeProcess

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def local_agent(serve_process: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess(serve_process.address, create_gateway_token(serve_process), tmp_path_factory.mktemp("agent"))
    yield agent
    assert agent.stop() == 0


@pytest.fixture(scope="module")
def litellm_proxy(local_agent: AgentProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = write_config(tmp_path_factory.mktemp("proxy"))
    with proxy(config, agent=None, env={"MW_AGENT": local_agent.address}) as process:
        yield process


def test_usage_reaches_the_reports_through_the_local_agent(
    litellm_proxy: ProxyProcess, reports: Reports, local_agent: AgentProcess
) -> None:
    response = litellm_proxy.chat("primary", "fall back through the daemon", user="u-9")
    assert response.status_code == 200, response.text
    streamed, _lines = litellm_proxy.stream_chat("gpt-4o", "stream through the daemon")
    assert streamed.status_code == 200

    fallback = reports.wait_for_request(response.headers["x-litellm-call-id"], attempts=2)
    assert [(a.event.requested_model, a.event.resolved_model) for a in fallback.attempts] == [
        ("primary", "gpt-4o-mini"),
        ("primary", "claude-3-5-haiku-20241022"),
    ]
    assert fallback.attempts[1].event.user_id == "u-9"
    stream_event = reports.wait_for_request(streamed.headers["x-litellm-call-id"]).attempts[0].event
    assert stream_event.streaming
    assert stream_event.HasField("ttft")
    assert local_agent.status().events_accepted >= 3


def test_the_local_agent_denies_a_disabled_key(
    litellm_proxy: ProxyProcess, serve_process: ServeProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("config")
    apply_config(serve_process, directory, f"disabled_api_key_ids: [{MASTER_KEY_ID}]\n")
    try:
        statuses = []
        for _ in range(150):
            response = litellm_proxy.chat("gpt-4o", "allowed?")
            statuses.append(response.status_code)
            if response.status_code == 403:
                break
            time.sleep(0.1)  # the config reaches the daemon within seconds
    finally:
        apply_config(serve_process, directory, "disabled_api_key_ids: []\n")
    assert statuses[-1] == 403, statuses
    error = response.json()["error"]
    assert (error["type"], error["provider_specific_fields"]["meterwire"]["api_key_id"]) == (
        "api_key_disabled",
        MASTER_KEY_ID,
    )
