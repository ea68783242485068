"""Translates usage events straight from protobuf into table rows, one function per table; prices valid rows.

What a row counts toward in the rollups is services.accounting's (add_to_rollup); this module only reads the
protobuf once and prices.
"""

from __future__ import annotations

from collections.abc import Iterable
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from meterwire.common.v1 import usage_pb2
from services.accounting.measures import CostSource, status_class_of
from services.pricing import PriceBook, price_tokens
from services.storage import tables

_COST_UNKNOWN: Final = int(CostSource.UNKNOWN)
_COST_REPORTED: Final = int(CostSource.REPORTED)
_COST_DERIVED: Final = int(CostSource.DERIVED)

UsageEventRow = dict[str, Any]
"""A usage_events row by column, in EVENT_COLUMNS order (ingest_time_us is set by the writer at commit);
`event_values` makes the tuple the driver takes."""
TagRow = tuple[Any, ...]
"""Values of TAG_COLUMNS."""
TagItems = list[tuple[str, str]]
"""An event's tags as (key, value) pairs sorted by key (`tag_items`)."""

EVENT_COLUMNS: Final = tuple(column.name for column in tables.usage_events.columns if column.name != "event_key")


def event_values(row: UsageEventRow) -> tuple[Any, ...]:
    """The tuple of a row's EVENT_COLUMNS values: usage_event_row builds its dict in that order, so this is one
    C call instead of a lookup per column (tested)."""
    return tuple(row.values())


TAG_COLUMNS: Final = ("gateway_key", "event_id", "tag_key", "tag_value", "environment_id", "event_time_us")


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
    tags: TagItems | None = None,
) -> UsageEventRow:
    """The usage_events row of an event as reported: its cost is the reported one or unknown until
    `price_row` fills in what the pricing table derives (after validation, so an invalid event is never
    priced).

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
    categories = None
    if has("tokens"):
        tokens = event.tokens
        token_has = tokens.HasField
        input_tokens = tokens.input if token_has("input") else None
        output_tokens = tokens.output if token_has("output") else None
        cache_read_tokens = tokens.cache_read if token_has("cache_read") else None
        cache_write_tokens = tokens.cache_write if token_has("cache_write") else None
        reasoning_tokens = tokens.reasoning if token_has("reasoning") else None
        if tokens.categories:
            categories = json_object(tokens.categories.items())
    cost_micros = event.cost_micros if has("cost_micros") else None
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
        "status_class": status_class_of(status_code),
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
        "token_categories": categories,
        "cost_micros": cost_micros,
        "cache_savings_micros": event.cache_savings_micros if has("cache_savings_micros") else None,
        "cost_source": _COST_UNKNOWN if cost_micros is None else _COST_REPORTED,
        "tags": json_object(tags) if tags else None,
    }


def usage_event_tag_rows(tags: TagItems, row: UsageEventRow) -> list[TagRow]:
    """The usage_event_tags rows of an event's `tag_items` (TAG_COLUMNS values), keyed like its event row."""
    gateway_key, event_id = row["gateway_key"], row["event_id"]
    environment_id, event_time_us = row["environment_id"], row["event_time_us"]
    return [(gateway_key, event_id, key, value, environment_id, event_time_us) for key, value in tags]


def price_row(row: UsageEventRow, event: usage_pb2.UsageEvent, prices: PriceBook) -> bool:
    """Fills in a VALID row's unreported cost (then CostSource.DERIVED) and cache savings from the pricing
    table, when the table prices its model and tokens exactly; otherwise they stay unknown. True when it
    derived something (validation.priced_rejection then checks it)."""
    cost_micros = row["cost_micros"]
    cache_savings_micros = row["cache_savings_micros"]
    if cost_micros is not None and cache_savings_micros is not None:
        return False
    price = prices.lookup(row["resolved_model"], row["provider"])
    if price is None:
        return False
    derived = price_tokens(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        # Read again only for the rare event that reports categories (validated by now).
        categories=event.tokens.categories if row["token_categories"] is not None else {},
        price=price,
    )
    if derived is None:
        return False
    if cost_micros is None:
        row["cost_micros"] = derived.cost_micros
        row["cost_source"] = _COST_DERIVED
    if cache_savings_micros is None:
        row["cache_savings_micros"] = derived.cache_savings_micros
    return True
