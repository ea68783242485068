"""Heartbeat load benchmark: N concurrent agent streams against a control plane in another process.

    .venv/bin/python -m benchmarks.heartbeat [--gateways 1000,5000,10000] [--duration 60] [--database-url URL]

For each fleet size it starts `meterwire serve` on a fresh database (SQLite unless --database-url), seeds
one gateway token per gateway, and runs the load generator in a third process: every gateway holds one
Heartbeat stream and pings every --interval seconds, start times spread evenly over one interval. After
the ramp and a warm-up interval it measures for --duration seconds: server CPU per heartbeat (utime+stime
from /proc/<pid>/stat), server RSS, heartbeat round-trip percentiles, and the flusher's database writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.auth import issue_token
from services.storage import tables
from services.storage.engine import create_engine, sqlite_url
from services.storage.migrate import upgrade

STREAMS_PER_CHANNEL = 250
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _seed(database_url: str, count: int) -> list[str]:
    """Creates the environment and one gateway token per gateway in one transaction; returns the secrets."""
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        now = datetime.now(UTC)
        issued = [issue_token() for _ in range(count)]
        async with engine.begin() as conn:
            await conn.execute(
                tables.environments.insert().values(environment_id="bench", display_name="bench", create_time=now)
            )
            await conn.execute(
                tables.api_tokens.insert(),
                [
                    {
                        "token_id": token.token_id,
                        "secret_sha256": token.secret_sha256,
                        "role": "gateway",
                        "environment_id": "bench",
                        "gateway_id": f"gw-{i:05d}",
                        "create_time": now,
                    }
                    for i, token in enumerate(issued)
                ],
            )
        return [token.secret for token in issued]
    finally:
        await engine.dispose()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# The load generator (run with --generate, in its own process).


class _Progress:
    def __init__(self, gateways: int) -> None:
        self.waiting = gateways
        self.all_connected = asyncio.Event()
        self.first_contacts: list[float] = []
        self.failed: list[str] = []

    def connected(self, seconds: float) -> None:
        self.first_contacts.append(seconds)
        self.done()

    def done(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.all_connected.set()


async def _gateway(
    stub: pb_grpc.HeartbeatServiceStub,
    secret: str,
    delay: float,
    interval: float,
    progress: _Progress,
    until: list[float],
    rtts: list[float],
) -> None:
    await asyncio.sleep(delay)
    outbox: asyncio.Queue[pb.HeartbeatRequest | None] = asyncio.Queue()

    async def requests() -> Any:
        while (request := await outbox.get()) is not None:
            yield request

    contacted: list[float] = []

    def first_contact(seconds: float) -> None:
        contacted.append(seconds)
        progress.connected(seconds)

    try:
        await _stream(stub, secret, interval, first_contact, until, rtts, requests(), outbox)
    except grpc.RpcError as error:  # counted and reported: a benchmark must not hide refused streams
        progress.failed.append(f"{error.code().name}: {error.details()}")
        if not contacted:
            progress.done()


async def _stream(
    stub: pb_grpc.HeartbeatServiceStub,
    secret: str,
    interval: float,
    first_contact: Callable[[float], None],
    until: list[float],
    rtts: list[float],
    requests: Any,
    outbox: asyncio.Queue[pb.HeartbeatRequest | None],
) -> None:
    call: Any = stub.Heartbeat(requests, metadata=(("authorization", f"Bearer {secret}"),))
    state = pb.AgentState(agent_version="0.1.0", gateway_version="bench/1.0", spool_depth=0)
    next_at = time.monotonic()
    first = True
    while not until or next_at < until[0]:
        started = time.perf_counter()
        await outbox.put(pb.HeartbeatRequest(state=state))
        await call.read()
        if first:  # stream set-up and authentication: reported apart from steady-state round trips
            first_contact(time.perf_counter() - started)
            first = False
        else:
            rtts.append(time.perf_counter() - started)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await outbox.put(None)
    await call.read()


async def _generate(args: argparse.Namespace, secrets_: list[str]) -> None:
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") for _ in range(max(1, len(secrets_) // STREAMS_PER_CHANNEL))
    ]
    stubs = [pb_grpc.HeartbeatServiceStub(channel) for channel in channels]
    rtts: list[float] = []
    until: list[float] = []  # set once measuring starts; the streams run until then
    progress = _Progress(len(secrets_))
    spread = args.interval / len(secrets_)
    ramp_started = time.monotonic()
    tasks = [
        asyncio.create_task(_gateway(stubs[i % len(stubs)], secret, i * spread, args.interval, progress, until, rtts))
        for i, secret in enumerate(secrets_)
    ]
    await progress.all_connected.wait()
    ramp = time.monotonic() - ramp_started
    await asyncio.sleep(args.interval)  # one warm-up interval at the steady rate
    until.append(time.monotonic() + args.duration)
    rtts.clear()
    cpu0, flushes0 = _cpu_seconds(args.server_pid), _metric(args.metrics_port, "meterwire_heartbeat_flushes_total")
    rows0, beats0 = (
        _metric(args.metrics_port, "meterwire_heartbeat_flushed_rows_total"),
        _metric(args.metrics_port, "meterwire_heartbeats_total"),
    )
    t0 = time.monotonic()
    await asyncio.sleep(max(0.0, until[0] - time.monotonic()))
    elapsed = time.monotonic() - t0
    cpu1, flushes1 = _cpu_seconds(args.server_pid), _metric(args.metrics_port, "meterwire_heartbeat_flushes_total")
    rows1, beats1 = (
        _metric(args.metrics_port, "meterwire_heartbeat_flushed_rows_total"),
        _metric(args.metrics_port, "meterwire_heartbeats_total"),
    )
    samples = sorted(rtts)
    rss = _rss_mib(args.server_pid)
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(None)

    def pct(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1000 if samples else float("nan")

    beats = beats1 - beats0
    print(
        json.dumps(
            {
                "gateways": len(secrets_),
                "seconds": elapsed,
                "heartbeats": beats,
                "heartbeats_per_s": beats / elapsed,
                "server_cpu_core": (cpu1 - cpu0) / elapsed,
                "server_cpu_us_per_heartbeat": (cpu1 - cpu0) / beats * 1e6 if beats else float("nan"),
                "server_rss_mib": rss,
                "rtt_p50_ms": pct(0.50),
                "rtt_p99_ms": pct(0.99),
                "ramp_s": ramp,
                "failed_streams": len(progress.failed),
                "first_failure": progress.failed[0] if progress.failed else "",
                "first_contact_p99_ms": sorted(progress.first_contacts)[int(0.99 * len(progress.first_contacts))]
                * 1000,
                "flush_statements_per_s": (flushes1 - flushes0) / elapsed,
                "flushed_rows_per_s": (rows1 - rows0) / elapsed,
            }
        )
    )


# The driver.


def _run_one(count: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    data_dir = workdir / f"n{count}"
    database_url = _fresh_postgres(args.database_url, count) if args.database_url else sqlite_url(data_dir)
    secret_list = asyncio.run(_seed(database_url, count))
    secrets_file = workdir / f"secrets-{count}.txt"
    secrets_file.write_text("\n".join(secret_list))
    port, metrics_port = _free_port(), _free_port()
    env = {**os.environ, "MW_LOG_LEVEL": "warning", "MW_DRAIN_DELAY": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir), "--database-url", database_url, "--metrics-listen", f"127.0.0.1:{metrics_port}"],
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _metric(metrics_port, "meterwire_heartbeats_total")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the control plane did not start") from None
                time.sleep(0.2)
        generator = subprocess.run(
            [sys.executable, "-m", "benchmarks.heartbeat", "--generate", "--port", str(port),
             "--metrics-port", str(metrics_port), "--server-pid", str(server.pid), "--secrets-file", str(secrets_file),
             "--count", str(count), "--interval", str(args.interval), "--duration", str(args.duration)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return dict(json.loads(generator.stdout.strip().splitlines()[-1]))
    finally:
        server.terminate()
        server.wait(timeout=60)


def _fresh_postgres(server_url: str, count: int) -> str:
    """A new, empty database on the given PostgreSQL server, so each fleet size starts clean."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"mw_bench_{count}_{secrets.token_hex(3)}"

    async def create() -> None:
        admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            await admin.dispose()

    asyncio.run(create())
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", default="1000,5000,10000", help="Fleet sizes, comma-separated.")
    parser.add_argument("--interval", type=float, default=10.0, help="Heartbeat interval, seconds.")
    parser.add_argument("--duration", type=float, default=60.0, help="Measured seconds per fleet size.")
    parser.add_argument("--database-url", default=None, help="postgresql+asyncpg://... server; default SQLite.")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secrets-file", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        asyncio.run(_generate(args, Path(args.secrets_file).read_text().split()[: args.count]))
        return
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"heartbeat benchmark: {database}, interval {args.interval:g} s, {args.duration:g} s measured per size")
    header = (
        f"{'gateways':>8} {'hb/s':>7} {'cpu core':>9} {'cpu/hb':>9} {'rss MiB':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'flush stmt/s':>12} {'rows/s':>7} {'ramp s':>7} {'connect p99 ms':>14}"
    )
    print(header)
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as workdir:
        for count in (int(n) for n in args.gateways.split(",")):
            r = _run_one(count, args, Path(workdir))
            if r["failed_streams"]:
                print(f"  {r['failed_streams']} streams failed, e.g. {r['first_failure']}")
            print(
                f"{r['gateways']:>8} {r['heartbeats_per_s']:>7.0f} {r['server_cpu_core'] * 100:>8.1f}% "
                f"{r['server_cpu_us_per_heartbeat']:>7.0f}us {r['server_rss_mib']:>8.0f} {r['rtt_p50_ms']:>7.2f} "
                f"{r['rtt_p99_ms']:>7.2f} {r['flush_statements_per_s']:>12.2f} {r['flushed_rows_per_s']:>7.0f} "
                f"{r['ramp_s']:>7.1f} {r['first_contact_p99_ms']:>14.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
