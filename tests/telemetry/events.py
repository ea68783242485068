"""Builders of usage events and batches for the telemetry tests, and the sums a rollup must equal."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as pb_grpc
from services.histogram import bucket_index
from services.storage import tables
from tests.clients import bearer

MODELS = (("gpt-4o", "openai"), ("claude-3-5-sonnet", "anthropic"), ("llama-3-70b", "bedrock"))


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def duration_us(value_us: int) -> Duration:
    return Duration(seconds=value_us // 1_000_000, nanos=value_us % 1_000_000 * 1000)


def usage_event(
    *,
    event_id: str | None = None,
    request_id: str = "req-1",
    attempt: int = 1,
    event_time: datetime | None = None,
    **fields: Any,
) -> usage_pb2.UsageEvent:
    """A valid event; `fields` override or add UsageEvent fields."""
    event = usage_pb2.UsageEvent(
        event_id=event_id or str(uuid.uuid4()),
        request_id=request_id,
        attempt=attempt,
        event_time=stamp(event_time or datetime.now(UTC) - timedelta(seconds=30)),
        **fields,
    )
    return event


def varied_events(count: int, *, seed: int = 7) -> list[usage_pb2.UsageEvent]:
    """`count` valid events covering known and unknown statuses, tokens, costs, latencies and tags."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    events = []
    for i in range(count):
        model, provider = MODELS[i % len(MODELS)]
        event = usage_pb2.UsageEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            request_id=f"req-{i // 2}",
            attempt=1 + i % 2,
            event_time=stamp(now - timedelta(seconds=rng.randrange(1, 1800))),
            api_key_id=f"key-{i % 4}",
            user_id=f"user-{i % 7}",
            route="/v1/chat/completions",
            request_type=usage_pb2.REQUEST_TYPE_CHAT,
            requested_model=model,
            resolved_model=model,
            provider=provider,
            credential_type=usage_pb2.CREDENTIAL_TYPE_MANAGED,
            streaming=i % 3 == 0,
            sequence=i + 1,
        )
        if i % 11 != 0:
            event.status_code = rng.choice((200, 200, 200, 301, 400, 429, 500, 503))
        if i % 5 != 0:
            event.latency.CopyFrom(duration_us(rng.randrange(200, 30_000_000)))
            event.gateway_latency.CopyFrom(duration_us(rng.randrange(50, 5_000)))
        if event.streaming:
            event.ttft.CopyFrom(duration_us(rng.randrange(1_000, 2_000_000)))
        if i % 13 != 0:
            event.tokens.input = rng.randrange(0, 20_000)
            event.tokens.output = rng.randrange(0, 4_000)
            if i % 4 == 0:
                event.tokens.cache_read = rng.randrange(0, 10_000)
        if i % 3 == 1:
            event.cost_micros = rng.randrange(0, 500_000)
        if i % 17 == 0:
            event.tags["team"] = f"team-{i % 3}"
        events.append(event)
    return events


def expected_rollup(events: Iterable[usage_pb2.UsageEvent]) -> dict[str, int]:
    """The usage_rollup_1m column sums these events must add up to (no pricing table: only reported costs)."""
    sums = dict.fromkeys(tables.ROLLUP_SUM_COLUMNS, 0)
    for event in events:
        sums["attempt_count"] += 1
        sums["request_count"] += event.attempt == 1
        if event.HasField("status_code"):
            sums["success_count" if event.status_code < 400 else "error_count"] += 1
        known = [kind for kind in ("input", "output", "cache_read") if event.tokens.HasField(kind)]
        for kind in known:
            sums[f"{kind}_tokens"] += getattr(event.tokens, kind)
        sums["tokens_unknown_count"] += not known
        if event.HasField("cost_micros"):
            sums["cost_micros"] += event.cost_micros
        else:
            sums["cost_unknown_count"] += 1
        if event.HasField("latency"):
            latency = event.latency.seconds * 1_000_000 + event.latency.nanos // 1000
            sums["latency_sum_us"] += latency
            sums["latency_count"] += 1
            sums[f"latency_b{bucket_index(latency):02d}"] += 1
            gateway = event.gateway_latency.seconds * 1_000_000 + event.gateway_latency.nanos // 1000
            sums["gateway_latency_sum_us"] += gateway
            sums["gateway_latency_count"] += 1
        if event.HasField("ttft"):
            ttft = event.ttft.seconds * 1_000_000 + event.ttft.nanos // 1000
            sums["ttft_sum_us"] += ttft
            sums["ttft_count"] += 1
            sums[f"ttft_b{bucket_index(ttft):02d}"] += 1
    return sums


async def rollup_sums(engine: AsyncEngine) -> dict[str, int]:
    rollup = tables.usage_rollup_1m
    query = select(*(func.coalesce(func.sum(rollup.c[name]), 0) for name in tables.ROLLUP_SUM_COLUMNS))
    async with engine.connect() as connection:
        row = (await connection.execute(query)).one()
    return {name: int(value) for name, value in zip(tables.ROLLUP_SUM_COLUMNS, row, strict=True)}


async def stored_event_count(engine: AsyncEngine, **where: object) -> int:
    events = tables.usage_events
    query = select(func.count()).select_from(events)
    for column, value in where.items():
        query = query.where(events.c[column] == value)
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar_one())


def batches(
    events: Sequence[usage_pb2.UsageEvent], size: int, *, first_sequence: int = 1
) -> list[pb.StreamUsageRequest]:
    return [
        pb.StreamUsageRequest(batch_sequence=first_sequence + n, events=events[start : start + size])
        for n, start in enumerate(range(0, len(events), size))
    ]


async def stream(
    channel: grpc.aio.Channel, secret: str, requests: Sequence[pb.StreamUsageRequest]
) -> list[pb.UsageAck]:
    """Sends every batch on one stream without waiting for acks, then collects the acks in order."""
    call = pb_grpc.TelemetryServiceStub(channel).StreamUsage(iter(requests), metadata=bearer(secret))
    return [response.ack async for response in call]


async def report(channel: grpc.aio.Channel, secret: str, events: Sequence[usage_pb2.UsageEvent]) -> pb.UsageAck:
    response = await pb_grpc.TelemetryServiceStub(channel).ReportUsage(
        pb.ReportUsageRequest(batch_sequence=1, events=events), metadata=bearer(secret)
    )
    return response.ack


async def wait_until(condition: Callable[[], Awaitable[bool]], *, interval_s: float = 0.01) -> None:
    """Polls an outside condition (a database row count, a metric) until it holds; the test timeout bounds it."""
    while True:
        if await condition():
            return
        await asyncio.sleep(interval_s)
