"""Where client commands print: one console that fits a terminal and never cuts tables when piped."""

from __future__ import annotations

import sys
from typing import Final

from rich.console import Console

PIPED_WIDTH: Final = 10_000
"""Columns given to output that is not a terminal: rich's default (80) wraps and cuts table headers in a pipe or
a file, where nobody reads a line's width anyway."""


def _console() -> Console:
    # Decided once, at import: the process's stdout does not change between import and the command.
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


console: Final = _console()
"""The console every client command prints its tables and messages to (stdout)."""


def on_terminal() -> bool:
    """Whether stdout is a terminal (live views and spinners only make sense there)."""
    return console.is_terminal
