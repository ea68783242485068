"""AIP-158 pagination: page sizes, opaque page tokens and pages, checked the same way by every List RPC.

Paging is done in one layer, the service (admin, config, the fleet): it takes the request's page size and token
and returns a Page; servicers only translate it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.errors import InvalidArgumentError

T = TypeVar("T")
_FORGED = "is not a token this server issued; pass the last next_page_token"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int, *, field: str = "page_size") -> int:
    """0 means the default; above the maximum is capped (AIP-158); negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgumentError(field, f"must not be negative (got {requested}); 0 means {DEFAULT_PAGE_SIZE}")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_page_token(position: dict[str, Any]) -> str:
    """An opaque token for the position after the last row returned."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, *, field: str = "page_token") -> dict[str, Any] | None:
    """The position a token stands for; None for the empty token (first page)."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(field, _FORGED) from None
    if not isinstance(position, dict):
        raise InvalidArgumentError(field, _FORGED)
    return position


def page_position(token: str, key: str, *, valid: Callable[[Any], bool], field: str = "page_token") -> Any:
    """The position stored under `key` in a token this server issued, None for the first page; a token
    without it, or with a value `valid` refuses, is INVALID_ARGUMENT (never a KeyError deeper down)."""
    position = decode_page_token(token, field=field)
    if position is None:
        return None
    value = position.get(key)
    if set(position) != {key} or not valid(value):
        raise InvalidArgumentError(field, _FORGED)
    return value


def is_text(value: Any) -> bool:
    return isinstance(value, str)


def is_count(value: Any) -> bool:
    """A non-negative integer that fits a 64-bit column (bool is not one)."""
    return type(value) is int and 0 <= value < 2**63
