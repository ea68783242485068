"""What the gateway asks the agent (CheckRequest, UsageEstimate) and what it answers (Decision, with the budgets it
matched as BudgetFigures): the public types of local admission, cheap to make on the path every request takes."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, NamedTuple

from budgeting.decision import State, Verdict, state_of
from gateway_agent.budget_rules import BudgetEntry
from meterwire.budget.v1 import budget_service_pb2 as budget_pb

NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True)
class UsageEstimate:
    """What a request may use, known before it runs; reserved against its budgets when it is admitted."""

    cost_micros: int | None = None
    """A cost given directly (micro-units of the environment's currency); wins over pricing the tokens."""
    input_tokens: int = 0
    """Prompt tokens (or an upper bound of them)."""
    max_output_tokens: int = 0
    """The most the request may generate (the caller's max_tokens)."""
    model: str = ""
    """The model to price the tokens with (the applied config's pricing table); empty: the requested model."""


@dataclass(frozen=True)
class CheckRequest:
    """What the gateway knows about a request before it routes it."""

    api_key_id: str = ""
    user_id: str = ""
    requested_model: str = ""
    route: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    estimate: UsageEstimate | None = None
    """Set: reserved against every matched budget when admitted (settled by the usage event carrying the
    reservation id, or released after the reservation TTL). None: nothing reserved."""


class BudgetFigures(NamedTuple):
    """One budget as the agent sees it now (agent_service.proto's LocalBudget)."""

    budget: budget_pb.Budget
    window_start_s: int
    window_end_s: int | None
    used: int
    """server_used + pending_used."""
    server_used: int
    pending_used: int
    reserved: int
    remaining: int
    state: State
    lease_allowance: int | None
    lease_sharing_gateways: int
    denied_requests: int
    shadow_denied_requests: int

    @property
    def budget_id(self) -> str:
        return self.budget.budget_id


_PENDING: Final = operator.attrgetter("pending")
_RESERVED: Final = operator.attrgetter("reserved")


class Taken(NamedTuple):
    """The matched budgets' local figures at decision time (an entry's server figure is fixed: it is read from it)."""

    entries: tuple[BudgetEntry, ...]
    pending: tuple[int, ...]
    reserved: tuple[int, ...]
    counts: Callable[[str], tuple[int, int]]

    @classmethod
    def of(cls, entries: tuple[BudgetEntry, ...], counts: Callable[[str], tuple[int, int]]) -> Taken:
        """The entries' figures now, in C-level passes (call it under the view's lock)."""
        return cls(entries, tuple(map(_PENDING, entries)), tuple(map(_RESERVED, entries)), counts)

    def figures(self) -> tuple[BudgetFigures, ...]:
        return tuple(
            _figures(entry, entry.server_used, pending, reserved, self.counts(entry.budget_id))
            for entry, pending, reserved in zip(self.entries, self.pending, self.reserved, strict=True)
        )


def _figures(
    entry: BudgetEntry, server_used: int, pending: int, reserved: int, counts: tuple[int, int]
) -> BudgetFigures:
    rule = entry.rule
    used = server_used + pending
    committed = used + reserved
    return BudgetFigures(
        budget=entry.budget,
        window_start_s=entry.window.start_s,
        window_end_s=entry.window.end_s,
        used=used,
        server_used=server_used,
        pending_used=pending,
        reserved=reserved,
        remaining=max(0, rule.limit - committed),
        state=state_of(committed, rule.limit, rule.thresholds),
        lease_allowance=entry.allowance,
        lease_sharing_gateways=entry.sharing_gateways,
        denied_requests=counts[0],
        shadow_denied_requests=counts[1],
    )


class Decision(NamedTuple):
    """Whether to serve a request; when denied, what to answer the caller (ready to send).

    Immutable (a named tuple: the cheapest immutable record to make, and one is made per request)."""

    allowed: bool
    reason: str
    http_status: int = 0
    """The HTTP status to answer with when denied; 0 when allowed."""
    message: str = ""
    """The message for the caller when denied."""
    config_version: int = 0
    """The config version the decision was made with; 0: none applied yet."""
    verdict: Verdict = Verdict.ALLOW
    denied_by_budget_id: str = ""
    retry_after_s: int | None = None
    """DENY by a budget: seconds until the caller may try again (None: its window never resets)."""
    reservation_id: str = ""
    """Admitted with an estimate: put it in the usage event's reservation_id."""
    reservation_expire_s: float | None = None
    """When the reservation expires (Unix seconds)."""
    response_body: str = ""
    """DENY: the JSON body to answer the caller with."""
    response_headers: Mapping[str, str] = NO_HEADERS
    """DENY: the headers to answer with (content-type, Retry-After, x-should-retry)."""
    matched: Taken | None = None
    """The figures the decision used, as taken under the lock (`budgets` presents them)."""

    @property
    def budgets(self) -> tuple[BudgetFigures, ...]:
        """Every budget the request matched, in budget id order, with the figures the decision used (built when
        read: a check nobody inspects stays cheap)."""
        return () if self.matched is None else self.matched.figures()


def allowed_decision(
    reason: str,
    config_version: int,
    verdict: Verdict = Verdict.ALLOW,
    matched: Taken | None = None,
    reservation_id: str = "",
    reservation_expire_s: float | None = None,
) -> Decision:
    """An admitting Decision, made positionally (half the cost of keywords, on the path every request takes)."""
    return Decision(
        True, reason, 0, "", config_version, verdict, "", None, reservation_id, reservation_expire_s, "", NO_HEADERS,
        matched,
    )  # fmt: skip
