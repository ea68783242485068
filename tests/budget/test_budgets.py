"""Budgets through the real BudgetService: CRUD, the window's stored usage counted at creation, checks."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.field_mask_pb2 import FieldMask

from budgeting.decision import Metric
from budgeting.scope import Scope
from budgeting.windows import Window
from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from services.budget.usage import event_amount, stored_usage
from services.server import ControlPlane
from services.storage import tables
from tests.clients import Tokens, bearer
from tests.telemetry.events import report, usage_event, varied_events


def _spend_budget(environment_id: str = "prod", **overrides: Any) -> pb.Budget:
    budget = pb.Budget(
        display_name="prod spend",
        scope=pb.Scope(environment_id=environment_id),
        metric=pb.METRIC_SPEND,
        limit=1_000_000,
        period=pb.PERIOD_MONTH,
        time_zone="Europe/Berlin",
        mode=pb.MODE_HARD_STOP,
        alert_threshold_percents=[50, 80, 100],
    )
    for name, value in overrides.items():
        if name == "scope":
            budget.scope.CopyFrom(value)
        else:
            setattr(budget, name, value)
    return budget


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_a_budget_is_created_once_per_request_id_and_read_back(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    await tokens.environment("prod")
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    request = pb.CreateBudgetRequest(budget=_spend_budget(), request_id="create-1")
    first = await stub.CreateBudget(request, metadata=admin)
    again = await stub.CreateBudget(request, metadata=admin)
    assert first.budget.budget_id.startswith("bud_")
    assert again.budget.budget_id == first.budget.budget_id
    assert first.budget.revision == 1
    assert first.status.used == 0
    assert first.status.state == pb.BUDGET_STATE_OK
    assert first.status.remaining == 1_000_000
    start = first.status.window_start_time.ToDatetime(tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    end = first.status.window_end_time.ToDatetime(tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    # A Berlin calendar month: local midnight of the 1st to local midnight of the next 1st.
    assert (start.day, start.hour, start.minute, end.day, end.hour) == (1, 0, 0, 1, 0)
    assert start <= datetime.now(UTC) < end
    listed = await stub.ListBudgets(pb.ListBudgetsRequest(), metadata=admin)
    assert [item.budget.budget_id for item in listed.budgets] == [first.budget.budget_id]
    got = await stub.GetBudget(pb.GetBudgetRequest(budget_id=first.budget.budget_id), metadata=admin)
    assert got.budget == first.budget


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"display_name": ""}, "budget.display_name: is required"),
        ({"limit": 0}, "budget.limit: must be positive"),
        ({"metric": 0}, "budget.metric: must be one of SPEND, TOKENS, REQUESTS"),
        ({"period": 9}, "budget.period: must be one of DAY, WEEK, MONTH, TOTAL"),
        ({"time_zone": "Mars/Olympus"}, "budget.time_zone: 'Mars/Olympus' is not an IANA time zone"),
        ({"mode": 0}, "budget.mode: must be one of HARD_STOP, WARN_ONLY"),
        ({"scope": pb.Scope(gateway_id="gw-1")}, "budget.scope.gateway_id: needs scope.environment_id"),
        ({"scope": pb.Scope(environment_id="nowhere")}, "budget.scope.environment_id: no environment 'nowhere'"),
    ],
)
async def test_a_bad_budget_is_refused_naming_the_field_and_nothing_is_stored(
    channel: grpc.aio.Channel,
    tokens: Tokens,
    admin_secret: str,
    control_plane: ControlPlane,
    change: dict[str, Any],
    field: str,
) -> None:
    await tokens.environment("prod")
    stub = pb_grpc.BudgetServiceStub(channel)
    code, details = await _code(
        stub.CreateBudget(pb.CreateBudgetRequest(budget=_spend_budget(**change)), metadata=bearer(admin_secret))
    )
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert details.startswith(field), details
    async with control_plane.engine.connect() as connection:
        assert await connection.scalar(sa.select(sa.func.count()).select_from(tables.budgets)) == 0


async def test_updates_need_the_current_revision_and_scope_cannot_change(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    await tokens.environment("prod")
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    created = (await stub.CreateBudget(pb.CreateBudgetRequest(budget=_spend_budget()), metadata=admin)).budget
    change = pb.Budget(budget_id=created.budget_id, limit=5_000_000, mode=pb.MODE_WARN_ONLY, revision=1)
    updated = await stub.UpdateBudget(
        pb.UpdateBudgetRequest(budget=change, update_mask=FieldMask(paths=["limit", "mode"])), metadata=admin
    )
    assert (updated.budget.limit, updated.budget.mode, updated.budget.revision) == (5_000_000, pb.MODE_WARN_ONLY, 2)
    assert updated.budget.display_name == "prod spend"
    code, details = await _code(
        stub.UpdateBudget(pb.UpdateBudgetRequest(budget=change, update_mask=FieldMask(paths=["limit"])), metadata=admin)
    )
    assert code is grpc.StatusCode.ABORTED
    assert "is at revision 2, not 1" in details
    code, details = await _code(
        stub.UpdateBudget(
            pb.UpdateBudgetRequest(
                budget=pb.Budget(budget_id=created.budget_id), update_mask=FieldMask(paths=["scope"])
            ),
            metadata=admin,
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("update_mask: cannot update scope")
    await stub.DeleteBudget(pb.DeleteBudgetRequest(budget_id=created.budget_id), metadata=admin)
    code, _ = await _code(stub.GetBudget(pb.GetBudgetRequest(budget_id=created.budget_id), metadata=admin))
    assert code is grpc.StatusCode.NOT_FOUND


async def test_a_reporter_sees_only_its_environments_budgets(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    for environment_id in ("prod", "dev"):
        await tokens.environment(environment_id)
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    prod = (await stub.CreateBudget(pb.CreateBudgetRequest(budget=_spend_budget("prod")), metadata=admin)).budget
    dev = (await stub.CreateBudget(pb.CreateBudgetRequest(budget=_spend_budget("dev")), metadata=admin)).budget
    organization = (await stub.CreateBudget(pb.CreateBudgetRequest(budget=_spend_budget("")), metadata=admin)).budget
    reporter = bearer(await tokens.reporter("prod"))
    listed = await stub.ListBudgets(pb.ListBudgetsRequest(), metadata=reporter)
    assert [item.budget.budget_id for item in listed.budgets] == [prod.budget_id]
    for hidden in (dev, organization):
        code, details = await _code(
            stub.GetBudgetStatus(pb.GetBudgetStatusRequest(budget_id=hidden.budget_id), metadata=reporter)
        )
        assert code is grpc.StatusCode.NOT_FOUND, details
    prod_for_admin = await stub.ListBudgets(pb.ListBudgetsRequest(environment_ids=["prod"]), metadata=admin)
    assert sorted(item.budget.budget_id for item in prod_for_admin.budgets) == sorted(
        [prod.budget_id, organization.budget_id]
    )
    everything = await stub.ListBudgets(pb.ListBudgetsRequest(page_size=2), metadata=admin)
    rest = await stub.ListBudgets(
        pb.ListBudgetsRequest(page_size=2, page_token=everything.next_page_token), metadata=admin
    )
    ids = [item.budget.budget_id for item in (*everything.budgets, *rest.budgets)]
    assert sorted(ids) == sorted([prod.budget_id, dev.budget_id, organization.budget_id])
    assert rest.next_page_token == ""


async def test_a_budget_made_mid_window_starts_from_the_windows_stored_usage_and_alerts_what_it_crossed(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, control_plane: ControlPlane
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    now = datetime.now(UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    in_window = max(day_start, now - timedelta(minutes=5))
    events = [
        usage_event(requested_model="gpt-4o", cost_micros=300_000, event_time=in_window, sequence=1),
        usage_event(requested_model="gpt-4o", cost_micros=250_000, event_time=in_window, sequence=2, attempt=2),
        usage_event(requested_model="other", cost_micros=999_000, event_time=in_window, sequence=3),
        # Yesterday (UTC): another window.
        usage_event(
            requested_model="gpt-4o", cost_micros=777_000, event_time=day_start - timedelta(hours=1), sequence=4
        ),
    ]
    events[0].tags["team"] = "search"
    ack = await report(channel, secret, events)
    assert ack.accepted_count == 4
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    budget = _spend_budget(
        scope=pb.Scope(environment_id="prod", gateway_id="gw-1", requested_model="gpt-4o"),
        period=pb.PERIOD_DAY,
        time_zone="UTC",
    )
    created = await stub.CreateBudget(pb.CreateBudgetRequest(budget=budget), metadata=admin)
    assert created.status.used == 550_000
    assert created.status.crossed_threshold_percent == 50
    assert created.status.state == pb.BUDGET_STATE_WARNING
    requests = await stub.CreateBudget(
        pb.CreateBudgetRequest(
            budget=_spend_budget(
                scope=pb.Scope(environment_id="prod", tags={"team": "search"}),
                metric=pb.METRIC_REQUESTS,
                limit=1,
                period=pb.PERIOD_DAY,
            )
        ),
        metadata=admin,
    )
    assert requests.status.used == 1
    assert requests.status.state == pb.BUDGET_STATE_EXCEEDED
    async with control_plane.engine.connect() as connection:
        alerts = (
            await connection.execute(
                sa.select(tables.budget_alerts.c.budget_id, tables.budget_alerts.c.threshold_percent).order_by(
                    tables.budget_alerts.c.budget_id, tables.budget_alerts.c.threshold_percent
                )
            )
        ).all()
    assert sorted(map(tuple, alerts)) == sorted(
        [
            (created.budget.budget_id, 50),
            (requests.budget.budget_id, 50),
            (requests.budget.budget_id, 80),
            (requests.budget.budget_id, 100),
        ]
    )


async def test_check_budget_denies_for_an_exhausted_hard_stop_and_a_gateway_checks_only_itself(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    await report(channel, secret, [usage_event(requested_model="gpt-4o", cost_micros=2_000_000, sequence=1)])
    stub = pb_grpc.BudgetServiceStub(channel)
    created = await stub.CreateBudget(
        pb.CreateBudgetRequest(budget=_spend_budget(scope=pb.Scope(environment_id="prod", requested_model="gpt-4o"))),
        metadata=bearer(admin_secret),
    )
    gateway = bearer(secret)
    denied = await stub.CheckBudget(
        pb.CheckBudgetRequest(request=pb.RequestAttributes(requested_model="gpt-4o")), metadata=gateway
    )
    assert denied.decision == pb.DECISION_DENY
    assert denied.http_status == 429
    assert denied.denied_by_budget_id == created.budget.budget_id
    assert "is exhausted: used 2000000 of 1000000 spend this month" in denied.message
    assert 0 < denied.retry_after.seconds <= 31 * 86_400 + 3600
    assert [verdict.budget.budget_id for verdict in denied.verdicts] == [created.budget.budget_id]
    allowed = await stub.CheckBudget(
        pb.CheckBudgetRequest(request=pb.RequestAttributes(requested_model="other")), metadata=gateway
    )
    assert allowed.decision == pb.DECISION_ALLOW
    assert list(allowed.verdicts) == []
    code, details = await _code(
        stub.CheckBudget(pb.CheckBudgetRequest(request=pb.RequestAttributes(gateway_id="gw-2")), metadata=gateway)
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert details.startswith("request.gateway_id:")


async def test_the_sql_backfill_and_the_python_rules_agree_on_every_scope(
    channel: grpc.aio.Channel, tokens: Tokens, control_plane: ControlPlane
) -> None:
    """Scope.matches_event + event_amount (what ingest will count) against scope_conditions + the SQL amounts
    (what a new budget backfills), over every combination of a few selector values."""
    await tokens.environment("prod")
    await tokens.environment("dev")
    events = varied_events(120, seed=11)
    for index, event in enumerate(events):
        event.event_id = str(uuid.UUID(int=index + 1, version=4))
    await report(channel, await tokens.gateway("prod", "gw-1"), events[:60])
    await report(channel, await tokens.gateway("dev", "gw-2"), events[60:])
    async with control_plane.engine.connect() as connection:
        rows = [dict(row._mapping) for row in await connection.execute(sa.select(tables.usage_events))]
        tag_rows = (await connection.execute(sa.select(tables.usage_event_tags))).all()
        gateways = {
            int(key): gateway_id
            for key, gateway_id in await connection.execute(
                sa.select(tables.gateways.c.gateway_key, tables.gateways.c.gateway_id)
            )
        }
        tags: dict[tuple[int, str], dict[str, str]] = {}
        for tag_row in tag_rows:
            tags.setdefault((tag_row.gateway_key, tag_row.event_id), {})[tag_row.tag_key] = tag_row.tag_value
        checked = 0
        for environment_id, gateway_id, model, user_id, tag in itertools.product(
            ("", "prod", "dev"),
            ("", "gw-1"),
            ("", "gpt-4o", "llama-3-70b"),
            ("", "user-3"),
            ((), (("team", "team-0"),), (("team", "team-2"),)),
        ):
            if gateway_id and not environment_id:
                continue
            scope = Scope(
                environment_id=environment_id, gateway_id=gateway_id, requested_model=model, user_id=user_id, tags=tag
            )
            for metric in Metric:
                expected = sum(
                    event_amount(metric, row)
                    for row in rows
                    if scope.covers_gateway(row["environment_id"], gateways[row["gateway_key"]])
                    and scope.matches_event(row, tags.get((row["gateway_key"], row["event_id"]), {}))
                )
                assert await stored_usage(connection, scope, metric, Window(0, None)) == expected, (scope, metric)
                checked += 1
    assert checked > 200
    assert any(event.tags for event in events)


async def test_a_denial_is_answered_as_the_environments_config_says(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, control_plane: ControlPlane
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    await report(channel, secret, [usage_event(cost_micros=2_000_000, sequence=1)])
    admin = bearer(admin_secret)
    config = config_pb.EnvironmentConfig()
    config.budget_enforcement.deny_http_status = 402
    config.budget_enforcement.deny_message = "Spend limit reached"
    await config_grpc.ConfigServiceStub(channel).PutConfig(
        config_pb.PutConfigRequest(environment_id="prod", config=config), metadata=admin
    )
    stub = pb_grpc.BudgetServiceStub(channel)
    await stub.CreateBudget(pb.CreateBudgetRequest(budget=_spend_budget()), metadata=admin)
    denied = await stub.CheckBudget(pb.CheckBudgetRequest(request=pb.RequestAttributes()), metadata=bearer(secret))
    assert denied.decision == pb.DECISION_DENY
    assert denied.http_status == 402
    assert denied.message.startswith("Spend limit reached: budget 'prod spend'")
