"""Domain errors and the one place they become gRPC status codes."""

from __future__ import annotations

import grpc


class MeterwireError(Exception):
    """An error a caller can act on; its message is sent to the caller as is."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgumentError(MeterwireError):
    """A request field is missing or wrong; the message starts with the field's name."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFoundError(MeterwireError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(MeterwireError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(MeterwireError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(MeterwireError):
    code = grpc.StatusCode.ABORTED


class UnauthenticatedError(MeterwireError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(MeterwireError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotBuiltError(MeterwireError):
    """An RPC whose capability this version of meterwire does not have yet: an honest UNIMPLEMENTED."""

    code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, method: str, capability: str) -> None:
        super().__init__(f"{method} is not available in this version of meterwire: {capability} is not built yet")
