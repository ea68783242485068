"""AIP-158 pagination: page sizes and opaque page tokens, checked the same way by every List RPC."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.errors import InvalidArgumentError

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
        raise InvalidArgumentError(field, "is not a token this server issued; pass the last next_page_token") from None
    if not isinstance(position, dict):
        raise InvalidArgumentError(field, "is not a token this server issued; pass the last next_page_token")
    return position
