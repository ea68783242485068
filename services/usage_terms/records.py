"""Export files: records (one per raw event or grouped row) written as CSV, JSONL or XLSX, one at a time."""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from google.protobuf.json_format import MessageToDict

from meterwire.common.v1 import usage_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb

Record = dict[str, object]

FORMATS: Final = ("csv", "jsonl", "xlsx")

SUMMARY_COLUMNS: Final = (
    "requests",
    "attempts",
    "successes",
    "errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_micros",
    "cache_savings_micros",
    "currency",
    "unknown_tokens_count",
    "unpriced_count",
)


EVENT_COLUMNS: Final = (
    "environment_id",
    "gateway_id",
    *(field.name for field in usage_pb2.UsageEvent.DESCRIPTOR.fields),
    "cost_source",
)
"""A raw export's columns: every field of an event, set or not (an unset one is an empty cell)."""


def grouped_columns(group_names: Sequence[str]) -> tuple[str, ...]:
    return ("bucket_start_time", *group_names, *SUMMARY_COLUMNS)


def event_record(stored: pb.StoredUsageEvent) -> Record:
    """A raw event as an export record: where it came from, its fields as the proto's JSON, its cost source."""
    record: Record = {"environment_id": stored.environment_id, "gateway_id": stored.gateway_id}
    record.update(MessageToDict(stored.event, preserving_proto_field_name=True))
    record["cost_source"] = pb.CostSource.Name(stored.cost_source).removeprefix("COST_SOURCE_").lower()
    return record


def grouped_record(row: pb.ExportRow, group_names: Sequence[str]) -> Record:
    """A grouped row: its bucket, its group's values under the --by names, and the figures."""
    figures, tokens = row.summary, row.summary.tokens
    record: Record = {"bucket_start_time": row.bucket_start_time.ToJsonString()}
    record.update(zip(group_names, row.keys, strict=True))
    cells = (
        figures.requests,
        figures.attempts,
        figures.successes,
        figures.errors,
        tokens.input,
        tokens.output,
        tokens.cache_read,
        tokens.cache_write,
        tokens.reasoning,
        tokens.total,
        figures.cost_micros,
        figures.cache_savings_micros,
        figures.currency,
        figures.unknown_tokens_count,
        figures.unpriced_count,
    )
    record.update(zip(SUMMARY_COLUMNS, cells, strict=True))
    return record


class ExportWriter(Protocol):
    def write(self, record: Record) -> None: ...

    def close(self) -> None: ...


class JsonLinesWriter:
    """One JSON object per line, nested values kept nested, unset fields left out (unknown, not 0)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        del columns  # each line names its own fields
        self._file = path.open("w", encoding="utf-8")

    def write(self, record: Record) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


class _TableWriter(ABC):
    """A header of every column, then one row per record (a field the record does not have: an empty cell).

    The header is written on opening, so an export of nothing still names its columns."""

    def __init__(self, columns: Sequence[str]) -> None:
        """Called by a subclass once `_row` can write (the header is written here)."""
        self._columns = list(columns)
        self._row(self._columns)

    def write(self, record: Record) -> None:
        self._row([_cell(record.get(column)) for column in self._columns])

    @abstractmethod
    def _row(self, cells: list[Any]) -> None:
        """Writes one row of cells (the header is the first)."""


class CsvWriter(_TableWriter):
    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        super().__init__(columns)

    def _row(self, cells: list[Any]) -> None:
        self._csv.writerow(cells)

    def close(self) -> None:
        self._file.close()


class XlsxWriter(_TableWriter):
    """A sheet named "usage", in openpyxl's streaming (write-only) mode so memory stays flat."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        from openpyxl import Workbook  # imported here: only XLSX exports pay for it

        self._path = path
        self._book = Workbook(write_only=True)
        self._sheet = self._book.create_sheet("usage")
        super().__init__(columns)

    def _row(self, cells: list[Any]) -> None:
        self._sheet.append(cells)

    def close(self) -> None:
        self._book.save(self._path)


def open_writer(path: Path, file_format: str, columns: Sequence[str]) -> ExportWriter:
    """A writer for one of FORMATS; CSV and XLSX have exactly `columns`."""
    writers: dict[str, Callable[[Path, Sequence[str]], ExportWriter]] = {
        "csv": CsvWriter,
        "jsonl": JsonLinesWriter,
        "xlsx": XlsxWriter,
    }
    return writers[file_format](path, columns)


def _cell(value: object) -> object:
    # Nested values (tags, token counts) go into one cell as JSON.
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else value
