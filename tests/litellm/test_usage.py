"""A real LiteLLM proxy with the meterwire callback: every request's usage reaches the control plane's reports once,
as LiteLLM saw it (alias and resolved model, tokens by kind, cost, TTFT, status), and a disabled key gets 403."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from meterwire.common.v1 import usage_pb2
from tests.litellm.proxy import MASTER_KEY_ID, AgentEnv, ProxyProcess, apply_config
from tests.litellm.reports import Reports
from tests.system.serve import ServeProcess

pytestmark = pytest.mark.system

MICROS = 1_000_000


def call_id(response_headers: object) -> str:
    value = response_headers["x-litellm-call-id"]  # type: ignore[index]
    assert isinstance(value, str)
    return value


def reported_cost_micros(response_headers: object) -> int:
    return round(float(response_headers["x-litellm-response-cost"]) * MICROS)  # type: ignore[index]


def test_chat_completion_is_reported_once_with_its_alias_model_tokens_cost_key_user_and_tags(
    litellm_proxy: ProxyProcess, reports: Reports
) -> None:
    response = litellm_proxy.chat(
        "gpt-4o", "hi there", max_tokens=50, user="end-user-7", metadata={"tags": ["team:search", "feature-x"]}
    )
    assert response.status_code == 200, response.text
    request_id = call_id(response.headers)
    usage = response.json()["usage"]

    found = reports.wait_for_request(request_id)
    assert len(found.attempts) == 1
    event = found.attempts[0].event
    assert event.event_id == request_id  # LiteLLM's call id, not the provider's response id
    assert event.event_id != response.json()["id"]
    assert (event.request_id, event.attempt) == (request_id, 1)
    assert (event.requested_model, event.resolved_model, event.provider) == ("gpt-4o", "gpt-4o", "openai")
    assert event.request_type == usage_pb2.REQUEST_TYPE_CHAT
    assert (event.status_code, event.error_type, event.streaming) == (200, "", False)
    assert event.tokens.input == usage["prompt_tokens"]
    assert event.tokens.output == usage["completion_tokens"]
    assert (event.tokens.cache_read, event.tokens.cache_write, event.tokens.reasoning) == (0, 0, 0)
    assert event.cost_micros == reported_cost_micros(response.headers) > 0
    assert event.api_key_id == MASTER_KEY_ID  # the key's hash as LiteLLM names it, never the secret
    assert event.user_id == "end-user-7"
    assert dict(event.tags) == {"team": "search", "feature-x": ""}  # no `User-Agent: ...` tags
    assert event.route == "/v1/chat/completions"
    assert event.HasField("latency")
    assert not event.HasField("ttft")
    assert found.request.attempt_count == 1
    assert found.request.status_code == 200


def test_streamed_completion_is_reported_with_its_time_to_first_token(
    litellm_proxy: ProxyProcess, reports: Reports
) -> None:
    response, lines = litellm_proxy.stream_chat("gpt-4o", "stream please", stream_options={"include_usage": True})
    assert response.status_code == 200
    assert lines[-1] == "[DONE]"
    usage = next(json.loads(line)["usage"] for line in reversed(lines[:-1]) if json.loads(line).get("usage"))

    event = reports.wait_for_request(call_id(response.headers)).attempts[0].event
    assert event.streaming
    assert event.HasField("ttft")
    assert timedelta(0) < event.ttft.ToTimedelta() <= event.latency.ToTimedelta()
    assert (event.tokens.input, event.tokens.output) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert event.status_code == 200
    assert event.HasField("cost_micros")


def test_every_token_kind_is_reported_disjoint(litellm_proxy: ProxyProcess, reports: Reports) -> None:
    response = litellm_proxy.chat("reasoner")
    assert response.status_code == 200, response.text

    tokens = reports.wait_for_request(call_id(response.headers)).attempts[0].event.tokens
    # prompt 1200 = 1000 cache reads + 100 cache writes + 100 uncached; completion 300 = 200 reasoning + 100.
    assert (tokens.input, tokens.cache_read, tokens.cache_write) == (100, 1000, 100)
    assert (tokens.output, tokens.reasoning) == (100, 200)


def test_fallback_is_one_request_of_two_attempts_under_the_alias_asked_for(
    litellm_proxy: ProxyProcess, reports: Reports
) -> None:
    response = litellm_proxy.chat("primary", "fall back please")
    assert response.status_code == 200, response.text
    assert response.headers["x-litellm-attempted-fallbacks"] == "1"

    found = reports.wait_for_request(call_id(response.headers), attempts=2)
    first, second = (stored.event for stored in found.attempts)
    assert (first.attempt, second.attempt) == (1, 2)
    assert first.request_id == second.request_id == call_id(response.headers)
    assert first.event_id == call_id(response.headers) != second.event_id
    assert first.requested_model == second.requested_model == "primary"
    assert (first.resolved_model, first.provider, first.status_code) == ("gpt-4o-mini", "openai", 500)
    assert first.error_type == "provider_internal_error"
    assert "mock internal server error" in first.error_message
    assert (second.resolved_model, second.provider) == ("claude-3-5-haiku-20241022", "anthropic")
    assert (second.status_code, second.error_type) == (200, "")
    assert (found.request.attempt_count, found.request.status_code) == (2, 200)


def test_provider_error_is_reported_with_its_status_and_error(litellm_proxy: ProxyProcess, reports: Reports) -> None:
    response = litellm_proxy.chat("broken")
    assert response.status_code == 429

    found = reports.wait_for_request(call_id(response.headers))
    event = found.attempts[0].event
    assert (event.status_code, event.error_type) == (429, "rate_limit_exceeded")
    assert "mock rate limit error" in event.error_message
    assert (event.requested_model, event.resolved_model) == ("broken", "gpt-4o")
    assert not event.HasField("tokens")  # the provider reported none: unknown, not zero
    assert found.request.status_code == 429


def wait_for_status(litellm_proxy: ProxyProcess, status: int) -> list[str]:
    """Sends requests until one is answered with `status` (the agent applies a new config within seconds);
    returns the call ids of every request sent."""
    sent: list[str] = []
    deadline = time.monotonic() + 30
    while True:
        response = litellm_proxy.chat("gpt-4o", "am I allowed?")
        sent.append(call_id(response.headers))
        if response.status_code == status:
            return sent
        assert time.monotonic() < deadline, f"never answered {status}: last {response.status_code} {response.text}"
        time.sleep(0.2)


def test_disabled_key_gets_403_with_the_explanation_and_is_not_usage(
    litellm_proxy: ProxyProcess, reports: Reports, serve_process: ServeProcess, agent_env: AgentEnv
) -> None:
    apply_config(serve_process, agent_env.token_file.parent, f"disabled_api_key_ids: [{MASTER_KEY_ID}]\n")
    try:
        before_denial = wait_for_status(litellm_proxy, 403)
        denied = litellm_proxy.chat("gpt-4o", "denied again")
    finally:
        apply_config(serve_process, agent_env.token_file.parent, "disabled_api_key_ids: []\n")
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["type"] == "api_key_disabled"
    assert error["message"] == "API key disabled"
    assert error["provider_specific_fields"]["meterwire"]["api_key_id"] == MASTER_KEY_ID
    assert denied.headers["x-should-retry"] == "false"

    after = wait_for_status(litellm_proxy, 200)
    reports.wait_for_request(after[-1])  # delivered in spool order, so anything recorded before it is in
    denied_ids = [*before_denial[-1:], call_id(denied.headers), *after[:-1]]
    for request_id in denied_ids:
        assert reports.request(request_id) is None, f"the denied request {request_id} was counted as usage"
    for request_id in before_denial[:-1]:
        assert reports.request(request_id) is not None  # served before the config arrived
