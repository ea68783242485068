"""Real processes for agent system tests and benchmarks: a control plane, gateway tokens, agent daemons, DB reads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc

from gateway_agent import AgentSettings
from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc
from services.storage.engine import SQLITE_FILE_NAME
from tests.system.serve import MW_COMMAND, ServeProcess, free_port, serve

ENVIRONMENT = "agent-test"
GATEWAY = "gw-1"


@dataclass(frozen=True)
class ControlPlane:
    process: ServeProcess
    gateway_token: str

    @property
    def address(self) -> str:
        return self.process.address


def create_gateway_token(process: ServeProcess, *, environment: str = ENVIRONMENT, gateway: str = GATEWAY) -> str:
    created = process.cli("envs", "create", environment)
    assert created.returncode == 0, created.stderr
    result = process.cli("tokens", "create", "gateway", "-e", environment, "-g", gateway, "--json")
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["secret"])


@contextmanager
def control_plane(data_dir: Path, *, port: int | None = None, token: str | None = None) -> Iterator[ControlPlane]:
    """`meterwire serve` with an environment and a gateway token (reused when restarting on the same data dir)."""
    with serve(data_dir, port=port) as process:
        yield ControlPlane(process, token or create_gateway_token(process))


def agent_settings(cp_address: str, token: str, data_dir: Path, **overrides: object) -> AgentSettings:
    """Settings tuned for tests: short linger and backoff so outcomes arrive quickly."""
    values: dict[str, object] = {
        "control_plane": cp_address,
        "token": token,
        "environment_id": ENVIRONMENT,
        "gateway_id": GATEWAY,
        "data_dir": data_dir,
        "batch_linger": timedelta(milliseconds=5),
        "backoff_max": timedelta(seconds=1),
        "initial_fetch_timeout": timedelta(seconds=2),
        "shutdown_flush_timeout": timedelta(seconds=5),
    }
    values.update(overrides)
    return AgentSettings(**values)  # type: ignore[arg-type]


def server_event_ids(server_data_dir: Path) -> list[str]:
    """Every stored event id of the test gateway, read straight from the control plane's SQLite (read-only)."""
    connection = sqlite3.connect(f"file:{server_data_dir / SQLITE_FILE_NAME}?mode=ro", uri=True, timeout=30)
    try:
        rows = connection.execute("SELECT event_id FROM usage_events WHERE environment_id = ?", (ENVIRONMENT,))
        return [row[0] for row in rows]
    finally:
        connection.close()


class AgentProcess:
    """`meterwire agent run` as a real process, reachable on a loopback port."""

    def __init__(self, cp_address: str, token: str, data_dir: Path, *extra: str, listen: str | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        token_file = data_dir / "gateway.token"
        token_file.write_text(token)
        self.address = listen or f"127.0.0.1:{free_port()}"
        self.log_path = data_dir / f"agent-{time.time_ns()}.log"
        self._log = self.log_path.open("w")
        command = [
            *MW_COMMAND, "agent", "run", "--control-plane", cp_address, "--token-file", str(token_file),
            "--environment", ENVIRONMENT, "--gateway", GATEWAY, "--data-dir", str(data_dir),
            "--listen", self.address, "--initial-fetch-timeout", "1", *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "agent ready" not in line:
            self.process.kill()
            raise RuntimeError(f"agent did not start: {line!r} {self.log_path.read_text()}")
        self.channel = grpc.insecure_channel(self.address)
        self.stub = agent_grpc.AgentServiceStub(self.channel)

    def status(self) -> agent_pb.AgentStatus:
        return self.stub.GetStatus(agent_pb.GetStatusRequest(), timeout=5).status

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self._close()
        return code

    def _close(self) -> None:
        self.channel.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def eventually(predicate: Callable[[], bool], *, within: float, what: str, interval: float = 0.1) -> None:
    """Polls `predicate` (run in a thread: it may read files or databases) until true, or fails naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await asyncio.to_thread(predicate):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


class BlackHoleProxy:
    """A TCP proxy on loopback that can turn into a black hole: connections are accepted, nothing is forwarded.

    What a dead link looks like to the agent (a NAT or firewall that dropped the flow, a peer that froze): its
    writes still succeed into the socket buffers, and no byte, error or close ever comes back.
    """

    def __init__(self, target: str) -> None:
        self._target_host, _, port = target.rpartition(":")
        self._target_port = int(port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.swallowing = False
        self.address = ""

    async def __aenter__(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def swallow(self) -> None:
        """From now on nothing is forwarded either way, on open connections and new ones (which are accepted)."""
        self.swallowing = True

    def forward(self) -> None:
        """Forwards again; connections opened while swallowing stay dead, as they would on a real network."""
        self.swallowing = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.swallowing:
            self._spawn(self._pipe(reader, None))
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self._target_host, self._target_port)
        except OSError:
            writer.close()
            return
        self._writers.append(upstream_writer)
        self._spawn(self._pipe(reader, upstream_writer))
        self._spawn(self._pipe(upstream_reader, writer))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
        dead = writer is None
        while data := await reader.read(65536):
            # Once swallowing, a connection stays dead even if forwarding resumes: its stream state is lost.
            dead = dead or self.swallowing
            if not dead and writer is not None:
                writer.write(data)
                await writer.drain()
        # The peer closed its side: pass the close on unless the link is dead (a black hole passes nothing).
        if writer is not None and not dead and not self.swallowing:
            writer.close()
