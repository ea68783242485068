"""Builders of real BudgetSnapshot and config messages for budget tests of the agent."""

from __future__ import annotations

from collections.abc import Sequence

from budgeting.windows import Period, time_zone, window_at
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb

MODEL = "gpt-test"
INPUT_PRICE = 1_000_000  # 1 unit (1,000,000 micros) per million tokens: 1 micro per input token
OUTPUT_PRICE = 2_000_000  # 2 micros per output token


def budget(
    budget_id: str,
    *,
    limit: int,
    metric: int = budget_pb.METRIC_SPEND,
    mode: int = budget_pb.MODE_HARD_STOP,
    period: int = budget_pb.PERIOD_DAY,
    scope: budget_pb.Scope | None = None,
    thresholds: Sequence[int] = (),
) -> budget_pb.Budget:
    return budget_pb.Budget(
        budget_id=budget_id,
        display_name=f"budget {budget_id}",
        scope=scope or budget_pb.Scope(environment_id="agent-test"),
        metric=metric,  # type: ignore[arg-type]
        limit=limit,
        currency="USD",
        period=period,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        alert_threshold_percents=list(thresholds),
    )


def window_start_s(period: int, now_s: float) -> int:
    return window_at(Period(period), time_zone(""), now_s).start_s


def snapshot(
    budgets: Sequence[tuple[budget_pb.Budget, int]],
    *,
    now_s: float,
    through: int = 0,
    ranges: Sequence[tuple[int, int]] = (),
    leases: Sequence[tuple[str, int, int]] = (),
) -> budget_pb.BudgetSnapshot:
    """A snapshot of `budgets` with the server's used figure each, for the window holding `now_s`."""
    message = budget_pb.BudgetSnapshot(included_through_sequence=through)
    message.snapshot_time.FromNanoseconds(int(now_s * 1e9))
    for item, used in budgets:
        verdict = message.budgets.add(budget=item)
        verdict.status.budget_id = item.budget_id
        verdict.status.window_start_time.FromSeconds(window_start_s(item.period, now_s))
        verdict.status.used = used
        verdict.status.limit = item.limit
    for first, last in ranges:
        message.included_ranges.add(first=first, last=last)
    by_id = {item.budget_id: item for item, _ in budgets}
    for budget_id, allowance, sharing in leases:
        lease = message.leases.add(budget_id=budget_id, allowance=allowance, sharing_gateways=sharing)
        lease.window_start_time.FromSeconds(window_start_s(by_id[budget_id].period, now_s))
    return message


def priced_config(version: int = 1, **enforcement: object) -> config_pb.ConfigVersion:
    config = config_pb.EnvironmentConfig(
        pricing=config_pb.PricingTable(
            currency="USD",
            models=[
                config_pb.ModelPrice(
                    model=MODEL, input_micros_per_million=INPUT_PRICE, output_micros_per_million=OUTPUT_PRICE
                )
            ],
        ),
        budget_enforcement=config_pb.BudgetEnforcement(**enforcement),  # type: ignore[arg-type]
    )
    return config_pb.ConfigVersion(environment_id="agent-test", version=version, config=config)


def usage_event(sequence: int, *, cost_micros: int, now_s: float, attempt: int = 1) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        event_id=f"ev-{sequence}", attempt=attempt, requested_model=MODEL, resolved_model=MODEL, sequence=sequence
    )
    event.cost_micros = cost_micros
    event.event_time.FromNanoseconds(int(now_s * 1e9))
    return event
