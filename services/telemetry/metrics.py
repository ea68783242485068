"""Prometheus metrics of usage ingest (served on the control plane's /metrics)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

EVENTS: Final = Counter(
    "meterwire_ingest_events_total",
    "Usage events ingested, by outcome: accepted (stored), duplicate (stored earlier) or rejected.",
    ["outcome"],
)
EVENTS_ACCEPTED: Final = EVENTS.labels("accepted")
EVENTS_DUPLICATE: Final = EVENTS.labels("duplicate")
EVENTS_REJECTED: Final = EVENTS.labels("rejected")

BATCHES: Final = Counter(
    "meterwire_ingest_batches_total",
    "Usage batches, by outcome: stored (acked), failed (transaction failed; resend) or refused (invalid batch).",
    ["outcome"],
)
BATCHES_STORED: Final = BATCHES.labels("stored")
BATCHES_FAILED: Final = BATCHES.labels("failed")
BATCHES_REFUSED: Final = BATCHES.labels("refused")

BATCHES_IN_FLIGHT: Final = Gauge(
    "meterwire_ingest_batches_in_flight", "Usage batches submitted to the writer and not yet committed or failed."
)
COMMIT_SECONDS: Final = Histogram(
    "meterwire_ingest_commit_seconds",
    "Wall time of one group-commit transaction, from its first statement to its commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
TRANSACTION_EVENTS: Final = Histogram(
    "meterwire_ingest_transaction_events",
    "Valid events (new and duplicate) in one group-commit transaction.",
    buckets=(1, 10, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000),
)
