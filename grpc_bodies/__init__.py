"""Request bodies that do not decode, as a value instead of a parser exception: shared by the control plane's
interceptor (services/interceptors.py) and the agent's local AgentService (gateway_agent/interceptor.py).

Raising inside a gRPC deserializer ends the call in gRPC core as UNKNOWN ("Unexpected DecodeError") or, for a
message of a stream, as an exception inside the servicer (INTERNAL, a logged traceback). `guarded` wraps a
deserializer so that such bytes come through as an `Undecodable`, which the interceptor refuses with
INVALID_ARGUMENT like any other bad field. This package imports nothing of meterwire's, so the agent, which
must stand alone, can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Deserializer = Callable[[bytes], Any]


class Undecodable:
    """Stands for a request body that did not parse, in place of the message gRPC would have passed on."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem
        """What is wrong with the bytes, e.g. "is not a valid serialized pkg.Request (truncated message)"."""


def guarded(deserializer: Deserializer | None) -> Deserializer | None:
    """`deserializer`, answering an `Undecodable` instead of raising for bytes that are not its message."""
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)
    type_name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "message")

    def deserialize(body: bytes) -> Any:
        try:
            return deserializer(body)
        except Exception as error:  # whatever the parser says, these bytes are not a request
            # upb says "Error parsing message with type 'X': <why>"; the why is what the caller needs.
            why = str(error).rpartition("': ")[2] or type(error).__name__
            return Undecodable(f"is not a valid serialized {type_name} ({why})")

    return deserialize
