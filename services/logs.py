"""Structured logging: one event per line, JSON for machines or key=value for people."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, Literal, TextIO

import structlog

from services.errors import bounded

LogFormat = Literal["console", "json"]

MAX_LOGGED_VALUE_BYTES: Final = 2048
"""The most of one logged field (a reason, an id, a value from a request): a caller's 1 MB id must not make
a 1 MB log line."""
MAX_LOGGED_TRACEBACK_BYTES: Final = 16 * 1024
"""The most of a logged traceback; its head (the outer frames) and tail (the error) are kept."""


def _bounded_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Caps every field of an event: the one place logged values are truncated, whoever logs them."""
    for key, value in event.items():
        limit = MAX_LOGGED_TRACEBACK_BYTES if key == "exception" else MAX_LOGGED_VALUE_BYTES
        if isinstance(value, str):
            # Three bytes per character at most matter here; a short string needs no encoding.
            if len(value) * 3 > limit:
                event[key] = bounded(value, limit)
        elif isinstance(value, bytes | bytearray | list | tuple | set | frozenset | dict):
            text = repr(value)
            if len(text) * 3 > limit:
                event[key] = bounded(text, limit)
    return event


def configure_logging(*, log_format: LogFormat = "console", level: str = "info", stream: TextIO | None = None) -> None:
    """Sends structlog events to `stream` (stderr by default); safe to call more than once."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _bounded_fields,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
