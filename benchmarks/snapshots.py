"""Measures budget snapshots for agents: how long one snapshot takes to build, and what keeping the included set
adds to a usage transaction.

Run: ``.venv/bin/python -m benchmarks.snapshots [--budgets 20] [--gateways 50] [--snapshots 300]
[--postgres URL]``.

Snapshot: a database with N budgets covering a gateway (environment-wide and organization-wide, hard-stop and
warn-only) and G registered gateways; BudgetSnapshots.build (budgets, windows, included set and gateway counts in
one consistent read) is timed S times; p50 and p99 printed per engine. Included set: IncludedSet.adding for a
gateway holding the most ranges kept (256) and for the usual case (none), per call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from budgeting.decision import Metric, Mode
from budgeting.scope import Scope
from budgeting.windows import Period
from services.budget.changes import BudgetChanges
from services.budget.included import MAX_INCLUDED_RANGES, IncludedSet
from services.budget.service import BudgetDraft, BudgetService
from services.budget.snapshots import BudgetSnapshots
from services.gateway_registry import ensure_gateway
from services.storage import tables
from services.storage.engine import create_engine, sqlite_url
from services.storage.migrate import upgrade
from services.storage.uow import UnitOfWork


async def _snapshot_figures(url: str, arguments: argparse.Namespace) -> tuple[float, float]:
    engine = create_engine(url)
    try:
        await upgrade(engine)
        async with UnitOfWork(engine) as uow:
            await uow.connection.execute(
                tables.environments.insert().values(
                    environment_id="prod", display_name="prod", create_time=datetime.now(UTC)
                )
            )
            for number in range(arguments.gateways):
                await ensure_gateway(
                    uow.connection, environment_id="prod", gateway_id=f"gw-{number}", now=datetime.now(UTC)
                )
            await uow.commit()
        budgets = BudgetService(engine)
        for number in range(arguments.budgets):
            await budgets.create(
                BudgetDraft(
                    display_name=f"budget {number}",
                    scope=Scope(environment_id="prod" if number % 2 else ""),
                    metric=int(Metric.SPEND),
                    limit=10**12,
                    period=int(Period.DAY),
                    time_zone="UTC",
                    mode=int(Mode.HARD_STOP if number % 3 else Mode.WARN_ONLY),
                    thresholds=[80, 100],
                )
            )
        snapshots = BudgetSnapshots(
            engine, BudgetChanges(engine, poll_interval=timedelta(0)), min_interval=timedelta(0)
        )
        await snapshots.build("prod", "gw-0")  # warm the pool and statement caches
        timings = []
        for _ in range(arguments.snapshots):
            started = time.perf_counter()
            snapshot = await snapshots.build("prod", "gw-0")
            timings.append(time.perf_counter() - started)
        assert len(snapshot.statuses) == arguments.budgets
        timings.sort()
        return statistics.median(timings), timings[int(len(timings) * 0.99) - 1]
    finally:
        await engine.dispose()


def _adding_us(included: IncludedSet, calls: int) -> float:
    started = time.perf_counter()
    for number in range(calls):
        stored = IncludedSet.decode(included.through, included.encode())
        stored.adding(through=0, batches=[(10**9 + number, 10**9 + number + 99)])
    return (time.perf_counter() - started) / calls * 1e6


async def main(arguments: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as directory:
        urls = [("sqlite", sqlite_url(Path(directory)))]
        if arguments.postgres:
            urls.append(("postgresql", arguments.postgres))
        for name, url in urls:
            p50, p99 = await _snapshot_figures(url, arguments)
            print(
                f"{name}: snapshot with {arguments.budgets} budgets, {arguments.gateways} gateways: "
                f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms ({arguments.snapshots} builds)"
            )
    full = IncludedSet(0, tuple((10 * i + 5, 10 * i + 6) for i in range(MAX_INCLUDED_RANGES)))
    print(
        f"included set, {MAX_INCLUDED_RANGES} ranges kept: decode+add+encode {_adding_us(full, 2000):.1f} µs per batch"
    )
    print(f"included set, no ranges: decode+add+encode {_adding_us(IncludedSet(1000), 20000):.2f} µs per batch")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, default=20, help="budgets covering the gateway")
    parser.add_argument("--gateways", type=int, default=50, help="gateways registered in its environment")
    parser.add_argument("--snapshots", type=int, default=300, help="snapshots timed per engine")
    parser.add_argument("--postgres", default="", help="also measure on this (empty, migrated here) PostgreSQL URL")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
