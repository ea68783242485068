"""Detail.TILES (what the console's Usage page asks for) figures exactly what Detail.FULL does, less the latency and
TTFT percentiles and the token categories it leaves unset."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.auth import Principal, Role
from services.reporting.compaction import compact
from services.reporting.filters import Grouping, select_usage
from services.reporting.reports import BreakdownQuery, Detail, UsageReports
from services.server import ControlPlane
from tests.clients import Tokens
from tests.reporting.dataset import make_dataset
from tests.reporting.test_oracle import dataset_gateways, ingest, usage_filter

ADMIN = Principal(token_id="test", role=Role.ADMIN)


def without_detail(summary: pb.UsageSummary) -> pb.UsageSummary:
    brief = pb.UsageSummary()
    brief.CopyFrom(summary)
    for stats in (brief.latency, brief.ttft):
        for name in ("p50", "p95", "p99"):
            stats.ClearField(name)
    brief.tokens.categories.clear()
    return brief


async def test_tiles_are_the_full_figures_without_percentiles_or_categories(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    secrets = await dataset_gateways(tokens)
    now = datetime.now(UTC)
    events = make_dataset(3_000, seed=11, now=now)
    await ingest(channel, secrets, events)
    await compact(control_plane.engine)
    start = int((now - timedelta(days=4)).timestamp() * 1e6) // 60_000_000 * 60_000_000
    selection = select_usage(usage_filter(start, int(now.timestamp() * 1e6)), ADMIN)
    reports = UsageReports(control_plane.engine, max_points=10_000, prices=control_plane.deps.prices)

    full, tiles = await reports.summary(selection), await reports.summary(selection, Detail.TILES)
    assert full.summary().latency.HasField("p95")  # the dataset has latencies: FULL has percentiles to drop
    assert not tiles.summary().latency.HasField("p95")
    assert tiles.summary() == without_detail(full.summary())
    for dimension in (pb.DIMENSION_REQUESTED_MODEL, pb.DIMENSION_USER, pb.DIMENSION_API_KEY):
        query = BreakdownQuery(selection, (Grouping(dimension),), order_by=pb.METRIC_COST, top_n=3, size=3)
        full_page = await reports.breakdown(query)
        tiles_page = await reports.breakdown(replace(query, detail=Detail.TILES))
        assert [key for key, _ in tiles_page.rows] == [key for key, _ in full_page.rows]
        assert [f.summary() for _, f in tiles_page.rows] == [without_detail(f.summary()) for _, f in full_page.rows]
        assert full_page.other is not None
        assert tiles_page.other is not None
        assert tiles_page.other.summary() == without_detail(full_page.other.summary())
