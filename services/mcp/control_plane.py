"""The MCP server's calls to the control plane: one async channel per tool call, the caller's token on every RPC,
and a refused call turned into a tool error that says why (the control plane does all scoping)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

T = TypeVar("T")

CALL_DEADLINE_S = 30.0
"""How long one RPC may take before the tool reports the control plane as too slow."""


class ControlPlaneRefused(Exception):
    """The control plane refused or failed a call; the message is its status and reason, for the model to read."""


@dataclass(frozen=True)
class ControlPlaneAddress:
    """Where the control plane listens and how to reach it (the same options as every client command)."""

    address: str
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls_ca is None and self.tls_cert is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )


class Caller:
    """One tool call's session with the control plane, as the holder of `token`."""

    def __init__(self, channel: grpc.aio.Channel, address: str, token: str) -> None:
        self.channel = channel
        self._address = address
        self._metadata = (("authorization", f"Bearer {token}"),)

    async def call(self, rpc: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await rpc(request, metadata=self._metadata, timeout=CALL_DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            raise self.refused(error) from None

    def stream(self, rpc: Callable[..., Any], request: object) -> AsyncIterator[Any]:
        return rpc(request, metadata=self._metadata)  # type: ignore[no-any-return]

    def refused(self, error: grpc.aio.AioRpcError) -> ControlPlaneRefused:
        code = error.code()
        details = error.details() or ""
        if code is grpc.StatusCode.UNAVAILABLE:
            return ControlPlaneRefused(f"cannot reach the control plane at {self._address}: {details}")
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return ControlPlaneRefused(f"UNAUTHENTICATED: the control plane refused the token: {details}")
        return ControlPlaneRefused(f"{code.name}: {details}")


@asynccontextmanager
async def caller(where: ControlPlaneAddress, token: str) -> AsyncIterator[Caller]:
    credentials = where.credentials()
    channel = (
        grpc.aio.insecure_channel(where.address)
        if credentials is None
        else grpc.aio.secure_channel(where.address, credentials)
    )
    async with channel:
        yield Caller(channel, where.address, token)
