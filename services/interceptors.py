"""The server interceptor: authenticates every call, enforces its roles, maps errors to codes, counts calls."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog
from prometheus_client import Counter, Histogram

from services.auth import Principal, Role, bearer_secret, bind_principal, unbind_principal
from services.errors import MeterwireError, PermissionDeniedError, UnauthenticatedError
from services.revocation import Revocations

log = structlog.get_logger("meterwire.rpc")

RPCS_HANDLED = Counter(
    "meterwire_grpc_server_handled_total",
    "RPCs completed, by method and status code.",
    ["grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram("meterwire_grpc_server_handling_seconds", "Unary RPC latency, by method.", ["grpc_method"])

Authenticate = Callable[[str], Awaitable[Principal]]


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Every RPC outside `public_services` needs a bearer token whose role its method declared."""

    def __init__(
        self,
        *,
        authenticate: Authenticate,
        method_roles: Mapping[str, frozenset[Role]],
        public_services: frozenset[str],
        revocations: Revocations,
    ) -> None:
        self.revocations = revocations
        self._authenticate = authenticate
        self._method_roles = method_roles
        self._public_services = public_services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.split("/")[1] in self._public_services:
            return handler
        metadata = handler_call_details.invocation_metadata
        return _wrap(handler, _Call(self, method, metadata))

    async def authorize(self, method: str, metadata: Any) -> Principal:
        principal = await self._authenticate(bearer_secret(metadata))
        roles = self._method_roles.get(method)
        if roles is None or principal.role not in roles:
            needed = " or ".join(sorted(roles or ()))
            raise PermissionDeniedError(
                f"{method.lstrip('/')} needs a {needed or 'different'} token; this is a {principal.role} token"
            )
        return principal


class _Call:
    """One RPC's guard: runs the behaviour as the authenticated principal and translates its failures."""

    def __init__(self, interceptor: ServerInterceptor, method: str, metadata: Any) -> None:
        self.interceptor = interceptor
        self.method = method
        self.metadata = metadata

    async def unary(
        self, behavior: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            principal = await self.interceptor.authorize(self.method, self.metadata)
            token = bind_principal(principal)
            try:
                return await behavior(request, context)
            finally:
                unbind_principal(token)
        except grpc.aio.AbortError:  # the behaviour aborted by itself
            code = _aborted_code(context)
            raise
        except Exception as error:
            code = _status_of(error)
            await _abort(self.method, context, error, code)
            raise  # not reached: abort raises
        finally:
            RPCS_HANDLED.labels(self.method, code.name).inc()
            RPC_SECONDS.labels(self.method).observe(time.perf_counter() - started)

    async def streaming(
        self, behavior: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        code = grpc.StatusCode.OK
        try:
            principal = await self.interceptor.authorize(self.method, self.metadata)
            revocations = self.interceptor.revocations
            # Bound without a reset: grpc.aio serves each RPC in its own task, so the binding ends with the call,
            # and a generator may be closed from another context, where a ContextVar token cannot be reset.
            bind_principal(principal)
            try:
                with revocations.track(principal.token_id):
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for response in result:
                            yield response
                    else:  # a handler that writes with context.write() and returns
                        await result
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or not revocations.is_revoked(principal.token_id):
                    raise
                task.uncancel()  # cancelled by the revocation, not by the caller: end with a status instead
                raise UnauthenticatedError(f"token {principal.token_id} was revoked; this stream is closed") from None
        except grpc.aio.AbortError:
            code = _aborted_code(context)
            raise
        except Exception as error:
            code = _status_of(error)
            await _abort(self.method, context, error, code)
        finally:
            RPCS_HANDLED.labels(self.method, code.name).inc()


def _status_of(error: Exception) -> grpc.StatusCode:
    return error.code if isinstance(error, MeterwireError) else grpc.StatusCode.INTERNAL


def _aborted_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


async def _abort(
    method: str, context: grpc.aio.ServicerContext[Any, Any], error: Exception, code: grpc.StatusCode
) -> None:
    """Ends the call with `code`: a domain error's own message, or a generic one for a bug (logged)."""
    if isinstance(error, MeterwireError):
        log.info("rpc refused", method=method, code=code.name, reason=str(error))
        await context.abort(code, str(error))
    log.error("rpc failed", method=method, exc_info=error)
    await context.abort(code, "internal error; the server log has the details")


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], call: _Call) -> grpc.RpcMethodHandler[Any, Any]:
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await call.unary(inner_uu, request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await call.unary(inner_su, requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for response in call.streaming(inner_us, request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    inner_ss = handler.stream_stream
    assert inner_ss is not None, "a handler has exactly one behaviour"

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for response in call.streaming(inner_ss, requests, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
