"""The spool keeps what the local budget view needs across a restart: acked digests (in the ack's transaction),
the last snapshot, and the promise of what was committed (committed_through_sequence)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway_agent.budget_digest import UsageDigest
from gateway_agent.budget_view import BudgetView
from gateway_agent.sender import encode_batch
from gateway_agent.spool import Rejection
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from tests.gateway_agent.budget_snapshots import budget, priced_config, snapshot, usage_event
from tests.gateway_agent.test_spool import open_spool


def test_a_batch_carries_the_agents_committed_through_promise() -> None:
    wire = encode_batch(7, [b""], committed_through_sequence=2**40 + 5)
    parsed = telemetry_pb.StreamUsageRequest.FromString(wire)
    assert (parsed.batch_sequence, parsed.committed_through_sequence, len(parsed.events)) == (7, 2**40 + 5, 1)


async def test_acked_digests_and_the_snapshot_survive_a_restart_and_count_exactly_once(tmp_path: Path) -> None:
    now = time.time()
    limit_budget = budget("b", limit=10**9)
    view = BudgetView()
    view.apply_config(priced_config())
    view.apply_snapshot(snapshot([(limit_budget, 0)], now_s=now))
    spool = await open_spool(tmp_path / "spool.db")
    spool.ack_digests = view.acknowledged
    base = spool.next_sequence - 1  # a new spool numbers from microseconds since the epoch; events are base + 1-6
    events = []
    for n in range(1, 7):
        event = usage_event(base + n, cost_micros=100 * n, now_s=now)
        spool.next_sequence += 1
        assert spool.enqueue(event.sequence, event.event_id, event.SerializeToString()) is None
        view.count_event(event)
        events.append(event)
    assert await spool.wait_committed(base + 6)
    # Batch 1-4 acked (3 rejected); the server's snapshot then includes 1-2 (and 6, committed out of order).
    spool.acknowledge([base + n for n in (1, 2, 3, 4)], 0, [Rejection(base + 3, "INVALID", "tokens", "bad")])
    server_snapshot = snapshot(
        [(limit_budget, 100 * (1 + 2 + 6))], now_s=now, through=base + 2, ranges=[(base + 6, base + 6)]
    )
    view.apply_snapshot(server_snapshot)
    spool.save_budget_snapshot(server_snapshot.SerializeToString(), base + 2, [(base + 6, base + 6)])
    assert view.budgets()[0].used == 100 * (1 + 2 + 4 + 5 + 6)
    await asyncio.to_thread(spool.close)

    reopened = await open_spool(tmp_path / "spool.db")
    stored, digest_rows = await asyncio.to_thread(reopened.load_budget_state)
    payloads = [p for chunk in await asyncio.to_thread(list, reopened.spooled_payloads(chunk=1)) for p in chunk]
    assert [row[0] for row in digest_rows] == [base + 4]  # acked, not rejected, not included (1-2: the snapshot)
    assert len(payloads) == 2  # 5 and 6 were never acked
    assert reopened.acked_floor == base + 4
    restored = BudgetView()
    restored.apply_config(priced_config())
    digests = [UsageDigest.from_row(row) for row in digest_rows] + restored.digest_payloads(payloads)
    assert stored is not None
    restored.restore(budget_pb.BudgetSnapshot.FromString(stored), digests)
    (figures,) = restored.budgets()
    assert (figures.server_used, figures.pending_used, figures.used) == (900, 100 * (4 + 5), 100 * 18)
    await asyncio.to_thread(reopened.close)


async def test_a_saved_snapshot_deletes_the_digests_it_includes(tmp_path: Path) -> None:
    now = time.time()
    view = BudgetView()
    view.apply_config(priced_config())
    view.apply_snapshot(snapshot([(budget("b", limit=10**9), 0)], now_s=now))
    spool = await open_spool(tmp_path / "spool.db")
    spool.ack_digests = view.acknowledged
    base = spool.next_sequence - 1
    for sequence in (base + 1, base + 2, base + 3):
        event = usage_event(sequence, cost_micros=10, now_s=now)
        spool.next_sequence += 1
        assert spool.enqueue(sequence, event.event_id, event.SerializeToString()) is None
        view.count_event(event)
    assert await spool.wait_committed(base + 3)
    spool.acknowledge([base + 1, base + 2, base + 3], 0, [])
    spool.save_budget_snapshot(b"", base + 1, [(base + 3, base + 3)])
    await asyncio.to_thread(spool.close)
    reopened = await open_spool(tmp_path / "spool.db")
    _, digest_rows = await asyncio.to_thread(reopened.load_budget_state)
    payloads = [p for chunk in await asyncio.to_thread(list, reopened.spooled_payloads()) for p in chunk]
    assert ([row[0] for row in digest_rows], payloads, reopened.acked_floor) == ([base + 2], [], base + 3)
    await asyncio.to_thread(reopened.close)
