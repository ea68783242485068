"""The server interceptor: authenticates every call, enforces its roles, admits its request (decodable, within
the request limits), maps errors to codes, counts calls."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog
from prometheus_client import Counter, Histogram

from grpc_bodies import Undecodable, guarded
from services.auth import Principal, Role, bearer_secret, bind_principal, unbind_principal
from services.errors import (
    MAX_STATUS_DETAILS_BYTES,
    InvalidArgumentError,
    MeterwireError,
    PermissionDeniedError,
    UnauthenticatedError,
    bounded,
)
from services.request_limits import check_entry_limits
from services.revocation import Revocations

log = structlog.get_logger("meterwire.rpc")

RPCS_HANDLED = Counter(
    "meterwire_grpc_server_handled_total",
    "RPCs completed, by method and status code.",
    ["grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram("meterwire_grpc_server_handling_seconds", "Unary RPC latency, by method.", ["grpc_method"])

Authenticate = Callable[[str], Awaitable[Principal]]


def _admitted(request: Any, *, field: str) -> Any:
    """The request if it decoded and every repeated field is within its limit, else INVALID_ARGUMENT."""
    if isinstance(request, Undecodable):
        raise InvalidArgumentError(field, request.problem)
    check_entry_limits(request, prefix="" if field == "request" else f"{field}.")
    return request


async def _admitted_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    index = 0
    async for request in requests:
        yield _admitted(request, field=f"requests[{index}]")
        index += 1


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
        self,
        behavior: Callable[..., Any],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        request_streamed: bool,
    ) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            principal = await self.interceptor.authorize(self.method, self.metadata)
            # Admitted after authentication: a caller without a token learns nothing about request shapes,
            # and gets UNAUTHENTICATED whatever it sent, as it would with a stream read later.
            request = _admitted_stream(request) if request_streamed else _admitted(request, field="request")
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
        self,
        behavior: Callable[..., Any],
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        request_streamed: bool,
    ) -> AsyncIterator[Any]:
        code = grpc.StatusCode.OK
        try:
            principal = await self.interceptor.authorize(self.method, self.metadata)
            request = _admitted_stream(request) if request_streamed else _admitted(request, field="request")
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
    """Ends the call with `code`: a domain error's own message, or a generic one for a bug (logged).

    The one place a message goes back to a caller, so the one place it is bounded: a message may echo a value
    from the request, and a 1 MB id must neither come back whole nor be logged whole.
    """
    if isinstance(error, MeterwireError):
        details = bounded(str(error), MAX_STATUS_DETAILS_BYTES)
        log.info("rpc refused", method=method, code=code.name, reason=details)
        await context.abort(code, details)
    log.error("rpc failed", method=method, exc_info=error)
    await context.abort(code, "internal error; the server log has the details")


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], call: _Call) -> grpc.RpcMethodHandler[Any, Any]:
    codec = {
        "request_deserializer": guarded(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await call.unary(inner_uu, request, context, request_streamed=False)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await call.unary(inner_su, requests, context, request_streamed=True)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for response in call.streaming(inner_us, request, context, request_streamed=False):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    inner_ss = handler.stream_stream
    assert inner_ss is not None, "a handler has exactly one behaviour"

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async for response in call.streaming(inner_ss, requests, context, request_streamed=True):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
