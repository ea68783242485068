"""`meterwire agent run --metrics-listen` serves the agent's state as Prometheus metrics."""

from __future__ import annotations

import random
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from services.cli.simulate import make_request
from tests.gateway_agent.harness import AgentProcess
from tests.system.serve import free_port, run_cli

pytestmark = pytest.mark.system


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def test_the_metrics_show_the_spool_and_the_dropped_events(tmp_path: Path) -> None:
    port = free_port()
    # No control plane listens on port 9: nothing drains, and a small spool overflows.
    agent = AgentProcess(
        "127.0.0.1:9", "gateway-token", tmp_path / "agent", "--metrics-listen", f"127.0.0.1:{port}",
        "--spool-max-bytes", "20000",
    )  # fmt: skip
    try:
        rng = random.Random(11)
        outcomes = []
        for _ in range(150):
            for event in make_request(rng):
                request = agent_pb.RecordUsageRequest(event=event, wait_for_commit=True)
                outcomes.append(agent.stub.RecordUsage(request, timeout=10).outcome)
        status = agent.status().state
        metrics = scrape(port)
    finally:
        agent.stop()
    dropped = outcomes.count(agent_pb.RECORD_OUTCOME_DROPPED_SPOOL_FULL)
    assert dropped > 0
    assert metrics["meterwire_agent_connected"] == 0
    assert metrics["meterwire_agent_spool_events"] == status.spool_depth > 0
    assert metrics["meterwire_agent_dropped_events_total{reason=spool_full}"] == dropped
    assert metrics["meterwire_agent_oldest_unsent_seconds"] > 0


def test_a_busy_metrics_port_is_one_clear_error(tmp_path: Path) -> None:
    agent = AgentProcess("127.0.0.1:9", "gateway-token", tmp_path / "first")
    try:
        taken = agent.address  # the first agent's local API port is in use
        token_file = tmp_path / "gateway.token"
        token_file.write_text("gateway-token")
        result = run_cli(
            "agent", "run", "--control-plane", "127.0.0.1:9", "--token-file", str(token_file), "-e", "agent-test",
            "--data-dir", str(tmp_path / "second"), "--listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", taken, "--initial-fetch-timeout", "0.2",
        )  # fmt: skip
    finally:
        agent.stop()
    assert result.returncode == 1
    assert f"error: --metrics-listen: cannot serve metrics on {taken}" in result.stderr
    assert "Traceback" not in result.stderr
