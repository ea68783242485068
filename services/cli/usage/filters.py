"""What `meterwire usage …` asks about: time ranges in a time zone, filters, groupings, metrics and buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.cli.client import fail

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
"""The names --by and --split-by take (plus tag:KEY), as help and errors list them."""
_DIMENSION_ALIASES: Final = {"env": "environment", "requested-model": "model", "api-key": "key"}
DIMENSION_NAMES: Final = ", ".join([*DIMENSIONS, "tag:KEY"])

METRICS: Final = {
    name.removeprefix("METRIC_").lower().replace("_", "-"): value
    for name, value in pb.Metric.items()
    if value != pb.METRIC_UNSPECIFIED
}
METRIC_NAMES: Final = ", ".join(METRICS)
"""The names --metric takes, as help and errors list them."""
GRANULARITIES: Final = {
    "1m": pb.GRANULARITY_MINUTE,
    "5m": pb.GRANULARITY_FIVE_MINUTES,
    "1h": pb.GRANULARITY_HOUR,
    "1d": pb.GRANULARITY_DAY,
}

RangeOption = Annotated[
    str, typer.Option("--range", "-r", help=f"{', '.join(RANGE_NAMES)} (ignored with --from).", show_default=True)
]
FromOption = Annotated[str | None, typer.Option("--from", help="Start, ISO 8601 (in --tz unless it has an offset).")]
ToOption = Annotated[str | None, typer.Option("--to", help="End (exclusive), ISO 8601. Default: now.")]
TzOption = Annotated[str, typer.Option("--tz", help="IANA time zone for 'today', --from/--to and day buckets.")]
EnvOption = Annotated[list[str] | None, typer.Option("--env", "-e", help="Environment (repeat).")]
GatewayOption = Annotated[list[str] | None, typer.Option("--gateway", "-g", help="Gateway id (repeat).")]
ModelOption = Annotated[list[str] | None, typer.Option("--model", "-m", help="Requested model (repeat).")]
KeyOption = Annotated[list[str] | None, typer.Option("--key", help="API key id (repeat).")]
UserOption = Annotated[list[str] | None, typer.Option("--user", "-u", help="User id (repeat).")]
TagOption = Annotated[list[str] | None, typer.Option("--tag", help="KEY=VALUE; all must match (repeat).")]
GranularityOption = Annotated[str, typer.Option("--granularity", help=f"{', '.join(GRANULARITIES)}.")]


def time_range(
    range_name: str, start: str | None, end: str | None, zone_name: str, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end) from a shortcut or --from/--to, both aware UTC."""
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--tz: {zone_name!r} is not an IANA time zone such as America/New_York", code=2)

    def parse(text: str, option: str) -> datetime:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            fail(f"{option}: {text!r} is not ISO 8601, e.g. 2026-11-23 or 2026-11-23T14:00", code=2)
        return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(UTC)

    finish = parse(end, "--to") if end else now
    if start:
        begin = parse(start, "--from")
    elif range_name == "today":
        local = now.astimezone(zone)
        begin = datetime(local.year, local.month, local.day, tzinfo=zone).astimezone(UTC)
    elif range_name in RANGES:
        begin = finish - RANGES[range_name]
    else:
        fail(f"--range: {range_name!r} is not one of {', '.join(RANGE_NAMES)}", code=2)
    if finish <= begin:
        fail("--to must be after the start of the range", code=2)
    return begin, finish


def usage_filter(
    range_name: str,
    start: str | None,
    end: str | None,
    zone_name: str,
    *,
    environments: list[str] | None = None,
    gateways: list[str] | None = None,
    models: list[str] | None = None,
    keys: list[str] | None = None,
    users: list[str] | None = None,
    tags: list[str] | None = None,
) -> filter_pb2.UsageFilter:
    """The UsageFilter every Reporting RPC takes, from the command's options."""
    begin, finish = time_range(range_name, start, end, zone_name, datetime.now(UTC))
    matches = []
    for tag in tags or []:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            fail(f"--tag: {tag!r} is not KEY=VALUE", code=2)
        matches.append(filter_pb2.TagMatch(key=key, value=value))
    message = filter_pb2.UsageFilter(
        environment_ids=environments or [],
        gateway_ids=gateways or [],
        requested_models=models or [],
        api_key_ids=keys or [],
        user_ids=users or [],
        tags=matches,
    )
    message.start_time.FromDatetime(begin)
    message.end_time.FromDatetime(finish)
    return message


def group_by(names: list[str], option: str = "--by") -> list[pb.GroupBy]:
    """Dimension names (model, user, tag:team, ...) as GroupBy messages."""
    result = []
    for name in names:
        if name.startswith("tag:") and len(name) > len("tag:"):
            result.append(pb.GroupBy(dimension=pb.DIMENSION_TAG, tag_key=name.removeprefix("tag:")))
            continue
        dimension = DIMENSIONS.get(_DIMENSION_ALIASES.get(name, name))
        if dimension is None:
            fail(f"{option}: {name!r} is not one of {DIMENSION_NAMES}", code=2)
        result.append(pb.GroupBy(dimension=dimension))
    return result


def metric(name: str, option: str = "--metric") -> pb.Metric.ValueType:
    value = METRICS.get(name)
    if value is None:
        fail(f"{option}: {name!r} is not one of {METRIC_NAMES}", code=2)
    return value


def granularity(name: str) -> pb.Granularity.ValueType:
    value = GRANULARITIES.get(name)
    if value is None:
        fail(f"--granularity: {name!r} is not one of {', '.join(GRANULARITIES)}", code=2)
    return value
