"""How usage figures read in a table: money in its currency, unknown counts as "-", metrics in their unit.

JSON output keeps the server's values (integer micro-units); only tables go through here.
"""

from __future__ import annotations

from typing import Final

from meterwire.common.v1 import usage_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb

UNKNOWN: Final = "-"
"""What a table shows for a figure nobody reported (unset means unknown, never 0)."""

MICROS_PER_UNIT: Final = 1_000_000
MONEY_METRICS: Final = frozenset({pb.METRIC_COST, pb.METRIC_CACHE_SAVINGS})
DURATION_METRICS: Final = frozenset(
    {
        pb.METRIC_LATENCY_AVG,
        pb.METRIC_LATENCY_P50,
        pb.METRIC_LATENCY_P95,
        pb.METRIC_LATENCY_P99,
        pb.METRIC_TTFT_AVG,
        pb.METRIC_TTFT_P95,
    }
)
TOKEN_METRICS: Final = frozenset(
    {
        pb.METRIC_INPUT_TOKENS,
        pb.METRIC_OUTPUT_TOKENS,
        pb.METRIC_CACHE_READ_TOKENS,
        pb.METRIC_CACHE_WRITE_TOKENS,
        pb.METRIC_REASONING_TOKENS,
        pb.METRIC_TOTAL_TOKENS,
    }
)


def money(micros: float, currency: str) -> str:
    """Micro-units as an amount of `currency` (without a priced currency: the bare amount)."""
    return f"{micros / MICROS_PER_UNIT:,.4f} {currency}".strip()


def no_tokens_reported(figures: pb.UsageSummary) -> bool:
    """Every event in these figures left its token counts unset: the sums are unknown, not 0."""
    return figures.attempts > 0 and figures.unknown_tokens_count >= figures.attempts


def token_total(figures: pb.UsageSummary, value: int) -> str:
    return UNKNOWN if no_tokens_reported(figures) else f"{value:,}"


def spend(figures: pb.UsageSummary, micros: int) -> str:
    """An amount of these figures, "-" when no event in them had a known cost."""
    if figures.attempts > 0 and figures.unpriced_count >= figures.attempts:
        return UNKNOWN
    return money(micros, figures.currency)


def reported_tokens(tokens: usage_pb2.TokenCounts, field: str) -> str:
    """One kind of an event's tokens, "-" when the gateway did not report it."""
    return f"{getattr(tokens, field):,}" if tokens.HasField(field) else UNKNOWN  # type: ignore[arg-type]


def milliseconds(stats: pb.LatencyStats, field: str) -> str:
    if not stats.HasField(field):  # type: ignore[arg-type]
        return UNKNOWN
    return f"{getattr(stats, field).ToNanoseconds() / 1e6:,.1f} ms"


def metric_text(which: int, value: float, currency: str) -> str:
    """A metric's value in its unit: money in the currency, durations in ms, rates in %, counts whole."""
    if which in MONEY_METRICS:
        return money(value, currency)
    if which in DURATION_METRICS:
        return f"{value:,.1f} ms"
    if which == pb.METRIC_SUCCESS_RATE:
        return f"{value:.2%}"
    return f"{value:,.4g}" if isinstance(value, float) and not value.is_integer() else f"{int(value):,}"


def metric_of(figures: pb.UsageSummary, which: int) -> float:
    """A metric's value from a summary, for the bars of a ranking (durations in ms, money in micro-units)."""
    tokens = figures.tokens
    stats: dict[int, tuple[pb.LatencyStats, str]] = {
        pb.METRIC_LATENCY_AVG: (figures.latency, "average"),
        pb.METRIC_LATENCY_P50: (figures.latency, "p50"),
        pb.METRIC_LATENCY_P95: (figures.latency, "p95"),
        pb.METRIC_LATENCY_P99: (figures.latency, "p99"),
        pb.METRIC_TTFT_AVG: (figures.ttft, "average"),
        pb.METRIC_TTFT_P95: (figures.ttft, "p95"),
    }
    if which in stats:
        message, field = stats[which]
        return float(getattr(message, field).ToNanoseconds() / 1e6)
    values: dict[int, float] = {
        pb.METRIC_REQUESTS: figures.requests,
        pb.METRIC_ATTEMPTS: figures.attempts,
        pb.METRIC_SUCCESSES: figures.successes,
        pb.METRIC_ERRORS: figures.errors,
        pb.METRIC_SUCCESS_RATE: figures.success_rate,
        pb.METRIC_INPUT_TOKENS: tokens.input,
        pb.METRIC_OUTPUT_TOKENS: tokens.output,
        pb.METRIC_CACHE_READ_TOKENS: tokens.cache_read,
        pb.METRIC_CACHE_WRITE_TOKENS: tokens.cache_write,
        pb.METRIC_REASONING_TOKENS: tokens.reasoning,
        pb.METRIC_TOTAL_TOKENS: tokens.total,
        pb.METRIC_COST: figures.cost_micros,
        pb.METRIC_CACHE_SAVINGS: figures.cache_savings_micros,
    }
    return values[which]
