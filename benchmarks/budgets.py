"""Measures what live budget counting costs usage ingest: events/s with N active budgets against none.

Run: ``.venv/bin/python -m benchmarks.budgets [--events 120000] [--budgets 20] [--rounds 2]``.

Each round runs ``meterwire serve`` twice per engine on a fresh database, flat out with the ingest benchmark's
batches and streams: once with no budget, once with N budgets of mixed scopes, metrics, periods and time zones
that all match every event (organization-wide and environment-wide). Runs alternate (none, N, none, N, ...), so
the ratio holds while the machine's speed drifts; the ratio per round and overall is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc

from benchmarks.ingest import (
    Figures,
    _bearer,
    _free_port,
    _gateway_secrets,
    _postgres_database,
    _subprocess,
    build_batches,
    measure,
)
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb

_METRICS = (budget_pb.METRIC_SPEND, budget_pb.METRIC_TOKENS, budget_pb.METRIC_REQUESTS)
_PERIODS = (budget_pb.PERIOD_DAY, budget_pb.PERIOD_WEEK, budget_pb.PERIOD_MONTH, budget_pb.PERIOD_TOTAL)
_ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")


async def _create_budgets(port: int, admin: str, count: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = budget_grpc.BudgetServiceStub(channel)
        for n in range(count):
            budget = budget_pb.Budget(
                display_name=f"bench {n}",
                # Half organization-wide, half the benchmark's environment: every event matches all of them.
                scope=budget_pb.Scope(environment_id="bench" if n % 2 else ""),
                metric=_METRICS[n % len(_METRICS)],
                limit=10**15,
                period=_PERIODS[n % len(_PERIODS)],
                time_zone=_ZONES[n % len(_ZONES)],
                mode=budget_pb.MODE_WARN_ONLY if n % 3 else budget_pb.MODE_HARD_STOP,
            )
            await stub.CreateBudget(budget_pb.CreateBudgetRequest(budget=budget), metadata=_bearer(admin))


async def _run(
    name: str,
    batches: Sequence[pb.StreamUsageRequest],
    data_dir: Path,
    *,
    database_url: str | None,
    budgets: int,
    streams: int,
    window: int,
) -> Figures:
    port = _free_port()
    command = [str(Path(sys.executable).parent / "meterwire"), "serve", "--data-dir", str(data_dir)]
    command += ["--listen", f"127.0.0.1:{port}", "--services", "telemetry,admin,budget"]
    if database_url:
        command += ["--database-url", database_url]
    async with _subprocess(command, port, {"MW_DRAIN_DELAY": "0", "MW_LOG_LEVEL": "warning"}) as pid:
        admin = (data_dir / "admin.token").read_text().strip()
        secrets_ = await _gateway_secrets(port, admin, streams)
        await _create_budgets(port, admin, budgets)
        return await measure(name, port, pid, secrets_, batches, window=window)


async def main(arguments: argparse.Namespace) -> None:
    batches = build_batches(arguments.events, arguments.batch)
    streams, window, count = arguments.streams, arguments.window, arguments.budgets
    print(
        f"{arguments.events:,} events in batches of {arguments.batch}, {streams} streams, window {window}; "
        f"{count} budgets matching every event against none; {arguments.rounds} rounds; {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="mw-bench-budgets-") as temporary:
        workdir = Path(temporary)
        for engine in ("SQLite", "PostgreSQL"):
            ratios: list[float] = []
            for round_ in range(arguments.rounds):
                figures: dict[int, Figures] = {}
                for budgets in (0, count):
                    name = f"E {engine} {budgets} budgets, round {round_ + 1}"
                    data_dir = workdir / f"{engine}-{budgets}-{round_}"
                    if engine == "SQLite":
                        figures[budgets] = await _run(
                            name, batches, data_dir, database_url=None, budgets=budgets, streams=streams, window=window
                        )
                    else:
                        async with _postgres_database() as url:
                            figures[budgets] = await _run(
                                name,
                                batches,
                                data_dir,
                                database_url=url,
                                budgets=budgets,
                                streams=streams,
                                window=window,
                            )
                    print(figures[budgets].line())
                ratio = figures[count].events_per_s / figures[0].events_per_s
                ratios.append(ratio)
                print(f"  {engine} round {round_ + 1}: {count} budgets / none = {ratio:.2f}")
            print(f"{engine}: median ratio {statistics.median(ratios):.2f} over {len(ratios)} rounds (target >= 0.8)")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=120_000, help="Events sent per run (default: %(default)s).")
    parser.add_argument("--batch", type=int, default=500, help="Events per batch (default: %(default)s).")
    parser.add_argument("--streams", type=int, default=4, help="Concurrent streams (default: %(default)s).")
    parser.add_argument("--window", type=int, default=8, help="Unacked batches per stream (default: %(default)s).")
    parser.add_argument(
        "--budgets", type=int, default=20, help="Active budgets in the measured runs (default: %(default)s)."
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="Alternating pairs of runs per engine (default: %(default)s)."
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_parse()))
