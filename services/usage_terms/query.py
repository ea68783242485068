"""What a usage question names: a time range in a time zone, filters, groupings, metrics and buckets.

Every parser raises QueryError naming the part of the question it could not use by its logical name ("range",
"start", "end", "time_zone", "tag", "group_by", "metric", "granularity"); each edge words that as its own field
or option (`--tz` in the CLI, `filter.time_zone` for the MCP server).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb

RANGES: Final = {"1h": timedelta(hours=1), "3d": timedelta(days=3), "7d": timedelta(days=7), "30d": timedelta(days=30)}
RANGE_NAMES: Final = ("1h", "today", "3d", "7d", "30d")

DIMENSIONS: Final = {
    "environment": pb.DIMENSION_ENVIRONMENT,
    "gateway": pb.DIMENSION_GATEWAY,
    "model": pb.DIMENSION_REQUESTED_MODEL,
    "resolved-model": pb.DIMENSION_RESOLVED_MODEL,
    "provider": pb.DIMENSION_PROVIDER,
    "key": pb.DIMENSION_API_KEY,
    "user": pb.DIMENSION_USER,
    "credential-type": pb.DIMENSION_CREDENTIAL_TYPE,
    "status-class": pb.DIMENSION_STATUS_CLASS,
    "request-type": pb.DIMENSION_REQUEST_TYPE,
    "route": pb.DIMENSION_ROUTE,
}
"""The names a grouping takes (plus tag:KEY), as help and errors list them."""
_DIMENSION_ALIASES: Final = {"env": "environment", "requested-model": "model", "api-key": "key"}
DIMENSION_NAMES: Final = ", ".join([*DIMENSIONS, "tag:KEY"])

METRICS: Final = {
    name.removeprefix("METRIC_").lower().replace("_", "-"): value
    for name, value in pb.Metric.items()
    if value != pb.METRIC_UNSPECIFIED
}
METRIC_NAMES: Final = ", ".join(METRICS)
"""The metric names, as help and errors list them."""
GRANULARITIES: Final = {
    "1m": pb.GRANULARITY_MINUTE,
    "5m": pb.GRANULARITY_FIVE_MINUTES,
    "1h": pb.GRANULARITY_HOUR,
    "1d": pb.GRANULARITY_DAY,
}


class QueryError(ValueError):
    """A part of a usage question that cannot be used; `part` is its logical name, the message says why."""

    def __init__(self, part: str, problem: str) -> None:
        super().__init__(problem)
        self.part = part
        self.problem = problem

    def worded(self, names: dict[str, str]) -> str:
        """The error as an edge shows it, the part named in the edge's own words (`names`; else as is)."""
        return f"{names.get(self.part, self.part)}: {self.problem}"


def zone(zone_name: str) -> ZoneInfo:
    try:
        return ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError("time_zone", f"{zone_name!r} is not an IANA time zone such as America/New_York") from None


def time_range(
    range_name: str, start: str | None, end: str | None, zone_name: str, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end) from a range name or start/end (ISO 8601, in the zone unless they carry an offset), aware UTC."""
    local_zone = zone(zone_name)

    def parse(text: str, part: str) -> datetime:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise QueryError(part, f"{text!r} is not ISO 8601, e.g. 2026-11-23 or 2026-11-23T14:00") from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=local_zone)).astimezone(UTC)

    finish = parse(end, "end") if end else now
    if start:
        begin = parse(start, "start")
    elif range_name == "today":
        local = now.astimezone(local_zone)
        begin = datetime(local.year, local.month, local.day, tzinfo=local_zone).astimezone(UTC)
    elif range_name in RANGES:
        begin = finish - RANGES[range_name]
    else:
        raise QueryError("range", f"{range_name!r} is not one of {', '.join(RANGE_NAMES)}")
    if finish <= begin:
        raise QueryError("end", "must be after the start of the range")
    return begin, finish


def tag_matches(tags: Sequence[str]) -> list[filter_pb2.TagMatch]:
    """KEY=VALUE texts as tag matches."""
    matches = []
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise QueryError("tag", f"{tag!r} is not KEY=VALUE")
        matches.append(filter_pb2.TagMatch(key=key, value=value))
    return matches


def usage_filter(
    range_name: str,
    start: str | None,
    end: str | None,
    zone_name: str,
    *,
    now: datetime | None = None,
    environments: Sequence[str] = (),
    gateways: Sequence[str] = (),
    models: Sequence[str] = (),
    keys: Sequence[str] = (),
    users: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> filter_pb2.UsageFilter:
    """The UsageFilter every Reporting request takes."""
    begin, finish = time_range(range_name, start, end, zone_name, now or datetime.now(UTC))
    message = filter_pb2.UsageFilter(
        environment_ids=environments,
        gateway_ids=gateways,
        requested_models=models,
        api_key_ids=keys,
        user_ids=users,
        tags=tag_matches(tags),
    )
    message.start_time.FromDatetime(begin)
    message.end_time.FromDatetime(finish)
    return message


def group_by(names: Sequence[str], part: str = "group_by") -> list[pb.GroupBy]:
    """Dimension names (model, user, tag:team, ...) as GroupBy messages."""
    result = []
    for name in names:
        if name.startswith("tag:") and len(name) > len("tag:"):
            result.append(pb.GroupBy(dimension=pb.DIMENSION_TAG, tag_key=name.removeprefix("tag:")))
            continue
        dimension = DIMENSIONS.get(_DIMENSION_ALIASES.get(name, name))
        if dimension is None:
            raise QueryError(part, f"{name!r} is not one of {DIMENSION_NAMES}")
        result.append(pb.GroupBy(dimension=dimension))
    return result


def metric(name: str, part: str = "metric") -> pb.Metric.ValueType:
    value = METRICS.get(name)
    if value is None:
        raise QueryError(part, f"{name!r} is not one of {METRIC_NAMES}")
    return value


def granularity(name: str) -> pb.Granularity.ValueType:
    value = GRANULARITIES.get(name)
    if value is None:
        raise QueryError("granularity", f"{name!r} is not one of {', '.join(GRANULARITIES)}")
    return value
