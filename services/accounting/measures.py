"""What one usage event counts toward: its stored codes and the table of rollup measures, defined once.

Ingest's per-event accumulation (rollup.py) and reporting's SQL over raw events (sql.py) are both derived
from MEASURES, and budgets count an event by the same entries (budget_measures), so "what one event counts
toward" has one definition. The rollup semantics:

- ``attempt_count``: events; ``request_count``: events with ``attempt == 1`` (gateway requests);
- ``success_count``: status class SUCCESS (HTTP below 400); ``error_count``: CLIENT_ERROR or SERVER_ERROR;
  an event without a status counts in neither;
- token sums add only reported counts; ``tokens_unknown_count`` counts events that reported no token kind;
- ``cost_micros`` adds every known cost, reported or derived from the pricing table; ``cost_derived_count``
  counts derived ones and ``cost_unknown_count`` unpriced ones (unknown is never 0);
  ``cache_savings_micros`` adds every known saving;
- latency, gateway latency and TTFT: sums in microseconds and counts of events that reported them, and
  latency and TTFT histogram buckets (services.histogram) so percentiles come from rollups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, Final

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from services.storage import tables


class StatusClass(IntEnum):
    """An attempt's outcome as stored (usage_events.status_class, a rollup dimension).

    The stored codes differ from meterwire.common.v1.StatusClass, whose zero means "no restriction" in a
    filter and whose UNKNOWN is 4: translate with to_proto / from_proto, never by number."""

    UNKNOWN = 0
    """No HTTP status was reported."""
    SUCCESS = 1
    """HTTP 1xx-3xx."""
    CLIENT_ERROR = 2
    """HTTP 4xx."""
    SERVER_ERROR = 3
    """HTTP 5xx and above."""

    def to_proto(self) -> filter_pb2.StatusClass.ValueType:
        return _STATUS_CLASS_TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int) -> StatusClass | None:
        """The stored class of a proto StatusClass; None for UNSPECIFIED and values the proto does not name."""
        return _STATUS_CLASS_FROM_PROTO.get(value)

    @property
    def display_name(self) -> str:
        """The name reports show ("" for unknown, like every unknown dimension value)."""
        return "" if self is StatusClass.UNKNOWN else self.name.lower()


_STATUS_CLASS_TO_PROTO: Final = {
    StatusClass.UNKNOWN: filter_pb2.STATUS_CLASS_UNKNOWN,
    StatusClass.SUCCESS: filter_pb2.STATUS_CLASS_SUCCESS,
    StatusClass.CLIENT_ERROR: filter_pb2.STATUS_CLASS_CLIENT_ERROR,
    StatusClass.SERVER_ERROR: filter_pb2.STATUS_CLASS_SERVER_ERROR,
}
_STATUS_CLASS_FROM_PROTO: Final[dict[int, StatusClass]] = {
    int(proto): stored for stored, proto in _STATUS_CLASS_TO_PROTO.items()
}

ERROR_STATUS_CLASSES: Final = (int(StatusClass.CLIENT_ERROR), int(StatusClass.SERVER_ERROR))

# Plain ints for the hot path: rows hold ints (drivers and dict keys want them, not enum members).
_UNKNOWN_STATUS: Final = int(StatusClass.UNKNOWN)
_SUCCESS: Final = int(StatusClass.SUCCESS)
_CLIENT_ERROR: Final = int(StatusClass.CLIENT_ERROR)
_SERVER_ERROR: Final = int(StatusClass.SERVER_ERROR)


def status_class_of(status_code: int | None) -> int:
    """The stored StatusClass of an HTTP status (None: not reported)."""
    if status_code is None:
        return _UNKNOWN_STATUS
    if status_code < 400:
        return _SUCCESS
    return _CLIENT_ERROR if status_code < 500 else _SERVER_ERROR


class CostSource(IntEnum):
    """Where an event's stored cost came from (usage_events.cost_source).

    The stored codes differ from meterwire.reporting.v1.CostSource (whose zero is UNSPECIFIED): translate
    with to_proto. A cost is known exactly when the source is not UNKNOWN."""

    UNKNOWN = 0
    """Not reported and not priceable: cost_micros is NULL."""
    REPORTED = 1
    """The gateway reported it."""
    DERIVED = 2
    """Derived from the environment's pricing table at ingest."""

    def to_proto(self) -> reporting_pb.CostSource.ValueType:
        return _COST_SOURCE_TO_PROTO[self]

    @classmethod
    def proto_of_stored(cls, stored: int) -> reporting_pb.CostSource.ValueType:
        """The proto CostSource of a stored code; UNSPECIFIED for a code this version does not know."""
        try:
            return cls(stored).to_proto()
        except ValueError:
            return reporting_pb.COST_SOURCE_UNSPECIFIED


_COST_SOURCE_TO_PROTO: Final = {
    CostSource.UNKNOWN: reporting_pb.COST_SOURCE_UNKNOWN,
    CostSource.REPORTED: reporting_pb.COST_SOURCE_REPORTED,
    CostSource.DERIVED: reporting_pb.COST_SOURCE_DERIVED,
}


class MeasureKind(Enum):
    """How a measure adds one event."""

    COUNT = "count"
    """1 for every event."""
    COUNT_IF = "count_if"
    """1 when the condition holds."""
    SUM = "sum"
    """The source column's value when it is known (NULL adds nothing)."""
    COUNT_KNOWN = "count_known"
    """1 when the source column is known."""
    HISTOGRAM = "histogram"
    """1 in the bucket (services.histogram) of the known source duration: one column per bucket."""


@dataclass(frozen=True, slots=True)
class IsIn:
    """The event's `column` holds one of `values` (never true for NULL, in Python as in SQL)."""

    column: str
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllUnknown:
    """Every one of the event's `columns` is NULL."""

    columns: tuple[str, ...]


Condition = IsIn | AllUnknown


@dataclass(frozen=True, slots=True)
class Measure:
    """One rollup metric (or, for a histogram, one metric per bucket) and how an event adds to it."""

    name: str
    """The rollup column; for a histogram, a name for its bucket columns."""
    kind: MeasureKind
    source: str | None = None
    """The usage_events column SUM, COUNT_KNOWN and HISTOGRAM read."""
    condition: Condition | None = None
    """What COUNT_IF counts."""
    bucket_columns: tuple[str, ...] = ()
    """A histogram's rollup columns, bucket 0 first."""

    @property
    def columns(self) -> tuple[str, ...]:
        return self.bucket_columns if self.kind is MeasureKind.HISTOGRAM else (self.name,)


TOKEN_KINDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
"""The disjoint token kinds: usage_events columns and rollup sums of the same names."""

_C = MeasureKind

MEASURES: Final[tuple[Measure, ...]] = (
    Measure("attempt_count", _C.COUNT),
    Measure("request_count", _C.COUNT_IF, condition=IsIn("attempt", (1,))),
    Measure("success_count", _C.COUNT_IF, condition=IsIn("status_class", (_SUCCESS,))),
    Measure("error_count", _C.COUNT_IF, condition=IsIn("status_class", ERROR_STATUS_CLASSES)),
    *(Measure(kind, _C.SUM, source=kind) for kind in TOKEN_KINDS),
    Measure("tokens_unknown_count", _C.COUNT_IF, condition=AllUnknown(TOKEN_KINDS)),
    Measure("cost_micros", _C.SUM, source="cost_micros"),
    Measure("cost_unknown_count", _C.COUNT_IF, condition=AllUnknown(("cost_micros",))),
    # A derived cost is always known (CostSource), so the source alone decides.
    Measure("cost_derived_count", _C.COUNT_IF, condition=IsIn("cost_source", (int(CostSource.DERIVED),))),
    Measure("cache_savings_micros", _C.SUM, source="cache_savings_micros"),
    Measure("latency_sum_us", _C.SUM, source="latency_us"),
    Measure("latency_count", _C.COUNT_KNOWN, source="latency_us"),
    Measure("gateway_latency_sum_us", _C.SUM, source="gateway_latency_us"),
    Measure("gateway_latency_count", _C.COUNT_KNOWN, source="gateway_latency_us"),
    Measure("ttft_sum_us", _C.SUM, source="ttft_us"),
    Measure("ttft_count", _C.COUNT_KNOWN, source="ttft_us"),
    Measure("latency_histogram", _C.HISTOGRAM, source="latency_us", bucket_columns=tables.LATENCY_BUCKET_COLUMNS),
    Measure("ttft_histogram", _C.HISTOGRAM, source="ttft_us", bucket_columns=tables.TTFT_BUCKET_COLUMNS),
)
"""Every rollup metric, in the schema's column order (tables.ROLLUP_SUM_COLUMNS, checked below)."""

SUM_COLUMNS: Final = tuple(column for measure in MEASURES for column in measure.columns)
if SUM_COLUMNS != tables.ROLLUP_SUM_COLUMNS:
    raise RuntimeError("MEASURES must describe exactly tables.ROLLUP_SUM_COLUMNS, in order")

MEASURE_OF: Final = {column: measure for measure in MEASURES for column in measure.columns}

COUNT_COLUMNS: Final = frozenset(
    column for measure in MEASURES if measure.kind is not MeasureKind.SUM for column in measure.columns
)
"""Rollup columns that grow by at most one per event, so they cannot reach 2^63 and are summed plainly; the
SUM columns add per-event values and saturate (services.accounting.bounds)."""


def holds(condition: Condition, row: Mapping[str, Any]) -> bool:
    """Whether an event row meets a condition (the plain reading; rollup.py generates the fast one)."""
    if isinstance(condition, IsIn):
        return row[condition.column] in condition.values
    return all(row[column] is None for column in condition.columns)


def contribution(measure: Measure, row: Mapping[str, Any]) -> int:
    """What one event row adds to a measure that is not a histogram."""
    kind = measure.kind
    if kind is MeasureKind.COUNT:
        return 1
    if kind is MeasureKind.COUNT_IF:
        assert measure.condition is not None
        return int(holds(measure.condition, row))
    assert kind is not MeasureKind.HISTOGRAM, measure
    assert measure.source is not None
    value = row[measure.source]
    if value is None:
        return 0
    return int(value) if kind is MeasureKind.SUM else 1


# --- budgets ------------------------------------------------------------------------------------------------

BUDGET_MEASURES: Final = {
    "spend_micros": ("cost_micros",),
    "total_tokens": TOKEN_KINDS,
    "requests": ("request_count",),
}
"""Each budget metric as a sum of rollup measures: a budget counts exactly what reports show for its scope
(spend: known cost, reported or derived; tokens: every reported kind; requests: gateway requests, so a
retried attempt is not a second request)."""


@dataclass(frozen=True, slots=True)
class BudgetMeasures:
    """What one event adds to budgets of each metric."""

    spend_micros: int
    total_tokens: int
    requests: int


def budget_measures(row: Mapping[str, Any]) -> BudgetMeasures:
    """The budget measures of a stored usage_events row (or a row as ingest builds it)."""
    totals = {
        metric: sum(contribution(MEASURE_OF[column], row) for column in columns)
        for metric, columns in BUDGET_MEASURES.items()
    }
    return BudgetMeasures(**totals)
