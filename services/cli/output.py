"""Where client commands print: one console that fits a terminal and never cuts tables when piped."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Final

from rich.console import Console
from rich.table import Table

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


_ENUM_PREFIXES: Final = ("CONFIG_SOURCE_", "GATEWAY_STATUS_")


def fields_table(body: Mapping[str, Any], *, maps: frozenset[str] = frozenset()) -> Table:
    """A message's JSON form as a two-column table: nested messages as `state.spool depth`, the map fields named
    in `maps` as `key=value, …`, booleans as yes/no, enum values by their short name, empty text as "-"."""
    table = Table("field", "value", show_header=False)
    for name, text in _field_rows(body, "", maps):
        table.add_row(name, text)
    return table


def _field_rows(body: Mapping[str, Any], prefix: str, maps: frozenset[str]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in body.items():
        name = f"{prefix}{key}".replace("_", " ")
        if isinstance(value, dict) and key not in maps:
            rows.extend(_field_rows(value, f"{prefix}{key}.", maps))
        elif isinstance(value, dict):
            rows.append((name, ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"))
        elif isinstance(value, bool):
            rows.append((name, "yes" if value else "no"))
        elif isinstance(value, list):
            rows.append((name, "; ".join(str(item) for item in value) or "-"))
        elif isinstance(value, str) and value.startswith(_ENUM_PREFIXES):
            enum_prefix = next(p for p in _ENUM_PREFIXES if value.startswith(p))
            rows.append((name, value.removeprefix(enum_prefix).lower()))
        else:
            rows.append((name, str(value) if value != "" else "-"))
    return rows
