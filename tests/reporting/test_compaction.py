"""Compaction keeps 1h and 1d equal to the per-minute rollups, whatever crashes or late events happen."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc
from services.accounting import compaction
from services.accounting.compaction import compact, dirty_hour_starts, prune
from services.server import ControlPlane
from services.settings import ServerSettings, ServiceName
from services.storage import tables
from tests.clients import Tokens, bearer
from tests.reporting.dataset import GATEWAYS, make_dataset
from tests.reporting.settings import reporting_settings
from tests.reporting.test_oracle import dataset_gateways, ingest, usage_filter
from tests.telemetry.events import wait_until

COARSE_ROLLUPS = tuple(
    table
    for layout in tables.COARSE_ROLLUPS
    for table in (layout.hourly, layout.daily, layout.five_minutes)
    if table is not None
)


async def _totals(control_plane: ControlPlane, table: sa.Table) -> tuple[int, ...]:
    columns = ("attempt_count", "cost_micros", "latency_b20", "input_tokens")
    query = sa.select(*(sa.func.coalesce(sa.func.sum(table.c[c]), 0) for c in columns))
    async with control_plane.engine.connect() as connection:
        return tuple(int(v) for v in (await connection.execute(query)).one())


async def _setup(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, count: int, *, days_ago: int = 0
) -> Any:
    secrets = await dataset_gateways(tokens)
    events = make_dataset(count, seed=3, now=datetime.now(UTC) - timedelta(days=days_ago))
    return secrets, events


async def test_a_crash_between_compaction_steps_leaves_nothing_counted_twice(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets, events = await _setup(control_plane, channel, tokens, 3_000)
    await ingest(channel, secrets, events)
    minutes = await _totals(control_plane, tables.usage_rollup_1m)
    real_rebuild = compaction._rebuild

    def crashing_rebuild(target: sa.Table, *args: Any) -> Any:
        if target is tables.usage_rollup_1d:  # after every 1h was rebuilt and the watermark advanced
            raise RuntimeError("crash")
        return real_rebuild(target, *args)

    monkeypatch.setattr(compaction, "_rebuild", crashing_rebuild)
    with pytest.raises(RuntimeError, match="crash"):
        await compact(control_plane.engine)
    for table in COARSE_ROLLUPS:
        assert await _totals(control_plane, table) == (0, 0, 0, 0)  # rolled back whole
    assert len(await dirty_hour_starts(control_plane.engine)) > 1
    monkeypatch.setattr(compaction, "_rebuild", real_rebuild)

    await compact(control_plane.engine)
    await compact(control_plane.engine)  # a rerun replaces, never adds
    for table in COARSE_ROLLUPS:
        assert await _totals(control_plane, table) == minutes, table.name
    # Only the still-open minute (if any event is in it) may remain dirty.
    assert len(await dirty_hour_starts(control_plane.engine)) <= 1


async def test_late_events_reach_hourly_and_daily_rollups(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    secrets, events = await _setup(control_plane, channel, tokens, 4_000)
    old = [e for e in events if e.time_us < (datetime.now(UTC) - timedelta(days=1)).timestamp() * 1e6]
    recent = [e for e in events if e not in old]
    await ingest(channel, secrets, recent)
    await compact(control_plane.engine)
    await ingest(channel, secrets, old)  # late: their hours were compacted (as empty) already
    assert len(await dirty_hour_starts(control_plane.engine)) > 1
    stub: pb_grpc.ReportingServiceAsyncStub = pb_grpc.ReportingServiceStub(channel)
    start = min(e.time_us for e in events) // 86_400_000_000 * 86_400_000_000
    request = pb.GetUsageSummaryRequest(filter=usage_filter(start, start + 5 * 86_400_000_000))
    before = (await stub.GetUsageSummary(request, metadata=bearer(tokens.admin))).summary
    assert before.attempts == len(events)  # exact while dirty: the planner reads minutes there
    await compact(control_plane.engine)
    minutes = await _totals(control_plane, tables.usage_rollup_1m)
    for table in COARSE_ROLLUPS:
        assert await _totals(control_plane, table) == minutes, table.name
    after = (await stub.GetUsageSummary(request, metadata=bearer(tokens.admin))).summary
    assert after == before


async def test_prune_deletes_raw_events_and_rollups_past_retention(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    secrets, events = await _setup(control_plane, channel, tokens, 2_000)
    await ingest(channel, secrets, events)
    await compact(control_plane.engine)
    settings = ServerSettings(
        raw_event_retention=timedelta(days=1),
        rollup_1m_retention=timedelta(days=1),
        rollup_1h_retention=timedelta(days=1),
        retention_prune_chunk_rows=100,
    )
    # Pruning as of tomorrow: everything before the start of yesterday goes (one whole day behind the
    # one-day retention), so more than a day of the three-day dataset is pruned whatever the time of day.
    day = 86_400
    now = datetime.now(UTC).timestamp() + day
    report = await prune(control_plane.engine, settings, now_s=now)
    cutoff = int(now - day) // day * day - day
    cutoff_us = cutoff * 1_000_000
    assert report.raw_events == sum(1 for e in events if e.time_us < cutoff_us) > 0
    async with control_plane.engine.connect() as connection:
        raw = tables.usage_events
        remaining = await connection.scalar(sa.select(sa.func.count()).select_from(raw))
        orphans = await connection.scalar(
            sa.select(sa.func.count())
            .select_from(tables.usage_event_tags)
            .where(tables.usage_event_tags.c.event_time_us < cutoff_us)
        )
        oldest = {
            table.name: await connection.scalar(sa.select(sa.func.min(table.c.bucket_start)))
            for table in (
                tables.usage_rollup_1m,
                *(layout.hourly for layout in tables.COARSE_ROLLUPS),
                *(layout.five_minutes for layout in tables.COARSE_ROLLUPS if layout.five_minutes is not None),
                tables.token_categories_1h,
            )
        }
        kept_days = await connection.scalar(sa.select(sa.func.count()).select_from(tables.token_categories_1d))
    assert remaining == len(events) - report.raw_events
    assert orphans == 0
    for name, bucket_start in oldest.items():
        assert cutoff <= bucket_start < cutoff + day, name  # the day at the cutoff is kept, nothing before it
    for layout in tables.COARSE_ROLLUPS:
        assert await _totals(control_plane, layout.daily) != (0, 0, 0, 0)  # days are kept for years
    assert kept_days


async def test_the_background_job_prunes_by_itself_and_a_pruned_event_sent_again_is_refused(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, migrated_database_url: str, tmp_path: Path
) -> None:
    # Three days of usage, ending yesterday, stored while raw events were kept 90 days. Then a replica whose
    # raw events and minutes are kept one day joins, with its background job on: it compacts and prunes on
    # its own. An agent resending a pruned event gets TOO_OLD, never a second count, and reports over the
    # whole span stay as they were (the hourly and daily rollups keep it).
    secrets, events = await _setup(control_plane, channel, tokens, 2_000, days_ago=1)
    await ingest(channel, secrets, events)
    start = min(e.time_us for e in events) // 86_400_000_000 * 86_400_000_000
    summary = pb.GetUsageSummaryRequest(filter=usage_filter(start, start + 5 * 86_400_000_000))
    reporting: pb_grpc.ReportingServiceAsyncStub = pb_grpc.ReportingServiceStub(channel)
    before = (await reporting.GetUsageSummary(summary, metadata=bearer(tokens.admin))).summary
    assert before.attempts == len(events)
    # Pruning keeps the day the retention ends in and the day before it, so everything before the start of
    # the day before yesterday goes: over a day of this dataset, whatever the time of day.
    day_s = 86_400
    cutoff_us = (int(datetime.now(UTC).timestamp() - day_s) // day_s * day_s - day_s) * 1_000_000
    pruned = [e for e in events if e.time_us < cutoff_us]
    assert len(pruned) > len(events) // 4
    settings = reporting_settings(
        migrated_database_url,
        tmp_path / "replica",
        rollup_compaction_interval=timedelta(milliseconds=50),
        raw_event_retention=timedelta(days=1),
        rollup_1m_retention=timedelta(days=1),
    )
    raw = tables.usage_events
    async with ControlPlane(settings) as replica:

        async def pruned_by_the_replica() -> bool:
            async with replica.engine.connect() as connection:
                left = await connection.scalar(
                    sa.select(sa.func.count()).select_from(raw).where(raw.c.event_time_us < cutoff_us)
                )
            return left == 0

        await wait_until(pruned_by_the_replica)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as replica_channel:
            telemetry = telemetry_grpc.TelemetryServiceStub(replica_channel)
            acks = []
            for gateway in GATEWAYS:
                resent = [e.message for e in pruned if (e.environment_id, e.gateway_id) == gateway]
                for begin in range(0, len(resent), 500):
                    request = telemetry_pb.ReportUsageRequest(batch_sequence=1, events=resent[begin : begin + 500])
                    acks.append((await telemetry.ReportUsage(request, metadata=bearer(secrets[gateway]))).ack)
            after = (
                await pb_grpc.ReportingServiceStub(replica_channel).GetUsageSummary(
                    summary, metadata=bearer(tokens.admin)
                )
            ).summary
        async with replica.engine.connect() as connection:
            kept = await connection.scalar(sa.select(sa.func.count()).select_from(raw))
    assert sum(ack.accepted_count + ack.duplicate_count for ack in acks) == 0
    assert {rejection.reason for ack in acks for rejection in ack.rejected} == {telemetry_pb.REJECTION_REASON_TOO_OLD}
    assert sum(ack.rejected_count for ack in acks) == len(pruned)
    assert kept == len(events) - len(pruned)
    assert after == before


async def test_a_replica_serving_only_telemetry_compacts_the_rollups_it_writes(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, migrated_database_url: str, tmp_path: Path
) -> None:
    # Rollups are written by ingest, so a replica hosting only Telemetry runs the maintenance job too: without
    # it, a deployment whose reporting runs elsewhere (or nowhere) would never compact nor prune.
    secrets, events = await _setup(control_plane, channel, tokens, 1_500, days_ago=1)
    await ingest(channel, secrets, events)
    assert len(await dirty_hour_starts(control_plane.engine)) > 1
    settings = reporting_settings(
        migrated_database_url,
        tmp_path / "telemetry-only",
        services=frozenset({ServiceName.TELEMETRY}),
        rollup_compaction_interval=timedelta(milliseconds=50),
    )
    async with ControlPlane(settings) as replica:

        async def compacted() -> bool:
            return not await dirty_hour_starts(replica.engine)

        await wait_until(compacted)
    minutes = await _totals(control_plane, tables.usage_rollup_1m)
    assert minutes[0] == len(events)
    for table in COARSE_ROLLUPS:
        assert await _totals(control_plane, table) == minutes, table.name
