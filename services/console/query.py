"""A console view's question, kept in the URL: time range in a zone, filters, chart and ranking choices.

Parsed once per request into a UsageFilter (the message every Reporting RPC takes), so the filter is validated
and scoped by the same `select_usage` as the RPCs. Bad values are INVALID_ARGUMENT naming the URL parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from starlette.datastructures import ImmutableMultiDict

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.errors import InvalidArgumentError
from services.request_limits import MAX_FILTER_TAGS, MAX_FILTER_VALUES
from services.usage_terms import query as terms
from services.usage_terms.query import GRANULARITIES, METRICS, QueryError

RANGE_CHOICES: Final = ("1h", "today", "3d", "7d", "30d", "custom")
DEFAULT_GRANULARITY: Final = {"1h": "1m", "today": "1h", "3d": "1h", "7d": "1h", "30d": "1d"}
CHART_METRICS: Final = (
    "requests",
    "cost",
    "total-tokens",
    "input-tokens",
    "output-tokens",
    "cache-read-tokens",
    "cache-savings",
    "errors",
    "success-rate",
    "latency-avg",
    "latency-p95",
    "ttft-avg",
)
RANKINGS: Final = ("model", "resolved-model", "key", "user", "environment", "provider", "route", "gateway")
"""Ranking dimensions offered as tabs; `tag:KEY` ranks by a tag's values."""
RANK_METRICS: Final = ("cost", "requests", "total-tokens", "errors", "latency-avg")
TOP_CHOICES: Final = (5, 10, 25, 50)
ZONES: Final = (
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Singapore",
    "Asia/Kolkata",
    "Australia/Sydney",
)
"""Offered in the zone picker; any IANA zone typed into the URL works."""
_LIST_PARAMS: Final = ("env", "gateway", "model", "resolved", "provider", "key", "user", "route", "tag")
MAX_VALUE_BYTES: Final = 256


@dataclass(frozen=True, slots=True)
class ViewQuery:
    """Everything a console page was asked, as URL parameters name it."""

    range_name: str = "today"
    start: str = ""
    """Custom range start, ISO 8601 (in `zone` unless it has an offset)."""
    end: str = ""
    zone: str = "UTC"
    env: tuple[str, ...] = ()
    gateway: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    resolved: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    route: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    """KEY=VALUE; all must match."""
    metric: str = "requests"
    granularity: str = ""
    """"" : the range's default."""
    by: str = "model"
    rank: str = "cost"
    top: int = 10
    errors_only: bool = False

    @classmethod
    def from_params(cls, params: ImmutableMultiDict[str, str]) -> ViewQuery:
        lists: dict[str, tuple[str, ...]] = {}
        for name in _LIST_PARAMS:
            values = tuple(value.strip() for value in params.getlist(name) if value.strip())
            most = MAX_FILTER_TAGS if name == "tag" else MAX_FILTER_VALUES  # the RPCs' own bounds
            if len(values) > most:
                raise InvalidArgumentError(name, f"give at most {most} values")
            for value in values:
                if len(value.encode()) > MAX_VALUE_BYTES:
                    raise InvalidArgumentError(name, f"a value is longer than {MAX_VALUE_BYTES} bytes")
            lists[name] = values
        query = cls(
            range_name=params.get("range", "today"),
            start=params.get("from", "").strip(),
            end=params.get("to", "").strip(),
            zone=params.get("tz", "UTC").strip() or "UTC",
            metric=params.get("metric", "requests"),
            granularity=params.get("granularity", ""),
            by=params.get("by", "model").strip() or "model",
            rank=params.get("rank", "cost"),
            top=_int(params.get("top", "10"), "top"),
            errors_only=params.get("errors") == "1",
            **lists,
        )
        query.check()
        return query

    def check(self) -> None:
        if self.range_name not in RANGE_CHOICES:
            raise InvalidArgumentError("range", f"{self.range_name!r} is not one of {', '.join(RANGE_CHOICES)}")
        self.time_zone()
        if self.metric not in METRICS:
            raise InvalidArgumentError("metric", f"{self.metric!r} is not a metric ({', '.join(CHART_METRICS)}, ...)")
        if self.rank not in METRICS:
            raise InvalidArgumentError("rank", f"{self.rank!r} is not a metric ({', '.join(RANK_METRICS)}, ...)")
        if self.granularity and self.granularity not in GRANULARITIES:
            raise InvalidArgumentError("granularity", f"{self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if not 1 <= self.top <= 100:
            raise InvalidArgumentError("top", "must be 1 to 100")
        self.group_by()
        _worded(terms.tag_matches, self.tag)

    def time_zone(self) -> ZoneInfo:
        return _worded(terms.zone, self.zone)

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """[start, end) of the range, aware UTC: a preset ending with the current minute (1h) or hour (longer
        presets), or the custom from/to (as typed, in the zone unless they carry an offset).

        Presets end on a whole minute or hour, the current one included (nothing is later than now, so no figure
        changes): the rollups then answer them, where a range cut inside a minute makes the reports scan raw
        events for its edges (seconds at 10 M events) and one cut inside an hour reads per-minute rollups."""
        next_minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        if self.range_name == "custom":
            if not self.start:
                raise InvalidArgumentError("from", "a custom range needs a start")
            return _worded(terms.time_range, "custom", self.start, self.end or None, self.zone, next_minute)
        next_hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        end = next_minute if self.range_name == "1h" else next_hour
        # "today" is the day `now` falls on in the zone; the other presets reach back from the end.
        begin, _ = _worded(
            terms.time_range, self.range_name, None, None, self.zone, now if self.range_name == "today" else end
        )
        return begin, end

    def usage_filter(self, now: datetime) -> filter_pb2.UsageFilter:
        start, end = self.bounds(now)
        message = filter_pb2.UsageFilter(
            environment_ids=self.env,
            gateway_ids=self.gateway,
            requested_models=self.model,
            resolved_models=self.resolved,
            providers=self.provider,
            api_key_ids=self.key,
            user_ids=self.user,
            routes=self.route,
            tags=_worded(terms.tag_matches, self.tag),
        )
        message.start_time.FromDatetime(start)
        message.end_time.FromDatetime(end)
        return message

    def granularity_name(self) -> str:
        if self.granularity:
            return self.granularity
        if self.range_name != "custom":
            return DEFAULT_GRANULARITY[self.range_name]
        return "1h"

    def group_by(self) -> pb.GroupBy:
        if self.by not in RANKINGS and not self.by.startswith("tag:"):
            raise InvalidArgumentError("by", f"{self.by!r} is not one of {', '.join(RANKINGS)} or tag:KEY")
        return _worded(terms.group_by, [self.by], "by")[0]

    def params(self) -> list[tuple[str, str]]:
        """The URL parameters that differ from the defaults, in a stable order."""
        default = ViewQuery()
        pairs: list[tuple[str, str]] = []
        singles = (
            ("range", self.range_name, default.range_name),
            ("from", self.start, ""),
            ("to", self.end, ""),
            ("tz", self.zone, default.zone),
            ("metric", self.metric, default.metric),
            ("granularity", self.granularity, ""),
            ("by", self.by, default.by),
            ("rank", self.rank, default.rank),
            ("top", str(self.top), str(default.top)),
            ("errors", "1" if self.errors_only else "", ""),
        )
        for name, value, default_value in singles:
            if value != default_value:
                pairs.append((name, value))
        for name in _LIST_PARAMS:
            pairs.extend((name, value) for value in getattr(self, name))
        return pairs

    def url(self, path: str, **changes: object) -> str:
        """`path` with this query, changed as given (e.g. by="user")."""
        changed = replace(self, **changes) if changes else self  # type: ignore[arg-type]
        encoded = urlencode(changed.params())
        return f"{path}?{encoded}" if encoded else path

    def filter_pairs(self) -> Iterable[tuple[str, str]]:
        """The active value filters as (parameter, value), for the chips that remove them."""
        for name in _LIST_PARAMS:
            for value in getattr(self, name):
                yield name, value

    def without(self, name: str, value: str) -> ViewQuery:
        kept: tuple[str, ...] = tuple(v for v in getattr(self, name) if v != value)
        return replace(self, **{name: kept})  # type: ignore[arg-type]


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgumentError(name, f"{text!r} is not a whole number") from None


def span_label(start: datetime, end: datetime, zone: ZoneInfo) -> str:
    fmt = "%Y-%m-%d %H:%M"
    return f"{start.astimezone(zone).strftime(fmt)} to {end.astimezone(zone).strftime(fmt)} ({zone.key})"


_URL_NAMES: Final = {"start": "from", "end": "to", "time_zone": "tz"}
"""The URL parameter each part of a usage question (services.usage_terms) is given in."""

_T = TypeVar("_T")


def _worded(parse: Callable[..., _T], *args: object) -> _T:
    """A shared usage-terms parser, its QueryError worded as INVALID_ARGUMENT naming the URL parameter."""
    try:
        return parse(*args)
    except QueryError as error:
        raise InvalidArgumentError(_URL_NAMES.get(error.part, error.part), error.problem) from None
