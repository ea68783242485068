"""Domain errors and the one place they become gRPC status codes."""

from __future__ import annotations

from typing import Final

import grpc

MAX_STATUS_DETAILS_BYTES: Final = 1024
"""The most of an error message sent back as a status's details. Clients refuse trailing metadata over 8 KiB
by default, and gRPC percent-encodes every non-ASCII byte (x3), so 1 KiB of any text always fits; the caller
sees the real code instead of RESOURCE_EXHAUSTED."""


def bounded(text: str, max_bytes: int) -> str:
    """`text` cut in the middle to at most about `max_bytes` UTF-8 bytes, saying how much went.

    Messages start with the field and end with the fix, and an oversized value echoed from a request sits
    between them: keeping both ends keeps what the reader needs.
    """
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    keep = max(max_bytes - 40, 2)  # room for the marker
    head = raw[: keep * 2 // 3].decode(errors="ignore")
    tail = raw[len(raw) - keep // 3 :].decode(errors="ignore")
    return f"{head}...[{len(raw) - len(head.encode()) - len(tail.encode())} bytes cut]...{tail}"


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


class DeadlineExceededError(MeterwireError):
    """The caller's deadline passed while the work was still going on."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


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
