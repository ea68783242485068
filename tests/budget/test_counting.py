"""Live counting at ingest: every budget window equals the sum of its stored events' measures, whatever the
batches repeat, resend or send late, and budgets made while usage streams in miss and double count nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgeting.decision import Metric
from budgeting.windows import Period, Window
from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from meterwire.common.v1 import usage_pb2
from services.budget.records import budget_from_row
from services.budget.usage import stored_usage
from services.server import ControlPlane
from services.storage import tables
from tests.budget.settings import budget_settings
from tests.clients import Tokens, bearer
from tests.telemetry.events import report, stamp

_MODELS = ("gpt-4o", "claude", "llama")
_TEAMS = ("search", "ads")


async def _assert_windows_match_stored_usage(engine: Any, environment_id: str | None = None) -> int:
    """Every window of every budget (of the environment) equals the SQL sum of its stored events in that window,
    and no window exists before the budget's first window. Returns how many windows were checked."""
    checked = 0
    async with engine.connect() as connection:
        budget_rows = (await connection.execute(sa.select(tables.budgets))).all()
        for row in budget_rows:
            budget = budget_from_row(row)
            if environment_id is not None and budget.environment_id != environment_id:
                continue
            windows = (
                await connection.execute(
                    sa.select(tables.budget_windows).where(tables.budget_windows.c.budget_id == budget.budget_id)
                )
            ).all()
            for window in windows:
                assert window.window_start >= budget.first_window_start
                expected = await stored_usage(
                    connection, budget.rule.scope, budget.rule.metric, Window(window.window_start, window.window_end)
                )
                assert window.used == expected, (budget.rule, window)
                checked += 1
            # Nothing in scope was left out: the windows together hold all stored usage since the first one.
            total = await stored_usage(
                connection, budget.rule.scope, budget.rule.metric, Window(budget.first_window_start, None)
            )
            assert sum(window.used for window in windows) == total, budget.rule
    return checked


def _event(spec: tuple[int, int, int, int, int, bool], now: datetime) -> usage_pb2.UsageEvent:
    number, model, team, minutes_ago, cost, retry = spec
    event = usage_pb2.UsageEvent(
        event_id=str(uuid.UUID(int=number + 1, version=4)),
        request_id=f"req-{number}",
        attempt=2 if retry else 1,
        event_time=stamp(now - timedelta(minutes=minutes_ago)),
        requested_model=_MODELS[model],
        resolved_model=_MODELS[model],
        provider="p",
        user_id=f"user-{number % 3}",
        status_code=200,
        sequence=number + 1,
    )
    if cost:
        event.cost_micros = cost
    if number % 4:
        event.tokens.input = number * 7
        event.tokens.output = number
    if team < len(_TEAMS):
        event.tags["team"] = _TEAMS[team]
    return event


_SPECS = st.lists(
    st.tuples(
        st.integers(0, 400),  # event number: its id, so equal numbers are duplicates
        st.integers(0, len(_MODELS) - 1),
        st.integers(0, len(_TEAMS)),  # == len: no tag
        st.sampled_from([0, 1, 30, 60 * 30, 60 * 24 * 3]),  # minutes ago: now, this hour, yesterday-ish, late
        st.sampled_from([0, 1, 250_000, 10**9]),
        st.booleans(),
    ),
    min_size=1,
    max_size=60,
)

_BUDGETS: list[tuple[pb.Scope, pb.Metric.ValueType, pb.Period.ValueType]] = [
    (pb.Scope(environment_id="{env}"), pb.METRIC_SPEND, pb.PERIOD_DAY),
    (pb.Scope(environment_id="{env}", requested_model="gpt-4o"), pb.METRIC_TOKENS, pb.PERIOD_TOTAL),
    (pb.Scope(environment_id="{env}", gateway_id="gw-1", user_id="user-1"), pb.METRIC_REQUESTS, pb.PERIOD_DAY),
    (pb.Scope(environment_id="{env}", tags={"team": "search"}), pb.METRIC_SPEND, pb.PERIOD_WEEK),
    (
        pb.Scope(environment_id="{env}", requested_model="claude", tags={"team": "ads"}),
        pb.METRIC_REQUESTS,
        pb.PERIOD_MONTH,
    ),
    (pb.Scope(), pb.METRIC_TOKENS, pb.PERIOD_DAY),
]


async def _create_budgets(stub: Any, admin: Any, environment_id: str) -> None:
    for scope, metric, period in _BUDGETS:
        concrete = pb.Scope()
        concrete.CopyFrom(scope)
        if concrete.environment_id:
            concrete.environment_id = environment_id
        budget = pb.Budget(
            display_name=f"{environment_id} {metric} {period}",
            scope=concrete,
            metric=metric,
            limit=10**12,
            period=period,
            time_zone="America/New_York",
            mode=pb.MODE_HARD_STOP,
        )
        await stub.CreateBudget(pb.CreateBudgetRequest(budget=budget), metadata=admin)


_EXAMPLES = iter(range(10**6))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=_SPECS, resend=st.booleans())
async def test_budget_windows_equal_the_sum_of_their_stored_events(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, control_plane: ControlPlane, specs: Any, resend: bool
) -> None:
    environment_id = f"env-{next(_EXAMPLES)}"
    await tokens.environment(environment_id)
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    await _create_budgets(stub, admin, environment_id)
    now = datetime.now(UTC)
    events = [_event(spec, now) for spec in specs]
    gateway = await tokens.gateway(environment_id, "gw-1")
    other = await tokens.gateway(environment_id, "gw-2")
    half = len(events) // 2
    batches = [(gateway, events[:half]), (other, events[half:])] * (2 if resend else 1)  # resent: all duplicates
    for secret, batch in batches:
        if batch:
            await report(channel, secret, batch)
    assert await _assert_windows_match_stored_usage(control_plane.engine, environment_id) >= 0


async def test_budgets_made_while_usage_streams_in_count_every_event_once(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, control_plane: ControlPlane
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    now = datetime.now(UTC)
    stop = asyncio.Event()

    async def ingest() -> int:
        number = 0
        while not stop.is_set():
            batch = [_event((number + i, i % 3, i % 3, 0, 1000 + i, False), now) for i in range(20)]
            await report(channel, secret, batch)
            number += 20
        return number

    sender = asyncio.create_task(ingest())
    for _ in range(4):
        await _create_budgets(stub, admin, "prod")
        await asyncio.sleep(0.05)
    stop.set()
    sent = await sender
    assert sent >= 40
    checked = await _assert_windows_match_stored_usage(control_plane.engine)
    assert checked >= 4 * len(_BUDGETS)


async def test_two_replicas_ingesting_into_shared_budgets_stay_exact(
    migrated_database_url: str, tmp_path: Path
) -> None:
    first_settings = budget_settings(migrated_database_url, tmp_path / "a")
    async with (
        ControlPlane(first_settings) as first,
        ControlPlane(budget_settings(migrated_database_url, tmp_path / "b")) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
    ):
        admin_secret = first_settings.admin_token_path.read_text().strip()
        tokens = Tokens(one, admin_secret)
        await tokens.environment("prod")
        await _create_budgets(pb_grpc.BudgetServiceStub(one), bearer(admin_secret), "prod")
        gateway = await tokens.gateway("prod", "gw-1")
        now = datetime.now(UTC)
        batches = [
            [_event((b * 50 + i, i % 3, i % 3, 0, 5_000 + i, i % 5 == 0), now) for i in range(50)] for b in range(16)
        ]
        await asyncio.gather(
            *(report(one if index % 2 else two, gateway, batch) for index, batch in enumerate(batches)),
            # Every batch also sent through the other replica at the same time: duplicates race.
            *(report(two if index % 2 else one, gateway, batch) for index, batch in enumerate(batches)),
        )
        checked = await _assert_windows_match_stored_usage(first.engine)
    assert checked >= len(_BUDGETS)


def test_the_budget_fixtures_cover_every_metric_and_period() -> None:
    assert {metric for _, metric, _ in _BUDGETS} == {m.value for m in Metric}
    assert {period for _, _, period in _BUDGETS} == {p.value for p in Period}
