"""The export writers: every table format names its columns even when nothing is written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from openpyxl import load_workbook

from services.usage_terms.records import FORMATS, open_writer

COLUMNS = ("bucket_start_time", "model", "requests")


def read_rows(path: Path, file_format: str) -> list[list[object]]:
    if file_format == "csv":
        with path.open(newline="", encoding="utf-8") as file:
            return [list(row) for row in csv.reader(file)]
    if file_format == "xlsx":
        sheet = load_workbook(path, read_only=True)["usage"]
        return [list(row) for row in sheet.iter_rows(values_only=True)]
    return [[line] for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("file_format", FORMATS)
def test_an_empty_export_is_the_header_alone_for_tables_and_nothing_for_json_lines(
    tmp_path: Path, file_format: str
) -> None:
    path = tmp_path / f"empty.{file_format}"
    open_writer(path, file_format, COLUMNS).close()

    expected = [] if file_format == "jsonl" else [list(COLUMNS)]
    assert read_rows(path, file_format) == expected


@pytest.mark.parametrize("file_format", ["csv", "xlsx"])
def test_the_header_comes_once_before_the_rows(tmp_path: Path, file_format: str) -> None:
    path = tmp_path / f"two.{file_format}"
    writer = open_writer(path, file_format, COLUMNS)
    writer.write({"bucket_start_time": "2026-01-01T00:00:00Z", "model": "gpt-4o", "requests": 2})
    writer.write({"bucket_start_time": "2026-01-01T01:00:00Z", "requests": 3})
    writer.close()

    rows = read_rows(path, file_format)
    assert rows[0] == list(COLUMNS)
    cells = [[str(cell) if cell is not None else "" for cell in row] for row in rows[1:]]
    assert cells == [["2026-01-01T00:00:00Z", "gpt-4o", "2"], ["2026-01-01T01:00:00Z", "", "3"]]
