"""`meterwire mcp`: starts the MCP server (services/mcp), importing the SDK only when it runs (`--help` stays fast)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from services.cli.client import (
    DEFAULT_ADDRESS,
    AddressOption,
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenFileOption,
    TokenOption,
    fail,
    resolve_token,
)

HttpOption = Annotated[
    str | None,
    typer.Option(
        "--http",
        envvar="MW_MCP_HTTP",
        help="Serve streamable HTTP on HOST:PORT (path /mcp) instead of stdio. Every HTTP caller must send its own "
        "meterwire token (Authorization: Bearer); --token is then not used.",
    ),
]


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        fail(f"--http: {text!r} is not HOST:PORT, e.g. 127.0.0.1:8765", code=2)
    return host.strip("[]"), int(port)


def mcp_command(
    http: HttpOption = None,
    address: AddressOption = DEFAULT_ADDRESS,
    token: TokenOption = None,
    token_file: TokenFileOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Serve usage, spend, request history, fleet status and budgets to an AI assistant over MCP (read-only).

    stdio (default) acts with --token/--token-file (a reporter token is enough); --http HOST:PORT acts with each
    caller's own token. Either way the control plane scopes what a token may read.
    """
    try:
        from services.mcp.control_plane import ControlPlaneAddress
        from services.mcp.server import run_stdio, serve_http
    except ModuleNotFoundError as error:
        fail(f"the MCP SDK is not installed ({error.name}): pip install 'meterwire[mcp]'")
    where = ControlPlaneAddress(address, tls_ca, tls_cert, tls_key)
    if http is None:
        run_stdio(where, resolve_token(token, token_file))
        return
    host, port = _host_port(http)
    asyncio.run(serve_http(where, host, port))
