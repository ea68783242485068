"""The `meterwire mcp` command itself: its options are checked before anything starts, and the CLI loads the MCP
SDK only when this command runs (so `meterwire --help` stays fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from services.cli.main import app


def test_the_cli_does_not_import_the_mcp_sdk_until_the_command_runs() -> None:
    probe = (
        "import sys, services.cli.main; print(sorted(m for m in ('mcp', 'uvicorn', 'starlette') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_a_bad_http_address_is_refused_naming_the_option() -> None:
    result = CliRunner().invoke(app, ["mcp", "--http", "localhost"])
    assert result.exit_code == 2
    assert "--http: 'localhost' is not HOST:PORT" in result.output


def test_stdio_without_a_token_says_how_to_give_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["mcp"], env={"MW_TOKEN": "", "MW_TOKEN_FILE": "", "MW_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert "no token: pass --token-file PATH" in result.output
