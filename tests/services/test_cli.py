"""`meterwire tokens …` run in-process against a live control plane: saving a new token's secret."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from typer.testing import CliRunner, Result

from services.cli.main import app
from services.server import ControlPlane
from tests.clients import Tokens
from tests.heartbeat.helpers import Cli


async def with_token_file(control_plane: ControlPlane, token_file: Path, *args: str) -> Result:
    """Runs `meterwire` as a user who saved a token to a file (no --token)."""
    command = [*args, "--address", f"127.0.0.1:{control_plane.port}", "--token-file", str(token_file)]
    return await asyncio.to_thread(CliRunner().invoke, app, command)


async def test_a_token_saved_to_a_file_is_private_and_is_what_token_file_reads(
    control_plane: ControlPlane, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("prod")
    cli = Cli(control_plane, tokens.admin)
    secret_file = tmp_path / "reporter.token"
    created = await cli("tokens", "create", "reporter", "--limit-to", "prod", "--secret-file", str(secret_file))
    again = await cli("tokens", "create", "reporter", "--secret-file", str(secret_file))
    reads = await with_token_file(control_plane, secret_file, "usage", "summary", "--range", "1h", "-e", "prod")
    writes = await with_token_file(control_plane, secret_file, "envs", "create", "staging")

    assert created.exit_code == 0, created.output
    assert f"its secret is in {secret_file} (mode 0600)" in created.output
    secret = secret_file.read_text()
    assert secret.endswith("\n")
    assert secret.strip() not in created.output
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert again.exit_code == 2
    assert "exists; a new secret never overwrites a file" in again.output
    assert secret_file.read_text() == secret
    assert reads.exit_code == 0, reads.output
    assert "requests / attempts" in reads.output
    assert writes.exit_code == 1
    assert "PERMISSION_DENIED" in writes.output


async def test_redirected_token_create_writes_the_secret_alone_to_stdout(
    control_plane: ControlPlane, tokens: Tokens
) -> None:
    await tokens.environment("prod")
    created = await Cli(control_plane, tokens.admin)("tokens", "create", "gateway", "-e", "prod", "-g", "gw-1")
    assert created.exit_code == 0, created.output
    (secret,) = created.stdout.splitlines()
    assert len(secret) > 20
    assert "its secret (shown only now)" in created.stderr
    assert secret not in created.stderr
