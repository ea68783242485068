"""Helpers of the budget snapshot tests: a WatchBudgetStates reader, spool-numbered usage events, budgets, and
the included set as the proto states it (computed here, apart from the server's code)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc
from services.settings import ServerSettings
from tests.budget.settings import budget_settings
from tests.clients import bearer
from tests.telemetry.events import stamp

INVALID_COST = 10**15 + 1
"""A cost the control plane rejects (beyond its per-event bound): the event is refused alone."""


def snapshot_settings(database_url: str, data_dir: Path, **overrides: Any) -> ServerSettings:
    """Budget test settings with snapshots pushed without coalescing delay, and replica polls fast."""
    values: dict[str, Any] = {
        "budget_snapshot_min_interval": timedelta(0),
        "budget_snapshot_poll_interval": timedelta(milliseconds=50),
        **overrides,
    }
    return budget_settings(database_url, data_dir).model_copy(update=values)


def spool_event(
    sequence: int, cost_micros: int, *, gateway: str = "gw", age: timedelta = timedelta(seconds=5)
) -> usage_pb2.UsageEvent:
    """An event the agent spooled as `sequence`, costing `cost_micros` (INVALID_COST: rejected), `age` ago."""
    return usage_pb2.UsageEvent(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{gateway}/{sequence}")),
        request_id=f"req-{sequence}",
        attempt=1,
        event_time=stamp(datetime.now(UTC) - age),
        requested_model="gpt-4o",
        status_code=200,
        cost_micros=cost_micros,
        sequence=sequence,
    )


def included(snapshot: pb.BudgetSnapshot, sequence: int) -> bool:
    """The proto's definition: up to included_through_sequence, or inside one of included_ranges."""
    if sequence <= snapshot.included_through_sequence:
        return True
    return any(r.first <= sequence <= r.last for r in snapshot.included_ranges)


def ranges(snapshot: pb.BudgetSnapshot) -> list[tuple[int, int]]:
    return [(r.first, r.last) for r in snapshot.included_ranges]


def used_of(snapshot: pb.BudgetSnapshot, budget_id: str) -> int:
    for verdict in snapshot.budgets:
        if verdict.budget.budget_id == budget_id:
            return verdict.status.used
    raise AssertionError(f"budget {budget_id} is not in the snapshot")


async def create_budget(
    channel: grpc.aio.Channel,
    admin_secret: str,
    scope: pb.Scope,
    *,
    limit: int = 10**12,
    mode: pb.Mode.ValueType = pb.MODE_HARD_STOP,
    metric: pb.Metric.ValueType = pb.METRIC_SPEND,
) -> pb.Budget:
    budget = pb.Budget(
        display_name=f"budget {uuid.uuid4().hex[:8]}",
        scope=scope,
        metric=metric,
        limit=limit,
        period=pb.PERIOD_DAY,
        time_zone="UTC",
        mode=mode,
    )
    response = await pb_grpc.BudgetServiceStub(channel).CreateBudget(
        pb.CreateBudgetRequest(budget=budget), metadata=bearer(admin_secret)
    )
    return response.budget


class SnapshotStream:
    """One WatchBudgetStates call, its snapshots collected as they arrive. `async with` opens and cancels it."""

    def __init__(self, channel: grpc.aio.Channel, secret: str, environment_id: str) -> None:
        self.call = pb_grpc.BudgetServiceStub(channel).WatchBudgetStates(
            pb.WatchBudgetStatesRequest(environment_id=environment_id), metadata=bearer(secret)
        )
        self.received: asyncio.Queue[pb.BudgetSnapshot | None] = asyncio.Queue()
        self.all: list[pb.BudgetSnapshot] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.all.append(response.snapshot)
                self.received.put_nowait(response.snapshot)
        finally:
            self.received.put_nowait(None)

    async def next(self, condition: Callable[[pb.BudgetSnapshot], bool] = lambda _: True) -> pb.BudgetSnapshot:
        """The next snapshot that meets `condition` (the test timeout bounds the wait)."""
        while True:
            snapshot = await self.received.get()
            if snapshot is None:
                raise AssertionError(f"the stream ended: {await self.call.code()} {await self.call.details()}")
            if condition(snapshot):
                return snapshot


async def stream_batches(
    channel: grpc.aio.Channel, secret: str, batches: Sequence[tuple[Sequence[usage_pb2.UsageEvent], int]]
) -> list[telemetry_pb.UsageAck]:
    """Sends (events, committed_through_sequence) batches on one StreamUsage call, each after the previous ack."""
    call: Any = telemetry_grpc.TelemetryServiceStub(channel).StreamUsage(metadata=bearer(secret))  # type: ignore[call-arg]
    acks = []
    for number, (events, committed_through) in enumerate(batches, start=1):
        await call.write(
            telemetry_pb.StreamUsageRequest(
                batch_sequence=number, events=events, committed_through_sequence=committed_through
            )
        )
        acks.append((await call.read()).ack)
    await call.done_writing()
    return acks
