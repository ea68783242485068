"""`meterwire gateways …` run in-process against a live control plane."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from services.cli.gateways import ago
from services.heartbeat.fleet import Fleet
from services.server import ControlPlane
from tests.clients import Tokens
from tests.heartbeat.helpers import Cli, GatewayStream


async def test_gateways_list_show_and_remove(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, fleet: Fleet
) -> None:
    await tokens.environment("prod")
    stream = GatewayStream(channel, await tokens.gateway("prod", "gw-1"))
    await stream.beat()
    await stream.close()
    await tokens.gateway("prod", "gw-2")
    cli = Cli(control_plane, tokens.admin)

    listed = json.loads((await cli("gateways", "list", "-e", "prod", "--json")).output)
    table = await cli("gateways", "list")
    healthy = json.loads((await cli("gateways", "list", "--status", "healthy", "--json")).output)
    shown = await cli("gateways", "show", "gw-1", "-e", "prod")
    removed = await cli("gateways", "remove", "gw-1", "-e", "prod", "--yes")
    after = json.loads((await cli("gateways", "list", "--json")).output)

    assert [(g["gateway_id"], g["status"]) for g in listed] == [
        ("gw-1", "GATEWAY_STATUS_HEALTHY"),
        ("gw-2", "GATEWAY_STATUS_NEVER_SEEN"),
    ]
    assert table.exit_code == 0, table.output
    for expected in ("gw-1", "gw-2", "never"):
        assert expected in table.output
    assert [g["gateway_id"] for g in healthy] == ["gw-1"]
    assert "prod/gw-1: healthy" in shown.output
    fields = {
        cells[0].strip(): cells[1].strip()
        for cells in (line.split("│")[1:-1] for line in shown.output.splitlines())
        if len(cells) == 2
    }
    assert fields["state.agent version"] == "0.1.0"
    assert "{" not in shown.output, "a nested message printed as a raw dict"
    assert "removed gateway prod/gw-1" in removed.output
    assert [g["gateway_id"] for g in after] == ["gw-2"]
    bad_status = await cli("gateways", "list", "--status", "sleepy")
    assert bad_status.exit_code == 2
    assert "'sleepy' is not one of healthy, stale, offline, degraded, never_seen" in bad_status.output


def test_last_seen_reads_as_time_ago() -> None:
    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    seen = pb.Gateway()
    seen.last_seen_time.FromDatetime(now - timedelta(seconds=12))
    assert ago(seen, now) == "12s ago"
    seen.last_seen_time.FromDatetime(now - timedelta(minutes=5))
    assert ago(seen, now) == "5m ago"
    assert ago(pb.Gateway(), now) == "never"


async def test_removing_an_unknown_gateway_says_not_found_before_asking_anything(
    control_plane: ControlPlane, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    cli = Cli(control_plane, tokens.admin)
    typo = await cli("gateways", "remove", "gw-typo", "-e", "prod", stdin="y\n")
    assert typo.exit_code == 1
    assert "NOT_FOUND" in typo.output
    assert "remove gateway" not in typo.output, "asked to confirm removing a gateway that is not there"


async def test_removing_without_yes_and_without_an_answer_points_at_yes(
    control_plane: ControlPlane, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    await tokens.gateway("prod", "gw-1")
    cli = Cli(control_plane, tokens.admin)
    unanswered = await cli("gateways", "remove", "gw-1", "-e", "prod", stdin="")
    kept = json.loads((await cli("gateways", "list", "--json")).output)
    help_text = " ".join((await cli("gateways", "remove", "--help")).output.replace("│", " ").split())

    assert unanswered.exit_code == 1
    assert "remove gateway prod/gw-1 (never_seen)?" in unanswered.output
    assert "not confirmed: nothing removed (pass --yes to skip this question in scripts)" in unanswered.output
    assert [g["gateway_id"] for g in kept] == ["gw-1"]
    assert (
        "--yes -y <bool> Do not ask for confirmation (for scripts; without it the command asks on stdin)." in help_text
    )
