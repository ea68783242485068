"""The agent's local budget view: admission, reservations, leases, shadow denials and exact inclusion."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

from budgeting.decision import Verdict
from gateway_agent import CheckRequest, UsageEstimate, http_response
from gateway_agent.budget_digest import IncludedSet
from gateway_agent.budget_view import BudgetView, ReservationLimits
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from tests.gateway_agent.budget_snapshots import MODEL, budget, priced_config, snapshot, usage_event


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def view_with(*budgets: tuple[budget_pb.Budget, int], clock: Clock | None = None, **kwargs: object) -> BudgetView:
    clock = clock or Clock()
    view = BudgetView(clock=clock, **kwargs)  # type: ignore[arg-type]
    view.apply_config(priced_config())
    view.apply_snapshot(snapshot(budgets, now_s=clock.now))
    return view


def cost_of(micros: int) -> CheckRequest:
    return CheckRequest(requested_model=MODEL, estimate=UsageEstimate(cost_micros=micros))


def test_a_hundred_concurrent_checks_with_reservations_admit_at_most_what_remains() -> None:
    view = view_with((budget("b1", limit=1_000_000), 999_000))  # 1,000 micros remain
    decisions = []
    gate = threading.Barrier(100)

    def one() -> None:
        gate.wait()
        decisions.append(view.check(cost_of(30)))

    threads = [threading.Thread(target=one) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 1_000 // 30  # 33: the 34th would pass the last micro
    assert all(d.reservation_id for d in admitted)
    assert len({d.reservation_id for d in admitted}) == len(admitted)
    (figures,) = view.budgets()
    assert (figures.reserved, figures.used, figures.remaining) == (33 * 30, 999_000, 10)


def test_the_usage_event_settles_its_reservation_and_counts_its_real_cost() -> None:
    clock = Clock()
    view = view_with((budget("b1", limit=10_000), 1_000), clock=clock)
    admitted = view.check(cost_of(5_000))
    assert admitted.allowed
    assert view.budgets()[0].reserved == 5_000
    event = usage_event(7, cost_micros=1_200, now_s=clock.now)
    event.reservation_id = admitted.reservation_id
    view.count_event(event)
    (figures,) = view.budgets()
    assert (figures.reserved, figures.pending_used, figures.used, figures.server_used) == (0, 1_200, 2_200, 1_000)
    assert view.release_reservation(admitted.reservation_id) is False
    assert view.open_reservations == 0


def test_reservations_expire_after_the_ttl_and_can_be_released() -> None:
    clock = Clock()
    view = view_with(
        (budget("b1", limit=10_000), 0), clock=clock, reservations=ReservationLimits(ttl=timedelta(seconds=30))
    )
    first, second = view.check(cost_of(4_000)), view.check(cost_of(4_000))
    assert view.check(cost_of(4_000)).allowed is False
    assert view.release_reservation(second.reservation_id) is True
    assert view.release_reservation(second.reservation_id) is False
    clock.now += 29
    assert view.expire_reservations() == 0
    clock.now += 2
    assert view.expire_reservations() == 1
    assert view.budgets()[0].reserved == 0
    assert view.release_reservation(first.reservation_id) is False


def test_tokens_are_priced_from_the_config_and_capped_and_an_unpriced_model_holds_the_cap_on_a_hard_stop() -> None:
    view = view_with(
        (budget("b1", limit=100_000_000), 0), reservations=ReservationLimits(max_micros=50_000, max_tokens=10)
    )
    priced = view.check(
        CheckRequest(requested_model=MODEL, estimate=UsageEstimate(input_tokens=1_000, max_output_tokens=500))
    )
    assert priced.budgets[0].reserved == 1_000 * 1 + 500 * 2
    capped = view.check(CheckRequest(estimate=UsageEstimate(cost_micros=10**9)))
    assert capped.budgets[0].reserved == 2_000 + 50_000
    unpriced = view.check(CheckRequest(estimate=UsageEstimate(input_tokens=10, model="no-such-model")))
    assert unpriced.budgets[0].reserved == 2_000 + 50_000 + 50_000


def test_a_denial_is_a_ready_to_send_429_naming_the_budget() -> None:
    clock = Clock()
    view = view_with((budget("b1", limit=1_000), 1_000), clock=clock)
    denied = view.check(cost_of(1))
    assert (denied.allowed, denied.verdict, denied.http_status, denied.denied_by_budget_id) == (
        False,
        Verdict.DENY,
        429,
        "b1",
    )
    assert denied.retry_after_s is not None
    assert 1 <= denied.retry_after_s <= 86_400
    status, body, headers = http_response(denied)  # type: ignore[misc]
    assert status == 429
    assert headers == {
        "content-type": "application/json",
        "x-should-retry": "false",
        "Retry-After": str(denied.retry_after_s),
    }
    error = json.loads(body)["error"]
    assert (error["type"], error["code"], error["retry_after_seconds"]) == (
        "budget_exceeded",
        "budget_exceeded",
        denied.retry_after_s,
    )
    assert error["budget"]["id"] == "b1"
    assert error["budget"]["limit"] == 1_000
    assert error["budget"]["used"] == 1_000
    assert error["budget"]["scope"] == {"environment_id": "agent-test"}
    assert (error["budget"]["period"], error["budget"]["currency"]) == ("day", "USD")
    assert view.budgets()[0].denied_requests == 1


def test_a_total_budget_denial_has_no_retry_after_and_the_configured_status() -> None:
    view = BudgetView()
    view.apply_config(priced_config(deny_http_status=402, deny_message="out of credit"))
    view.apply_snapshot(snapshot([(budget("t", limit=5, period=budget_pb.PERIOD_TOTAL), 5)], now_s=time.time()))
    denied = view.check(CheckRequest())
    assert (denied.http_status, denied.retry_after_s) == (402, None)
    assert "Retry-After" not in denied.response_headers
    assert json.loads(denied.response_body)["error"]["message"].startswith("out of credit: ")


def test_warn_only_over_its_limit_allows_with_a_warning_and_counts_a_shadow_denial() -> None:
    view = view_with((budget("w", limit=1_000, mode=budget_pb.MODE_WARN_ONLY), 990))
    near = view.check(CheckRequest())
    over = view.check(cost_of(50))
    assert (near.allowed, near.verdict) == (True, Verdict.WARN)  # past the 80% threshold
    assert (over.allowed, over.verdict) == (True, Verdict.WARN)
    (figures,) = view.budgets()
    assert (figures.shadow_denied_requests, figures.denied_requests, figures.reserved) == (1, 0, 50)


def test_a_lease_bounds_this_gateways_own_usage_although_the_limit_is_not_reached() -> None:
    clock = Clock()
    view = BudgetView(clock=clock)
    view.apply_config(priced_config())
    shared = budget("s", limit=9_000)
    view.apply_snapshot(snapshot([(shared, 3_000)], now_s=clock.now, leases=[("s", 2_000, 3)]))
    assert view.check(cost_of(1_500)).allowed
    lease_denied = view.check(cost_of(600))
    assert lease_denied.allowed is False
    assert lease_denied.denied_by_budget_id == "s"
    assert "share" in lease_denied.message
    assert lease_denied.retry_after_s == 10  # the heartbeat interval: the next snapshot renews the lease
    (figures,) = view.budgets()
    assert (figures.lease_allowance, figures.lease_sharing_gateways, figures.remaining) == (2_000, 3, 4_500)


def test_a_new_window_while_cut_off_starts_at_zero_with_the_limit_shared_out() -> None:
    clock = Clock()
    view = BudgetView(clock=clock)
    view.apply_config(priced_config())
    day = budget("d", limit=9_000)
    view.apply_snapshot(snapshot([(day, 9_000)], now_s=clock.now, leases=[("d", 0, 3)]))
    assert view.check(CheckRequest()).allowed is False
    clock.now += 86_400
    (figures,) = view.budgets()
    assert (figures.server_used, figures.lease_allowance) == (0, 3_000)
    assert view.check(cost_of(3_000)).allowed
    assert view.check(cost_of(1)).allowed is False


def test_events_a_snapshot_includes_out_of_order_are_counted_once() -> None:
    """Batches 1-2 and 5-6 committed (the later one first); 3-4 are in flight: only they still count locally."""
    clock = Clock()
    view = view_with((budget("b", limit=10**9), 0), clock=clock)
    for sequence in range(1, 7):
        view.count_event(usage_event(sequence, cost_micros=100 * sequence, now_s=clock.now))
    assert view.budgets()[0].pending_used == 100 * 21
    server_used = 100 * (1 + 2 + 5 + 6)
    view.apply_snapshot(
        snapshot([(budget("b", limit=10**9), server_used)], now_s=clock.now, through=2, ranges=[(5, 6)])
    )
    (figures,) = view.budgets()
    assert (figures.server_used, figures.pending_used, figures.used) == (server_used, 700, 100 * 21)
    # The ack of 3-4 comes later: it keeps their digests (still not included); 4 was rejected: it stops counting.
    rows = view.acknowledged([3, 4], rejected=[4])
    assert [row[0] for row in rows] == [3]
    assert view.budgets()[0].pending_used == 300
    assert 4 not in view.included
    assert 6 in view.included
    assert 3 not in view.included


def test_the_included_set_merges_ranges_into_the_watermark() -> None:
    included = IncludedSet.of(4, [(9, 10), (5, 6), (12, 12), (7, 7)])
    assert (included.through, included.ranges) == (7, ((9, 10), (12, 12)))
    assert [s for s in range(1, 14) if s in included] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 12]


def test_scopes_match_the_request_as_on_the_server() -> None:
    view = view_with(
        (budget("key", limit=10, scope=budget_pb.Scope(environment_id="agent-test", api_key_id="k1")), 10),
        (budget("tag", limit=10, scope=budget_pb.Scope(environment_id="agent-test", tags={"team": "a"})), 10),
        (budget("resolved", limit=10, scope=budget_pb.Scope(environment_id="agent-test", resolved_model="m")), 10),
    )
    assert view.check(CheckRequest(api_key_id="k2")).allowed
    assert view.check(CheckRequest(api_key_id="k1")).denied_by_budget_id == "key"
    assert view.check(CheckRequest(tags={"team": "a", "x": "y"})).denied_by_budget_id == "tag"
    assert view.check(CheckRequest(tags={"team": "b"})).allowed


def test_without_any_budget_state_the_config_decides_between_fail_open_and_deny() -> None:
    open_view, closed_view = BudgetView(), BudgetView()
    open_view.apply_config(priced_config())
    closed_view.apply_config(priced_config(deny_when_state_unknown=True))
    assert open_view.check(CheckRequest()).allowed
    denied = closed_view.check(CheckRequest())
    assert (denied.allowed, denied.http_status) == (False, 429)
    assert "not known" in json.loads(denied.response_body)["error"]["message"]


def test_own_usage_is_held_only_while_a_budget_matches_it() -> None:
    """No budget in force (none received, or none applies): nothing is held and acks keep nothing; with budgets,
    only events some budget's scope matches."""
    view = BudgetView()
    view.apply_config(priced_config())
    for sequence in (1, 2, 3):
        view.count_event(usage_event(sequence, cost_micros=10, now_s=time.time()))
    assert (view.pending_digests, view.acknowledged([1, 2], rejected=[])) == (0, [])
    scoped = budget("b", limit=10**9, scope=budget_pb.Scope(environment_id="agent-test", user_id="alice"))
    view.apply_snapshot(snapshot([(scoped, 0)], now_s=time.time()))
    alice, bob = usage_event(4, cost_micros=10, now_s=time.time()), usage_event(5, cost_micros=10, now_s=time.time())
    alice.user_id, bob.user_id = "alice", "bob"
    view.count_event(alice)
    view.count_event(bob)
    assert view.pending_digests == 1
    assert [row[0] for row in view.acknowledged([4, 5], rejected=[])] == [4]
