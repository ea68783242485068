"""The local API both ways: a gateway's question (check_question, check_request) and the daemon's decision
(check_response, decision_from_response)."""

from __future__ import annotations

from budgeting.decision import Verdict
from gateway_agent.budget_decision import CheckRequest, Decision, UsageEstimate
from gateway_agent.daemon import check_question, check_request, check_response, decision_from_response
from meterwire.agent.v1 import agent_service_pb2 as agent_pb


def test_a_denial_reads_back_as_the_decision_the_daemon_made() -> None:
    denied = Decision(
        allowed=False,
        reason="budget",
        http_status=429,
        message="budget 'team' (b-1) is exhausted",
        config_version=7,
        verdict=Verdict.DENY,
        denied_by_budget_id="b-1",
        retry_after_s=3600,
        response_body='{"error":{"message":"budget exhausted"}}',
        response_headers={"content-type": "application/json", "retry-after": "3600"},
    )

    assert decision_from_response(check_response(denied)) == denied


def test_an_admission_with_a_reservation_reads_back_with_its_id_and_expiry() -> None:
    admitted = Decision(
        allowed=True,
        reason="within budget",
        config_version=3,
        verdict=Verdict.WARN,
        reservation_id="rsv-42",
        reservation_expire_s=1_790_000_000.5,
    )

    assert decision_from_response(check_response(admitted)) == admitted


def test_an_older_daemons_unspecified_verdict_follows_allowed() -> None:
    allowed = decision_from_response(agent_pb.CheckRequestResponse(allowed=True, reason="ok"))
    denied = decision_from_response(agent_pb.CheckRequestResponse(allowed=False, reason="budget", http_status=429))

    assert (allowed.verdict, allowed.retry_after_s, allowed.reservation_expire_s) == (Verdict.ALLOW, None, None)
    assert (denied.verdict, denied.http_status) == (Verdict.DENY, 429)


def test_a_question_reads_back_as_the_request_the_gateway_asked_about() -> None:
    priced = CheckRequest(
        api_key_id="key-1",
        user_id="ada",
        requested_model="gpt-4o",
        route="/v1/chat/completions",
        tags={"team": "search"},
        estimate=UsageEstimate(cost_micros=2_500, input_tokens=1_200, max_output_tokens=800, model="gpt-4o-mini"),
    )
    unpriced = CheckRequest(api_key_id="key-2", estimate=UsageEstimate())
    unestimated = CheckRequest(requested_model="claude")

    for request in (priced, unpriced, unestimated):
        assert check_request(check_question(request)) == request
    assert check_question(unpriced).HasField("estimate")  # an estimate of nothing is still one: it reserves
    assert not check_question(unestimated).HasField("estimate")
