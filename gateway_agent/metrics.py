"""Prometheus metrics of a running agent, read from its status at scrape time (no second set of counters).

`meterwire agent run --metrics-listen HOST:PORT` serves them; a gateway embedding the agent can register
`AgentCollector(agent, loop)` on its own registry instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway_agent.agent import AgentStatus, GatewayAgent

SNAPSHOT_TIMEOUT_S = 5.0
"""A scrape waits this long for the event loop to take the snapshot (it takes microseconds when healthy)."""


class AgentCollector(Collector):
    """Turns `GatewayAgent.status()` into metrics. Scrapes run on the HTTP server's thread, so the snapshot is
    taken on the agent's event loop, never by reading its state from another thread."""

    def __init__(self, agent: GatewayAgent, loop: asyncio.AbstractEventLoop) -> None:
        self._agent = agent
        self._loop = loop

    def _snapshot(self) -> AgentStatus:
        future: concurrent.futures.Future[AgentStatus] = concurrent.futures.Future()

        def take() -> None:
            try:
                future.set_result(self._agent.status())
            except Exception as error:
                future.set_exception(error)

        self._loop.call_soon_threadsafe(take)
        return future.result(timeout=SNAPSHOT_TIMEOUT_S)

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        yield _gauge(
            "meterwire_agent_connected", "1 while the usage stream to the control plane is up.", status.connected
        )
        yield _gauge("meterwire_agent_config_version", "Applied config version (0: none).", status.config_version)
        yield _gauge(
            "meterwire_agent_spool_events", "Usage events spooled and not yet acknowledged.", status.spool_depth
        )
        yield _gauge(
            "meterwire_agent_spool_bytes",
            "Bytes of spooled events (the spool cap applies to this).",
            status.spool_bytes,
        )
        oldest = status.oldest_unsent_age.total_seconds() if status.oldest_unsent_age is not None else 0.0
        yield _gauge(
            "meterwire_agent_oldest_unsent_seconds", "Age of the oldest unacknowledged event (0: none).", oldest
        )
        yield _gauge(
            "meterwire_agent_dead_letters",
            "Events the control plane rejected, kept in the dead-letter table.",
            status.dead_letter_count,
        )
        yield _gauge(
            "meterwire_agent_last_acked_sequence",
            "Highest spool sequence the control plane acknowledged.",
            status.last_acked_sequence,
        )
        dropped = CounterMetricFamily(
            "meterwire_agent_dropped_events",
            "Events not spooled (the gateway kept serving), by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(status.dropped_by_reason.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield _counter("meterwire_agent_events_accepted", "Events the control plane stored.", status.events_accepted)
        yield _counter(
            "meterwire_agent_events_duplicate",
            "Events the control plane already had (resends).",
            status.events_duplicate,
        )
        yield _counter("meterwire_agent_events_rejected", "Events the control plane rejected.", status.events_rejected)
        yield _counter("meterwire_agent_batches_acked", "Usage batches acknowledged.", status.batches_acked)
        yield _counter(
            "meterwire_agent_stream_failures", "Usage streams that failed and were reopened.", status.stream_failures
        )
        yield _counter(
            "meterwire_agent_corrupt_spools", "Corrupt spool files moved aside.", status.corrupt_spools_set_aside
        )
        yield from _budget_metrics(status)


def _budget_metrics(status: AgentStatus) -> Iterator[Metric]:
    """Per budget: the local figures and what the agent denied (and, for warn-only budgets, would have denied)."""
    labels = ["budget_id"]
    used = GaugeMetricFamily(
        "meterwire_agent_budget_used", "Usage counted in the window (server + own).", labels=labels
    )
    reserved = GaugeMetricFamily("meterwire_agent_budget_reserved", "Held by open reservations.", labels=labels)
    limit = GaugeMetricFamily("meterwire_agent_budget_limit", "The budget's limit.", labels=labels)
    denied = CounterMetricFamily("meterwire_agent_budget_denied_requests", "Requests denied.", labels=labels)
    shadow = CounterMetricFamily(
        "meterwire_agent_budget_shadow_denied_requests",
        "Requests a warn-only budget let through that a hard stop would have denied.",
        labels=labels,
    )
    for figures in status.budgets:
        key = [figures.budget_id]
        used.add_metric(key, figures.used)
        reserved.add_metric(key, figures.reserved)
        limit.add_metric(key, figures.budget.limit)
    for budget_id, (denied_count, shadow_count) in status.budget_enforcement.items():
        denied.add_metric([budget_id], denied_count)
        shadow.add_metric([budget_id], shadow_count)
    yield from (used, reserved, limit, denied, shadow)
    yield _gauge("meterwire_agent_budget_reservations", "Open budget reservations.", status.open_reservations)
    snapshot = status.budget_snapshot_time.timestamp() if status.budget_snapshot_time is not None else 0.0
    yield _gauge(
        "meterwire_agent_budget_snapshot_timestamp_seconds",
        "When the control plane last refreshed the budget state (0: never): enforcing from stale state shows here.",
        snapshot,
    )


def agent_registry(agent: GatewayAgent, loop: asyncio.AbstractEventLoop) -> CollectorRegistry:
    """A registry holding only the agent's metrics (not the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent, loop))
    return registry


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))
