"""Budget alerts: raised once per threshold and window, listed, watched, and delivered to signed webhooks from
a durable outbox, retried until the receiver takes them, across a control-plane restart."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from services.budget import store
from services.budget.store import Increment
from services.server import ControlPlane
from services.storage import tables
from services.storage.engine import create_engine
from services.storage.uow import UnitOfWork
from tests.budget.settings import budget_settings
from tests.clients import Tokens, bearer
from tests.telemetry.events import report, usage_event, wait_until


class Receiver:
    """A webhook receiver on a loopback port; `status` is what it answers."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/budgets"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _budget() -> pb.Budget:
    return pb.Budget(
        display_name="search team",
        scope=pb.Scope(environment_id="prod"),
        metric=pb.METRIC_SPEND,
        limit=1_000_000,
        period=pb.PERIOD_TOTAL,
        mode=pb.MODE_WARN_ONLY,
        alert_threshold_percents=[50, 100],
    )


async def _spend(channel: grpc.aio.Channel, tokens: Tokens, cost_micros: int) -> None:
    secret = await tokens.gateway("prod", "gw-1")
    await report(channel, secret, [usage_event(cost_micros=cost_micros, sequence=1)])


async def test_an_alert_is_delivered_signed_with_its_idempotency_key_after_the_receiver_recovers(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, receiver: Receiver
) -> None:
    await tokens.environment("prod")
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    created = await stub.CreateWebhook(
        pb.CreateWebhookRequest(webhook=pb.Webhook(url=receiver.url, environment_id="prod"), request_id="hook-1"),
        metadata=admin,
    )
    secret = created.secret
    assert secret.startswith("mwhsec_")
    again = await stub.CreateWebhook(
        pb.CreateWebhookRequest(webhook=pb.Webhook(url=receiver.url, environment_id="prod"), request_id="hook-1"),
        metadata=admin,
    )
    assert (again.webhook.webhook_id, again.secret) == (created.webhook.webhook_id, "")
    receiver.status = 503
    await _spend(channel, tokens, 600_000)
    budget = (await stub.CreateBudget(pb.CreateBudgetRequest(budget=_budget()), metadata=admin)).budget

    async def failing() -> bool:
        hooks = await stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=admin)
        return len(receiver.received) >= 2 and hooks.webhooks[0].delivery_state == pb.WEBHOOK_DELIVERY_STATE_FAILING

    await asyncio.wait_for(wait_until(failing), 30)
    hook = (await stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=admin)).webhooks[0]
    assert hook.last_error == "HTTP 503"
    assert hook.pending_deliveries == 1
    receiver.status = 200

    async def delivered() -> bool:
        hooks = await stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=admin)
        return hooks.webhooks[0].pending_deliveries == 0

    await asyncio.wait_for(wait_until(delivered), 30)
    alerts = (await stub.ListBudgetAlerts(pb.ListBudgetAlertsRequest(), metadata=admin)).alerts
    assert [(a.budget_id, a.threshold_percent, a.used) for a in alerts] == [(budget.budget_id, 50, 600_000)]
    keys = {headers["idempotency-key"] for headers, _ in receiver.received}
    assert keys == {alerts[0].alert_id}
    headers, body = receiver.received[-1]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-meterwire-signature"] == expected
    document = json.loads(body)
    assert document["type"] == "budget.threshold_crossed"
    assert (document["budget_id"], document["threshold_percent"], document["used"]) == (budget.budget_id, 50, 600_000)
    assert document["scope"] == {"environment_id": "prod"}
    hook = (await stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=admin)).webhooks[0]
    assert hook.delivery_state == pb.WEBHOOK_DELIVERY_STATE_OK
    assert hook.last_error == ""


async def test_a_delivery_pending_at_shutdown_is_sent_after_a_restart_with_the_same_key(
    migrated_database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 500
    settings = budget_settings(migrated_database_url, tmp_path / "var")
    async with ControlPlane(settings) as plane, grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        admin_secret = settings.admin_token_path.read_text().strip()
        tokens = Tokens(channel, admin_secret)
        await tokens.environment("prod")
        stub = pb_grpc.BudgetServiceStub(channel)
        admin = bearer(admin_secret)
        await stub.CreateWebhook(pb.CreateWebhookRequest(webhook=pb.Webhook(url=receiver.url)), metadata=admin)
        await _spend(channel, tokens, 1_500_000)
        await stub.CreateBudget(pb.CreateBudgetRequest(budget=_budget()), metadata=admin)
        await asyncio.wait_for(wait_until(lambda: _async_true(len(receiver.received) >= 2)), 30)
    failed_keys = {headers["idempotency-key"] for headers, _ in receiver.received}
    assert len(failed_keys) == 2  # 50 % and 100 %
    receiver.received.clear()
    receiver.status = 200
    async with ControlPlane(settings):
        await asyncio.wait_for(wait_until(lambda: _async_true(len(receiver.received) >= 2)), 30)
        await asyncio.sleep(0.3)
    assert {headers["idempotency-key"] for headers, _ in receiver.received} == failed_keys
    assert len(receiver.received) == 2


async def _next_alert(watch: Any) -> pb.Alert:
    response: pb.WatchBudgetAlertsResponse = await asyncio.wait_for(watch.read(), 10)
    return response.alert


async def _async_true(value: bool) -> bool:
    return value


async def test_alerts_are_listed_newest_first_and_watched_as_they_are_raised(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    await tokens.environment("prod")
    stub = pb_grpc.BudgetServiceStub(channel)
    admin = bearer(admin_secret)
    watch = stub.WatchBudgetAlerts(pb.WatchBudgetAlertsRequest(), metadata=admin)
    await asyncio.sleep(0.2)
    await _spend(channel, tokens, 1_000_000)
    budget = (await stub.CreateBudget(pb.CreateBudgetRequest(budget=_budget()), metadata=admin)).budget
    seen = [await _next_alert(watch) for _ in range(2)]
    watch.cancel()
    assert [alert.threshold_percent for alert in seen] == [50, 100]
    listed = await stub.ListBudgetAlerts(
        pb.ListBudgetAlertsRequest(budget_id=budget.budget_id, page_size=1), metadata=admin
    )
    assert [a.threshold_percent for a in listed.alerts] == [100]
    rest = await stub.ListBudgetAlerts(
        pb.ListBudgetAlertsRequest(budget_id=budget.budget_id, page_size=1, page_token=listed.next_page_token),
        metadata=admin,
    )
    assert [a.threshold_percent for a in rest.alerts] == [50]
    replay = stub.WatchBudgetAlerts(pb.WatchBudgetAlertsRequest(after_alert_id=rest.alerts[0].alert_id), metadata=admin)
    assert (await _next_alert(replay)).alert_id == listed.alerts[0].alert_id
    replay.cancel()


async def test_two_replicas_crossing_a_threshold_at_once_raise_one_alert(
    migrated_database_url: str, tmp_path: Path
) -> None:
    settings = budget_settings(migrated_database_url, tmp_path / "var")
    async with ControlPlane(settings) as plane:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            admin = bearer(settings.admin_token_path.read_text().strip())
            await Tokens(channel, settings.admin_token_path.read_text().strip()).environment("prod")
            stub = pb_grpc.BudgetServiceStub(channel)
            await stub.CreateWebhook(
                pb.CreateWebhookRequest(webhook=pb.Webhook(url="https://example.invalid/h")), metadata=admin
            )
            budget_id = (
                await stub.CreateBudget(pb.CreateBudgetRequest(budget=_budget()), metadata=admin)
            ).budget.budget_id
        engine = plane.engine
        async with UnitOfWork(engine) as uow:
            budgets = {b.budget_id: b for b in await uow.connection.run_sync(store.active_budgets)}
        replica = create_engine(settings.resolved_database_url)
        try:

            async def add(target: Any, amount: int) -> int:
                async with UnitOfWork(target) as uow:
                    changed = await uow.connection.run_sync(
                        store.add_to_windows, {(budget_id, 0): Increment(None, amount)}, now_us=store.now_us()
                    )
                    alerts = await uow.connection.run_sync(store.raise_alerts, budgets, changed, now=datetime.now(UTC))
                    await uow.commit()
                    return len(alerts)

            raised = await asyncio.gather(add(engine, 600_000), add(replica, 600_000))
        finally:
            await replica.dispose()
        async with engine.connect() as connection:
            stored = (await connection.execute(sa.select(tables.budget_alerts.c.threshold_percent))).scalars().all()
            queued = await connection.scalar(sa.select(sa.func.count()).select_from(tables.webhook_deliveries))
            used = await connection.scalar(sa.select(tables.budget_windows.c.used))
    assert used == 1_200_000
    assert sorted(stored) == [50, 100]
    assert sum(raised) == 2
    assert queued == 2


async def test_a_webhook_url_must_be_https_or_loopback(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    stub = pb_grpc.BudgetServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CreateWebhook(
            pb.CreateWebhookRequest(webhook=pb.Webhook(url="http://10.0.0.8/hook")), metadata=bearer(admin_secret)
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("webhook.url:")
