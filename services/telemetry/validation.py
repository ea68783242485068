"""Checks usage batches (whole-batch limits) and usage events (one by one), naming the field at fault."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from meterwire.common.v1 import usage_pb2
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from services.accounting.bounds import MAX_ABS_MICROS, MAX_LATENCY_US, MAX_TOKENS
from services.accounting.measures import CostSource
from services.errors import InvalidArgumentError
from services.telemetry.rows import TagItems

if TYPE_CHECKING:  # ingest worker processes import this module, and need no settings
    from services.settings import ServerSettings

MAX_REQUEST_ID_BYTES: Final = 128
MAX_ERROR_MESSAGE_BYTES: Final = 1024
MAX_IDENTIFIER_BYTES: Final = 256
"""api_key_id, user_id, route, models, provider, error_type: usage.proto leaves them open; this bounds them."""
MAX_TAGS: Final = 32
MAX_TAG_KEY_BYTES: Final = 64
MAX_TAG_VALUE_BYTES: Final = 256
MAX_CATEGORY_KEY_BYTES: Final = 64
MAX_CATEGORIES: Final = 32
MAX_RESERVATION_ID_BYTES: Final = 64
"""usage.proto's bound on reservation_id (the agent's CheckRequest reservation; not stored)."""
# MAX_LATENCY_US, MAX_TOKENS and MAX_ABS_MICROS are services.accounting.bounds': why every aggregate of the
# values they bound stays within int64 is written there.
MAX_SEQUENCE: Final = 2**63 - 1
"""Sequences are stored as signed 64-bit integers."""

# Rows hold the id lowercased (rows.usage_event_row), so one spelling per id.
_UUID_TEXT: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CATEGORY_KEY: Final = re.compile(r"[a-z][a-z0-9_]*")
_REQUEST_TYPES: Final = frozenset(usage_pb2.RequestType.values())
_CREDENTIAL_TYPES: Final = frozenset(usage_pb2.CredentialType.values())
_TOKEN_COLUMNS: Final = tuple(
    (f"tokens.{kind}", f"{kind}_tokens") for kind in ("input", "output", "cache_read", "cache_write", "reasoning")
)
_DURATIONS: Final = (("latency", "latency_us"), ("gateway_latency", "gateway_latency_us"), ("ttft", "ttft_us"))
_IDENTIFIERS: Final = (
    "api_key_id",
    "user_id",
    "route",
    "requested_model",
    "resolved_model",
    "provider",
    "error_type",
)

_COST_REPORTED: Final = int(CostSource.REPORTED)

INVALID: Final = pb.REJECTION_REASON_INVALID_FIELD
FROM_THE_FUTURE: Final = pb.REJECTION_REASON_FROM_THE_FUTURE
TOO_OLD: Final = pb.REJECTION_REASON_TOO_OLD


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The server's ingest limits, from its settings."""

    max_events: int
    """ingest_max_batch_events."""
    max_bytes: int
    """ingest_max_batch_bytes."""
    max_clock_skew_us: int
    """ingest_max_clock_skew: how far in the future an event_time may be."""
    dedupe_horizon_us: int
    """raw_event_retention: an event older than this is refused TOO_OLD."""

    @classmethod
    def of(cls, settings: ServerSettings) -> BatchLimits:
        return cls(
            max_events=settings.ingest_max_batch_events,
            max_bytes=settings.ingest_max_batch_bytes,
            max_clock_skew_us=_us(settings.ingest_max_clock_skew),
            dedupe_horizon_us=_us(settings.raw_event_retention),
        )


def _us(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1_000_000)


def check_batch(events_count: int, byte_size: int, limits: BatchLimits) -> None:
    """Raises INVALID_ARGUMENT for an empty or oversized batch; such a batch is refused whole."""
    if events_count == 0:
        raise InvalidArgumentError("events", "a usage batch needs at least one event")
    if events_count > limits.max_events:
        raise InvalidArgumentError(
            "events",
            f"{events_count} events exceed the server's ingest_max_batch_events={limits.max_events}; "
            "send smaller batches",
        )
    if byte_size > limits.max_bytes:
        raise InvalidArgumentError(
            "events",
            f"the batch is {byte_size} bytes, over the server's ingest_max_batch_bytes={limits.max_bytes}; "
            "send fewer events per batch",
        )


def _reject(
    event: usage_pb2.UsageEvent, index: int, field: str, message: str, reason: pb.RejectionReason.ValueType = INVALID
) -> pb.RejectedEvent:
    return pb.RejectedEvent(event_id=event.event_id, index=index, reason=reason, field=field, message=message)


def _too_long(text: str, max_bytes: int) -> bool:
    # A character is at most 4 bytes in UTF-8, so short strings (nearly all) skip the encoding.
    return len(text) * 4 > max_bytes and len(text.encode()) > max_bytes


def _duration_problem(duration_us: int) -> str | None:
    if duration_us < 0:
        return "must not be negative"
    if duration_us > MAX_LATENCY_US:
        return f"is longer than the {MAX_LATENCY_US // 1_000_000} s any attempt may take; check its unit"
    return None


def rejection_of(
    event: usage_pb2.UsageEvent, row: dict[str, Any], tags: TagItems, index: int, now_us: int, limits: BatchLimits
) -> pb.RejectedEvent | None:
    """Why the event must be refused (the first problem found), or None when it is acceptable.

    Checks the event's row as reported (rows.usage_event_row, not priced yet), which holds every value read
    once from the protobuf, and its tags (rows.tag_items); only token categories are read from the event
    itself, and only when present.
    """
    event_id = row["event_id"]
    if not event_id:
        return _reject(event, index, "event_id", "is required")
    if len(event_id) != 36 or not _UUID_TEXT.fullmatch(event_id):
        return _reject(event, index, "event_id", "must be a UUID in canonical text form (36 characters)")
    request_id = row["request_id"]
    if not request_id:
        return _reject(event, index, "request_id", "is required")
    if _too_long(request_id, MAX_REQUEST_ID_BYTES):
        return _reject(event, index, "request_id", f"is longer than {MAX_REQUEST_ID_BYTES} bytes")
    if row["attempt"] < 1:
        return _reject(event, index, "attempt", "must be 1 or more (1 is the first attempt)")
    event_time_us = row["event_time_us"]
    if event_time_us is None:
        return _reject(event, index, "event_time", "is required")
    if event_time_us > now_us + limits.max_clock_skew_us:
        return _reject(
            event,
            index,
            "event_time",
            f"is more than the allowed clock skew ({limits.max_clock_skew_us // 1_000_000} s) in the future; "
            "check the gateway's clock",
            FROM_THE_FUTURE,
        )
    if event_time_us < now_us - limits.dedupe_horizon_us:
        return _reject(
            event,
            index,
            "event_time",
            f"is older than the dedupe horizon (raw_event_retention, {limits.dedupe_horizon_us // 86_400_000_000} "
            "days): the server can no longer tell whether it was counted already",
            TOO_OLD,
        )
    for name in _IDENTIFIERS:
        if _too_long(row[name], MAX_IDENTIFIER_BYTES):
            return _reject(event, index, name, f"is longer than {MAX_IDENTIFIER_BYTES} bytes")
    if _too_long(row["error_message"], MAX_ERROR_MESSAGE_BYTES):
        return _reject(event, index, "error_message", f"is longer than {MAX_ERROR_MESSAGE_BYTES} bytes")
    # Not a row column (never stored), so read from the event; it is UTF-8, or the batch would not have decoded.
    reservation_id = event.reservation_id
    if reservation_id and _too_long(reservation_id, MAX_RESERVATION_ID_BYTES):
        return _reject(event, index, "reservation_id", f"is longer than {MAX_RESERVATION_ID_BYTES} bytes")
    if row["request_type"] not in _REQUEST_TYPES:
        return _reject(event, index, "request_type", f"{row['request_type']} is not a RequestType value")
    if row["credential_type"] not in _CREDENTIAL_TYPES:
        return _reject(event, index, "credential_type", f"{row['credential_type']} is not a CredentialType value")
    status_code = row["status_code"]
    if status_code is not None and not 100 <= status_code <= 599:
        return _reject(event, index, "status_code", f"{status_code} is not an HTTP status (100-599)")
    for field, column in _DURATIONS:
        duration_us = row[column]
        problem = None if duration_us is None else _duration_problem(duration_us)
        if problem is not None:
            return _reject(event, index, field, problem)
    for field, column in _TOKEN_COLUMNS:
        count = row[column]
        if count is not None and not 0 <= count <= MAX_TOKENS:
            return _reject(event, index, field, f"must be within 0..{MAX_TOKENS}")
    if row["token_categories"] is not None:
        rejected = _category_rejection(event, index)
        if rejected is not None:
            return rejected
    if row["cost_source"] == _COST_REPORTED and not 0 <= row["cost_micros"] <= MAX_ABS_MICROS:
        return _reject(event, index, "cost_micros", f"must be within 0..{MAX_ABS_MICROS}")
    savings = row["cache_savings_micros"]
    if savings is not None and abs(savings) > MAX_ABS_MICROS:
        return _reject(event, index, "cache_savings_micros", f"must be within +/-{MAX_ABS_MICROS}")
    if row["sequence"] > MAX_SEQUENCE:
        return _reject(event, index, "sequence", f"must be at most {MAX_SEQUENCE}")
    if tags:
        return _tag_rejection(event, tags, index)
    return None


def priced_rejection(event: usage_pb2.UsageEvent, row: dict[str, Any], index: int) -> pb.RejectedEvent | None:
    """Why a valid event must still be refused once priced (rows.price_row), or None.

    A reported cost or saving was checked by rejection_of; one the pricing table derived can pass the
    per-event bound (a price near the largest PutConfig accepts, times many tokens). Such an event can never
    be stored, so it is rejected alone, as an invalid field, rather than failing its batch (which the agent
    would resend forever)."""
    cost = row["cost_micros"]
    if cost is not None and not 0 <= cost <= MAX_ABS_MICROS:
        return _reject(
            event,
            index,
            "cost_micros",
            f"the pricing table prices this event at {cost} micros, beyond the per-event bound of 0..{MAX_ABS_MICROS}; "
            "check its token counts and the model's price",
        )
    savings = row["cache_savings_micros"]
    if savings is not None and abs(savings) > MAX_ABS_MICROS:
        return _reject(
            event,
            index,
            "cache_savings_micros",
            f"the pricing table gives this event {savings} micros of cache savings, beyond the per-event bound "
            f"of +/-{MAX_ABS_MICROS}; check its token counts and the model's prices",
        )
    return None


def _category_rejection(event: usage_pb2.UsageEvent, index: int) -> pb.RejectedEvent | None:
    categories = event.tokens.categories
    if len(categories) > MAX_CATEGORIES:
        return _reject(event, index, "tokens.categories", f"has more than {MAX_CATEGORIES} entries")
    for key, count in categories.items():
        if len(key) > MAX_CATEGORY_KEY_BYTES or not _CATEGORY_KEY.fullmatch(key):
            return _reject(
                event,
                index,
                "tokens.categories",
                f"key {key[:MAX_CATEGORY_KEY_BYTES]!r} must be lower_snake_case of at most "
                f"{MAX_CATEGORY_KEY_BYTES} bytes",
            )
        if not 0 <= count <= MAX_TOKENS:
            return _reject(event, index, f"tokens.categories.{key}", f"must be within 0..{MAX_TOKENS}")
    return None


def _tag_rejection(event: usage_pb2.UsageEvent, tags: TagItems, index: int) -> pb.RejectedEvent | None:
    if len(tags) > MAX_TAGS:
        return _reject(event, index, "tags", f"has {len(tags)} entries; at most {MAX_TAGS} are allowed")
    for key, value in tags:
        if not key or _too_long(key, MAX_TAG_KEY_BYTES):
            return _reject(event, index, "tags", f"key {key[:MAX_TAG_KEY_BYTES]!r} must be 1-{MAX_TAG_KEY_BYTES} bytes")
        if _too_long(value, MAX_TAG_VALUE_BYTES):
            return _reject(event, index, f"tags.{key}", f"value is longer than {MAX_TAG_VALUE_BYTES} bytes")
    return None
