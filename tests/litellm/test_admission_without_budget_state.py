"""The budget denial through a real LiteLLM proxy, from a control plane that does not host budgets: the agent never
receives budget state, and the config says to deny then (budget_enforcement.deny_when_state_unknown). The caller
gets the agent's 429 with its explanation inside LiteLLM's error envelope, and the denied requests are not usage."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.litellm.proxy import AgentEnv, ProxyProcess, apply_config, proxy, require_litellm, write_config
from tests.litellm.reports import Reports
from tests.system.serve import ServeProcess, serve

pytestmark = pytest.mark.system

DENY_UNKNOWN = "budget_enforcement:\n  deny_when_state_unknown: true\n  deny_message: spending is paused\n"
ALLOW_UNKNOWN = "budget_enforcement:\n  deny_when_state_unknown: false\n"


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Every service but the budget service: agents never get a budget snapshot from it."""
    require_litellm()
    services = "admin,config,heartbeat,reporting,telemetry"
    with serve(tmp_path_factory.mktemp("control-plane") / "var", "--services", services) as process:
        yield process


@pytest.fixture(scope="module")
def litellm_proxy(agent_env: AgentEnv, serve_process: ServeProcess) -> Iterator[ProxyProcess]:
    apply_config(serve_process, agent_env.token_file.parent, DENY_UNKNOWN)
    with proxy(write_config(agent_env.token_file.parent), agent=agent_env) as process:
        yield process


def until(litellm_proxy: ProxyProcess, status: int) -> list[httpx.Response]:
    """Requests until one is answered `status` (a new config reaches the agent within seconds); all of them."""
    responses: list[httpx.Response] = []
    deadline = time.monotonic() + 30
    while not responses or responses[-1].status_code != status:
        assert time.monotonic() < deadline, f"never {status}: {responses[-1].status_code} {responses[-1].text}"
        responses.append(litellm_proxy.chat("gpt-4o", "may I?"))
    return responses


def test_the_agents_429_reaches_the_caller_readably_and_the_denied_request_is_not_usage(
    litellm_proxy: ProxyProcess, reports: Reports, serve_process: ServeProcess, agent_env: AgentEnv
) -> None:
    denied = litellm_proxy.chat("gpt-4o", "hello?")

    assert denied.status_code == 429
    assert denied.headers["x-should-retry"] == "false"  # the OpenAI SDK would retry a bare 429
    assert denied.headers["content-type"] == "application/json"
    error = denied.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert error["message"].startswith("spending is paused: budget state is not known yet")
    assert error["code"] == "429"
    details = error["provider_specific_fields"]["meterwire"]
    assert details["type"] == "budget_exceeded"
    assert details["message"] == error["message"]

    apply_config(serve_process, agent_env.token_file.parent, ALLOW_UNKNOWN)
    responses = until(litellm_proxy, 200)
    reports.wait_for_request(responses[-1].headers["x-litellm-call-id"])
    for response in [denied, *responses[:-1]]:
        assert response.status_code == 429
        assert reports.request(response.headers["x-litellm-call-id"]) is None
