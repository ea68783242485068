"""`meterwire usage …` options: time ranges in a time zone, filters, groupings, metrics and buckets.

The parsing is services.usage_terms.query's (shared with the MCP server and the console); here its errors name
the command's flags and end the command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Final, NoReturn, TypeVar

import typer

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.cli.client import fail
from services.usage_terms import query
from services.usage_terms.query import GRANULARITIES, RANGE_NAMES

FLAGS: Final = {
    "range": "--range",
    "start": "--from",
    "end": "--to",
    "time_zone": "--tz",
    "tag": "--tag",
    "group_by": "--by",
    "split_by": "--split-by",
    "metric": "--metric",
    "granularity": "--granularity",
}
"""The flag that gives each part of a usage question."""

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


T = TypeVar("T")


def _failed(error: query.QueryError) -> NoReturn:
    fail(error.worded(FLAGS), code=2)


def _parsed(parse: Callable[[], T]) -> T:
    try:
        return parse()
    except query.QueryError as error:
        _failed(error)


def usage_filter(
    range_name: str,
    start: str | None,
    end: str | None,
    zone_name: str,
    *,
    environments: Sequence[str] | None = None,
    gateways: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    users: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
) -> filter_pb2.UsageFilter:
    """The UsageFilter every Reporting RPC takes, from the command's options."""
    return _parsed(
        lambda: query.usage_filter(
            range_name,
            start,
            end,
            zone_name,
            environments=environments or (),
            gateways=gateways or (),
            models=models or (),
            keys=keys or (),
            users=users or (),
            tags=tags or (),
        )
    )


def group_by(names: Sequence[str], part: str = "group_by") -> list[pb.GroupBy]:
    return _parsed(lambda: query.group_by(names, part))


def metric(name: str) -> pb.Metric.ValueType:
    return _parsed(lambda: query.metric(name))


def granularity(name: str) -> pb.Granularity.ValueType:
    return _parsed(lambda: query.granularity(name))
