"""Ingest worker processes: a worker that dies fails only the batches it held, and new workers take over."""

from __future__ import annotations

import os
import signal

import grpc
import pytest

from services.server import ControlPlane
from tests.clients import Tokens

from .events import expected_rollup, report, rollup_sums, stored_event_count, varied_events, wait_until
from .processes import children, command_line, running


@pytest.fixture
def ingest_workers() -> int:
    return 1


async def test_a_batch_whose_worker_died_is_refused_whole_and_the_next_one_is_stored(
    channel: grpc.aio.Channel, control_plane: ControlPlane, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    secret = await tokens.gateway("prod", "gw-1")
    first = varied_events(300, seed=1)
    assert (await report(channel, secret, first)).accepted_count == 300
    # multiprocessing also starts a resource tracker; workers run spawn_main.
    workers = [pid for pid in children(os.getpid()) if running(pid) and b"spawn_main" in command_line(pid)]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)

    async def worker_gone() -> bool:
        return not running(workers[0])

    await wait_until(worker_gone)
    lost = varied_events(300, seed=2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await report(channel, secret, lost)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "an ingest worker process stopped" in (refused.value.details() or "")
    assert "resend it" in (refused.value.details() or "")
    # The agent resends it; a new worker prepares it.
    ack = await report(channel, secret, lost)
    assert (ack.accepted_count, ack.duplicate_count) == (300, 0)
    assert await stored_event_count(control_plane.engine) == 600
    assert await rollup_sums(control_plane.engine) == expected_rollup([*first, *lost])
