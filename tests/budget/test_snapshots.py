"""WatchBudgetStates: the figures and the included set agree exactly, whatever order batches commit in; leases;
pushes on change, periodically and never after shutdown; only a gateway's own environment."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from budgeting.decision import Metric, Mode
from budgeting.scope import Scope
from budgeting.windows import Period
from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc
from services.budget.changes import BudgetChanges
from services.budget.service import BudgetDraft, BudgetService
from services.budget.snapshots import BudgetSnapshots
from services.server import ControlPlane
from services.storage import tables
from tests.budget.snapshots import (
    INVALID_COST,
    SnapshotStream,
    create_budget,
    included,
    ranges,
    snapshot_settings,
    spool_event,
    stream_batches,
    used_of,
)
from tests.clients import Tokens, bearer
from tests.telemetry.events import report, wait_until

REFRESH = timedelta(milliseconds=400)
"""The heartbeat interval these servers tell agents, so the periodic refresh is seen within a test."""


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(
        snapshot_settings(migrated_database_url, tmp_path / "var", heartbeat_interval=REFRESH)
    ) as plane:
        yield plane


async def _gateway(tokens: Tokens, environment_id: str, gateway_id: str = "gw") -> str:
    await tokens.environment(environment_id)
    return await tokens.gateway(environment_id, gateway_id)


async def test_a_later_batch_committed_first_is_included_by_its_range_then_folds_into_the_watermark(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    secret = await _gateway(tokens, "prod")
    budget = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod"))
    batch_a = [spool_event(sequence, 1_000 + sequence) for sequence in range(1, 11)]
    batch_b = [spool_event(sequence, 1_000 + sequence) for sequence in range(11, 21)]
    async with SnapshotStream(channel, secret, "prod") as snapshots:
        first = await snapshots.next()
        assert (first.included_through_sequence, ranges(first), used_of(first, budget.budget_id)) == (0, [], 0)

        # B (11-20) commits before A (1-10): the agent has no contiguous acks yet, so it promises nothing.
        (ack_b,) = await stream_batches(channel, secret, [(batch_b, 0)])
        assert ack_b.accepted_count == 10
        after_b = await snapshots.next(lambda s: bool(s.included_ranges))
        assert after_b.included_through_sequence == 0
        assert ranges(after_b) == [(11, 20)]
        assert used_of(after_b, budget.budget_id) == sum(e.cost_micros for e in batch_b)

        # A arrives: its range touches the watermark, so both fold into it.
        (ack_a,) = await stream_batches(channel, secret, [(batch_a, 0)])
        assert ack_a.accepted_count == 10
        after_a = await snapshots.next(lambda s: s.included_through_sequence > 0)
        assert (after_a.included_through_sequence, ranges(after_a)) == (20, [])
        assert used_of(after_a, budget.budget_id) == sum(e.cost_micros for e in batch_a + batch_b)

        # The agent's promise moves the watermark over events committed earlier (or resent as duplicates).
        late = [spool_event(25, 7)]
        await stream_batches(channel, secret, [(late, 24)])
        promised = await snapshots.next(lambda s: s.included_through_sequence == 25)
        assert ranges(promised) == []
        assert used_of(promised, budget.budget_id) == sum(e.cost_micros for e in batch_a + batch_b + late)


async def test_a_batch_whose_events_are_all_rejected_or_all_duplicates_still_joins_the_included_set(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    secret = await _gateway(tokens, "prod")
    budget = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod"))
    rejected = [spool_event(sequence, INVALID_COST) for sequence in range(5, 8)]
    stored = [spool_event(sequence, 100) for sequence in range(10, 13)]
    async with SnapshotStream(channel, secret, "prod") as snapshots:
        await snapshots.next()
        (ack,) = await stream_batches(channel, secret, [(rejected, 0)])
        assert (ack.accepted_count, ack.rejected_count) == (0, 3)
        after_rejected = await snapshots.next(lambda s: bool(s.included_ranges))
        assert ranges(after_rejected) == [(5, 7)]
        assert used_of(after_rejected, budget.budget_id) == 0

        await stream_batches(channel, secret, [(stored, 0)])
        await snapshots.next(lambda s: ranges(s) == [(5, 7), (10, 12)])
        # The same batch again (as resent after a lost ack): all duplicates, still acknowledged and recorded.
        (again,) = await stream_batches(channel, secret, [(stored, 0)])
        assert (again.accepted_count, again.duplicate_count) == (0, 3)
        filled = [spool_event(sequence, 1) for sequence in (1, 2, 3, 4, 8, 9)]
        await stream_batches(channel, secret, [(filled, 0)])
        whole = await snapshots.next(lambda s: s.included_through_sequence == 12)
        assert ranges(whole) == []
        assert used_of(whole, budget.budget_id) == 300 + 6


_EXAMPLES = iter(range(10**6))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
    resend=st.booleans(),
)
async def test_every_snapshot_counts_exactly_the_events_its_included_set_names(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, sizes: list[int], seed: int, resend: bool
) -> None:
    rng = random.Random(seed)
    environment_id = f"env-{next(_EXAMPLES)}"  # examples share the server: each has its own gateway
    secret = await _gateway(tokens, environment_id)
    budget = await create_budget(channel, admin_secret, pb.Scope(environment_id=environment_id))
    # The agent's spool, cut into batches of consecutive sequence numbers; some events are refused.
    costs: dict[int, int] = {}
    batches: list[list[Any]] = []
    sequence = 0
    for size in sizes:
        batch = []
        for _ in range(size):
            sequence += 1
            cost = INVALID_COST if rng.random() < 0.15 else rng.randrange(1, 10_000)
            costs[sequence] = cost
            batch.append(spool_event(sequence, cost, gateway=environment_id))
        batches.append(batch)
    order = list(range(len(batches)))
    rng.shuffle(order)
    if resend:
        order += rng.sample(order, k=max(1, len(order) // 2))

    def expected(snapshot: pb.BudgetSnapshot) -> int:
        return sum(cost for seq, cost in costs.items() if cost != INVALID_COST and included(snapshot, seq))

    acked: set[int] = set()
    async with SnapshotStream(channel, secret, environment_id) as snapshots:
        for index in order:
            # A truthful promise: any watermark up to the contiguous run of acknowledged sequence numbers.
            contiguous = 0
            while contiguous + 1 in acked:
                contiguous += 1
            await stream_batches(channel, secret, [(batches[index], rng.randint(0, contiguous))])
            acked.update(event.sequence for event in batches[index])
        final = await snapshots.next(lambda s: s.included_through_sequence == sequence)
        assert ranges(final) == []
    for snapshot in snapshots.all:
        assert used_of(snapshot, budget.budget_id) == expected(snapshot), (
            snapshot.included_through_sequence,
            ranges(snapshot),
        )
    assert used_of(final, budget.budget_id) == sum(cost for cost in costs.values() if cost != INVALID_COST)


async def test_leases_share_what_remains_among_the_gateways_a_budget_covers(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    secrets: dict[str, str] = {}
    await tokens.environment("prod")
    await tokens.environment("dev")
    for name in ("gw-1", "gw-2", "gw-3"):
        secrets[name] = await tokens.gateway("prod", name)
    dev = await tokens.gateway("dev", "gw-9")
    shared = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod"), limit=1_000)
    own = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod", gateway_id="gw-1"), limit=900)
    warn = await create_budget(
        channel, admin_secret, pb.Scope(environment_id="prod"), limit=500, mode=pb.MODE_WARN_ONLY
    )
    organization = await create_budget(channel, admin_secret, pb.Scope(), limit=10_001)
    other_gateway = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod", gateway_id="gw-2"))
    # Every gateway makes contact (usage registers it); gw-1 spends 100, gw-2 spends 50, dev spends 1.
    await report(channel, secrets["gw-1"], [spool_event(1, 100, gateway="gw-1")])
    await report(channel, secrets["gw-2"], [spool_event(1, 50, gateway="gw-2")])
    await report(channel, secrets["gw-3"], [spool_event(1, 0, gateway="gw-3")])
    await report(channel, dev, [spool_event(1, 1, gateway="dev")])
    async with SnapshotStream(channel, secrets["gw-1"], "prod") as snapshots:
        snapshot = await snapshots.next()
    budget_ids = [verdict.budget.budget_id for verdict in snapshot.budgets]
    assert other_gateway.budget_id not in budget_ids
    assert budget_ids == sorted([shared.budget_id, own.budget_id, warn.budget_id, organization.budget_id])
    leases = {lease.budget_id: lease for lease in snapshot.leases}
    assert warn.budget_id not in leases  # warn-only budgets never deny, so they hold no lease
    assert (leases[shared.budget_id].sharing_gateways, leases[shared.budget_id].allowance) == (3, (1_000 - 150) // 3)
    assert (leases[own.budget_id].sharing_gateways, leases[own.budget_id].allowance) == (1, 900 - 100)
    assert (leases[organization.budget_id].sharing_gateways, leases[organization.budget_id].allowance) == (
        4,
        (10_001 - 151) // 4,
    )
    status = {verdict.budget.budget_id: verdict.status for verdict in snapshot.budgets}
    assert leases[shared.budget_id].window_start_time == status[shared.budget_id].window_start_time


async def test_an_exhausted_budget_leases_nothing(channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str) -> None:
    secret = await _gateway(tokens, "prod")
    budget = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod"), limit=10)
    await report(channel, secret, [spool_event(1, 25)])
    async with SnapshotStream(channel, secret, "prod") as snapshots:
        snapshot = await snapshots.next(lambda s: used_of(s, budget.budget_id) == 25)
    assert [(lease.budget_id, lease.allowance, lease.sharing_gateways) for lease in snapshot.leases] == [
        (budget.budget_id, 0, 1)
    ]


async def test_snapshots_are_pushed_on_usage_and_budget_changes_and_refreshed_periodically(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str
) -> None:
    secret = await _gateway(tokens, "prod")
    budget = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod"), limit=1_000)
    stub = pb_grpc.BudgetServiceStub(channel)
    async with SnapshotStream(channel, secret, "prod") as snapshots:
        first = await snapshots.next()
        # Nothing changes: the heartbeat-interval refresh still sends fresh snapshots.
        second = await snapshots.next()
        third = await snapshots.next()
        times = [s.snapshot_time.ToDatetime() for s in (first, second, third)]
        assert times == sorted(times)
        assert len(set(times)) == 3

        await report(channel, secret, [spool_event(1, 40)])
        assert used_of(await snapshots.next(lambda s: s.included_through_sequence == 1), budget.budget_id) == 40

        update = pb.Budget(budget_id=budget.budget_id, limit=2_000)
        await stub.UpdateBudget(
            pb.UpdateBudgetRequest(budget=update, update_mask=FieldMask(paths=["limit"])), metadata=bearer(admin_secret)
        )
        updated = await snapshots.next(lambda s: s.budgets[0].budget.limit == 2_000)
        assert updated.leases[0].allowance == 2_000 - 40

        added = await create_budget(channel, admin_secret, pb.Scope(environment_id="prod", gateway_id="gw"))
        await snapshots.next(lambda s: len(s.budgets) == 2)
        await stub.DeleteBudget(pb.DeleteBudgetRequest(budget_id=added.budget_id), metadata=bearer(admin_secret))
        gone = await snapshots.next(lambda s: len(s.budgets) == 1)
        assert [v.budget.budget_id for v in gone.budgets] == [budget.budget_id]


async def test_a_change_wakes_only_the_streams_it_concerns(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, control_plane: ControlPlane
) -> None:
    prod = await _gateway(tokens, "prod")
    dev = await _gateway(tokens, "dev")
    await create_budget(channel, admin_secret, pb.Scope(environment_id="prod"))
    changes = control_plane.deps.budget_changes
    async with SnapshotStream(channel, prod, "prod") as prod_stream, SnapshotStream(channel, dev, "dev") as dev_stream:
        await prod_stream.next()
        await dev_stream.next()
        (prod_subscription,) = changes._by_gateway[("prod", "gw")]
        (dev_subscription,) = changes._by_gateway[("dev", "gw")]
        for subscription in (prod_subscription, dev_subscription):
            subscription.wakeup.clear()  # (the replica poll may have woken both); no await until the asserts
        changes.usage_committed([("prod", "other")], frozenset(prod_subscription.budget_ids))
        assert prod_subscription.wakeup.is_set()
        assert not dev_subscription.wakeup.is_set()
        changes.usage_committed([("dev", "gw")], frozenset())
        assert dev_subscription.wakeup.is_set()

    # The clients cancelled their calls: both streams end and leave nothing behind to wake.
    async def unsubscribed() -> bool:
        return not changes._by_gateway and not changes._by_budget

    await wait_until(unsubscribed)


async def test_a_gateway_token_watches_only_its_own_environment(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    secret = await _gateway(tokens, "prod")
    await tokens.environment("dev")
    async with SnapshotStream(channel, secret, "dev") as snapshots:
        assert await snapshots.received.get() is None
        assert await snapshots.call.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "may not access environment 'dev'" in (await snapshots.call.details() or "")


@asynccontextmanager
async def _stream_of_a_plane_to_stop(
    migrated_database_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[ControlPlane, grpc.aio.Channel, str, SnapshotStream]]:
    """A control plane of the test's own (it shuts it down), a gateway's secret and its open snapshot stream."""
    settings = snapshot_settings(migrated_database_url, tmp_path / "var", **overrides)
    plane = ControlPlane(settings)
    await plane.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            secret = await _gateway(Tokens(channel, settings.admin_token_path.read_text().strip()), "prod")
            async with SnapshotStream(channel, secret, "prod") as snapshots:
                await snapshots.next()
                yield plane, channel, secret, snapshots
    finally:
        await plane.shutdown()


async def test_snapshot_streams_end_cleanly_when_the_server_shuts_down(
    migrated_database_url: str, tmp_path: Path
) -> None:
    async with _stream_of_a_plane_to_stop(migrated_database_url, tmp_path, shutdown_grace=timedelta(seconds=30)) as (
        plane,
        _,
        _,
        snapshots,
    ):
        await plane.shutdown()
        # A refresh or a push may still arrive before the stream ends; the end must come, and end well.
        while await asyncio.wait_for(snapshots.received.get(), timeout=30) is not None:
            pass
        assert await snapshots.call.code() is grpc.StatusCode.OK


async def test_a_committed_through_beyond_what_storage_holds_is_refused(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    secret = await _gateway(tokens, "prod")
    request = telemetry_pb.ReportUsageRequest(events=[spool_event(1, 1)], committed_through_sequence=2**63)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await telemetry_grpc.TelemetryServiceStub(channel).ReportUsage(request, metadata=bearer(secret))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("committed_through_sequence")


async def test_streams_of_other_replicas_see_changes_through_the_poll(
    migrated_database_url: str, tmp_path: Path
) -> None:
    slow = timedelta(minutes=5)  # no periodic refresh within the test: only the poll can push
    first_settings = snapshot_settings(migrated_database_url, tmp_path / "a", heartbeat_interval=slow)
    async with (
        ControlPlane(first_settings) as first,
        ControlPlane(snapshot_settings(migrated_database_url, tmp_path / "b", heartbeat_interval=slow)) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
    ):
        admin_secret = first_settings.admin_token_path.read_text().strip()
        tokens = Tokens(one, admin_secret)
        secret = await _gateway(tokens, "prod")
        budget = await create_budget(one, admin_secret, pb.Scope(environment_id="prod"))
        async with SnapshotStream(two, secret, "prod") as snapshots:
            await snapshots.next()
            # Usage stored through the first replica; the stream is on the second (refresh interval: minutes).
            await report(one, secret, [spool_event(1, 77)])
            pushed = await asyncio.wait_for(snapshots.next(lambda s: used_of(s, budget.budget_id) == 77), 30)
            assert pushed.included_through_sequence == 1


async def test_changes_within_the_minimum_interval_wait_for_it(migrated_database_url: str, tmp_path: Path) -> None:
    # An hour apart at least: usage committed right after the first snapshot is held back (coalesced into the
    # next one), and the stream still ends at once when the server drains.
    hour = timedelta(hours=1)
    async with _stream_of_a_plane_to_stop(migrated_database_url, tmp_path, budget_snapshot_min_interval=hour) as (
        plane,
        channel,
        secret,
        snapshots,
    ):
        for sequence in range(1, 6):
            await report(channel, secret, [spool_event(sequence, 10)])
        await plane.shutdown()
        # A refresh or a push may still arrive before the stream ends; the end must come, and end well.
        while await asyncio.wait_for(snapshots.received.get(), timeout=30) is not None:
            pass
        assert await snapshots.call.code() is grpc.StatusCode.OK
    assert len(snapshots.all) == 1


async def test_two_replicas_storing_one_gateways_batches_at_once_lose_no_range(
    migrated_database_url: str, tmp_path: Path
) -> None:
    # The batches go to the two replicas at once, each to one, in shuffled order, with events in minutes of their
    # own (so their transactions share no rollup row): the included set is read, merged and written back under
    # the gateway row's lock, so no replica's range is lost to the other's write.
    first_settings = snapshot_settings(migrated_database_url, tmp_path / "a")
    async with (
        ControlPlane(first_settings) as first,
        ControlPlane(snapshot_settings(migrated_database_url, tmp_path / "b")) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
    ):
        admin_secret = first_settings.admin_token_path.read_text().strip()
        tokens = Tokens(one, admin_secret)
        secret = await _gateway(tokens, "prod")
        batches = [[spool_event(10 * b + i, 3, age=timedelta(minutes=b + 1)) for i in range(1, 11)] for b in range(24)]
        random.Random(5).shuffle(batches)
        await asyncio.gather(*(report(two if index % 2 else one, secret, batch) for index, batch in enumerate(batches)))
        async with SnapshotStream(two, secret, "prod") as snapshots:
            snapshot = await snapshots.next()
    assert (snapshot.included_through_sequence, ranges(snapshot)) == (240, [])


async def test_a_window_rolling_over_pushes_a_snapshot_of_the_new_window(engine: AsyncEngine) -> None:
    # The stream's clock is two seconds before a UTC midnight: the day budget's window ends then, and a
    # snapshot of the next day's window follows without any change or refresh (the refresh is an hour away).
    real_now = datetime.now(UTC)
    midnight = datetime.combine(real_now.date() + timedelta(days=1), time(), tzinfo=UTC)
    offset = midnight - real_now - timedelta(seconds=2)

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    async with engine.begin() as connection:
        await connection.execute(
            tables.environments.insert().values(environment_id="prod", display_name="prod", create_time=real_now)
        )
    draft = BudgetDraft(
        display_name="daily",
        scope=Scope(environment_id="prod"),
        metric=int(Metric.SPEND),
        limit=1_000,
        period=int(Period.DAY),
        time_zone="UTC",
        mode=int(Mode.HARD_STOP),
        thresholds=[100],
    )
    await BudgetService(engine, clock=clock).create(draft)
    changes = BudgetChanges(engine, poll_interval=timedelta(0))
    snapshots = BudgetSnapshots(engine, changes, min_interval=timedelta(0), clock=clock)
    stream = snapshots.watch("prod", "gw", refresh_interval=lambda: timedelta(hours=1))
    try:
        first = await anext(stream)
        second = await anext(stream)
    finally:
        await stream.aclose()
    assert first.statuses[0].figures.window.end_s == int(midnight.timestamp())
    assert second.statuses[0].figures.window.start_s == int(midnight.timestamp())
    assert second.leases[0].window_start == int(midnight.timestamp())
