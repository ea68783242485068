"""Client commands whose output is piped (a script, a log, `| grep`): whole tables, live lines, no spinners."""

from __future__ import annotations

import queue
import subprocess
import threading
from pathlib import Path

import pytest

from tests.gateway_agent.harness import ENVIRONMENT, GATEWAY, AgentProcess, control_plane, wait_until
from tests.system.serve import MW_COMMAND, run_cli

pytestmark = pytest.mark.system

GATEWAY_COLUMNS = [
    "gateway",
    "environment",
    "status",
    "last seen",
    "agent",
    "gateway version",
    "config applied/desired",
    "backlog",
    "dead letters",
    "budget state",
    "budget denials",
    "reasons",
]
LINE_TIMEOUT_S = 30.0


def header_cells(output: str) -> list[str]:
    lines = [line for line in output.splitlines() if "┃" in line]
    assert len(lines) == 1, f"the header takes {len(lines)} lines:\n{output}"
    return [cell.strip() for cell in lines[0].split("┃")[1:-1]]


def test_a_piped_table_keeps_its_header_whole_on_one_line(tmp_path: Path) -> None:
    with control_plane(tmp_path / "cp") as cp:
        listed = cp.process.cli("gateways", "list")
    assert listed.returncode == 0, listed.stderr
    assert header_cells(listed.stdout) == GATEWAY_COLUMNS
    assert "…" not in listed.stdout


def test_a_piped_watch_prints_each_change_as_it_happens(tmp_path: Path) -> None:
    with control_plane(tmp_path / "cp") as cp:
        command = [*MW_COMMAND, "gateways", "watch", "--address", cp.address]
        command += ["--token-file", str(cp.process.admin_token_file)]
        watch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        output = watch.stdout
        assert output is not None

        def read() -> None:
            for line in output:
                lines.put(line)

        threading.Thread(target=read, daemon=True).start()
        try:
            first = lines.get(timeout=LINE_TIMEOUT_S)
            agent = AgentProcess(cp.address, cp.gateway_token, tmp_path / "agent")
            try:
                change = lines.get(timeout=LINE_TIMEOUT_S)
            finally:
                agent.stop()
        finally:
            watch.terminate()
            watch.wait(timeout=10)
    assert f"{ENVIRONMENT}/{GATEWAY} never_seen (last seen never)" in first
    assert f"{ENVIRONMENT}/{GATEWAY} healthy" in change


def test_agent_status_prints_a_table_and_json_on_request(tmp_path: Path) -> None:
    with control_plane(tmp_path / "cp") as cp:
        agent = AgentProcess(cp.address, cp.gateway_token, tmp_path / "agent")
        try:
            wait_until(lambda: agent.status().connected, timeout=LINE_TIMEOUT_S, what="the agent to connect")
            table = run_cli("agent", "status", "--agent", agent.address)
            as_json = run_cli("agent", "status", "--agent", agent.address, "--json")
        finally:
            agent.stop()
    assert table.returncode == 0, table.stderr
    rows = {
        cells[0]: cells[1]
        for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in table.stdout.splitlines())
        if len(cells) == 2
    }
    assert rows["connected"] == "yes"
    assert rows["environment id"] == ENVIRONMENT
    assert rows["state.spool depth"] == "0"
    assert "{" not in table.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert '"connected": true' in as_json.stdout
