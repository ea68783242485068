"""README's "Using it" commands, run as written, in order, against a fresh `meterwire serve`.

Only what a reader fills in is replaced: the ids in CAPITALS (copied from an earlier command's output) and the
port (a free one instead of 50051, so tests run side by side). The commands run from a scratch directory holding
the repository's examples/, as they would from the repository root.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc
from tests.gateway_agent.harness import wait_until
from tests.system.serve import MW_COMMAND, READY_TIMEOUT_S, free_port, health_status

pytestmark = pytest.mark.system

REPOSITORY = Path(__file__).parents[2]
README = REPOSITORY / "README.md"
DEFAULT_ADDRESS = "127.0.0.1:50051"
COMMAND_TIMEOUT_S = 60.0
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9]*_[A-Z0-9_]+")


def using_it_commands(readme: str) -> list[list[str]]:
    """Each command of the fenced sh blocks of README's "Using it" section, as argv (comments dropped)."""
    section = readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def meterwire() -> list[str]:
    """The installed `meterwire` script beside this Python (as `make install` makes it), else the module."""
    script = Path(sys.executable).with_name("meterwire")
    return [str(script)] if script.exists() else MW_COMMAND


class Session:
    """A reader's shell: one working directory and environment, long-running commands in the background."""

    def __init__(self, workdir: Path, address: str, stack: ExitStack) -> None:
        self.workdir = workdir
        self.address = address
        self.stack = stack
        self.env = {**os.environ, "MW_ADDRESS": address, "MW_DRAIN_DELAY": "0.2", "MW_SHUTDOWN_GRACE": "2"}
        self.env.pop("MW_DATA_DIR", None)
        self.env.pop("MW_TOKEN_FILE", None)

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*meterwire(), *argv[1:]],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )

    def start(self, argv: list[str], *, stdout: int | None = None) -> subprocess.Popen[str]:
        log = (self.workdir / f"{argv[1]}-{time.time_ns()}.log").open("w")
        self.stack.callback(log.close)
        process = subprocess.Popen(
            [*meterwire(), *argv[1:]],
            cwd=self.workdir,
            env={**self.env, "MW_LISTEN": self.address, "PYTHONUNBUFFERED": "1"},
            stdout=stdout if stdout is not None else log,
            stderr=log,
            text=True,
        )
        self.stack.callback(_stop, process)
        return process


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()
    output = process.stdout
    assert output is not None

    def read() -> None:
        for line in output:
            found.put(line)

    threading.Thread(target=read, daemon=True).start()
    return found


def _wait_serving(session: Session, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while health_status(session.address) != health_pb2.HealthCheckResponse.SERVING:
        assert process.poll() is None, f"meterwire serve exited with {process.returncode}"
        assert time.monotonic() < deadline, "meterwire serve did not become ready"
        time.sleep(0.1)


def _agent_spool_drained(socket: Path) -> bool:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        status = agent_grpc.AgentServiceStub(channel).GetStatus(agent_pb.GetStatusRequest(), timeout=5).status
    return status.connected and status.state.spool_depth == 0


def _filled_in(session: Session, argv: list[str]) -> Iterator[str]:
    """The argv with what a reader copies from earlier output put in place of the CAPITALS."""
    for arg in argv:
        if arg == "REQUEST_ID":
            # One that fell back to another model, so it has attempts to show.
            listed = session.run(["meterwire", "usage", "requests", "--range", "1h", "--json"])
            yield next(r["request_id"] for r in json.loads(listed.stdout) if r["attempt_count"] > 1)
        elif arg == "TOKEN_ID":
            listed = session.run(["meterwire", "tokens", "list", "--json"])
            yield next(t["token_id"] for t in json.loads(listed.stdout) if t.get("gateway_id") == "gw-eu-1")
        elif PLACEHOLDER.fullmatch(arg):
            raise AssertionError(f"README asks the reader to fill in {arg!r}; teach this test where it comes from")
        else:
            yield arg.replace(DEFAULT_ADDRESS, session.address)


def test_the_readme_commands_run_as_written(tmp_path: Path) -> None:
    commands = using_it_commands(README.read_text())
    assert len(commands) >= 30, commands
    workdir = tmp_path / "checkout"
    shutil.copytree(REPOSITORY / "examples", workdir / "examples")
    outputs: dict[str, str] = {}
    with ExitStack() as stack:
        session = Session(workdir, f"127.0.0.1:{free_port()}", stack)
        for written in commands:
            assert written[0] == "meterwire", f"not a meterwire command: {shlex.join(written)}"
            argv = list(_filled_in(session, written))
            name = shlex.join(written)
            # Three commands run until stopped: in the background, as in a terminal of their own.
            if argv[1] == "serve":
                _wait_serving(session, session.start(argv))
            elif tuple(argv[1:3]) == ("agent", "run"):
                agent = session.start(argv, stdout=subprocess.PIPE)
                ready = _lines(agent).get(timeout=READY_TIMEOUT_S)
                assert "agent ready on unix:var/agent.sock" in ready, ready
            elif tuple(argv[1:3]) == ("gateways", "watch"):
                watch = session.start(argv, stdout=subprocess.PIPE)
                outputs[name] = _lines(watch).get(timeout=READY_TIMEOUT_S)
                _stop(watch)
            else:
                result = session.run(argv)
                assert result.returncode == 0, f"{name}\n{result.stdout}\n{result.stderr}"
                outputs[name] = result.stdout
            if argv[1] == "simulate":
                wait_until(
                    lambda: _agent_spool_drained(workdir / "var" / "agent.sock"),
                    timeout=COMMAND_TIMEOUT_S,
                    what="the simulated traffic to arrive",
                )

    def output(prefix: str) -> str:
        (found,) = [text for name, text in outputs.items() if name.startswith(prefix)]
        return found

    assert "environment created prod" in output("meterwire envs create prod")
    assert "stored version 1 of prod" in output("meterwire config apply -e prod -f examples/config.yaml")
    for secret in ("gw-eu-1.token", "reporter.token"):
        assert stat.S_IMODE((workdir / secret).stat().st_mode) == 0o600
    assert "requests 300" in output("meterwire simulate")
    assert "prod/gw-eu-1" in output("meterwire gateways watch")
    assert "gw-eu-1" in output("meterwire gateways list")
    summary = output("meterwire usage summary --range 7d -e prod")
    assert re.search(r"requests / attempts\s+│ 300 / \d+", summary), summary
    assert " USD" in summary
    assert "USD" in output("meterwire usage top --by model")
    assert "gw-eu-1" in output("meterwire usage request REQUEST_ID")
    assert "USD" in output("meterwire usage summary --range 1h -e prod --token-file reporter.token")
    assert (workdir / "usage.xlsx").stat().st_size > 0
    assert len((workdir / "events.jsonl").read_text().splitlines()) >= 300
    assert "no change: identical to version 1" in output("meterwire config rollback")
    assert "revoked tok_" in output("meterwire tokens revoke")
    assert "removed gateway prod/gw-eu-1" in output("meterwire gateways remove")
