"""Translates validated usage events straight from protobuf into table rows, one function per table."""

from __future__ import annotations

from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from operator import add
from typing import Any, Final

from meterwire.common.v1 import usage_pb2
from services.histogram import bucket_index
from services.pricing import PriceBook, price_tokens
from services.storage import tables

COST_UNKNOWN: Final = 0
COST_REPORTED: Final = 1
COST_DERIVED: Final = 2

ROLLUP_BUCKET_SECONDS: Final = 60
_US_PER_ROLLUP_BUCKET: Final = ROLLUP_BUCKET_SECONDS * 1_000_000

UsageEventRow = dict[str, Any]
"""A usage_events row by column, in EVENT_COLUMNS order (ingest_time_us is set by the writer at commit);
`event_values` makes the tuple the driver takes."""
TagRow = tuple[Any, ...]
"""Values of TAG_COLUMNS."""
TagItems = list[tuple[str, str]]
"""An event's tags as (key, value) pairs sorted by key (`tag_items`)."""
RollupKey = tuple[Any, ...]
"""Values of tables.ROLLUP_DIMENSIONS, in that order."""

EVENT_COLUMNS: Final = tuple(column.name for column in tables.usage_events.columns if column.name != "event_key")


def event_values(row: UsageEventRow) -> tuple[Any, ...]:
    """The tuple of a row's EVENT_COLUMNS values: usage_event_row builds its dict in that order, so this is one
    C call instead of a lookup per column (tested)."""
    return tuple(row.values())


TAG_COLUMNS: Final = ("gateway_key", "event_id", "tag_key", "tag_value", "environment_id", "event_time_us")
ROLLUP_COLUMNS: Final = (*tables.ROLLUP_DIMENSIONS, *tables.ROLLUP_SUM_COLUMNS)


def _status_class(status_code: int | None) -> int:
    """meterwire.common.v1.StatusClass of an HTTP status; 0 (unknown) when it was not reported."""
    if status_code is None:
        return 0
    if status_code < 400:
        return 1
    return 2 if status_code < 500 else 3


def json_object(items: Iterable[tuple[str, str | int]]) -> str:
    """The text `json.dumps(dict(items), sort_keys=True)` gives, for the unique keys of a protobuf map.

    Composed from the json module's own string encoder: a JSONEncoder builds its C encoder anew on every call
    (1.7 µs for two tags, against 0.5 µs here), a tenth of the event loop's time while a spool drains.
    """
    return "{" + ", ".join([f"{_json_string(key)}: {_json_value(value)}" for key, value in sorted(items)]) + "}"


_json_string: Final = encode_basestring_ascii


def _json_value(value: str | int) -> str:
    return _json_string(value) if isinstance(value, str) else str(int(value))


def tag_items(event: usage_pb2.UsageEvent) -> TagItems:
    """The event's tags sorted by key: the protobuf map is read once (iterating it is slow) for the row's JSON,
    validation and the tag rows."""
    tags = event.tags
    return sorted(tags.items()) if tags else []


def usage_event_row(
    event: usage_pb2.UsageEvent,
    *,
    environment_id: str,
    gateway_key: int,
    prices: PriceBook,
    tags: TagItems | None = None,
) -> UsageEventRow:
    """The usage_events row of an event, its cost reported, derived from `prices`, or unknown.

    Every field is read from the protobuf once, here; validation then checks the row. An unset event_time
    gives event_time_us None, which validation refuses. `tags`: the event's `tag_items`, when the caller has
    read them already.
    """
    stamp = event.event_time
    has = event.HasField
    status_code = event.status_code if has("status_code") else None
    latency = event.latency
    gateway_latency = event.gateway_latency
    ttft = event.ttft
    input_tokens = output_tokens = cache_read_tokens = cache_write_tokens = reasoning_tokens = None
    categories: dict[str, int] = {}
    if has("tokens"):
        tokens = event.tokens
        token_has = tokens.HasField
        input_tokens = tokens.input if token_has("input") else None
        output_tokens = tokens.output if token_has("output") else None
        cache_read_tokens = tokens.cache_read if token_has("cache_read") else None
        cache_write_tokens = tokens.cache_write if token_has("cache_write") else None
        reasoning_tokens = tokens.reasoning if token_has("reasoning") else None
        if tokens.categories:
            categories = dict(tokens.categories)
    cost_micros = event.cost_micros if has("cost_micros") else None
    cache_savings_micros = event.cache_savings_micros if has("cache_savings_micros") else None
    cost_source = COST_REPORTED if cost_micros is not None else COST_UNKNOWN
    if cost_micros is None or cache_savings_micros is None:
        price = prices.lookup(event.resolved_model, event.provider)
        derived = (
            None
            if price is None
            else price_tokens(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read_tokens,
                cache_write_tokens=cache_write_tokens,
                reasoning_tokens=reasoning_tokens,
                categories=categories,
                price=price,
            )
        )
        if derived is not None:
            if cost_micros is None:
                cost_micros = derived.cost_micros
                cost_source = COST_DERIVED
            if cache_savings_micros is None:
                cache_savings_micros = derived.cache_savings_micros
    if tags is None:
        tags = tag_items(event)
    # In EVENT_COLUMNS order (event_values relies on it).
    return {
        "environment_id": environment_id,
        "gateway_key": gateway_key,
        # UUID text is case-insensitive; one spelling keeps "ABC..." and "abc..." the same idempotency key.
        "event_id": event.event_id.lower(),
        "sequence": event.sequence,
        "request_id": event.request_id,
        "attempt": event.attempt,
        "event_time_us": stamp.seconds * 1_000_000 + stamp.nanos // 1000 if has("event_time") else None,
        "ingest_time_us": 0,
        "api_key_id": event.api_key_id,
        "user_id": event.user_id,
        "route": event.route,
        "request_type": event.request_type,
        "requested_model": event.requested_model,
        "resolved_model": event.resolved_model,
        "provider": event.provider,
        "credential_type": event.credential_type,
        "streaming": event.streaming,
        "status_code": status_code,
        "status_class": _status_class(status_code),
        "error_type": event.error_type,
        "error_message": event.error_message,
        "latency_us": latency.seconds * 1_000_000 + latency.nanos // 1000 if has("latency") else None,
        "gateway_latency_us": (
            gateway_latency.seconds * 1_000_000 + gateway_latency.nanos // 1000 if has("gateway_latency") else None
        ),
        "ttft_us": ttft.seconds * 1_000_000 + ttft.nanos // 1000 if has("ttft") else None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
        "token_categories": json_object(categories.items()) if categories else None,
        "cost_micros": cost_micros,
        "cache_savings_micros": cache_savings_micros,
        "cost_source": cost_source,
        "tags": json_object(tags) if tags else None,
    }


def usage_event_tag_rows(tags: TagItems, row: UsageEventRow) -> list[TagRow]:
    """The usage_event_tags rows of an event's `tag_items` (TAG_COLUMNS values), keyed like its event row."""
    gateway_key, event_id = row["gateway_key"], row["event_id"]
    environment_id, event_time_us = row["environment_id"], row["event_time_us"]
    return [(gateway_key, event_id, key, value, environment_id, event_time_us) for key, value in tags]


# Offsets into a rollup row (ROLLUP_COLUMNS: the dimensions, then the metrics), which add_to_rollup fills in
# place, so the row needs no copying into the tuple the driver takes.
_SUM_INDEX: Final = {name: i for i, name in enumerate(ROLLUP_COLUMNS) if i >= len(tables.ROLLUP_DIMENSIONS)}
_ATTEMPTS = _SUM_INDEX["attempt_count"]
_REQUESTS = _SUM_INDEX["request_count"]
_SUCCESSES = _SUM_INDEX["success_count"]
_ERRORS = _SUM_INDEX["error_count"]
_TOKEN_SUMS: Final = tuple(
    (column, _SUM_INDEX[column])
    for column in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
)
_TOKENS_UNKNOWN = _SUM_INDEX["tokens_unknown_count"]
_COST = _SUM_INDEX["cost_micros"]
_COST_UNKNOWN = _SUM_INDEX["cost_unknown_count"]
_COST_DERIVED = _SUM_INDEX["cost_derived_count"]
_CACHE_SAVINGS = _SUM_INDEX["cache_savings_micros"]
_LATENCY_SUM = _SUM_INDEX["latency_sum_us"]
_LATENCY_COUNT = _SUM_INDEX["latency_count"]
_GATEWAY_LATENCY_SUM = _SUM_INDEX["gateway_latency_sum_us"]
_GATEWAY_LATENCY_COUNT = _SUM_INDEX["gateway_latency_count"]
_TTFT_SUM = _SUM_INDEX["ttft_sum_us"]
_TTFT_COUNT = _SUM_INDEX["ttft_count"]
_LATENCY_BUCKET_0 = _SUM_INDEX[tables.LATENCY_BUCKET_COLUMNS[0]]
_TTFT_BUCKET_0 = _SUM_INDEX[tables.TTFT_BUCKET_COLUMNS[0]]
_NO_METRICS: Final = (0,) * len(tables.ROLLUP_SUM_COLUMNS)

RollupRow = list[Any]
"""Values of ROLLUP_COLUMNS: a rollup key's dimensions, then its metrics."""


def add_to_rollup(rollups: dict[RollupKey, RollupRow], row: UsageEventRow) -> None:
    """Counts one NEW event's row into the per-minute rollup row of its dimensions (see ingest.py)."""
    key = (
        row["event_time_us"] // _US_PER_ROLLUP_BUCKET * ROLLUP_BUCKET_SECONDS,
        row["environment_id"],
        row["gateway_key"],
        row["requested_model"],
        row["resolved_model"],
        row["provider"],
        row["api_key_id"],
        row["user_id"],
        row["route"],
        row["request_type"],
        row["credential_type"],
        row["status_class"],
        row["streaming"],
    )
    metrics = rollups.get(key)
    if metrics is None:
        metrics = rollups[key] = [*key, *_NO_METRICS]
    metrics[_ATTEMPTS] += 1
    if row["attempt"] == 1:
        metrics[_REQUESTS] += 1
    status_class = row["status_class"]
    if status_class == 1:
        metrics[_SUCCESSES] += 1
    elif status_class:
        metrics[_ERRORS] += 1
    tokens_known = False
    for column, index in _TOKEN_SUMS:
        count = row[column]
        if count is not None:
            metrics[index] += count
            tokens_known = True
    if not tokens_known:
        metrics[_TOKENS_UNKNOWN] += 1
    cost = row["cost_micros"]
    if cost is None:
        metrics[_COST_UNKNOWN] += 1
    else:
        metrics[_COST] += cost
        if row["cost_source"] == COST_DERIVED:
            metrics[_COST_DERIVED] += 1
    savings = row["cache_savings_micros"]
    if savings is not None:
        metrics[_CACHE_SAVINGS] += savings
    latency = row["latency_us"]
    if latency is not None:
        metrics[_LATENCY_SUM] += latency
        metrics[_LATENCY_COUNT] += 1
        metrics[_LATENCY_BUCKET_0 + bucket_index(latency)] += 1
    gateway_latency = row["gateway_latency_us"]
    if gateway_latency is not None:
        metrics[_GATEWAY_LATENCY_SUM] += gateway_latency
        metrics[_GATEWAY_LATENCY_COUNT] += 1
    ttft = row["ttft_us"]
    if ttft is not None:
        metrics[_TTFT_SUM] += ttft
        metrics[_TTFT_COUNT] += 1
        metrics[_TTFT_BUCKET_0 + bucket_index(ttft)] += 1


_FIRST_METRIC: Final = len(tables.ROLLUP_DIMENSIONS)


def merge_rollups(into: dict[RollupKey, RollupRow], rollups: dict[RollupKey, RollupRow]) -> None:
    """Adds `rollups` (add_to_rollup's rows) into `into`, metric by metric; `rollups` is left as it was."""
    for key, row in rollups.items():
        mine = into.get(key)
        if mine is None:
            into[key] = row.copy()
        else:
            mine[_FIRST_METRIC:] = map(add, mine[_FIRST_METRIC:], row[_FIRST_METRIC:])


def rollup_rows(rollups: dict[RollupKey, RollupRow]) -> list[tuple[Any, ...]]:
    """usage_rollup_1m rows (ROLLUP_COLUMNS values) for upsert_adding, as the tuples drivers take for an
    executemany or CompiledStatement.chunks: every dimension and every metric."""
    return [tuple(row) for row in rollups.values()]
