"""Per-event bounds on every number an event adds to an aggregate, and why every aggregate stays within int64.

Every stored aggregate is a signed 64-bit integer: rollup columns (1m, and the 1h/1d compaction folds into),
budget window counters, token category rollups. No bound on the NUMBER of events an aggregate receives
exists: nothing limits a gateway's rate, a per-minute rollup row keeps receiving late events for the whole
dedupe horizon (raw_event_retention), a TOTAL budget never closes, and a report may sum every environment's
rows. So per-event bounds alone cannot keep sums inside int64 (at 10^13 per event it takes 922,338 events,
a minute of one busy server). The rules are therefore:

1. Per-event bounds (below), checked at ingest (services/telemetry/validation.py); a violating event is
   rejected alone (RejectedEvent naming the field), never retried. They are generous for real traffic in any
   currency and keep realistic sums about a million times below int64.
2. Every addition into a stored aggregate SATURATES at the int64 limits instead of overflowing
   (storage.dialect.upsert_adding for ingest's rollups and budget windows, saturating_sum for compaction;
   what Python binds fits by the arithmetic below): a figure
   that would pass 2^63-1 reads as 2^63-1 ("at least"), and nothing fails. Counts (requests, attempts,
   histogram buckets, ...) grow by one per event and cannot get there: 2^63 events at a million per second
   take 292,000 years, so they are added plainly.
3. Reports sum with saturating_sum (exact below the limits on both engines; SQLite's SUM raises on overflow,
   PostgreSQL's SUM(bigint) is numeric), add partial results as Python integers, and clamp what they put in
   an int64 proto field with `saturated`. Figures stored as floats by older versions (SQLite turned an
   overflowing integer addition into a REAL) are read through the same functions, which turn them into
   clamped integers.

The arithmetic behind the bounds, with T = MAX_TOKENS and P = MAX_PRICE_MICROS_PER_MILLION:

- a priced event has at most 5 token kinds of at most T tokens (categories are part of a kind), so its
  derived cost is at most 5 * T * P / 10^6 = 5 * 10^10 * 10^14 / 10^6 = 5 * 10^18 < 2^63 - 1 (9.22 * 10^18),
  and its cache savings at most T * P / 10^6 = 10^18: at any price PutConfig accepts, pricing stays in
  int64 (a larger price stored by an older version only makes a larger Python integer); a derived cost or
  saving beyond MAX_ABS_MICROS rejects that event (field cost_micros or cache_savings_micros), as a reported
  one does;
- one usage transaction holds at most ingest_commit_max_events or one batch (ingest_max_batch_events), both
  at most 100,000 events (settings), so the Python sums it binds are at most 10^5 * MAX_ABS_MICROS = 10^18
  (cost, savings), 10^5 * 5 * T = 5 * 10^15 (a budget's total tokens) and 10^5 * MAX_LATENCY_US =
  3.6 * 10^14: every bound parameter fits int64 before the database saturates the stored sum.
"""

from __future__ import annotations

import math
from typing import Final

INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)

MAX_TOKENS: Final = 10**10
"""Tokens per kind, per category and event: a thousand times the largest context window offered today."""
MAX_ABS_MICROS: Final = 10**13
"""Cost and cache savings per event: ten million currency units (about $400 even in the currency with the
smallest unit in use, $10 million in dollars); beyond it a cost is a unit bug."""
MAX_LATENCY_US: Final = 3_600 * 1_000_000
"""One hour: no single model call legitimately takes longer, so a larger value is a unit or clock bug."""
MAX_PRICE_MICROS_PER_MILLION: Final = 10**14
"""Any price of a pricing table: a hundred currency units per token. See the module docstring: an event within
the token bounds priced at it stays inside int64."""
MAX_EVENTS_PER_TRANSACTION: Final = 100_000
"""The settings' cap on ingest_max_batch_events and ingest_commit_max_events, on which the arithmetic relies."""

if 5 * MAX_TOKENS * MAX_PRICE_MICROS_PER_MILLION // 1_000_000 > INT64_MAX:
    raise RuntimeError("a priced event within the token bounds must fit int64")
if MAX_EVENTS_PER_TRANSACTION * max(MAX_ABS_MICROS, 5 * MAX_TOKENS, MAX_LATENCY_US) > INT64_MAX:
    raise RuntimeError("one transaction's sums must fit int64")


def saturated(value: int) -> int:
    """`value` clamped to int64, for a figure bound into SQL or put into an int64 proto field."""
    if value > INT64_MAX:
        return INT64_MAX
    if value < INT64_MIN:
        return INT64_MIN
    return value


def stored_integer(value: object) -> int:
    """A summed or stored figure as an int64: exact integers as they are, numerics (PostgreSQL's SUM) and floats
    (what older versions left in SQLite after an overflow) rounded, then clamped. None (nothing summed) is 0."""
    if value is None:
        return 0
    if isinstance(value, int):
        return saturated(value)
    if isinstance(value, float):
        if math.isnan(value):  # not a figure at all
            return 0
        if value >= INT64_MAX:
            return INT64_MAX
        if value <= INT64_MIN:
            return INT64_MIN
        return round(value)
    return saturated(int(value))  # type: ignore[call-overload]
