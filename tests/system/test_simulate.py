"""`meterwire simulate` plays realistic traffic through a real agent daemon into a real control plane."""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import pytest

from services.cli.simulate import make_request
from services.storage.engine import SQLITE_FILE_NAME
from tests.gateway_agent.harness import AgentProcess, control_plane, server_event_ids, wait_until
from tests.system.serve import run_cli

pytestmark = pytest.mark.system


def test_simulate_sends_realistic_traffic_that_the_control_plane_stores_once(tmp_path: Path) -> None:
    with control_plane(tmp_path / "cp") as cp:
        agent = AgentProcess(cp.address, cp.gateway_token, tmp_path / "agent")
        try:
            result = run_cli("simulate", "--agent", agent.address, "--count", "300", "--rate", "0", "--seed", "7")
            assert result.returncode == 0, result.stderr
            totals = re.search(
                r"requests (\d+)\s+attempts (\d+)\s+failed requests (\d+)\s+dropped by the agent (\d+)", result.stdout
            )
            assert totals is not None, result.stdout
            requests, attempts, _failed, dropped = map(int, totals.groups())
            assert (requests, dropped) == (300, 0)
            assert attempts > requests, "some requests fell back to another model"
            wait_until(lambda: agent.status().state.spool_depth == 0, timeout=30, what="the agent's spool to drain")
        finally:
            agent.stop()
        stored = server_event_ids(cp.process.data_dir)
        database = sqlite3.connect(f"file:{cp.process.data_dir / SQLITE_FILE_NAME}?mode=ro", uri=True)
        try:
            (models,) = database.execute("SELECT COUNT(DISTINCT resolved_model) FROM usage_events").fetchone()
            (requests_stored,) = database.execute("SELECT COUNT(DISTINCT request_id) FROM usage_events").fetchone()
            (errors,) = database.execute("SELECT COUNT(*) FROM usage_events WHERE status_code >= 400").fetchone()
            (streamed,) = database.execute("SELECT COUNT(*) FROM usage_events WHERE ttft_us IS NOT NULL").fetchone()
            (tagged,) = database.execute("SELECT COUNT(DISTINCT event_id) FROM usage_event_tags").fetchone()
        finally:
            database.close()
    assert len(stored) == len(set(stored)) == attempts
    assert requests_stored == requests
    assert models >= 4
    assert errors > 0
    assert streamed > 0
    assert tagged == attempts


def test_the_same_seed_plays_the_same_traffic() -> None:
    def play(seed: int) -> list[tuple[str, int, str, int]]:
        rng = random.Random(seed)
        return [
            (event.request_id, event.attempt, event.resolved_model, event.status_code)
            for _ in range(50)
            for event in make_request(rng)
        ]

    assert play(3) == play(3)
    assert play(3) != play(4)
