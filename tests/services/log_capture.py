"""The server's log lines as rendered, for tests that check what is logged (and how much)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from services.logs import configure_logging


@contextmanager
def rendered_logs() -> Iterator[io.StringIO]:
    """Everything logged inside the block, rendered as `meterwire serve` renders it; the previous logging
    configuration is restored after (structlog binds its output stream when configured, so capturing the
    process's stderr would see nothing)."""
    saved = structlog.get_config()
    lines = io.StringIO()
    configure_logging(stream=lines)
    try:
        yield lines
    finally:
        structlog.configure(**saved)
