"""The local AgentService's interceptor: a request body that does not decode is INVALID_ARGUMENT, as on the
control plane, instead of gRPC's UNKNOWN ("Unexpected DecodeError") or a traceback inside a stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from grpc_bodies import Undecodable, guarded

_MAX_DETAILS_CHARS = 512
"""The parser's reason is short; this only keeps a status message from growing with odd input."""


async def _decoded(request: Any, context: grpc.aio.ServicerContext[Any, Any], *, field: str) -> Any:
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {request.problem}"[:_MAX_DETAILS_CHARS])
    return request


async def _decoded_stream(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    index = 0
    async for request in requests:
        yield await _decoded(request, context, field=f"requests[{index}]")
        index += 1


class UndecodableBodies(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Decodes every request with grpc_bodies.guarded and refuses what does not decode with INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        return handler if handler is None else _wrap(handler)


def _wrap(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    codec = {
        "request_deserializer": guarded(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu: Callable[..., Any] = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await inner_uu(await _decoded(request, context, field="request"), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.stream_unary is not None:
        inner_su: Callable[..., Any] = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await inner_su(_decoded_stream(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    if handler.unary_stream is not None:
        inner_us: Callable[..., Any] = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for response in inner_us(await _decoded(request, context, field="request"), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    inner_ss: Callable[..., Any] | None = handler.stream_stream
    assert inner_ss is not None, "a handler has exactly one behaviour"

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for response in inner_ss(_decoded_stream(requests, context), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
