"""Usage ingest over a real server: exactly-once storage, rollups, validation, limits and identity."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import Engine, select
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as pb_grpc
from services.accounting.rollup import ROLLUP_COLUMNS
from services.pricing import PriceBook
from services.server import ControlPlane
from services.storage import tables
from services.telemetry.prepare import prepare_events
from services.telemetry.rows import EVENT_COLUMNS
from services.telemetry.sql import MAX_BIND_PARAMETERS
from services.telemetry.transaction import PreparedBatch, StoredCounts
from services.telemetry.validation import BatchLimits
from services.telemetry.writer import BatchNotStoredError, GroupCommitWriter
from tests.clients import Tokens, bearer

from .events import (
    batches,
    expected_rollup,
    report,
    rollup_sums,
    stored_event_count,
    stream,
    usage_event,
    varied_events,
    wait_until,
)


async def _gateway(tokens: Tokens, environment_id: str = "prod", gateway_id: str = "gw-1") -> str:
    await tokens.environment(environment_id)
    return await tokens.gateway(environment_id, gateway_id)


async def test_a_duplicate_storm_stores_and_counts_each_event_once(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    secret = await _gateway(tokens)
    events = varied_events(10_000)
    # The same 20 batches of 500, five times over, dealt round-robin to 3 concurrent streams.
    rounds = [request for _ in range(5) for request in batches(events, 500)]
    per_stream = [rounds[i::3] for i in range(3)]

    results = await asyncio.gather(*(stream(channel, secret, requests) for requests in per_stream))

    acks = [ack for stream_acks in results for ack in stream_acks]
    assert len(acks) == 100
    for stream_acks, requests in zip(results, per_stream, strict=True):
        assert [ack.batch_sequence for ack in stream_acks] == [r.batch_sequence for r in requests]
    assert sum(ack.accepted_count for ack in acks) == 10_000
    assert sum(ack.duplicate_count for ack in acks) == 40_000
    assert sum(ack.rejected_count for ack in acks) == 0
    assert await stored_event_count(control_plane.engine) == 10_000
    assert await rollup_sums(control_plane.engine) == expected_rollup(events)
    async with control_plane.engine.connect() as connection:
        tags = (await connection.execute(select(tables.usage_event_tags.c.tag_value))).scalars().all()
        acked_sequence = (await connection.execute(select(tables.gateways.c.last_acked_sequence))).scalar_one()
    assert len(tags) == sum(1 for event in events if event.tags)
    assert acked_sequence == 10_000


async def test_a_batch_mixing_valid_and_invalid_events_stores_the_valid_ones(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    secret = await _gateway(tokens)
    valid = [usage_event() for _ in range(3)]
    negative_tokens = usage_event()
    negative_tokens.tokens.output = -5
    invalid = {
        1: (usage_event(event_id="not-a-uuid"), "event_id"),
        2: (usage_event(request_id=""), "request_id"),
        4: (usage_event(attempt=0), "attempt"),
        5: (negative_tokens, "tokens.output"),
        6: (usage_event(latency=usage_pb2.UsageEvent().latency.__class__(seconds=7_200)), "latency"),
        7: (usage_event(tags={f"k{i}": "v" for i in range(33)}), "tags"),
        8: (usage_event(error_message="x" * 1025), "error_message"),
        9: (usage_event(status_code=99), "status_code"),
    }
    batch = [valid[0], invalid[1][0], invalid[2][0], valid[1], *(invalid[i][0] for i in range(4, 10)), valid[2]]
    no_time = usage_event()
    no_time.ClearField("event_time")
    batch.append(no_time)

    ack = await report(channel, secret, batch)

    assert (ack.accepted_count, ack.duplicate_count, ack.rejected_count) == (3, 0, 9)
    rejected = {(r.index, r.event_id, r.field, r.reason) for r in ack.rejected}
    expected = {(i, event.event_id, field, pb.REJECTION_REASON_INVALID_FIELD) for i, (event, field) in invalid.items()}
    expected.add((11, no_time.event_id, "event_time", pb.REJECTION_REASON_INVALID_FIELD))
    assert rejected == expected
    assert all(r.message for r in ack.rejected)
    async with control_plane.engine.connect() as connection:
        stored = set((await connection.execute(select(tables.usage_events.c.event_id))).scalars())
    assert stored == {event.event_id for event in valid}


async def test_event_times_beyond_the_clock_skew_or_the_dedupe_horizon_are_rejected(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    secret = await _gateway(tokens)
    now = datetime.now(UTC)
    settings = control_plane.settings
    future = usage_event(event_time=now + settings.ingest_max_clock_skew + timedelta(minutes=1))
    slightly_ahead = usage_event(event_time=now + settings.ingest_max_clock_skew - timedelta(minutes=1))
    too_old = usage_event(event_time=now - settings.raw_event_retention - timedelta(hours=1))
    old_enough = usage_event(event_time=now - settings.raw_event_retention + timedelta(hours=1))

    ack = await report(channel, secret, [future, slightly_ahead, too_old, old_enough])

    assert ack.accepted_count == 2
    assert [(r.index, r.event_id, r.field, r.reason) for r in ack.rejected] == [
        (0, future.event_id, "event_time", pb.REJECTION_REASON_FROM_THE_FUTURE),
        (2, too_old.event_id, "event_time", pb.REJECTION_REASON_TOO_OLD),
    ]
    assert "dedupe horizon" in ack.rejected[1].message
    assert await stored_event_count(control_plane.engine) == 2


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        ([], "at least one event"),
        ([usage_event() for _ in range(2_001)], "ingest_max_batch_events=2000"),
        (
            # 1,500 events of ~3.4 kB: under the event limit and the message limit, over the 4 MiB byte limit.
            [usage_event(error_message="e" * 1_000, tags={f"t{i}": "v" * 250 for i in range(9)}) for _ in range(1_500)],
            "ingest_max_batch_bytes=4194304",
        ),
    ],
    ids=["empty", "too-many-events", "too-many-bytes"],
)
async def test_an_empty_or_oversized_batch_is_refused_whole(
    channel: grpc.aio.Channel,
    control_plane: ControlPlane,
    tokens: Tokens,
    events: list[usage_pb2.UsageEvent],
    problem: str,
) -> None:
    secret = await _gateway(tokens)
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await report(channel, secret, events)
    assert unary.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (unary.value.details() or "")

    # On a stream, the batches before the bad one are acked; the bad one ends the stream and stores nothing.
    good = usage_event()
    call = pb_grpc.TelemetryServiceStub(channel).StreamUsage(
        iter(
            [
                pb.StreamUsageRequest(batch_sequence=1, events=[good]),
                pb.StreamUsageRequest(batch_sequence=2, events=events),
            ]
        ),
        metadata=bearer(secret),
    )
    first = await call.read()
    assert isinstance(first, pb.StreamUsageResponse)
    assert (first.ack.batch_sequence, first.ack.accepted_count) == (1, 1)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        await call.read()
    assert streamed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (streamed.value.details() or "")
    assert await stored_event_count(control_plane.engine) == 1


async def test_a_stream_cut_before_its_acks_are_read_stores_the_resent_batches_once(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    secret = await _gateway(tokens)
    events = varied_events(1_000, seed=11)
    requests = batches(events, 500)
    # grpc-stubs omit the no-iterator form, where the caller writes messages itself.
    call = pb_grpc.TelemetryServiceStub(channel).StreamUsage(metadata=bearer(secret))  # type: ignore[call-arg]
    await call.write(requests[0])
    # The first batch is committed but its ack never read; the second is cut while in flight (or unsent).

    async def first_batch_committed() -> bool:
        return await stored_event_count(control_plane.engine) == 500

    await wait_until(first_batch_committed)
    await call.write(requests[1])
    call.cancel()

    acks = await stream(channel, secret, requests)

    assert [(ack.accepted_count + ack.duplicate_count, ack.rejected_count) for ack in acks] == [(500, 0), (500, 0)]
    assert acks[0].duplicate_count == 500
    assert await stored_event_count(control_plane.engine) == 1_000
    again = await stream(channel, secret, requests)
    assert [ack.duplicate_count for ack in again] == [500, 500]
    assert await rollup_sums(control_plane.engine) == expected_rollup(events)


async def _refuse_request_id(engine: AsyncEngine, request_id: str) -> None:
    """A trigger that fails every transaction inserting an event with this request id: a real failure inside
    the database, after the transaction has begun."""
    async with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            await connection.exec_driver_sql(
                f"CREATE TRIGGER refuse_request BEFORE INSERT ON usage_events WHEN NEW.request_id = '{request_id}' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
            return
        await connection.exec_driver_sql(
            "CREATE FUNCTION refuse_request() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN "
            f"IF NEW.request_id = '{request_id}' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
            "RETURN NEW; END $body$"
        )
        await connection.exec_driver_sql(
            "CREATE TRIGGER refuse_request BEFORE INSERT ON usage_events FOR EACH ROW EXECUTE FUNCTION refuse_request()"
        )


async def test_a_batch_whose_transaction_fails_stores_nothing_and_fails_alone(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    engine = control_plane.engine
    await _refuse_request_id(engine, "refused")
    secret = await _gateway(tokens)
    good = varied_events(600, seed=21)
    poisoned = varied_events(300, seed=22)
    poisoned[150].request_id = "refused"

    # The server's first usage transaction fails: nothing of it is kept and the agent is told to resend.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await report(channel, secret, poisoned)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "nothing of it was kept: resend it" in (refused.value.details() or "")
    assert await stored_event_count(engine) == 0
    # The next transaction works.
    assert (await report(channel, secret, good[:200])).accepted_count == 200

    # One group of three batches (queued before the writer runs) whose middle one fails: the group is retried
    # batch by batch, so its neighbours are stored and only it fails.
    async with engine.connect() as connection:
        gateway_key = (await connection.execute(select(tables.gateways.c.gateway_key))).scalar_one()
    writer = GroupCommitWriter(
        engine, linger_s=0.05, max_events=10_000, checkpoint_interval_s=60, wal_truncate_bytes=64 << 20
    )
    await writer.start()
    try:
        futures = [
            writer.submit(
                PreparedBatch(
                    environment_id="prod",
                    gateway_id="gw-1",
                    gateway_key=gateway_key,
                    batch_sequence=sequence,
                    events=prepare_events(
                        events,
                        environment_id="prod",
                        gateway_key=gateway_key,
                        prices=PriceBook(),
                        now_us=time.time_ns() // 1000,
                        limits=BatchLimits.of(control_plane.settings),
                    ),
                )
            )
            for sequence, events in ((2, good[200:400]), (3, poisoned), (4, good[400:]))
        ]
        first, failed, last = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await writer.shutdown()
    assert isinstance(failed, BatchNotStoredError)
    assert (first, last) == (StoredCounts(accepted=200, duplicate=0), StoredCounts(accepted=200, duplicate=0))
    assert await stored_event_count(engine) == 600
    assert await stored_event_count(engine, request_id="refused") == 0
    assert await rollup_sums(engine) == expected_rollup(good)


async def test_usage_lands_in_the_environment_and_gateway_of_the_token(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    secret_a = await _gateway(tokens, "env-a", "gw-1")
    await tokens.environment("env-b")
    secret_b = await tokens.gateway("env-b", "gw-1")
    shared = [usage_event(request_id="env-b-please") for _ in range(3)]

    ack_a = await report(channel, secret_a, shared)
    # The same ids from another gateway are that gateway's own events, not duplicates of env-a's.
    ack_b = await report(channel, secret_b, shared)

    assert (ack_a.accepted_count, ack_b.accepted_count) == (3, 3)
    events, gateways = tables.usage_events, tables.gateways
    async with control_plane.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(events.c.environment_id, gateways.c.environment_id, gateways.c.gateway_id)
                .join(gateways, gateways.c.gateway_key == events.c.gateway_key)
                .order_by(events.c.environment_id)
            )
        ).all()
        rollup_environments = (
            await connection.execute(select(tables.usage_rollup_1m.c.environment_id).distinct())
        ).scalars()
        assert sorted(rollup_environments) == ["env-a", "env-b"]
    assert [tuple(row) for row in rows] == [("env-a", "env-a", "gw-1")] * 3 + [("env-b", "env-b", "gw-1")] * 3


async def test_only_gateway_tokens_may_report_usage(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens, admin_secret: str
) -> None:
    await tokens.environment("prod")
    reporter = await tokens.reporter("prod")
    stub = pb_grpc.TelemetryServiceStub(channel)
    for secret in (reporter, admin_secret):
        call = stub.StreamUsage(iter([pb.StreamUsageRequest(events=[usage_event()])]), metadata=bearer(secret))
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await call.read()
        assert streamed.value.code() is grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await report(channel, secret, [usage_event()])
        assert unary.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert await stored_event_count(control_plane.engine) == 0


async def test_duplicates_within_one_batch_count_once_and_ids_ignore_case(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    secret = await _gateway(tokens)
    event_id = str(uuid.uuid4())
    first = usage_event(event_id=event_id, sequence=7)
    resent = usage_event(event_id=event_id.upper(), sequence=7)

    ack = await report(channel, secret, [first, resent, first])

    assert (ack.accepted_count, ack.duplicate_count) == (1, 2)
    assert await rollup_sums(control_plane.engine) == expected_rollup([first])
    async with control_plane.engine.connect() as connection:
        sequence = (await connection.execute(select(tables.gateways.c.last_acked_sequence))).scalar_one()
    assert sequence == 7


async def test_a_transaction_is_a_few_statements_whatever_the_number_of_events(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    # Statements, not rows, are the writer's unit. On SQLite, whose writer runs in a thread, a driver step per
    # row (executemany, or RETURNING rows read one by one) hands the GIL to the event loop once per row, and
    # under load each handoff waits a switch interval. On PostgreSQL a statement is a round trip; asyncpg
    # sends an executemany as one pipeline (the rollups use it: it binds plain values, where unnest's arrays
    # cost asyncpg a type check per element).
    sqlite = control_plane.engine.dialect.name == "sqlite"
    secret = await _gateway(tokens)
    events = varied_events(1_800)
    await report(channel, secret, events[:500])  # stored before: 500 of a later batch are duplicates
    executed: list[tuple[str, bool]] = []

    def record(
        _connection: object, _cursor: object, statement: str, _parameters: object, _context: object, many: bool
    ) -> None:
        executed.append((statement, many))

    async def report_recording(batch: list[usage_pb2.UsageEvent]) -> tuple[pb.UsageAck, list[tuple[str, bool]]]:
        executed.clear()
        sa_event.listen(Engine, "before_cursor_execute", record)
        try:
            ack = await report(channel, secret, batch)
        finally:
            sa_event.remove(Engine, "before_cursor_execute", record)
        return ack, list(executed)

    def touching(ran: list[tuple[str, bool]]) -> dict[str, list[bool]]:
        return {
            table: [many for statement, many in ran if f"INTO {table} " in statement]
            for table in ("usage_events", "usage_event_tags", "usage_rollup_1m")
        }

    def asked_for_ids(ran: list[tuple[str, bool]]) -> int:
        return sum(1 for statement, _ in ran if statement.startswith("SELECT") and "FROM usage_events" in statement)

    def writer_statements(ran: list[tuple[str, bool]]) -> list[str]:
        # Other components' statements (checkpoints, say) aside.
        return [statement for statement, _ in ran if "usage_" in statement or "gateways" in statement]

    rows_per_event_statement = MAX_BIND_PARAMETERS // len(EVENT_COLUMNS)
    rollup_statements = math.ceil(1_300 / (MAX_BIND_PARAMETERS // len(ROLLUP_COLUMNS))) if sqlite else 1

    # 1,300 new events: the writer inserts them (skipping stored ids) and, as every row went in, asks nothing.
    fresh = varied_events(1_300, seed=8)
    ack, ran = await report_recording(fresh)
    assert (ack.accepted_count, ack.duplicate_count) == (1_300, 0)
    if sqlite:
        assert touching(ran)["usage_events"] == [False] * math.ceil(1_300 / rows_per_event_statement)
        assert touching(ran)["usage_event_tags"] == [False]
        assert touching(ran)["usage_rollup_1m"] in ([False] * n for n in range(1, rollup_statements + 1))
    else:
        assert touching(ran) == {"usage_events": [False], "usage_event_tags": [False], "usage_rollup_1m": [True]}
    assert asked_for_ids(ran) == 0
    # The last 2: the gateway's sequences and included set, read (locked) and written back.
    assert len(writer_statements(ran)) <= 2 + 1 + rollup_statements + 2, [s[:40] for s in writer_statements(ran)]

    # 1,900 events, 500 stored before and 100 repeated in the batch: the insert does not take every row, so it
    # is undone; SQLite asks for the stored ids once and inserts the 1,300 others.
    ack, ran = await report_recording([*events, *events[1_000:1_100]])
    assert (ack.accepted_count, ack.duplicate_count) == (1_300, 600)
    if sqlite:
        attempts = math.ceil(1_800 / rows_per_event_statement) + math.ceil(1_300 / rows_per_event_statement)
        assert touching(ran)["usage_events"] == [False] * attempts
        assert asked_for_ids(ran) == 1
        assert len(writer_statements(ran)) <= attempts + 1 + 1 + rollup_statements + 2
    else:
        # The first insert, undone, then the one whose RETURNING rows tell the new events from the stored.
        assert touching(ran) == {"usage_events": [False] * 2, "usage_event_tags": [False], "usage_rollup_1m": [True]}
        assert asked_for_ids(ran) == 0
        assert len(writer_statements(ran)) <= 2 + 1 + 1 + 2
    assert await stored_event_count(control_plane.engine) == 1_800 + 1_300
    assert await rollup_sums(control_plane.engine) == expected_rollup([*events, *fresh])
