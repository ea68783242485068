"""Turns a usage batch's events into what the writer stores: validated, priced rows, their tags and rollups.

This is most of ingest's Python (protobuf field reads above all), so it can run in worker processes
(ingest.IngestWorkers) as well as in the event loop: `prepare_events` takes parsed events,
`prepare_serialized` a serialized batch, and both give a PreparedEvents, which pickles as plain values.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from services.accounting.rollup import RollupKey, RollupRow, add_to_rollup
from services.pricing import PriceBook
from services.telemetry.rows import (
    EVENT_COLUMNS,
    TagRow,
    UsageEventRow,
    price_row,
    tag_items,
    usage_event_row,
    usage_event_tag_rows,
)
from services.telemetry.validation import MAX_SEQUENCE, BatchLimits, priced_rejection, rejection_of

_WIDTH: Final = len(EVENT_COLUMNS)


@dataclass(slots=True)
class PreparedEvents:
    """A batch's valid events as the writer stores them, and its rejected ones."""

    values: list[Any]
    """The valid events' usage_events values (EVENT_COLUMNS order), concatenated; ingest_time_us is 0 until
    the writer sets it."""
    tag_rows: dict[int, list[TagRow]]
    """Index of a valid event -> its usage_event_tags rows (events without tags are absent)."""
    rollups: dict[RollupKey, RollupRow]
    """The valid events counted into per-minute rollups (accounting.rollup.add_to_rollup), as if every one
    of them is new."""
    rejected: list[pb.RejectedEvent]
    max_sequence: int
    """Highest agent spool sequence among the valid events (0: none)."""
    sequence_range: tuple[int, int] | None = None
    """(lowest, highest) spool sequence among ALL the batch's events that carry one, rejected ones too: what
    the batch adds to the gateway's included set (services.budget.included). None: no event carries one."""

    @property
    def count(self) -> int:
        """Valid events."""
        return len(self.values) // _WIDTH

    def row(self, index: int) -> UsageEventRow:
        """One valid event's row, from `values`."""
        start = index * _WIDTH
        return dict(zip(EVENT_COLUMNS, self.values[start : start + _WIDTH], strict=True))

    def rows(self) -> list[UsageEventRow]:
        """The valid events' rows again, from `values` (for the rare transaction that finds duplicates)."""
        values = self.values
        return [
            dict(zip(EVENT_COLUMNS, values[start : start + _WIDTH], strict=True))
            for start in range(0, len(values), _WIDTH)
        ]


def prepare_events(
    events: Iterable[usage_pb2.UsageEvent],
    *,
    environment_id: str,
    gateway_key: int,
    prices: PriceBook,
    now_us: int,
    limits: BatchLimits,
) -> PreparedEvents:
    """Validates, then prices each event; a bad one is rejected alone (rows.usage_event_row, validation)."""
    values: list[Any] = []
    tag_rows: dict[int, list[TagRow]] = {}
    rollups: dict[RollupKey, RollupRow] = {}
    rejected: list[pb.RejectedEvent] = []
    max_sequence = 0
    lowest = MAX_SEQUENCE + 1
    highest = 0
    for index, event in enumerate(events):
        tags = tag_items(event)
        row = usage_event_row(event, environment_id=environment_id, gateway_key=gateway_key, tags=tags)
        sequence = row["sequence"]
        if 0 < sequence <= MAX_SEQUENCE:
            lowest = min(lowest, sequence)
            highest = max(highest, sequence)
        rejection = rejection_of(event, row, tags, index, now_us, limits)
        if rejection is not None:
            rejected.append(rejection)
            continue
        if price_row(row, event, prices):
            rejection = priced_rejection(event, row, index)
            if rejection is not None:
                rejected.append(rejection)
                continue
        if tags:
            tag_rows[len(values) // _WIDTH] = usage_event_tag_rows(tags, row)
        values.extend(row.values())  # EVENT_COLUMNS order (rows.event_values)
        add_to_rollup(rollups, row)
        max_sequence = max(max_sequence, sequence)
    return PreparedEvents(values, tag_rows, rollups, rejected, max_sequence, (lowest, highest) if highest else None)


# --- in a worker process ------------------------------------------------------------------------------------

_price_books: dict[bytes, PriceBook] = {}
"""A worker's price books by serialized PricingTable (b"": none), so each table is parsed once."""
_MAX_PRICE_BOOKS: Final = 64


def prepare_serialized(
    batch: bytes,
    *,
    environment_id: str,
    gateway_key: int,
    pricing: bytes,
    now_us: int,
    limits: BatchLimits,
) -> PreparedEvents:
    """`prepare_events` of a serialized StreamUsageRequest or ReportUsageRequest (the two share their wire
    format), priced by a serialized PricingTable (b"": the environment has none)."""
    prices = _price_books.get(pricing)
    if prices is None:
        if len(_price_books) >= _MAX_PRICE_BOOKS:
            _price_books.clear()
        prices = _price_books[pricing] = PriceBook(config_pb.PricingTable.FromString(pricing) if pricing else None)
    return prepare_events(
        pb.StreamUsageRequest.FromString(batch).events,
        environment_id=environment_id,
        gateway_key=gateway_key,
        prices=prices,
        now_us=now_us,
        limits=limits,
    )


PARENT_CHECK_INTERVAL_S: Final = 1.0


def start_worker() -> None:
    """A worker process's initializer: it exits once its server is gone, even one killed with SIGKILL (a
    process pool's workers otherwise wait for work forever)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_INTERVAL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
