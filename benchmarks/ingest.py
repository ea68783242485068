"""Measures usage ingest against its ceilings in one run: C1 bare gRPC, C2 raw sqlite3, E end-to-end.

Run: ``.venv/bin/python -m benchmarks.ingest [--events 240000] [--batch 500] [--streams 4] [--window 8]
[--event-times ordered|spread]``.

Every measurement uses the same pre-built batches. The servers (an echo servicer for C1, ``meterwire serve``
for E) run in a subprocess, so the client's protobuf encoding does not share the server's core; CPU seconds
per event are the client's ``time.process_time`` plus the user+system time of the server process and its
ingest workers from /proc, both printed. C2 runs in this process and times only ``executemany`` + commit of
pre-built row tuples: the rows E stores (events, their tags, the upserts of the batch's per-minute rollups);
C2e times the events alone.

One script past the house's ~400 lines on purpose: the ceilings and the end-to-end runs must use the very same
batches and figures in one run, and benchmarks/budgets.py reuses its pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from gateway_agent import new_event_id
from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.admin.v1 import admin_service_pb2_grpc as admin_grpc
from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as pb_grpc
from services.accounting.rollup import ROLLUP_COLUMNS, RollupKey, RollupRow, add_to_rollup, rollup_rows
from services.pricing import PriceBook
from services.storage import tables
from services.storage.dialect import insert_ignore_duplicates, upsert_adding
from services.storage.engine import create_engine, sqlite_url
from services.storage.migrate import upgrade
from services.telemetry.rows import (
    EVENT_COLUMNS,
    TAG_COLUMNS,
    event_values,
    price_row,
    tag_items,
    usage_event_row,
    usage_event_tag_rows,
)
from services.telemetry.sql import CompiledStatement

POSTGRES_SERVER_URL = os.environ.get("MW_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
_MODELS = (("gpt-4o", "openai"), ("claude-3-5-sonnet", "anthropic"), ("llama-3-70b", "bedrock"))


EVENT_SPAN_S = 600
"""The events' times cover the ten minutes before the run."""


def build_batches(count: int, size: int, *, event_times: str = "ordered") -> list[pb.StreamUsageRequest]:
    """Realistic events: a few models, keys and users, most with tokens, latency and status; some tags.

    `event_times`: "ordered" as an agent sends them (attempts recorded as they end, so a batch covers a moment:
    event i ends at i/count of the span and started its latency earlier); "spread": every batch covers the
    whole span (event i at i % 600 s ago), a worst case that inserts each event at a random place of the time
    index.
    """
    now = datetime.now(UTC)
    start_us = int(now.timestamp() * 1_000_000) - EVENT_SPAN_S * 1_000_000
    events = []
    for i in range(count):
        model, provider = _MODELS[i % 3]
        latency_us = (i % 997 + 1) * 1000
        if event_times == "spread":
            event_time = Timestamp(seconds=int((now - timedelta(seconds=i % EVENT_SPAN_S)).timestamp()))
        else:
            ended_us = start_us + i * EVENT_SPAN_S * 1_000_000 // count
            event_time = Timestamp(
                seconds=(ended_us - latency_us) // 1_000_000, nanos=(ended_us - latency_us) % 10**6 * 1000
            )
        event = usage_pb2.UsageEvent(
            event_id=new_event_id(),  # UUIDv7, as the agent makes them
            request_id=f"req-{i}",
            attempt=1,
            event_time=event_time,
            api_key_id=f"key-{i % 10}",
            user_id=f"user-{i % 25}",
            route="/v1/chat/completions",
            request_type=usage_pb2.REQUEST_TYPE_CHAT,
            requested_model=model,
            resolved_model=model,
            provider=provider,
            credential_type=usage_pb2.CREDENTIAL_TYPE_MANAGED,
            streaming=i % 2 == 0,
            status_code=200 if i % 20 else 429,
            latency=Duration(nanos=latency_us * 1000),
            gateway_latency=Duration(nanos=(i % 7 + 1) * 100_000),
            tokens=usage_pb2.TokenCounts(input=1_000 + i % 500, output=200 + i % 300, cache_read=i % 4 * 100),
            cost_micros=1_234 + i % 100,
            sequence=i + 1,
        )
        if event.streaming:
            event.ttft.CopyFrom(Duration(nanos=(i % 300 + 20) * 1_000_000))
        if i % 10 == 0:
            event.tags["team"] = f"team-{i % 4}"
        events.append(event)
    return [
        pb.StreamUsageRequest(batch_sequence=n + 1, events=events[start : start + size])
        for n, start in enumerate(range(0, count, size))
    ]


@dataclass(frozen=True)
class Figures:
    name: str
    events: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float
    ack_latencies_s: list[float]

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s

    def line(self) -> str:
        cpu = (self.client_cpu_s + self.server_cpu_s) / self.events
        text_ = f"{self.name:<34} {self.events_per_s:>10,.0f} events/s  cpu {cpu * 1e6:6.1f} us/event"
        text_ += f" (client {self.client_cpu_s:.2f} s + server {self.server_cpu_s:.2f} s)"
        if self.ack_latencies_s:
            ordered = sorted(self.ack_latencies_s)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            text_ += f"  ack p50 {statistics.median(ordered) * 1e3:6.1f} ms  p99 {p99 * 1e3:6.1f} ms"
        return text_


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process and its children (a server's ingest workers), from /proc."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # After the name: state, parent, ..., utime (11), stime (12).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(entry.name) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _bearer(secret: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {secret}"),)


async def _run_stream(
    stub: pb_grpc.TelemetryServiceStub,
    secret: str,
    requests: Sequence[pb.StreamUsageRequest],
    *,
    window: int,
    interval_s: float,
    offset_s: float,
    latencies: list[float],
) -> None:
    """Sends with up to `window` unacked batches (paced: one per `interval_s`, the first after `offset_s`);
    records each batch's ack latency."""
    # grpc-stubs type the call as the sync iterator; with grpc.aio it is a StreamStreamCall.
    call = cast(
        "grpc.aio.StreamStreamCall[pb.StreamUsageRequest, pb.StreamUsageResponse]",
        stub.StreamUsage(metadata=_bearer(secret)),  # type: ignore[call-arg]
    )
    sent_at: deque[float] = deque()
    slots = asyncio.Semaphore(window)

    async def write() -> None:
        start = time.perf_counter() + offset_s
        for n, request in enumerate(requests):
            if interval_s:
                await asyncio.sleep(max(0.0, start + n * interval_s - time.perf_counter()))
            await slots.acquire()
            sent_at.append(time.perf_counter())
            await call.write(request)
        await call.done_writing()

    writer = asyncio.get_running_loop().create_task(write())
    for _ in requests:
        response = await call.read()
        if not isinstance(response, pb.StreamUsageResponse):
            raise RuntimeError(f"stream ended early: {await call.details()}")
        latencies.append(time.perf_counter() - sent_at.popleft())
        slots.release()
    await writer
    # Wait for the server to end the call, so closing the channel does not cancel a finished stream.
    if await call.code() is not grpc.StatusCode.OK:
        raise RuntimeError(f"stream failed: {await call.details()}")


async def measure(
    name: str,
    port: int,
    server_pid: int,
    secrets_: Sequence[str],
    batches: Sequence[pb.StreamUsageRequest],
    *,
    window: int,
    rate: float = 0.0,
) -> Figures:
    """Deals the batches round-robin to one stream per secret; `rate` (events/s, 0 = flat out) paces them."""
    streams = len(secrets_)
    shares = [batches[i::streams] for i in range(streams)]
    events = sum(len(b.events) for b in batches)
    interval_s = 0.0 if not rate else len(batches[0].events) * streams / rate
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.TelemetryServiceStub(channel)
        client_cpu, server_cpu, started = time.process_time(), _process_cpu_s(server_pid), time.perf_counter()
        await asyncio.gather(
            *(
                # Paced streams are staggered so that batches arrive evenly, not in bursts of `streams`.
                _run_stream(
                    stub,
                    s,
                    share,
                    window=window,
                    interval_s=interval_s,
                    offset_s=interval_s * n / streams,
                    latencies=latencies,
                )
                for n, (s, share) in enumerate(zip(secrets_, shares, strict=True))
            )
        )
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = _process_cpu_s(server_pid) - server_cpu
    return Figures(name, events, wall, client_cpu, server_cpu, latencies)


# --- C1: the echo server ------------------------------------------------------------------------------------


class _EchoServicer(pb_grpc.TelemetryServiceServicer):
    async def StreamUsage(
        self, request_iterator: AsyncIterator[pb.StreamUsageRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamUsageResponse]:
        async for request in request_iterator:
            yield pb.StreamUsageResponse(
                ack=pb.UsageAck(batch_sequence=request.batch_sequence, accepted_count=len(request.events))
            )

    async def ReportUsage(
        self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportUsageResponse:
        return pb.ReportUsageResponse(
            ack=pb.UsageAck(batch_sequence=request.batch_sequence, accepted_count=len(request.events))
        )


async def _serve_echo(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    pb_grpc.add_TelemetryServiceServicer_to_server(_EchoServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@asynccontextmanager
async def _subprocess(command: list[str], port: int, env: dict[str, str] | None = None) -> AsyncIterator[int]:
    process = await asyncio.create_subprocess_exec(
        *command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            ready = asyncio.ensure_future(channel.channel_ready())
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({ready, exited}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            exited.cancel()  # only the wait is cancelled, not the process
            if not ready.done():
                ready.cancel()
                code = process.returncode
                reason = "is not ready in 60 s" if code is None else f"exited with {code}"
                name = " ".join([Path(command[0]).name, *command[1:3]])
                raise RuntimeError(f"the server ({name} ...) {reason}; its error is above")
        yield process.pid
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def c1_grpc(batches: Sequence[pb.StreamUsageRequest], *, streams: int, window: int) -> Figures:
    port = _free_port()
    command = [sys.executable, "-m", "benchmarks.ingest", "--echo-server", str(port)]
    async with _subprocess(command, port) as pid:
        return await measure("C1 grpc.aio bidi, no storage", port, pid, ["-"] * streams, batches, window=window)


# --- C2: raw sqlite3 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StoredRows:
    """What E stores for one batch, as driver tuples: its events, their tags and its per-minute rollups."""

    events: list[tuple[Any, ...]]
    tags: list[tuple[Any, ...]]
    rollups: list[tuple[Any, ...]]


def _stored_rows(batches: Sequence[pb.StreamUsageRequest]) -> list[_StoredRows]:
    book = PriceBook()
    now_us = time.time_ns() // 1000
    prepared = []
    for batch in batches:
        events, tags = [], []
        rollups: dict[RollupKey, RollupRow] = {}
        for event in batch.events:
            items = tag_items(event)
            row = usage_event_row(event, environment_id="bench", gateway_key=1, tags=items)
            price_row(row, event, book)
            row["ingest_time_us"] = now_us
            events.append(event_values(row))
            tags.extend(usage_event_tag_rows(items, row))
            add_to_rollup(rollups, row)
        prepared.append(_StoredRows(events, tags, rollup_rows(rollups)))
    return prepared


async def c2_sqlite(batches: Sequence[pb.StreamUsageRequest], workdir: Path, *, events_only: bool) -> Figures:
    """Raw sqlite3: one executemany per table and a commit per batch, of the rows E stores for it (pre-built,
    untimed): its events, their tags and the upserts of its rollups; `events_only`: the events alone."""
    data_dir = workdir / ("c2-events" if events_only else "c2")
    engine = create_engine(sqlite_url(data_dir))
    await upgrade(engine)
    await engine.dispose()
    prepared = _stored_rows(batches)
    connection = sqlite3.connect(data_dir / "meterwire.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(
        "INSERT INTO environments (environment_id, display_name, create_time) VALUES ('bench', 'b', '2026-01-01')"
    )
    connection.execute(
        "INSERT INTO gateways (environment_id, gateway_id, register_time) VALUES ('bench', 'gw', '2026-01-01')"
    )
    sqlite = sqlite_dialect.dialect()
    insert_events = CompiledStatement(
        insert_ignore_duplicates(
            tables.usage_events, dialect_name="sqlite", index_elements=("gateway_key", "event_id")
        ),
        sqlite,
        EVENT_COLUMNS,
    ).sql
    insert_tags = CompiledStatement(tables.usage_event_tags.insert(), sqlite, TAG_COLUMNS).sql
    upsert_rollups = CompiledStatement(
        upsert_adding(
            tables.usage_rollup_1m,
            dialect_name="sqlite",
            key_columns=tables.ROLLUP_DIMENSIONS,
            add_columns=tables.ROLLUP_SUM_COLUMNS,
        ),
        sqlite,
        ROLLUP_COLUMNS,
    ).sql
    cpu, started = time.process_time(), time.perf_counter()
    for rows in prepared:
        connection.execute("BEGIN")
        connection.executemany(insert_events, rows.events)
        if not events_only:
            connection.executemany(insert_tags, rows.tags)
            connection.executemany(upsert_rollups, rows.rollups)
        connection.execute("COMMIT")
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    connection.close()
    events = sum(len(rows.events) for rows in prepared)
    name = "C2e sqlite3, events alone" if events_only else "C2 sqlite3 executemany, commit/batch"
    return Figures(name, events, wall, cpu, 0.0, [])


# --- E: meterwire serve -------------------------------------------------------------------------------------


async def _gateway_secrets(port: int, admin_secret: str, streams: int) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = admin_grpc.AdminServiceStub(channel)
        await stub.CreateEnvironment(
            admin_pb.CreateEnvironmentRequest(environment=admin_pb.Environment(environment_id="bench")),
            metadata=_bearer(admin_secret),
        )
        result = []
        for n in range(streams):
            created = await stub.CreateToken(
                admin_pb.CreateTokenRequest(role=admin_pb.ROLE_GATEWAY, environment_id="bench", gateway_id=f"gw-{n}"),
                metadata=_bearer(admin_secret),
            )
            result.append(created.secret)
        return result


@asynccontextmanager
async def _postgres_database() -> AsyncIterator[str]:
    name = f"mw_bench_{secrets.token_hex(4)}"
    server = create_async_engine(POSTGRES_SERVER_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with server.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with server.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await server.dispose()


async def e_end_to_end(
    name: str,
    batches: Sequence[pb.StreamUsageRequest],
    data_dir: Path,
    *,
    database_url: str | None,
    streams: int,
    window: int,
    rate: float = 0.0,
) -> Figures:
    port = _free_port()
    command = [str(Path(sys.executable).parent / "meterwire"), "serve", "--data-dir", str(data_dir)]
    command += ["--listen", f"127.0.0.1:{port}", "--services", "telemetry,admin"]
    if database_url:
        command += ["--database-url", database_url]
    async with _subprocess(command, port, {"MW_DRAIN_DELAY": "0", "MW_LOG_LEVEL": "warning"}) as pid:
        admin = (data_dir / "admin.token").read_text().strip()
        secrets_ = await _gateway_secrets(port, admin, streams)
        return await measure(name, port, pid, secrets_, batches, window=window, rate=rate)


async def main(arguments: argparse.Namespace) -> None:
    batches = build_batches(arguments.events, arguments.batch, event_times=arguments.event_times)
    streams, window = arguments.streams, arguments.window
    print(
        f"{arguments.events:,} events ({arguments.event_times} times) in batches of {arguments.batch}, "
        f"{streams} streams, window {window} unacked batches per stream; servers in a subprocess; "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as temporary:
        workdir = Path(temporary)
        c1 = await c1_grpc(batches, streams=streams, window=window)
        print(c1.line())
        c2 = await c2_sqlite(batches, workdir, events_only=False)
        print(c2.line())
        c2_events = await c2_sqlite(batches, workdir, events_only=True)
        print(c2_events.line())
        ceiling = min(c1.events_per_s, c2.events_per_s)
        events_ceiling = min(c1.events_per_s, c2_events.events_per_s)
        e_sqlite = await e_end_to_end(
            "E StreamUsage SQLite", batches, workdir / "e-sqlite", database_url=None, streams=streams, window=window
        )
        print(
            e_sqlite.line() + f"  E/min(C1,C2) {e_sqlite.events_per_s / ceiling:.2f}"
            f" (C2e: {e_sqlite.events_per_s / events_ceiling:.2f})"
        )
        async with _postgres_database() as url:
            e_postgres = await e_end_to_end(
                "E StreamUsage PostgreSQL", batches, workdir / "e-pg", database_url=url, streams=streams, window=window
            )
        print(e_postgres.line() + f"  E/min(C1,C2) {e_postgres.events_per_s / ceiling:.2f}")
        half = e_sqlite.events_per_s / 2
        paced = await e_end_to_end(
            f"E SQLite paced at {half:,.0f}/s",
            batches,
            workdir / "e-sqlite-half",
            database_url=None,
            streams=streams,
            window=window,
            rate=half,
        )
        print(paced.line())
        half_pg = e_postgres.events_per_s / 2
        async with _postgres_database() as url:
            paced_pg = await e_end_to_end(
                f"E PostgreSQL paced at {half_pg:,.0f}/s",
                batches,
                workdir / "e-pg-half",
                database_url=url,
                streams=streams,
                window=window,
                rate=half_pg,
            )
        print(paced_pg.line())


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    # 480 batches: the p99 of the paced runs is then the 5th slowest ack, not the 2nd.
    parser.add_argument("--events", type=int, default=240_000, help="Events sent per run (default: %(default)s).")
    parser.add_argument("--batch", type=int, default=500, help="Events per batch (default: %(default)s).")
    parser.add_argument("--streams", type=int, default=4, help="Concurrent StreamUsage streams (default: %(default)s).")
    parser.add_argument("--window", type=int, default=8, help="Unacked batches per stream (default: %(default)s).")
    parser.add_argument(
        "--event-times",
        choices=("ordered", "spread"),
        default="ordered",
        # argparse formats help with %: the docstring's own "%" must not reach it unescaped.
        help=(build_batches.__doc__ or "").replace("%", "%%"),
    )
    parser.add_argument("--echo-server", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    parsed = _parse()
    if parsed.echo_server:
        asyncio.run(_serve_echo(parsed.echo_server))
    else:
        asyncio.run(main(parsed))
