"""Tool arguments turned into Reporting requests, with the parsing the CLI and the console use too
(services.usage_terms.query), so all of them read ranges alike; its errors name the tool's arguments, so the
assistant is told what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.usage_terms import query
from services.usage_terms.query import DIMENSION_NAMES, GRANULARITIES, METRIC_NAMES, METRICS, RANGE_NAMES


class ArgumentError(ValueError):
    """A tool argument the server cannot use; the message names the argument and what it accepts."""


ARGUMENT_NAMES: Final = {
    "range": "filter.range",
    "start": "filter.start",
    "end": "filter.end",
    "time_zone": "filter.time_zone",
    "tag": "filter.tags",
}
"""The tool argument that gives each part of a usage question (group_by, metric, ... are named by the caller)."""


def _argument_error(error: query.QueryError) -> ArgumentError:
    return ArgumentError(error.worded(ARGUMENT_NAMES))


class UsageFilterArguments(BaseModel):
    """Which usage to read: a time range (as `meterwire usage` takes it) and optional filters (all must match)."""

    model_config = ConfigDict(extra="forbid")

    range: Annotated[
        Literal["1h", "today", "3d", "7d", "30d"],
        Field(description=f"Time range ending now: one of {', '.join(RANGE_NAMES)}. Ignored when `start` is set."),
    ] = "7d"
    start: Annotated[
        str | None,
        Field(
            description="Start (inclusive), ISO 8601 such as 2026-11-23 or 2026-11-23T14:00, in `time_zone` "
            "unless it carries an offset. Overrides `range`."
        ),
    ] = None
    end: Annotated[str | None, Field(description="End (exclusive), ISO 8601. Default: now.")] = None
    time_zone: Annotated[
        str, Field(description="IANA time zone (e.g. Europe/Berlin) for 'today', start/end and day buckets.")
    ] = "UTC"
    environments: Annotated[list[str], Field(description="Environment ids; empty: every one the token may read.")] = []
    gateways: Annotated[list[str], Field(description="Gateway ids.")] = []
    models: Annotated[list[str], Field(description="Requested models (the alias callers asked for).")] = []
    api_keys: Annotated[list[str], Field(description="API key ids.")] = []
    users: Annotated[list[str], Field(description="User ids.")] = []
    tags: Annotated[
        list[str], Field(description="Tag matches as KEY=VALUE, e.g. team=search; every one must match (AND).")
    ] = []


def one_of(names: Iterable[str]) -> dict[str, Any]:
    """A JSON-schema enum for a string argument, from the CLI's own table of names (so the two cannot drift);
    the value is still checked here, so a wrong one gets an error that lists the right ones."""
    return {"enum": list(names)}


def each_one_of(names: Iterable[str]) -> dict[str, Any]:
    """The same for every item of a list argument."""
    return {"items": {"type": "string", "enum": list(names)}}


METRIC_ENUM: Final = one_of(METRICS)
METRICS_ENUM: Final = each_one_of(METRICS)
GRANULARITY_ENUM: Final = one_of(GRANULARITIES)

DIMENSION_HELP: Final = f"One of {DIMENSION_NAMES} (tag:KEY groups by the value of tag KEY, e.g. tag:team)."
METRIC_HELP: Final = f"One of {METRIC_NAMES}."


def usage_filter(arguments: UsageFilterArguments | None) -> filter_pb2.UsageFilter:
    given = arguments or UsageFilterArguments()
    try:
        return query.usage_filter(
            given.range,
            given.start,
            given.end,
            given.time_zone,
            environments=given.environments,
            gateways=given.gateways,
            models=given.models,
            keys=given.api_keys,
            users=given.users,
            tags=given.tags,
        )
    except query.QueryError as error:
        raise _argument_error(error) from None


def group_by(names: list[str], argument: str) -> list[pb.GroupBy]:
    if not names:
        raise ArgumentError(f"{argument}: give at least one dimension. {DIMENSION_HELP}")
    try:
        return query.group_by(names, argument)
    except query.QueryError as error:
        raise _argument_error(error) from None


def metric(name: str, argument: str) -> pb.Metric.ValueType:
    try:
        return query.metric(name, argument)
    except query.QueryError as error:
        raise _argument_error(error) from None


def granularity(name: str) -> pb.Granularity.ValueType:
    try:
        return query.granularity(name)
    except query.QueryError as error:
        raise _argument_error(error) from None


def bounded(value: int, *, argument: str, maximum: int) -> int:
    """A caller's count checked at the edge: 1..maximum, or an error saying the allowed range."""
    if not 1 <= value <= maximum:
        raise ArgumentError(f"{argument}: {value} is out of range; use 1 to {maximum}")
    return value
