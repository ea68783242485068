"""gRPC adapter for meterwire.config.v1.ConfigService: versioned config, and its push to agents with ACK/NACK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from meterwire.config.v1 import config_service_pb2 as pb
from meterwire.config.v1 import config_service_pb2_grpc as pb_grpc
from services.auth import Principal, Role, current_principal, requires
from services.config.answers import ConfigAnswers
from services.config.hub import ConfigHub
from services.config.service import ConfigService
from services.config.store import StoredConfig
from services.errors import InvalidArgumentError
from services.lifecycle import cancel_and_wait
from services.timestamps import to_timestamp
from services.validation import require_int, require_text

log = structlog.get_logger("meterwire.config")
_MAX_NACK_ERROR_BYTES = 4096


def to_config_version(stored: StoredConfig) -> pb.ConfigVersion:
    return pb.ConfigVersion(
        environment_id=stored.environment_id,
        version=stored.version,
        config=stored.config,
        content_sha256=stored.content_sha256,
        description=stored.description,
        created_by=stored.created_by,
        create_time=to_timestamp(stored.create_time),
    )


class ConfigServicer(pb_grpc.ConfigServiceServicer):
    def __init__(self, service: ConfigService, hub: ConfigHub, answers: ConfigAnswers) -> None:
        self.service = service
        self.hub = hub
        self.answers = answers

    @requires(Role.ADMIN)
    async def PutConfig(
        self, request: pb.PutConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PutConfigResponse:
        outcome = await self.service.put(
            environment_id=request.environment_id,
            config=request.config,
            description=request.description,
            expected_version=request.expected_version if request.HasField("expected_version") else None,
            validate_only=request.validate_only,
            created_by=current_principal().token_id,
        )
        return pb.PutConfigResponse(config_version=to_config_version(outcome.stored), created=outcome.created)

    @requires(Role.ADMIN, Role.REPORTER, Role.GATEWAY)
    async def GetConfig(
        self, request: pb.GetConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetConfigResponse:
        current_principal().require_environment(request.environment_id)
        stored = await self.service.get(request.environment_id, request.version)
        return pb.GetConfigResponse(config_version=to_config_version(stored))

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListConfigVersions(
        self, request: pb.ListConfigVersionsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListConfigVersionsResponse:
        current_principal().require_environment(request.environment_id)
        page = await self.service.list_versions(
            request.environment_id, requested_page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListConfigVersionsResponse(
            config_versions=[to_config_version(stored) for stored in page.items], next_page_token=page.next_page_token
        )

    @requires(Role.GATEWAY)
    async def WatchConfig(
        self, request_iterator: AsyncIterator[pb.WatchConfigRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchConfigResponse]:
        principal = current_principal()
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("message") != "subscribe":
            raise InvalidArgumentError("subscribe", "the first message of WatchConfig must be a subscribe")
        subscribe = first.subscribe
        principal.require_environment(subscribe.environment_id, field="subscribe.environment_id")
        require_int(subscribe.known_version, field="subscribe.known_version")
        name = (subscribe.environment_id, principal.gateway_id or "")
        self.answers.config_subscribed(*name)
        answers = asyncio.get_running_loop().create_task(self._read_answers(request_iterator, principal, name))
        known = subscribe.known_version
        try:
            while True:
                newer = asyncio.ensure_future(self.hub.wait_newer(name[0], known))
                await asyncio.wait({newer, answers}, return_when=asyncio.FIRST_COMPLETED)
                if not newer.done():
                    newer.cancel()
                    answers.result()  # re-raises a bad answer; otherwise the agent closed its side
                    return
                stored = newer.result()
                known = stored.version
                yield pb.WatchConfigResponse(config_version=to_config_version(stored))
        finally:
            await cancel_and_wait([answers])

    async def _read_answers(
        self, requests: AsyncIterator[pb.WatchConfigRequest], principal: Principal, name: tuple[str, str]
    ) -> None:
        """Records each ACK/NACK on the gateway's state (shown in ListGateways; a NACK makes it DEGRADED)."""
        async for request in requests:
            kind = request.WhichOneof("message")
            if kind == "subscribe":
                raise InvalidArgumentError("subscribe", "was already sent; a stream subscribes once")
            if kind == "ack":
                version = require_int(request.ack.version, field="ack.version")
                self.answers.config_answered(*name, version=version, error=None)
            elif kind == "nack":
                require_int(request.nack.version, field="nack.version")
                error = request.nack.error or "no reason given"
                require_text(error, field="nack.error", max_bytes=_MAX_NACK_ERROR_BYTES)
                log.warning(
                    "config rejected by gateway",
                    environment=name[0],
                    gateway=name[1],
                    version=request.nack.version,
                    error=error,
                    token_id=principal.token_id,
                )
                self.answers.config_answered(*name, version=request.nack.version, error=error)
