"""Clients for MCP tests: real `meterwire mcp` processes (stdio and streamable HTTP) driven by the MCP SDK's own
client, and readers of their results."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

MCP_COMMAND = str(Path(sys.executable).with_name("meterwire"))


@dataclass(frozen=True)
class Seed:
    """What the seeded control plane holds: where it is, who may read it, and one request of each environment."""

    address: str
    admin: str
    prod_reporter: str
    budget_id: str
    prod_request_id: str
    dev_request_id: str


def stdio_client(seed: Seed, token: str) -> Client:
    """A real `meterwire mcp` subprocess on stdio, acting with `token`."""
    environment = {**os.environ, "MW_TOKEN": token}
    environment.pop("MW_TOKEN_FILE", None)
    return Client(StdioServerParameters(command=MCP_COMMAND, args=["mcp", "--address", seed.address], env=environment))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class HttpServer:
    url: str

    @asynccontextmanager
    async def client(self, token: str) -> AsyncIterator[Client]:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(self.url, http_client=http)) as client,
        ):
            yield client


async def wait_for_http(server: HttpServer) -> None:
    """Polls until the HTTP server answers (it is a fresh process); the test timeout bounds it."""
    async with httpx2.AsyncClient() as http:
        while True:
            try:
                await http.get(server.url)
                return
            except httpx2.TransportError:
                await asyncio.sleep(0.05)


def structured(result: Any) -> dict[str, Any]:
    """A successful tool result's structured content; a tool error fails the test with its message."""
    assert not result.is_error, result.content
    content: dict[str, Any] = result.structured_content
    return content


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)
