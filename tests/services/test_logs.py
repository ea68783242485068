"""Logged fields are bounded, whoever logs them: a caller's 1 MB value never makes a 1 MB log line."""

from __future__ import annotations

import structlog

from services.logs import MAX_LOGGED_TRACEBACK_BYTES, MAX_LOGGED_VALUE_BYTES
from tests.services.log_capture import rendered_logs


def test_a_huge_logged_value_is_cut_in_its_middle() -> None:
    with rendered_logs() as logged:
        structlog.get_logger("meterwire.test").info(
            "rpc refused", reason="environment_id: '" + "x" * 1_000_000 + "' must be a slug", ids=["y" * 100] * 10_000
        )
    line = logged.getvalue()
    assert len(line.encode()) < 2 * MAX_LOGGED_VALUE_BYTES + 500
    assert line.count("bytes cut") == 2
    assert "environment_id: 'xxx" in line
    assert "' must be a slug" in line


def test_a_traceback_keeps_its_head_and_its_error() -> None:
    with rendered_logs() as logged:
        try:
            raise ValueError("v" * 1_000_000 + " the end")
        except ValueError:
            structlog.get_logger("meterwire.test").exception("rpc failed")
    text = logged.getvalue()
    assert len(text.encode()) < MAX_LOGGED_TRACEBACK_BYTES + 500
    assert "Traceback (most recent call last)" in text
    assert text.rstrip().endswith("the end")
