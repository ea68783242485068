"""Gateway agent benchmark: record() latency, drain rate of a 1,000,000-event spool, RSS while holding it."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from gateway_agent import GatewayAgent
from meterwire.common.v1 import usage_pb2
from services.cli.simulate import make_request
from services.gc_tuning import tune_garbage_collector
from tests.gateway_agent.harness import agent_settings, control_plane, eventually

UNREACHABLE = "127.0.0.1:9"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def templates(count: int) -> list[usage_pb2.UsageEvent]:
    rng = random.Random(1)
    events: list[usage_pb2.UsageEvent] = []
    while len(events) < count:
        events.extend(make_request(rng))
    return events[:count]


async def bench_record(data_dir: Path, count: int) -> None:
    events = templates(count)
    settings = agent_settings(UNREACHABLE, "token", data_dir, initial_fetch_timeout=timedelta(milliseconds=200))
    async with GatewayAgent(settings) as agent:
        durations = []
        for i, event in enumerate(events):
            started = time.perf_counter_ns()
            await agent.record(event)
            durations.append(time.perf_counter_ns() - started)
            if i % 64 == 0:
                await asyncio.sleep(0)  # a gateway serves requests between records; let the loop breathe
        await agent.flush()
        dropped = agent.status().dropped_event_count
    durations.sort()
    p50 = durations[len(durations) // 2] / 1000
    p99 = durations[int(len(durations) * 0.99)] / 1000
    mean = statistics.fmean(durations) / 1000
    print(f"record(): {count:,} events (fsync group commits): p50 {p50:.1f} µs, p99 {p99:.1f} µs, mean {mean:.1f} µs")
    verdict = "MET" if p99 <= 200 else "MISSED"
    print(f"record(): p99 target <= 200 µs: {verdict} (ratio {p99 / 200:.2f}); dropped {dropped}")


async def fill(agent: GatewayAgent, count: int) -> None:
    template = templates(64)
    for i in range(count):
        event = usage_pb2.UsageEvent()
        event.CopyFrom(template[i % 64])
        event.event_id = ""
        result = await agent.record(event)
        if result.dropped_reason == "queue_full":
            # Filling flat out outruns the spool's group commits; a gateway would fail open here, the benchmark
            # waits so that the spool holds exactly `count` events.
            await agent.flush()
            event.event_id = ""
            result = await agent.record(event)
        assert result.spooled, result
        if i % 256 == 0:
            await asyncio.sleep(0)
    await agent.flush()


async def bench_drain(work: Path, count: int, batch_events: int) -> None:
    with control_plane(work / "cp") as cp:
        token, port = cp.gateway_token, int(cp.address.rpartition(":")[2])
    # The control plane is down while the spool fills.
    settings = agent_settings(
        f"127.0.0.1:{port}",
        token,
        work / "agent",
        backoff_max=timedelta(milliseconds=500),
        max_batch_events=batch_events,
    )
    agent = GatewayAgent(settings)
    await agent.start()
    started = time.monotonic()
    await fill(agent, count)
    fill_s = time.monotonic() - started
    status = agent.status()
    print(f"spool: filled {status.spool_depth:,} events in {fill_s:.1f} s ({status.spool_bytes / 1e6:.0f} MB payload)")
    print(f"agent RSS holding {status.spool_depth:,} spooled events: {rss_mb():.0f} MB (target <= 150 MB)")
    with control_plane(work / "cp", port=port, token=token) as cp:
        server_pid = cp.process.process.pid
        server_cpu, agent_cpu = cpu_seconds(server_pid), time.process_time()
        started = time.monotonic()
        await eventually(lambda: agent.status().spool_depth == 0, within=600, what="the drain", interval=0.2)
        drain_s = time.monotonic() - started
        server_cpu, agent_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - agent_cpu
        final = agent.status()
    await agent.shutdown()
    print(
        f"drain: {count:,} events in {drain_s:.1f} s after reconnect = {count / drain_s:,.0f} events/s "
        f"(batches of {batch_events}, window {settings.max_unacked_batches}); target <= 60 s: "
        f"{'MET' if drain_s <= 60 else 'MISSED'}; accepted {final.events_accepted:,}, duplicates "
        f"{final.events_duplicate:,}, rejected {final.events_rejected:,}"
    )
    # Which side limits the drain: the control plane (validation, pricing, storage) or the agent (spool, sender).
    print(
        f"drain CPU per event: control plane {server_cpu / count * 1e6:.1f} µs, "
        f"agent {agent_cpu / count * 1e6:.1f} µs; {os.cpu_count()} CPUs"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record-events", type=int, default=200_000)
    parser.add_argument("--spool-events", type=int, default=1_000_000)
    parser.add_argument("--batch-events", type=int, default=2000)
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument(
        "--tune-gc", action="store_true", help="Tune the GC as `meterwire agent run` does (the daemon deployment)."
    )
    args = parser.parse_args()
    if args.tune_gc:
        tune_garbage_collector()
    with tempfile.TemporaryDirectory() as tmp:
        await bench_record(Path(tmp) / "record", args.record_events)
        if not args.skip_drain:
            await bench_drain(Path(tmp), args.spool_events, args.batch_events)


if __name__ == "__main__":
    asyncio.run(main())
