"""Reporting at scale: p50/p99 of summary, top-10 breakdown and hourly series over 30 days, rollups vs raw scans.

Run: ``.venv/bin/python -m benchmarks.reporting [--events 10000000] [--load-budget 900] [--postgres-events 1000000]``.
``--data-dir DIR`` keeps the SQLite dataset there, and the PostgreSQL database (named in DIR/postgres.json);
a later run with the same directory skips the loads (the schema is upgraded, and a rollup table added since
is built by compaction), so a design change can be measured on the same data. ``--raw-runs 0`` skips the
raw scans (minutes each at 10 M events) on such a re-run.

Before measuring, the write-ahead log that loading and compaction left is checkpointed and the garbage
collector tuned as ``meterwire serve`` tunes it: the figures are for a server in its steady state, not one
still writing back gigabytes of a bulk load.

Loading uses ingest's BULK form: rows are built with the telemetry row functions' column layout
(``rows.event_values``) and counted into per-minute rollups with ingest's own ``add_to_rollup``, then written
with large executemany statements (events, tags, ``upsert_adding`` into usage_rollup_1m), one transaction per
chunk. Compaction (services/accounting/compaction.py) then builds 1h and 1d. Queries run through the real
report code (UsageReports); the raw scans run the SAME aggregation with a plan forced to raw events.
If the load budget runs out first, the figures are for what was loaded, and say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from gateway_agent import new_event_id
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.accounting.compaction import compact
from services.accounting.measures import CostSource, status_class_of
from services.accounting.rollup import ROLLUP_COLUMNS, RollupKey, RollupRow, add_to_rollup, rollup_rows
from services.config.hub import ConfigHub
from services.gc_tuning import tune_garbage_collector
from services.pricing import PriceBooks
from services.reporting.aggregate import Aggregation, KeyNames, aggregate
from services.reporting.filters import Grouping, UsageSelection
from services.reporting.planner import QueryPlan, Source, bucket_grid, time_zone, whole_range
from services.reporting.reports import BreakdownQuery, SeriesRequest, UsageReports
from services.settings import ServerSettings
from services.storage import dialect, tables
from services.storage.engine import create_engine, sqlite_url
from services.storage.migrate import upgrade
from services.telemetry.rows import (
    EVENT_COLUMNS,
    TAG_COLUMNS,
    event_values,
)
from services.telemetry.sql import CompiledStatement

DAYS = 30
CHUNK = 50_000
MODELS = (
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-3-5-sonnet", "anthropic"),
    ("claude-3-haiku", "anthropic"),
    ("llama-3-70b", "bedrock"),
    ("o3", "openai"),
)
GATEWAYS = [("prod", f"gw-{i}") for i in range(4)] + [("staging", f"gw-{i}") for i in range(2)]
USERS = 300


def _user_profiles(rng: random.Random) -> list[tuple[int, str, str, tuple[int, int], bool]]:
    """(gateway index, api key, user, two preferred models, streams): usage is correlated, as in real fleets."""
    profiles = []
    for user in range(USERS):
        key = user // 5
        profiles.append(
            (key % len(GATEWAYS), f"key-{key}", f"user-{user}", (rng.randrange(6), rng.randrange(6)), user % 3 == 0)
        )
    return profiles


def _rows(
    rng: random.Random,
    count: int,
    start_us: int,
    span_us: int,
    keys: list[int],
    profiles: list[Any],
    first_request: int,
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    rows, tags = [], []
    for i in range(count):
        gateway_index, key, user, preferred, streams = profiles[rng.randrange(USERS)]
        environment_id = GATEWAYS[gateway_index][0]
        model, provider = MODELS[preferred[rng.random() < 0.3]]
        roll = rng.random()
        status = 200 if roll < 0.93 else 429 if roll < 0.97 else 500 if roll < 0.99 else None
        event_time_us = start_us + rng.randrange(span_us)
        input_tokens, output_tokens = rng.randrange(50, 8_000), rng.randrange(10, 2_000)
        row = {
            "environment_id": environment_id,
            "gateway_key": keys[gateway_index],
            "event_id": new_event_id(),
            "sequence": 0,
            "request_id": f"req-{first_request + i}",
            "attempt": 1,
            "event_time_us": event_time_us,
            "ingest_time_us": event_time_us + 1_000_000,
            "api_key_id": key,
            "user_id": user,
            "route": "/v1/chat/completions",
            "request_type": 1,
            "requested_model": model,
            "resolved_model": model,
            "provider": provider,
            "credential_type": 1,
            "streaming": streams,
            "status_code": status,
            "status_class": status_class_of(status),
            "error_type": "" if status in (200, None) else "upstream",
            "error_message": "",
            "latency_us": rng.randrange(80_000, 9_000_000),
            "gateway_latency_us": rng.randrange(200, 4_000),
            "ttft_us": rng.randrange(50_000, 1_500_000) if streams else None,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": rng.randrange(0, 2_000) if rng.random() < 0.3 else None,
            "cache_write_tokens": None,
            "reasoning_tokens": None,
            "token_categories": '{"audio_input": 40}' if rng.random() < 0.002 else None,
            "cost_micros": input_tokens * 3 + output_tokens * 12,
            "cache_savings_micros": None,
            "cost_source": int(CostSource.REPORTED),
            "tags": None,
        }
        if rng.random() < 0.2:
            team = f"team-{rng.randrange(8)}"
            row["tags"] = f'{{"team": "{team}"}}'
            tags.append((row["gateway_key"], row["event_id"], "team", team, environment_id, event_time_us))
        rows.append(row)
    return rows, tags


async def load(engine: AsyncEngine, *, events: int, budget_s: float, seed: int) -> tuple[int, float, int, int]:
    """Loads up to `events` over the last 30 days; returns (loaded, seconds, range start us, range end us)."""
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start_us, end_us = int((now - timedelta(days=DAYS)).timestamp() * 1e6), int(now.timestamp() * 1e6)
    async with engine.begin() as connection:
        for environment_id in ("prod", "staging"):
            await connection.execute(
                tables.environments.insert().values(
                    environment_id=environment_id, display_name=environment_id, create_time=datetime.now(UTC)
                )
            )
        keys = []
        for environment_id, gateway_id in GATEWAYS:
            result = await connection.execute(
                tables.gateways.insert().values(
                    environment_id=environment_id, gateway_id=gateway_id, register_time=datetime.now(UTC)
                )
            )
            keys.append(int(result.inserted_primary_key[0]))  # type: ignore[index]
    profiles = _user_profiles(rng)
    name = engine.dialect.name
    # The writer's own driver-level statements (telemetry/sql.py): tuples, no per-row Core processing.
    insert_events = CompiledStatement(tables.usage_events.insert(), engine.dialect, EVENT_COLUMNS)
    insert_tags = CompiledStatement(tables.usage_event_tags.insert(), engine.dialect, TAG_COLUMNS)
    upsert = CompiledStatement(
        dialect.upsert_adding(
            tables.usage_rollup_1m,
            dialect_name=name,
            key_columns=tables.ROLLUP_DIMENSIONS,
            add_columns=tables.ROLLUP_SUM_COLUMNS,
        ),
        engine.dialect,
        ROLLUP_COLUMNS,
    )
    began = time.perf_counter()
    loaded = 0
    while loaded < events and time.perf_counter() - began < budget_s:
        count = min(CHUNK, events - loaded)
        # Events arrive in time order, as from a live fleet: each chunk covers its own slice of the 30 days.
        span_us = (end_us - start_us) // events
        slice_start = start_us + loaded * span_us
        rows, tags = _rows(rng, count, slice_start, count * span_us, keys, profiles, loaded)
        rollups: dict[RollupKey, RollupRow] = {}
        for row in rows:
            add_to_rollup(rollups, row)
        async with engine.begin() as connection:
            await connection.exec_driver_sql(insert_events.sql, [event_values(r) for r in rows])
            if tags:
                await connection.exec_driver_sql(insert_tags.sql, tags)
            await connection.exec_driver_sql(upsert.sql, rollup_rows(rollups))
        loaded += count
        if loaded % 500_000 == 0:
            print(f"  loaded {loaded:,} events in {time.perf_counter() - began:,.0f} s", flush=True)
    return loaded, time.perf_counter() - began, start_us, end_us


async def timed(action: Callable[[], Awaitable[object]], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]


async def measure(engine: AsyncEngine, start_us: int, end_us: int, *, runs: int, raw_runs: int) -> None:
    reports = UsageReports(engine, max_points=10_000, prices=PriceBooks(ConfigHub(engine, ServerSettings())))
    selection = UsageSelection(start_us=start_us, end_us=end_us, environment_ids=None)
    model = (Grouping(pb.DIMENSION_REQUESTED_MODEL),)
    breakdown = BreakdownQuery(selection, model, order_by=pb.METRIC_COST, top_n=10)
    series = SeriesRequest(selection, pb.GRANULARITY_HOUR, "UTC", (pb.METRIC_REQUESTS, pb.METRIC_COST), None, 10)
    hourly = bucket_grid(start_us, end_us, pb.GRANULARITY_HOUR, time_zone("UTC"), max_points=10_000)
    # The console's "top users by cost" (full-key rollups: nearly a row per request and user) and its
    # "today, 5-minute buckets" (per-minute rollups; no coarser table splits an hour).
    users = (Grouping(pb.DIMENSION_USER),)
    by_user = BreakdownQuery(selection, users, order_by=pb.METRIC_COST, top_n=10, size=10)
    day_start = end_us - 86_400_000_000
    last_day = UsageSelection(start_us=day_start, end_us=end_us, environment_ids=None)
    five = SeriesRequest(last_day, pb.GRANULARITY_FIVE_MINUTES, "UTC", (pb.METRIC_COST,), None, 0)
    five_grid = bucket_grid(day_start, end_us, pb.GRANULARITY_FIVE_MINUTES, time_zone("UTC"), max_points=10_000)

    async def raw(aggregation: Aggregation) -> None:
        selected = aggregation.selection
        plan = QueryPlan({Source.RAW: ((selected.start_us, selected.end_us),)})
        async with engine.connect() as connection:
            await aggregate(connection, aggregation, await KeyNames.load(connection), plan=plan)

    # What a reporter token scoped to one environment asks.
    scoped = UsageSelection(start_us=start_us, end_us=end_us, environment_ids=frozenset({"prod"}))
    cases: list[tuple[str, Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]] = [
        (
            "summary",
            lambda: reports.summary(selection),
            lambda: raw(Aggregation(selection, whole_range(start_us, end_us))),
        ),
        (
            "summary, one env",
            lambda: reports.summary(scoped),
            lambda: raw(Aggregation(scoped, whole_range(start_us, end_us))),
        ),
        (
            "top-10 breakdown",
            lambda: reports.breakdown(breakdown),
            lambda: raw(Aggregation(selection, whole_range(start_us, end_us), model)),
        ),
        (
            "hourly series",
            lambda: reports.time_series(series),
            lambda: raw(Aggregation(selection, hourly, (), ("request_count", "cost_micros"))),
        ),
        (
            "top-10 users",
            lambda: reports.breakdown(by_user),
            lambda: raw(Aggregation(selection, whole_range(start_us, end_us), users)),
        ),
        (
            "5-min, last day",
            lambda: reports.time_series(five),
            lambda: raw(Aggregation(last_day, five_grid, (), ("cost_micros",))),
        ),
    ]
    print(
        f"  {'query':<18} {'rollup p50':>11} {'rollup p99':>11} {'raw p50':>10} {'raw p99':>10} {'speed-up (p50)':>15}"
    )
    for label, rollup_query, raw_query in cases:
        await rollup_query()  # warm the page cache once, as a running server would be
        fast = await timed(rollup_query, runs)
        figures = f"{fast[0]:>9.1f}ms {fast[1]:>9.1f}ms"
        if raw_runs:
            slow = await timed(raw_query, raw_runs)
            figures += f" {slow[0]:>8.0f}ms {slow[1]:>8.0f}ms {slow[0] / fast[0]:>14.0f}x"
        print(f"  {label:<18} {figures}", flush=True)


def _read_manifest(path: Path) -> tuple[int, int, int] | None:
    """(events loaded, range start us, range end us) of the dataset an earlier run left, if any."""
    dataset = json.loads(path.read_text()).get("dataset") if path.exists() else None
    return (int(dataset[0]), int(dataset[1]), int(dataset[2])) if dataset else None


def _write_manifest(path: Path, dataset: tuple[int, int, int]) -> None:
    kept = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**kept, "dataset": dataset}))


async def run_one(label: str, url: str, args: argparse.Namespace, *, events: int, manifest: Path | None) -> None:
    """On a fresh engine for `url`: loads (or, with a `manifest` from an earlier run, reuses) the dataset,
    compacts it and measures."""
    engine = create_engine(url)
    try:
        await _load_compact_measure(label, engine, args, events=events, manifest=manifest)
    finally:
        await engine.dispose()


async def _load_compact_measure(
    label: str, engine: AsyncEngine, args: argparse.Namespace, *, events: int, manifest: Path | None
) -> None:
    budget_s = args.load_budget
    await upgrade(engine)
    previous = _read_manifest(manifest) if manifest is not None else None
    if previous is not None:
        loaded, start_us, end_us = previous
        print(f"{label}: reusing {loaded:,} events loaded by an earlier run")
        async with engine.begin() as connection:
            coarse = (
                *(
                    table
                    for layout in tables.COARSE_ROLLUPS
                    for table in (layout.hourly, layout.daily, layout.five_minutes)
                    if table is not None
                ),
                tables.token_categories_1h,
            )
            for table in coarse:
                if await connection.scalar(sa.select(sa.literal(1)).select_from(table).limit(1)) is None:
                    # A rollup table added since the load: make every hour dirty so compaction builds it.
                    await connection.execute(tables.usage_rollup_1m.update().values(compacted_attempt_count=0))
                    break
    else:
        print(f"{label}: loading up to {events:,} events over {DAYS} days (bulk ingest form; budget {budget_s:.0f} s)")
        loaded, seconds, start_us, end_us = await load(engine, events=events, budget_s=budget_s, seed=7)
        print(f"  loaded {loaded:,} events in {seconds:,.0f} s ({loaded / seconds:,.0f}/s)")
        if loaded < events:
            print(
                f"  LOAD BUDGET REACHED: {loaded:,} of {events:,} loaded; extrapolated full load "
                f"{seconds * events / loaded:,.0f} s. Figures below are for {loaded:,} events."
            )
        if manifest is not None:
            _write_manifest(manifest, (loaded, start_us, end_us))
    began = time.perf_counter()
    report = await compact(engine, now_s=end_us // 1_000_000 + 3600)
    print(f"  compacted {report.hours} hours / {report.days} days in {time.perf_counter() - began:,.0f} s")
    async with engine.connect() as connection:
        for table in (tables.usage_rollup_1m, tables.usage_rollup_1h, tables.usage_rollup_1d):
            rows = await connection.scalar(sa.select(sa.func.count()).select_from(table))
            print(f"  {table.name}: {rows:,} rows")
        if engine.dialect.name == "sqlite":
            await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    tune_garbage_collector()
    await measure(engine, start_us, end_us, runs=args.runs, raw_runs=args.raw_runs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--load-budget", type=float, default=900.0, help="Seconds of loading before measuring.")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--raw-runs", type=int, default=3)
    parser.add_argument("--postgres-events", type=int, default=1_000_000, help="0 skips PostgreSQL.")
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--data-dir", type=Path, help="Keep (or reuse) both datasets; see the module docstring.")
    args = parser.parse_args()
    directory = args.data_dir or Path(tempfile.mkdtemp(prefix="mw-reporting-bench-"))
    manifest = directory / "benchmark.json" if args.data_dir else None
    await run_one(f"SQLite ({directory})", sqlite_url(directory), args, events=args.events, manifest=manifest)
    if args.postgres_events:
        await run_postgres(args)


async def run_postgres(args: argparse.Namespace) -> None:
    """The PostgreSQL run, in a database of its own: dropped afterwards, or kept for reuse with --data-dir."""
    keep = args.data_dir / "postgres.json" if args.data_dir else None
    kept = json.loads(keep.read_text()) if keep is not None and keep.exists() else None
    server = create_async_engine(args.postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    database = kept["database"] if kept else f"mw_bench_{secrets.token_hex(4)}"
    async with server.connect() as connection:
        exists = await connection.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database})
        if not exists:
            await connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    if keep is not None:
        if not exists and kept:
            kept.pop("dataset", None)  # the database went away: load again
        keep.write_text(json.dumps({"database": database, **(kept or {})}))
    try:
        await run_one(
            f"PostgreSQL ({database}{', kept' if keep else ''})",
            args.postgres_url.rsplit("/", 1)[0] + f"/{database}",
            args,
            events=args.postgres_events,
            manifest=keep,
        )
    finally:
        if keep is None:
            async with server.connect() as connection:
                await connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        await server.dispose()


if __name__ == "__main__":
    asyncio.run(main())
