"""Where a budget window stands and what it means for a request: state, crossed thresholds, ALLOW/WARN/DENY.

Integer arithmetic only (money is micros): a threshold of p percent is crossed once used * 100 >= limit * p.
A window is EXCEEDED at used >= limit: a HARD_STOP budget denies from then on (the request that crossed the
limit was already admitted, as every peer does: its cost is only known once it ran).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from budgeting.scope import Scope
from budgeting.windows import Period, Window

DEFAULT_THRESHOLDS: Final = (80, 100)
MAX_THRESHOLDS: Final = 10
MAX_THRESHOLD_PERCENT: Final = 1000
DEFAULT_DENY_HTTP_STATUS: Final = 429


class Metric(IntEnum):
    """meterwire.budget.v1.Metric (same numbers)."""

    SPEND = 1
    TOKENS = 2
    REQUESTS = 3


class Mode(IntEnum):
    """meterwire.budget.v1.Mode (same numbers)."""

    HARD_STOP = 1
    WARN_ONLY = 2


class State(IntEnum):
    """meterwire.budget.v1.BudgetState (same numbers)."""

    OK = 1
    WARNING = 2
    EXCEEDED = 3


class Verdict(IntEnum):
    """meterwire.budget.v1.Decision (same numbers)."""

    ALLOW = 1
    WARN = 2
    DENY = 3


def check_thresholds(percents: Sequence[int], *, field: str = "alert_threshold_percents") -> tuple[int, ...]:
    """Validated thresholds (the defaults when empty); ValueError names the field and the rule."""
    if not percents:
        return DEFAULT_THRESHOLDS
    if len(percents) > MAX_THRESHOLDS:
        raise ValueError(f"{field}: at most {MAX_THRESHOLDS} thresholds (got {len(percents)})")
    previous = 0
    for percent in percents:
        if not 1 <= percent <= MAX_THRESHOLD_PERCENT:
            raise ValueError(f"{field}: each must be 1-{MAX_THRESHOLD_PERCENT} percent (got {percent})")
        if percent <= previous:
            raise ValueError(f"{field}: must be strictly ascending (got {list(percents)})")
        previous = percent
    return tuple(percents)


def crossed(used: int, limit: int, thresholds: Sequence[int]) -> tuple[int, ...]:
    """The thresholds `used` has reached, ascending."""
    return tuple(percent for percent in thresholds if used * 100 >= limit * percent)


def newly_crossed(before: int, after: int, limit: int, thresholds: Sequence[int]) -> tuple[int, ...]:
    """Thresholds reached at `after` but not at `before` (what an increment must alert)."""
    return tuple(percent for percent in thresholds if before * 100 < limit * percent <= after * 100)


def warning_from(limit: int, thresholds: Sequence[int]) -> int:
    """The least `used` whose state is not OK (state_of's rule solved once, for checks made many times)."""
    if not thresholds:
        return limit
    return min(limit, -(-limit * thresholds[0] // 100))


def state_of(used: int, limit: int, thresholds: Sequence[int]) -> State:
    if used >= limit:
        return State.EXCEEDED
    return State.WARNING if crossed(used, limit, thresholds) else State.OK


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """A budget as the rules need it."""

    budget_id: str
    display_name: str
    scope: Scope
    metric: Metric
    limit: int
    period: Period
    time_zone: str
    mode: Mode
    thresholds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """One budget's current window: what it used, and what is held for admitted requests (agents only)."""

    rule: BudgetRule
    window: Window
    used: int
    reserved: int = 0
    own: int = 0
    """Agents: the part of `used` this gateway counted on its own (its usage the server's figure does not include)."""
    allowance: int | None = None
    """Agents, HARD_STOP: the lease; own + reserved + what a request adds may not exceed it. None: no lease."""

    @property
    def committed(self) -> int:
        return self.used + self.reserved

    @property
    def remaining(self) -> int:
        return max(0, self.rule.limit - self.committed)

    @property
    def state(self) -> State:
        return state_of(self.committed, self.rule.limit, self.rule.thresholds)

    @property
    def crossed_threshold(self) -> int:
        reached = crossed(self.committed, self.rule.limit, self.rule.thresholds)
        return reached[-1] if reached else 0

    def retry_after_s(self, now_s: float) -> int | None:
        """Whole seconds until the window resets (at least 1); None when it never does."""
        if self.window.end_s is None:
            return None
        return max(1, int(self.window.end_s - now_s + 0.999))


def headroom(committed: int, limit: int, own_committed: int = 0, allowance: int | None = None) -> int:
    """How much a window can still take: `limit - committed`, less where a lease (agents) leaves this gateway less.

    `committed` is used + reserved; `own_committed` is this gateway's own usage and reservations, which a lease
    bounds. Headroom moves one for one with committed usage (own usage moves both terms), so an agent keeps it up
    to date as usage and reservations change rather than working it out on every check.
    """
    room = limit - committed
    if allowance is not None and allowance - own_committed < room:
        return allowance - own_committed
    return room


def needed(expected: int) -> int:
    """The headroom a request expected to add `expected` needs to be admitted: that much, and at least 1 (a window
    at its limit refuses whatever the estimate)."""
    return expected if expected > 0 else 1


def refuses(committed: int, limit: int, expected: int, own_committed: int = 0, allowance: int | None = None) -> bool:
    """The one admission rule: a request is refused iff it needs more than the window's headroom.

    That is: the window is at its limit (committed >= limit) or the request would take it over (committed +
    expected > limit); with a lease, the same for this gateway's own usage against its allowance.
    """
    return needed(expected) > headroom(committed, limit, own_committed, allowance)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    matched: tuple[WindowFigures, ...]
    """Every budget whose scope matched, in budget id order."""
    denied_by: WindowFigures | None = None
    """DENY: the first exhausted HARD_STOP budget (by budget id)."""
    warned_by: tuple[WindowFigures, ...] = ()
    """Budgets at or over a threshold that did not deny (warn-only ones over their limit included)."""
    shadow_denied_by: tuple[WindowFigures, ...] = ()
    """WARN_ONLY budgets that a HARD_STOP budget with the same figures would have denied (the request goes on)."""


def decide(matched: Sequence[WindowFigures], *, estimate: Mapping[Metric, int] | None = None) -> Decision:
    """ALLOW, WARN or DENY for a request that matched these budgets' windows.

    A HARD_STOP budget denies when `refuses` says so for what the request is expected to add in its metric
    (`estimate`; absent: nothing known). A WARN_ONLY budget the same rule refuses is a shadow denial and warns.
    """
    ordered = tuple(sorted(matched, key=lambda figures: figures.rule.budget_id))
    shadows: list[WindowFigures] = []
    for figures in ordered:
        rule = figures.rule
        expected = estimate.get(rule.metric, 0) if estimate else 0
        if refuses(
            committed=figures.committed,
            limit=rule.limit,
            expected=expected,
            own_committed=figures.own + figures.reserved,
            allowance=figures.allowance,
        ):
            if rule.mode is Mode.HARD_STOP:
                return Decision(Verdict.DENY, ordered, denied_by=figures)
            shadows.append(figures)
    warned = tuple(figures for figures in ordered if figures.state is not State.OK or figures in shadows)
    verdict = Verdict.WARN if warned else Verdict.ALLOW
    return Decision(verdict, ordered, warned_by=warned, shadow_denied_by=tuple(shadows))
