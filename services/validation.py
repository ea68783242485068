"""Shared checks of request fields, each failing with INVALID_ARGUMENT that names the field."""

from __future__ import annotations

import re

from services.errors import InvalidArgumentError

_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


def require_slug(value: str, *, field: str) -> str:
    """Environment and gateway ids: lowercase letters, digits and '-', starting with a letter, 1-63 long."""
    if not value:
        raise InvalidArgumentError(field, "is required")
    if not _SLUG.fullmatch(value):
        raise InvalidArgumentError(
            field, f"{value!r} must be 1-63 lowercase letters, digits or '-', starting with a letter"
        )
    return value


def require_text(value: str, *, field: str, max_bytes: int, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgumentError(field, "is required")
    if len(value.encode()) > max_bytes:
        raise InvalidArgumentError(field, f"is longer than {max_bytes} bytes")
    return value
