"""The sender's wire encoding and batch limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway_agent.sender import encode_batch
from gateway_agent.spool import Spool
from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from tests.gateway_agent.test_spool import add, open_spool


def test_a_batch_encoded_from_spooled_bytes_is_a_valid_stream_usage_request() -> None:
    events = [
        usage_pb2.UsageEvent(event_id=f"e{i}", request_id="r", attempt=1, sequence=i, tags={"team": "a" * i})
        for i in range(1, 300)
    ]
    wire = encode_batch(2**40 + 3, [e.SerializeToString() for e in events])

    parsed = telemetry_pb.StreamUsageRequest.FromString(wire)
    assert parsed.batch_sequence == 2**40 + 3
    assert list(parsed.events) == events


# Event payloads of 2 + varint + n bytes: the ranges cross the one/two- and two/three-byte length boundaries.
@pytest.mark.parametrize("message_length", [0, 1, *range(122, 128), *range(16_375, 16_381), 2_100_000])
def test_lengths_and_batch_numbers_at_varint_boundaries_encode_as_protobuf_does(message_length: int) -> None:
    event = usage_pb2.UsageEvent(error_message="m" * message_length)
    payload = event.SerializeToString()
    for batch_sequence in (1, 127, 128, 16_383, 16_384, 2**63 - 1):
        expected = telemetry_pb.StreamUsageRequest(batch_sequence=batch_sequence, events=[event, event])
        assert encode_batch(batch_sequence, [payload, payload]) == expected.SerializeToString()


async def test_batches_are_cut_by_event_count_and_bytes_in_sequence_order(tmp_path: Path) -> None:
    spool: Spool = await open_spool(tmp_path / "spool.db")
    s = await add(spool, 25, payload=b"q" * 40)
    cursor, batches = 0, []
    while events := await spool.read_after(cursor, max_events=10, max_bytes=300):
        batches.append([e.sequence for e in events])
        cursor = events[-1].sequence
    assert batches == [s[0:7], s[7:14], s[14:21], s[21:25]]
    await asyncio.to_thread(spool.close)
