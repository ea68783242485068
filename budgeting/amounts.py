"""What one usage event adds to a budget of each metric: the one per-event definition the control plane counts with
at ingest and the gateway agent counts its own not-yet-included events with.

SPEND adds the event's known cost (reported, or derived from the pricing table; an unpriced event adds 0), TOKENS
every token kind it reported, REQUESTS 1 for a gateway request's first attempt (a retry or fallback is not a second
request): what reports show for the same scope (services.accounting.measures.BUDGET_MEASURES, whose SQL form the
budget tests check against this one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from budgeting.decision import Metric

TOKEN_KINDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
"""The disjoint token kinds, by their usage_events column names."""


def spend_of(cost_micros: int | None) -> int:
    """SPEND: the known cost (reported or derived); an unpriced event adds 0."""
    return 0 if cost_micros is None else int(cost_micros)


def tokens_of(token_counts: Iterable[int | None]) -> int:
    """TOKENS: every kind the event reported (None: not reported)."""
    return sum(int(count) for count in token_counts if count is not None)


def requests_of(attempt: int) -> int:
    """REQUESTS: 1 for a gateway request's first attempt."""
    return 1 if attempt == 1 else 0


def event_amount(metric: Metric, event: Mapping[str, Any]) -> int:
    """What a usage event (a usage_events row, or a mapping with its `cost_micros`, token kind and `attempt`
    columns; None: not reported) adds to a budget of `metric`."""
    if metric is Metric.SPEND:
        return spend_of(event["cost_micros"])
    if metric is Metric.TOKENS:
        return tokens_of(event[kind] for kind in TOKEN_KINDS)
    return requests_of(event["attempt"])
