"""A control plane killed with SIGKILL before it commits a batch loses it whole; the resent batch stores once.

SQLite only: this is the embedded single-process deployment, and it needs nothing but a file in tmp_path.
On PostgreSQL an uncommitted transaction of a killed client is discarded by the database server itself,
which the group-commit code does not influence.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.admin.v1 import admin_service_pb2_grpc as admin_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as pb_grpc
from services.storage.engine import create_engine, sqlite_url
from tests.clients import bearer

from .events import batches, stored_event_count, stream, varied_events, wait_until
from .processes import children, running

pytestmark = pytest.mark.system

_STARTUP_S = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Server:
    """`meterwire serve` in a subprocess on a SQLite file."""

    def __init__(self, data_dir: Path, *, linger_s: float) -> None:
        self.port = _free_port()
        self.metrics_port = _free_port()
        environment = {
            **os.environ,
            "MW_INGEST_COMMIT_LINGER": str(linger_s),
            "MW_DRAIN_DELAY": "0",
            "MW_INGEST_WORKERS": "1",
        }
        command = [str(Path(sys.executable).parent / "meterwire"), "serve", "--data-dir", str(data_dir)]
        command += ["--listen", f"127.0.0.1:{self.port}", "--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        command += ["--services", "telemetry,admin"]
        self.process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def ready(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            await asyncio.wait_for(channel.channel_ready(), _STARTUP_S)
        except TimeoutError:
            self.process.kill()
            _, stderr = self.process.communicate()
            pytest.fail(f"meterwire serve did not start: {stderr.decode()[-2000:]}")
        return channel

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


async def test_the_ingest_workers_of_a_killed_server_exit_too(tmp_path: Path) -> None:
    # A server killed with SIGKILL cannot stop its worker processes; each watches its parent and exits.
    server = _Server(tmp_path / "var", linger_s=0.002)
    try:
        async with await server.ready():

            async def worker_started() -> bool:
                return any(running(pid) for pid in children(server.process.pid))

            await wait_until(worker_started, interval_s=0.05)
            workers = [pid for pid in children(server.process.pid) if running(pid)]
    finally:
        server.kill()

    async def workers_gone() -> bool:
        return not any(running(pid) for pid in workers)

    await wait_until(workers_gone, interval_s=0.1)


async def test_a_batch_killed_before_commit_is_stored_exactly_once_when_resent(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    # A 60 s linger holds the batch in the writer's queue: the kill lands after receipt, before commit.
    server = _Server(data_dir, linger_s=60)
    try:
        async with await server.ready() as channel:
            admin = (data_dir / "admin.token").read_text().strip()
            stub = admin_grpc.AdminServiceStub(channel)
            await stub.CreateEnvironment(
                admin_pb.CreateEnvironmentRequest(environment=admin_pb.Environment(environment_id="prod")),
                metadata=bearer(admin),
            )
            created = await stub.CreateToken(
                admin_pb.CreateTokenRequest(role=admin_pb.ROLE_GATEWAY, environment_id="prod", gateway_id="gw-1"),
                metadata=bearer(admin),
            )
            requests = batches(varied_events(500, seed=3), 500)
            call = pb_grpc.TelemetryServiceStub(channel).StreamUsage(iter(requests), metadata=bearer(created.secret))

            async def batch_received() -> bool:
                return await asyncio.to_thread(server.metric, "meterwire_ingest_batches_in_flight") >= 1

            await wait_until(batch_received, interval_s=0.05)
            server.kill()
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await call.read()
            assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.kill()

    engine = create_engine(sqlite_url(data_dir))
    try:
        assert await stored_event_count(engine) == 0
    finally:
        await engine.dispose()

    restarted = _Server(data_dir, linger_s=0.002)
    try:
        async with await restarted.ready() as channel:
            first = await stream(channel, created.secret, requests)
            again = await stream(channel, created.secret, requests)
    finally:
        restarted.kill()
    assert [(ack.accepted_count, ack.duplicate_count) for ack in first] == [(500, 0)]
    assert [(ack.accepted_count, ack.duplicate_count) for ack in again] == [(0, 500)]
    engine = create_engine(sqlite_url(data_dir))
    try:
        assert await stored_event_count(engine) == 500
    finally:
        await engine.dispose()
