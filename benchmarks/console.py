"""The usage console's Usage page over the reporting benchmark's dataset: p50/p99 of the time to serve the page.

Run: ``.venv/bin/python -m benchmarks.console [--events 10000000] [--load-budget 900] [--data-dir DIR]``.

The dataset is the one benchmarks/reporting.py builds (its bulk loader and compaction; ``--data-dir`` shares the
directory and manifest format, so a dataset that benchmark left can be reused here and the other way round).
Then a real control plane serves the console from that database (``http_listen``), an admin signs in through the
form, and each page is requested ``--runs`` times over loopback after one warm-up. The time is the whole round
trip as the browser's HTML request sees it (session check, three reports, rendering, HTTP), measured by a client
in the same process: an upper bound of the server's time. The target is p99 <= 150 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

from benchmarks.reporting import _read_manifest, _write_manifest, load
from services.accounting.compaction import compact
from services.gc_tuning import tune_garbage_collector
from services.server import ControlPlane
from services.settings import ServerSettings
from services.storage.engine import create_engine, sqlite_url
from services.storage.migrate import upgrade

PAGES = (
    ("usage 30d, top models, 1d buckets", "/usage?range=30d"),
    ("usage 30d, one env", "/usage?range=30d&env=prod"),
    ("usage 30d, top users, cost", "/usage?range=30d&by=user&metric=cost"),
    ("usage 7d, hourly", "/usage?range=7d&granularity=1h"),
    ("usage today, 5 min", "/usage?range=today&granularity=5m"),
    ("usage 1h, 1 min", "/usage?range=1h"),
)


async def prepare(directory: Path, *, events: int, budget_s: float) -> int:
    """Loads (or reuses) the reporting dataset in `directory`, compacted; returns the events it holds."""
    manifest = directory / "benchmark.json"
    engine = create_engine(sqlite_url(directory))
    try:
        await upgrade(engine)
        previous = _read_manifest(manifest)
        if previous is not None:
            loaded, start_us, end_us = previous
            # A schema upgrade since may have marked hours dirty for new rollups: compaction builds them.
            print(f"reusing {loaded:,} events loaded by an earlier run in {directory}", flush=True)
        else:
            print(f"loading up to {events:,} events over 30 days into {directory} (budget {budget_s:.0f} s)")
            loaded, seconds, start_us, end_us = await load(engine, events=events, budget_s=budget_s, seed=7)
            print(f"  loaded {loaded:,} events in {seconds:,.0f} s")
            if loaded < events:
                print(f"  LOAD BUDGET REACHED: figures below are for {loaded:,} of {events:,} events")
        began = time.perf_counter()
        report = await compact(engine, now_s=end_us // 1_000_000 + 3600)
        print(f"  compacted {report.hours} hours / {report.days} days in {time.perf_counter() - began:,.0f} s")
        async with engine.connect() as connection:
            await connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        _write_manifest(manifest, (loaded, start_us, end_us))
        return loaded
    finally:
        await engine.dispose()


async def measure(directory: Path, *, runs: int) -> None:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=directory,
        drain_delay=timedelta(0),
        rollup_compaction_interval=timedelta(0),  # measure the pages, not a compaction running beside them
    )
    async with ControlPlane(settings) as plane:
        tune_garbage_collector()
        assert plane.console_url is not None
        async with httpx.AsyncClient(base_url=plane.console_url.rstrip("/"), timeout=60) as client:
            form = await client.get("/login")
            match = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert match is not None
            secret = settings.admin_token_path.read_text().strip()
            signed_in = await client.post("/login", data={"csrf_token": match.group(1), "token": secret})
            assert signed_in.status_code == 303, signed_in.text
            print(f"  {'page':<36} {'p50':>9} {'p99':>9} {'max':>9}")
            for label, path in PAGES:
                first = await client.get(path)
                assert first.status_code == 200, (path, first.status_code)
                samples = []
                for _ in range(runs):
                    began = time.perf_counter()
                    response = await client.get(path)
                    samples.append((time.perf_counter() - began) * 1000)
                    assert response.status_code == 200
                samples.sort()
                p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
                print(
                    f"  {label:<36} {statistics.median(samples):>7.1f}ms {p99:>7.1f}ms {samples[-1]:>7.1f}ms",
                    flush=True,
                )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--load-budget", type=float, default=900.0, help="Seconds of loading before measuring.")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--data-dir", type=Path, help="Keep (or reuse) the SQLite dataset here.")
    args = parser.parse_args()
    directory = args.data_dir or Path(tempfile.mkdtemp(prefix="mw-console-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    events = await prepare(directory, events=args.events, budget_s=args.load_budget)
    print(f"SQLite, {events:,} events: the Usage page, {args.runs} requests each after a warm-up")
    await measure(directory, runs=args.runs)


if __name__ == "__main__":
    asyncio.run(main())
