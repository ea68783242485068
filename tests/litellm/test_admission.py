"""Budgets enforced by the pre-call hook of a real LiteLLM proxy: a hard stop at its limit answers 429 with the
agent's explanation and headers (and the denied request is not usage), an estimate too big for what is left is
refused before anything ran, reservations settle with the usage event, and a warn-only budget lets traffic through
while counting what a hard stop would have denied."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as heartbeat_grpc
from tests.clients import bearer
from tests.gateway_agent.harness import ENVIRONMENT, GATEWAY
from tests.litellm.proxy import AgentEnv, ProxyProcess, apply_config, proxy, write_config
from tests.litellm.reports import Reports
from tests.system.serve import ServeProcess

pytestmark = pytest.mark.system

CAPPED_REQUESTS = 3
SPEND_LIMIT_USD = "0.01"  # 10,000 micro-units
# gpt-4o's prices under the alias the spend budget watches: the agent prices estimates with the config's table.
CONFIG = """
agent:
  heartbeat_interval: 1s
pricing:
  currency: USD
  models:
    - model: priced
      input_micros_per_million: 2500000
      output_micros_per_million: 10000000
"""


def create_budget(serve_process: ServeProcess, *args: str) -> str:
    result = serve_process.cli("budgets", "create", "-e", ENVIRONMENT, "--period", "day", "--json", *args)
    assert result.returncode == 0, result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    return str(created.get("budget_id") or created["budget"]["budget_id"])


def budget_used(serve_process: ServeProcess, budget_id: str) -> int:
    result = serve_process.cli("budgets", "status", budget_id, "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return int((status.get("status") or status).get("used", 0))


def gateway_state(serve_process: ServeProcess) -> heartbeat_pb.AgentState:
    admin = serve_process.admin_token_file.read_text().strip()
    with grpc.insecure_channel(serve_process.address) as channel:
        response = heartbeat_grpc.HeartbeatServiceStub(channel).GetGateway(
            heartbeat_pb.GetGatewayRequest(environment_id=ENVIRONMENT, gateway_id=GATEWAY),
            metadata=bearer(admin),
            timeout=10,
        )
    return response.gateway.state


def enforcement(serve_process: ServeProcess, budget_id: str) -> heartbeat_pb.BudgetEnforcement | None:
    return next((b for b in gateway_state(serve_process).budget_enforcement if b.budget_id == budget_id), None)


def require_budget_snapshots(serve_process: ServeProcess, agent_env: AgentEnv) -> None:
    """Agents enforce budgets from the snapshots the control plane streams (BudgetService.WatchBudgetStates): the
    control plane under test must stream one, or the tests below fail here, naming why."""
    token = agent_env.token_file.read_text().strip()
    with grpc.insecure_channel(serve_process.address) as channel:
        stream = budget_grpc.BudgetServiceStub(channel).WatchBudgetStates(
            budget_pb.WatchBudgetStatesRequest(environment_id=ENVIRONMENT), metadata=bearer(token), timeout=5
        )
        for _ in stream:
            break  # one snapshot is enough; closing the channel ends the stream


@pytest.fixture(scope="module")
def budget_ids(serve_process: ServeProcess, agent_env: AgentEnv) -> dict[str, str]:
    apply_config(serve_process, agent_env.token_file.parent, CONFIG)
    ids = {
        "capped": create_budget(
            serve_process,
            *("--name", "capped requests", "--model", "capped", "--metric", "requests"),
            *("--limit", str(CAPPED_REQUESTS), "--mode", "hard-stop"),
        ),
        "watched": create_budget(
            serve_process,
            *("--name", "watched requests", "--model", "watched", "--metric", "requests"),
            *("--limit", "1", "--mode", "warn-only"),
        ),
        "priced": create_budget(
            serve_process,
            *("--name", "priced spend", "--model", "priced", "--metric", "spend"),
            *("--limit", SPEND_LIMIT_USD, "--mode", "hard-stop"),
        ),
    }
    require_budget_snapshots(serve_process, agent_env)
    return ids


@pytest.fixture(scope="module")
def litellm_proxy(
    agent_env: AgentEnv, budget_ids: dict[str, str], serve_process: ServeProcess
) -> Iterator[ProxyProcess]:
    """The module's proxy, started once the budgets exist, and used once its agent holds their state."""
    with proxy(write_config(agent_env.token_file.parent), agent=agent_env) as process:
        deadline = time.monotonic() + 60
        while not all(enforcement(serve_process, budget_id) for budget_id in budget_ids.values()):
            assert time.monotonic() < deadline, "the agent in the proxy never received the budgets' state"
            time.sleep(0.2)
        yield process


def test_hard_stop_at_its_limit_answers_429_with_the_explanation_and_headers_and_is_not_usage(
    litellm_proxy: ProxyProcess, reports: Reports, serve_process: ServeProcess, budget_ids: dict[str, str]
) -> None:
    served = []
    for index in range(CAPPED_REQUESTS):
        response = litellm_proxy.chat("capped", f"request {index}")
        assert response.status_code == 200, response.text
        served.append(response.headers["x-litellm-call-id"])
    denied = litellm_proxy.chat("capped", "one too many")

    assert denied.status_code == 429
    assert denied.headers["x-should-retry"] == "false"
    assert 0 < int(denied.headers["retry-after"]) <= 24 * 3600
    error = denied.json()["error"]
    assert error["type"] == "budget_exceeded"
    assert "budget 'capped requests'" in error["message"]
    # "used" there is what counted so far; the last admitted request may still hold its reservation instead.
    assert f"of {CAPPED_REQUESTS} requests" in error["message"]
    details = error["provider_specific_fields"]["meterwire"]
    assert details["budget"]["id"] == budget_ids["capped"]
    assert (details["budget"]["limit"], details["budget"]["period"]) == (CAPPED_REQUESTS, "day")
    assert details["retry_after_seconds"] == int(denied.headers["retry-after"])

    for request_id in served:
        reports.wait_for_request(request_id)
    assert reports.request(denied.headers["x-litellm-call-id"]) is None
    assert budget_used(serve_process, budget_ids["capped"]) == CAPPED_REQUESTS
    deadline = time.monotonic() + 30
    while (counts := enforcement(serve_process, budget_ids["capped"])) is None or counts.denied_requests < 1:
        assert time.monotonic() < deadline, "the agent's heartbeat never counted the denial"
        time.sleep(0.2)
    assert counts.denied_requests == 1


def test_an_estimate_bigger_than_what_is_left_is_refused_and_reservations_settle_with_usage(
    litellm_proxy: ProxyProcess, reports: Reports, serve_process: ServeProcess, budget_ids: dict[str, str]
) -> None:
    # 2,000 output tokens at 10 USD per million hold 20,000 micro-units: more than the whole 10,000 limit.
    too_big = litellm_proxy.chat("priced", "write me a novel", max_tokens=2000)
    assert too_big.status_code == 429
    assert too_big.json()["error"]["type"] == "budget_exceeded"
    assert budget_used(serve_process, budget_ids["priced"]) == 0

    # Each admitted request holds about 1,000 micro-units (100 output tokens) until its usage event settles it at
    # its real cost (a few hundred): twelve in a row fit only because each settles.
    served = []
    for index in range(12):
        response = litellm_proxy.chat("priced", f"short answer {index}", max_tokens=100)
        assert response.status_code == 200, response.text
        served.append(response)
    for response in served:
        event = reports.wait_for_request(response.headers["x-litellm-call-id"]).attempts[0].event
        assert event.cost_micros == round(float(response.headers["x-litellm-response-cost"]) * 1_000_000)
    assert budget_used(serve_process, budget_ids["priced"]) == sum(
        round(float(response.headers["x-litellm-response-cost"]) * 1_000_000) for response in served
    )


def test_warn_only_budget_lets_requests_through_and_counts_shadow_denials(
    litellm_proxy: ProxyProcess, reports: Reports, serve_process: ServeProcess, budget_ids: dict[str, str]
) -> None:
    served = []
    for index in range(3):
        response = litellm_proxy.chat("watched", f"watched {index}")
        assert response.status_code == 200, response.text
        served.append(response.headers["x-litellm-call-id"])
    for request_id in served:
        reports.wait_for_request(request_id)
    assert budget_used(serve_process, budget_ids["watched"]) == 3  # over its limit of 1: reported, not enforced

    deadline = time.monotonic() + 30
    while (counts := enforcement(serve_process, budget_ids["watched"])) is None or counts.shadow_denied_requests < 2:
        assert time.monotonic() < deadline, f"no shadow denials reported: {counts}"
        time.sleep(0.2)
    # The first request found the budget under its limit; the two after it would have been denied by a hard stop.
    assert (counts.denied_requests, counts.shadow_denied_requests) == (0, 2)
