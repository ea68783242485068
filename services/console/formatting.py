"""How the console shows figures: the CLI's table formats (money in its currency, unknown as "-", durations in
ms), plus times in the viewer's zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.usage_terms.figures import UNKNOWN, metric_of, metric_text, milliseconds, money, spend, token_total

__all__ = ["UNKNOWN", "metric_of", "metric_text", "milliseconds", "money", "percent", "spend", "token_total"]


def count(value: int | None) -> str:
    return UNKNOWN if value is None else f"{value:,}"


def percent(summary: pb.UsageSummary) -> str:
    """The success rate, "-" when no attempt had an outcome."""
    if summary.successes + summary.errors == 0:
        return UNKNOWN
    return f"{summary.success_rate:.2%}"


def timestamp_us(micros: int | None, zone: ZoneInfo) -> str:
    if micros is None:
        return UNKNOWN
    return datetime.fromtimestamp(micros / 1e6, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def moment(value: datetime | None, zone: ZoneInfo) -> str:
    if value is None:
        return UNKNOWN
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
