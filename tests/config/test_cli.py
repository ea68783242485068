"""`meterwire config …` run in-process against a live control plane."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from google.protobuf.json_format import ParseDict

from meterwire.config.v1 import config_service_pb2 as pb
from services.server import ControlPlane
from tests.clients import Tokens
from tests.heartbeat.helpers import Cli

EXAMPLE_CONFIG = Path(__file__).parents[2] / "examples" / "config.yaml"

CONFIG_V1 = """
pricing:
  currency: USD
  models:
    - {model: gpt-4o, input_micros_per_million: 2500000, output_micros_per_million: 10000000}
aliases:
  - alias: fast
    targets: [{model: gpt-4o, provider: openai}]
"""
CONFIG_V2 = CONFIG_V1 + "disabled_api_key_ids: [key-1]\n"
CONFIG_BAD = CONFIG_V1.replace("model: gpt-4o, provider", "model: gpt-x, provider")


async def test_config_apply_show_history_diff_and_rollback(
    control_plane: ControlPlane, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    cli = Cli(control_plane, tokens.admin)
    v1, v2, bad = tmp_path / "v1.yaml", tmp_path / "v2.json", tmp_path / "bad.yaml"
    v1.write_text(CONFIG_V1)
    bad.write_text(CONFIG_BAD)
    v2.write_text(json.dumps(yaml.safe_load(CONFIG_V2)))

    dry = await cli("config", "apply", "-e", "prod", "-f", str(v1), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "+- alias: fast" in dry.output
    assert "would store version 1" in dry.output

    declined = await cli("config", "apply", "-e", "prod", "-f", str(v1), stdin="n\n")
    assert declined.exit_code == 1
    first = await cli("config", "apply", "-e", "prod", "-f", str(v1), "-m", "first", stdin="y\n")
    assert first.exit_code == 0, first.output
    assert "stored version 1 of prod" in first.output

    again = await cli("config", "apply", "-e", "prod", "-f", str(v1), "--yes")
    assert "no change: identical to version 1" in again.output

    refused = await cli("config", "apply", "-e", "prod", "-f", str(bad), "--yes")
    assert refused.exit_code == 1
    assert "config.aliases[0].targets[0].model: 'gpt-x' has no price in config.pricing" in refused.output

    second = await cli("config", "apply", "-e", "prod", "-f", str(v2), "--yes")
    assert "+disabled_api_key_ids:" in second.output
    assert "stored version 2 of prod" in second.output

    shown = await cli("config", "show", "-e", "prod")
    assert shown.output.startswith("# prod version 2 sha256 ")
    assert "- key-1" in shown.output
    diff = await cli("config", "diff", "-e", "prod", "1", "2")
    assert "+disabled_api_key_ids:" in diff.output

    rollback = await cli("config", "rollback", "-e", "prod", "--to", "1", "--yes")
    assert rollback.exit_code == 0, rollback.output
    assert "stored version 3 of prod" in rollback.output

    history = await cli("config", "history", "-e", "prod", "--json")
    versions = [(v["version"], v.get("description", "")) for v in json.loads(history.output)]
    assert versions == [("3", "rollback to version 1"), ("2", ""), ("1", "first")]
    old, rolled_back = [json.loads((await cli("config", "show", "-e", "prod", "-v", n, "--json")).output) for n in "13"]
    assert old["content_sha256"] == rolled_back["content_sha256"]


async def test_a_scripted_apply_without_yes_stores_nothing_and_points_at_yes(
    control_plane: ControlPlane, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    cli = Cli(control_plane, tokens.admin)
    v1 = tmp_path / "v1.yaml"
    v1.write_text(CONFIG_V1)
    unanswered = await cli("config", "apply", "-e", "prod", "-f", str(v1), stdin="")
    missing = await cli("config", "show", "-e", "prod")
    for command in ("apply", "rollback"):
        help_text = " ".join((await cli("config", command, "--help")).output.replace("│", " ").split())
        assert (
            "--yes -y <bool> Do not ask for confirmation (for scripts; without it the command asks on stdin)."
            in help_text
        )

    assert unanswered.exit_code == 1
    assert "not confirmed: nothing stored (pass --yes to skip this question in scripts)" in unanswered.output
    assert missing.exit_code == 1
    assert "NOT_FOUND" in missing.output


async def test_the_shipped_example_config_applies_as_is(control_plane: ControlPlane, tokens: Tokens) -> None:
    await tokens.environment("prod")
    cli = Cli(control_plane, tokens.admin)
    applied = await cli("config", "apply", "-e", "prod", "-f", str(EXAMPLE_CONFIG), "--yes")
    shown = yaml.safe_load((await cli("config", "show", "-e", "prod")).output)

    assert applied.exit_code == 0, applied.output
    assert "stored version 1 of prod" in applied.output
    stored = ParseDict(shown, pb.EnvironmentConfig())
    assert stored == ParseDict(yaml.safe_load(EXAMPLE_CONFIG.read_text()), pb.EnvironmentConfig())
    assert ([a.alias for a in stored.aliases], stored.pricing.currency) == (["fast", "smart", "embed"], "USD")
    assert stored.agent.heartbeat_interval.seconds == 10
