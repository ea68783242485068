"""Turns summed rollup metrics into the figures reports show: UsageSummary and single metric values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.duration_pb2 import Duration

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.accounting.bounds import saturated
from services.errors import InvalidArgumentError
from services.histogram import quantile
from services.reporting.aggregate import SUM_INDEX, Sums
from services.storage import tables

_TOKEN_KINDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
_LATENCY_BUCKETS: Final = tuple(SUM_INDEX[column] for column in tables.LATENCY_BUCKET_COLUMNS)
_TTFT_BUCKETS: Final = tuple(SUM_INDEX[column] for column in tables.TTFT_BUCKET_COLUMNS)

_INTEGER_METRICS: Final[dict[int, tuple[str, ...]]] = {
    pb.METRIC_REQUESTS: ("request_count",),
    pb.METRIC_ATTEMPTS: ("attempt_count",),
    pb.METRIC_SUCCESSES: ("success_count",),
    pb.METRIC_ERRORS: ("error_count",),
    pb.METRIC_INPUT_TOKENS: ("input_tokens",),
    pb.METRIC_OUTPUT_TOKENS: ("output_tokens",),
    pb.METRIC_CACHE_READ_TOKENS: ("cache_read_tokens",),
    pb.METRIC_CACHE_WRITE_TOKENS: ("cache_write_tokens",),
    pb.METRIC_REASONING_TOKENS: ("reasoning_tokens",),
    pb.METRIC_TOTAL_TOKENS: _TOKEN_KINDS,
    pb.METRIC_COST: ("cost_micros",),
    pb.METRIC_CACHE_SAVINGS: ("cache_savings_micros",),
}
"""Metrics that are a sum of rollup columns (counts, tokens, money): integers, exact."""

_DOUBLE_METRICS: Final[dict[int, tuple[str, ...]]] = {
    pb.METRIC_SUCCESS_RATE: ("success_count", "error_count"),
    pb.METRIC_LATENCY_AVG: ("latency_sum_us", "latency_count"),
    pb.METRIC_LATENCY_P50: tables.LATENCY_BUCKET_COLUMNS,
    pb.METRIC_LATENCY_P95: tables.LATENCY_BUCKET_COLUMNS,
    pb.METRIC_LATENCY_P99: tables.LATENCY_BUCKET_COLUMNS,
    pb.METRIC_TTFT_AVG: ("ttft_sum_us", "ttft_count"),
    pb.METRIC_TTFT_P95: tables.TTFT_BUCKET_COLUMNS,
}
"""Rates and milliseconds: doubles."""


def metric_columns(metric: int, *, field: str) -> tuple[str, ...]:
    """The rollup columns a metric is computed from; INVALID_ARGUMENT for an unknown metric."""
    columns = _INTEGER_METRICS.get(metric) or _DOUBLE_METRICS.get(metric)
    if columns is None:
        raise InvalidArgumentError(field, f"{metric} is not a Metric; use METRIC_REQUESTS, METRIC_COST, ...")
    return columns


def is_integer_metric(metric: int) -> bool:
    return metric in _INTEGER_METRICS


def metric_value(sums: Sums, metric: int) -> float:
    """A metric of summed figures as a number (integers stay exact; ms and rates are floats)."""
    columns = _INTEGER_METRICS.get(metric)
    if columns is not None:
        return sum(sums[SUM_INDEX[column]] for column in columns)
    if metric == pb.METRIC_SUCCESS_RATE:
        return _success_rate(sums)
    if metric == pb.METRIC_LATENCY_AVG:
        return _average_ms(sums, "latency_sum_us", "latency_count") or 0.0
    if metric == pb.METRIC_TTFT_AVG:
        return _average_ms(sums, "ttft_sum_us", "ttft_count") or 0.0
    percentiles: dict[int, tuple[tuple[int, ...], float]] = {
        pb.METRIC_LATENCY_P50: (_LATENCY_BUCKETS, 0.5),
        pb.METRIC_LATENCY_P95: (_LATENCY_BUCKETS, 0.95),
        pb.METRIC_LATENCY_P99: (_LATENCY_BUCKETS, 0.99),
        pb.METRIC_TTFT_P95: (_TTFT_BUCKETS, 0.95),
    }
    buckets, q = percentiles[metric]
    return quantile([sums[index] for index in buckets], q) or 0.0


def metric_message(value: float, metric: int) -> pb.MetricValue:
    if is_integer_metric(metric):
        return pb.MetricValue(int_value=saturated(int(value)))
    return pb.MetricValue(double_value=float(value))


def _success_rate(sums: Sums) -> float:
    successes, errors = sums[SUM_INDEX["success_count"]], sums[SUM_INDEX["error_count"]]
    return successes / (successes + errors) if successes + errors else 0.0


def _average_ms(sums: Sums, total: str, count: str) -> float | None:
    events = sums[SUM_INDEX[count]]
    return sums[SUM_INDEX[total]] / events / 1000 if events else None


def _duration_ms(milliseconds: float) -> Duration:
    result = Duration()
    result.FromNanoseconds(round(milliseconds * 1_000_000))
    return result


def _latency_stats(sums: Sums, total: str, count: str, buckets: tuple[int, ...]) -> pb.LatencyStats | None:
    average = _average_ms(sums, total, count)
    if average is None:
        return None
    counts = [sums[index] for index in buckets]
    stats = pb.LatencyStats(average=_duration_ms(average), count=saturated(sums[SUM_INDEX[count]]))
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        estimate = quantile(counts, q)
        if estimate is not None:
            getattr(stats, name).CopyFrom(_duration_ms(estimate))
    return stats


def usage_summary(
    sums: Sums,
    *,
    seconds: float,
    currency: str = "",
    categories: Mapping[str, int] | None = None,
) -> pb.UsageSummary:
    """Every UsageSummary field of summed figures over `seconds` of time (for the QPS and per-minute rates).

    The sums are exact Python integers; a figure beyond int64 shows as the int64 limit (`saturated`), like a
    saturated stored sum (services.accounting.bounds)."""

    def get(column: str) -> int:
        return saturated(sums[SUM_INDEX[column]])

    kinds = [get(column) for column in _TOKEN_KINDS]
    total_tokens = saturated(sum(sums[SUM_INDEX[column]] for column in _TOKEN_KINDS))
    summary = pb.UsageSummary(
        requests=get("request_count"),
        attempts=get("attempt_count"),
        successes=get("success_count"),
        errors=get("error_count"),
        success_rate=_success_rate(sums),
        tokens=pb.TokenTotals(
            input=kinds[0],
            output=kinds[1],
            cache_read=kinds[2],
            cache_write=kinds[3],
            reasoning=kinds[4],
            total=total_tokens,
            categories={category: saturated(tokens) for category, tokens in (categories or {}).items()},
        ),
        cost_micros=get("cost_micros"),
        cache_savings_micros=get("cache_savings_micros"),
        currency=currency,
        average_qps=get("attempt_count") / seconds if seconds > 0 else 0.0,
        tokens_per_minute=total_tokens / (seconds / 60) if seconds > 0 else 0.0,
        unknown_tokens_count=get("tokens_unknown_count"),
        unpriced_count=get("cost_unknown_count"),
        derived_cost_count=get("cost_derived_count"),
    )
    latency = _latency_stats(sums, "latency_sum_us", "latency_count", _LATENCY_BUCKETS)
    if latency is not None:
        summary.latency.CopyFrom(latency)
    ttft = _latency_stats(sums, "ttft_sum_us", "ttft_count", _TTFT_BUCKETS)
    if ttft is not None:
        summary.ttft.CopyFrom(ttft)
    return summary


@dataclass(frozen=True, slots=True)
class UsageFigures:
    """The summed measures of a selection or group, with what a UsageSummary shows besides them."""

    sums: Sums
    seconds: float
    """The span the sums cover (for rates)."""
    currency: str = ""
    categories: Mapping[str, int] = field(default_factory=dict)
    """Token sums by pricing category."""

    def summary(self) -> pb.UsageSummary:
        return usage_summary(self.sums, seconds=self.seconds, currency=self.currency, categories=self.categories)
