"""`meterwire usage export` against a live server: raw events as CSV, JSONL and XLSX, and grouped rows."""

from __future__ import annotations

import csv
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from openpyxl import load_workbook

from gateway_agent import GatewayAgent
from services.cli.simulate import make_request
from tests.gateway_agent.harness import agent_settings, control_plane, eventually

pytestmark = pytest.mark.system


async def test_export_writes_every_stored_event_once_in_each_format_and_grouped_rows_add_up(tmp_path: Path) -> None:
    with control_plane(tmp_path / "cp") as cp:
        async with GatewayAgent(agent_settings(cp.address, cp.gateway_token, tmp_path / "agent")) as agent:
            rng = random.Random(14)
            ids = [(await agent.record(event)).event_id for _ in range(120) for event in make_request(rng)]
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the spool to drain")
        now = datetime.now(UTC)
        window = ["--from", (now - timedelta(hours=1)).isoformat(), "--to", (now + timedelta(hours=1)).isoformat()]

        def export(file_format: str, *grouping: str) -> Path:
            path = tmp_path / f"export-{len(grouping)}.{file_format}"
            result = cp.process.cli("usage", "export", "-o", str(path), "--format", file_format, *grouping, *window)
            assert result.returncode == 0, result.stderr
            if not grouping:
                # Piped: the one result line, no spinner frames.
                assert result.stdout.splitlines() == [f"wrote {len(ids):,} rows to {path}"]
            return path

        with export("csv").open(newline="") as file:
            rows = list(csv.DictReader(file))
        lines = export("jsonl").read_text().splitlines()
        sheet = load_workbook(export("xlsx"), read_only=True)["usage"]
        cells = [list(row) for row in sheet.iter_rows(values_only=True)]
        with export("csv", "--by", "model", "--granularity", "1h").open(newline="") as file:
            grouped = list(csv.DictReader(file))

    assert sorted(row["event_id"] for row in rows) == sorted(ids)
    # Every event field is a column whether or not the first event had it; unset is an empty cell, not 0.
    by_id = {json.loads(line)["event_id"]: json.loads(line) for line in lines}
    for row in rows:
        event = by_id[row["event_id"]]
        assert row["ttft"] == event.get("ttft", "")
        assert row["error_type"] == event.get("error_type", "")
    assert any(row["ttft"] for row in rows)
    assert any(not row["ttft"] for row in rows)
    assert {row["cost_source"] for row in rows} <= {"reported", "derived", "unknown"}
    assert sorted(json.loads(line)["event_id"] for line in lines) == sorted(ids)
    header, *values = cells
    assert sorted(str(value[header.index("event_id")]) for value in values) == sorted(ids)
    assert {"bucket_start_time", "model", "attempts", "cost_micros"} <= set(grouped[0])
    assert sum(int(row["attempts"]) for row in grouped) == len(ids)
    assert len({row["model"] for row in grouped}) > 1
