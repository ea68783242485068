"""Local admission decisions: disabled API keys from the applied config, budgets from the last snapshot plus this
gateway's own usage the snapshot does not include yet plus its open reservations.

Everything here runs under one threading.Lock, so a check and the reservation it makes are one step even when
gateway threads call check() at once; nothing here waits for I/O.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, NamedTuple

import structlog

from budgeting.decision import DEFAULT_DENY_HTTP_STATUS, Metric, Verdict, needed, refuses
from budgeting.pricing import PriceBook, price_tokens
from gateway_agent.budget_decision import (
    BudgetFigures,
    CheckRequest,
    Decision,
    Taken,
    UsageEstimate,
    allowed_decision,
)
from gateway_agent.budget_digest import DigestRow, IncludedSet, UsageDigest, digest_of
from gateway_agent.budget_rules import BudgetEntry, entries_of_snapshot
from gateway_agent.own_usage import AttributeKey, OwnEvent, OwnUsage, attribute_key
from gateway_agent.responses import DenialResponse, budget_denial, disabled_key_denial, state_unknown_denial
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb

log = structlog.get_logger("meterwire.agent.budgets")

DISABLED_KEY_HTTP_STATUS: Final = 403
DEFAULT_DENY_MESSAGE: Final = "budget exceeded"
_MATCH_CACHE_SIZE: Final = 4096
_NO_TAGS: Final[tuple[tuple[str, str], ...]] = ()
_NOTHING: Final = (0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class ReservationLimits:
    """How reservations behave (AgentSettings)."""

    ttl: timedelta = timedelta(minutes=10)
    max_micros: int = 10_000_000
    max_tokens: int = 1_000_000


class _Reservation(NamedTuple):
    expire_s: float
    entries: tuple[BudgetEntry, ...]
    """The budgets it holds against (entries in force: _install moves it to a new snapshot's entries)."""
    amounts: list[int]
    """What it holds against each."""


class _Matched:
    """The budgets one shape of request matches, and their figures as last taken (see BudgetView._taken)."""

    __slots__ = ("entries", "generation", "taken")

    def __init__(self, entries: tuple[BudgetEntry, ...]) -> None:
        self.entries = entries
        self.generation = -1
        self.taken: Taken | None = None


class BudgetView:
    """Decides from local state only (microseconds, never the network), so it also works offline."""

    def __init__(
        self,
        *,
        reservations: ReservationLimits | None = None,
        lease_retry_after_s: Callable[[], int] = lambda: 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = reservations or ReservationLimits()
        self._ttl_s = self._limits.ttl.total_seconds()
        self._lease_retry_after_s = lease_retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._disabled_keys: frozenset[str] = frozenset()
        self._config_version = 0
        self._enforcement = config_pb.BudgetEnforcement()
        self._prices = PriceBook()
        self._currency = ""
        self._snapshot: budget_pb.BudgetSnapshot | None = None
        self._included = IncludedSet()
        self._budgets: tuple[BudgetEntry, ...] = ()
        self._by_id: dict[str, BudgetEntry] = {}
        self._rollover_at = float("inf")
        self._match_cache: dict[tuple[object, ...], _Matched] = {}
        """Request attributes -> the budgets they match (checks)."""
        self._scope_cache: dict[AttributeKey, tuple[BudgetEntry, ...]] = {}
        """Event attributes -> the budgets whose scope they match (record)."""
        self._generation = 0
        """Moves with every change of an entry's pending or reserved figure (see _taken)."""
        self._own = OwnUsage()
        self._reservations: dict[str, _Reservation] = {}
        self._reservation_prefix = f"rsv_{os.urandom(8).hex()}_"
        """Random per view, so an id from before a restart never names a reservation made after it."""
        self._reservation_numbers = itertools.count(1)
        self._denied: dict[str, int] = {}
        self._shadow_denied: dict[str, int] = {}

    # --- inputs ------------------------------------------------------------------------------------------

    def apply_config(self, config_version: config_pb.ConfigVersion) -> None:
        config = config_version.config
        with self._lock:
            self._disabled_keys = frozenset(config.disabled_api_key_ids)
            self._config_version = int(config_version.version)
            self._enforcement = config.budget_enforcement
            self._prices = PriceBook(config.pricing if config.HasField("pricing") else None)
            self._currency = config.pricing.currency

    def apply_snapshot(self, snapshot: budget_pb.BudgetSnapshot) -> None:
        """Replaces the server's figures and leases; own events the snapshot includes stop counting locally."""
        now = self._clock()
        entries = entries_of_snapshot(snapshot, now)
        included = IncludedSet.of(
            snapshot.included_through_sequence, [(r.first, r.last) for r in snapshot.included_ranges]
        )
        with self._lock:
            self._snapshot = snapshot
            self._included = included
            for event in self._own.drop_included(included):
                self._count(event, -1)
            self._install(entries)

    def restore(self, snapshot: budget_pb.BudgetSnapshot, digests: Iterable[UsageDigest]) -> None:
        """At start: the persisted snapshot, then the digests of own events (acked ones, then spooled ones, each in
        sequence order) that it does not include."""
        self.apply_snapshot(snapshot)
        for digest in digests:
            self.add_usage(digest)

    def _install(self, entries: tuple[BudgetEntry, ...]) -> None:
        """Under the lock: new budget entries; own usage carried over where the budget and window are the same
        (the common case: a fresh snapshot), else recounted; reservations recounted."""
        previous = self._by_id
        self._budgets = entries
        self._by_id = {entry.budget_id: entry for entry in entries}
        self._match_cache = {}
        self._scope_cache = {}
        for entry in entries:
            known = previous.get(entry.budget_id)
            if known is not None and known.window == entry.window and known.rule == entry.rule:
                entry.pending = known.pending
            else:
                entry.pending = self._own_usage(entry)
        by_id = self._by_id
        for reservation_id, reservation in self._reservations.items():  # moved to the new entries, by budget id
            held = [
                (by_id[entry.budget_id], amount)
                for entry, amount in zip(reservation.entries, reservation.amounts, strict=True)
                if entry.budget_id in by_id
            ]
            for entry, amount in held:
                entry.reserved += amount
            self._reservations[reservation_id] = _Reservation(
                reservation.expire_s, tuple(entry for entry, _ in held), [amount for _, amount in held]
            )
        self._rollover_at = min((e.window.end_s for e in entries if e.window.end_s is not None), default=float("inf"))

    def _own_usage(self, entry: BudgetEntry) -> int:
        window, scope, index = entry.window, entry.rule.scope, entry.metric_index
        return sum(
            event.amounts[index]
            for event in self._own
            if window.contains(event.event_time_s) and scope.matches_event(event.attributes, event.attributes.tags)
        )

    def _roll_windows(self, now: float) -> None:
        """Under the lock: budgets whose window ended move to the current one (server figure 0 until a snapshot
        covers it; the lease becomes limit // sharing gateways)."""
        if self._snapshot is not None:
            self._install(entries_of_snapshot(self._snapshot, now))

    # --- own usage ---------------------------------------------------------------------------------------

    def count_event(self, event: usage_pb2.UsageEvent) -> None:
        """A recorded (spooled) own event: its digest, priced with the applied pricing table, counts from now on.

        Own usage is held only while budgets apply, and only for events some budget's scope matches: with no
        budgets the hot path pays nothing. (An event no budget matched when it was recorded counts for a budget
        made later once the control plane's figure includes it.)"""
        if not self._budgets:
            if event.reservation_id:
                self.release_reservation(event.reservation_id)
            return
        self.add_usage(digest_of(event, self._prices), event.reservation_id)

    def digest_payloads(self, payloads: Iterable[bytes]) -> list[UsageDigest]:
        """Digests of spooled events (at start: those the spool still holds)."""
        return [digest_of(usage_pb2.UsageEvent.FromString(payload), self._prices) for payload in payloads]

    def add_usage(self, digest: UsageDigest, reservation_id: str = "") -> None:
        """A recorded own event counts from now on; the reservation it carries (if any) is settled."""
        with self._lock:
            if reservation_id:
                self._release(reservation_id)
            if digest.sequence in self._included:
                return
            key = attribute_key(digest)
            in_scope = self._scope_cache.get(key)
            if in_scope is None:
                in_scope = tuple(e for e in self._budgets if e.rule.scope.matches_event(digest, digest.tags))
                if len(self._scope_cache) >= _MATCH_CACHE_SIZE:
                    self._scope_cache.clear()
                self._scope_cache[key] = in_scope
            moment = digest.event_time_s
            matching = [entry for entry in in_scope if entry.window.contains(moment)]
            if not matching or self._own.add(digest, key) is None:
                return
            amounts = (digest.spend_micros, digest.tokens, digest.requests)
            for entry in matching:
                entry.pending += amounts[entry.metric_index]
            self._generation += 1

    def _count(self, event: OwnEvent, sign: int) -> None:
        moment, attributes, amounts = event.event_time_s, event.attributes, event.amounts
        for entry in self._budgets:
            if entry.window.contains(moment) and entry.rule.scope.matches_event(attributes, attributes.tags):
                entry.pending += sign * amounts[entry.metric_index]
        self._generation += 1

    def acknowledged(self, sequences: Iterable[int], rejected: Iterable[int]) -> list[DigestRow]:
        """An ack: rejected events stop counting; the digests of the accepted ones not included yet, to persist.

        With no budget in force (none received yet, or none applies), acked events are left to the control plane:
        the next snapshot is read after they were stored, so it includes them."""
        with self._lock:
            own = self._own
            if not own.count:
                return []
            for sequence in rejected:
                event = own.remove(sequence)
                if event is not None:
                    self._count(event, -1)
            if not self._budgets:
                for sequence in sequences:
                    own.remove(sequence)
                return []
            digests = (own.digest(sequence) for sequence in sequences)
            return [digest.to_row() for digest in digests if digest is not None]

    def forget_usage(self, sequences: Iterable[int]) -> None:
        """Events the spool could not store (never delivered, so never counted by the server either)."""
        with self._lock:
            for sequence in sequences:
                event = self._own.remove(sequence)
                if event is not None:
                    self._count(event, -1)

    @property
    def included(self) -> IncludedSet:
        return self._included

    # --- reservations ------------------------------------------------------------------------------------

    def release_reservation(self, reservation_id: str) -> bool:
        with self._lock:
            return self._release(reservation_id)

    def _release(self, reservation_id: str) -> bool:
        reservation = self._reservations.pop(reservation_id, None)
        if reservation is None:
            return False
        for entry, amount in zip(reservation.entries, reservation.amounts, strict=True):
            entry.reserved -= amount
        self._generation += 1
        return True

    def expire_reservations(self) -> int:
        """Releases reservations past their TTL; returns how many."""
        now = self._clock()
        with self._lock:
            expired = [rid for rid, r in self._reservations.items() if r.expire_s <= now]
            for reservation_id in expired:
                self._release(reservation_id)
        if expired:
            log.info("budget reservations expired unsettled; released", count=len(expired))
        return len(expired)

    @property
    def open_reservations(self) -> int:
        return len(self._reservations)

    # --- the decision ------------------------------------------------------------------------------------

    def check(self, request: CheckRequest) -> Decision:
        config_version = self._config_version
        if request.api_key_id and request.api_key_id in self._disabled_keys:
            response = disabled_key_denial(request.api_key_id)
            return Decision(
                allowed=False,
                reason=f"api key {request.api_key_id!r} is disabled by config version {config_version}",
                http_status=DISABLED_KEY_HTTP_STATUS,
                message=response.message,
                config_version=config_version,
                verdict=Verdict.DENY,
                response_body=response.body,
                response_headers=response.headers,
            )
        now = self._clock()
        with self._lock:
            if self._snapshot is None:
                if self._enforcement.deny_when_state_unknown:
                    return self._unknown_state_denial()
                return allowed_decision("no budget state received yet (fail open)", config_version)
            if now >= self._rollover_at:
                self._roll_windows(now)
            matched = self._matching(request)
            if not matched.entries:
                return allowed_decision("no budget applies", config_version)
            return self._decide(request, matched, now)

    def _matching(self, request: CheckRequest) -> _Matched:
        tags = request.tags
        key = (
            request.api_key_id,
            request.user_id,
            request.requested_model,
            request.route,
            tuple(sorted(tags.items())) if tags else _NO_TAGS,
        )
        cached = self._match_cache.get(key)
        if cached is not None:
            return cached
        attributes = {
            "api_key_id": request.api_key_id,
            "user_id": request.user_id,
            "requested_model": request.requested_model,
            "resolved_model": "",  # not known before routing: a scope on it does not match a request
            "provider": "",
            "route": request.route,
        }
        matched = _Matched(tuple(e for e in self._budgets if e.rule.scope.matches_event(attributes, tags)))
        if len(self._match_cache) >= _MATCH_CACHE_SIZE:
            self._match_cache.clear()
        self._match_cache[key] = matched
        return matched

    def _expected(self, request: CheckRequest) -> tuple[int, ...] | None:
        """What the request is expected to add, by metric (spend, tokens, requests) for hard-stop budgets, then the
        same for warn-only ones (they differ only for an estimate that cannot be priced: the cap, and nothing).
        BudgetEntry.amount_index says where a budget's amount is."""
        estimate = request.estimate
        if estimate is None:
            return None
        limits = self._limits
        tokens = max(0, estimate.input_tokens) + max(0, estimate.max_output_tokens)
        spend: int | None = estimate.cost_micros
        if spend is None:
            price = self._prices.lookup_any_provider(estimate.model or request.requested_model)
            if price is not None:
                cost = price_tokens(
                    input_tokens=max(0, estimate.input_tokens),
                    output_tokens=max(0, estimate.max_output_tokens),
                    cache_read_tokens=None,
                    cache_write_tokens=None,
                    reasoning_tokens=None,
                    categories={},
                    price=price,
                )
                spend = None if cost is None else cost.cost_micros
        tokens = min(tokens, limits.max_tokens)
        if spend is None:
            return (limits.max_micros, tokens, 1, 0, tokens, 1)
        spend = min(max(0, spend), limits.max_micros)
        return (spend, tokens, 1, spend, tokens, 1)

    def _decide(self, request: CheckRequest, group: _Matched, now: float) -> Decision:
        """The admission rule per matched budget: refused iff the request needs more than the budget's headroom
        (BudgetEntry.room less own usage and reservations: one subtraction and one comparison per budget)."""
        matched = group.entries
        expected = self._expected(request)
        if expected is None:
            for entry in matched:  # the common case, nothing estimated and every budget quiet: decided in one pass
                if entry.pending + entry.reserved >= entry.quiet_below:
                    break
            else:
                return allowed_decision("within budget", self._config_version, Verdict.ALLOW, self._taken(group))
            expected = _NOTHING
        # An estimate that cannot be priced: a hard stop holds the cap (unpriced traffic must not pass it), a
        # warn-only budget nothing.
        needs = tuple(map(needed, expected))
        reserving = expected is not _NOTHING
        shadows: list[BudgetEntry] = []
        warned = False
        amounts: list[int] = []
        for entry in matched:
            index = entry.amount_index
            own = entry.pending + entry.reserved
            if needs[index] > entry.room - own:  # budgeting.decision.refuses, by headroom's linearity
                if entry.hard:
                    for held, amount in zip(matched, amounts, strict=False):  # reserved so far: given back
                        held.reserved -= amount
                    return self._denial(entry, matched, expected[index], now)
                shadows.append(entry)
            elif own >= entry.warn_room:
                warned = True
            if reserving:  # reserved as it goes (one pass); a denial further on gives it back
                amount = expected[index]
                entry.reserved += amount
                amounts.append(amount)
        for entry in shadows:
            self._shadow_denied[entry.budget_id] = self._shadow_denied.get(entry.budget_id, 0) + 1
        reservation_id = ""
        expire_s: float | None = None
        if reserving:
            reservation_id = f"{self._reservation_prefix}{next(self._reservation_numbers)}"
            expire_s = now + self._ttl_s
            self._reservations[reservation_id] = _Reservation(expire_s, matched, amounts)
            self._generation += 1
        verdict = Verdict.WARN if warned or shadows else Verdict.ALLOW
        reason = "within budget"
        if shadows:
            names = ", ".join(repr(e.rule.display_name) for e in shadows)
            reason = f"warn-only budget {names} is over its limit (a hard stop would deny)"
        elif warned:
            reason = "a warn-only or hard-stop budget is past an alert threshold"
        return allowed_decision(reason, self._config_version, verdict, self._taken(group), reservation_id, expire_s)

    def _denial(self, entry: BudgetEntry, matched: tuple[BudgetEntry, ...], amount: int, now: float) -> Decision:
        self._denied[entry.budget_id] = self._denied.get(entry.budget_id, 0) + 1
        rule = entry.rule
        used = entry.server_used + entry.pending
        at_limit = refuses(used + entry.reserved, rule.limit, amount)  # the window itself, not only the lease
        if at_limit:
            retry_after = None if entry.window.end_s is None else max(1, int(entry.window.end_s - now + 0.999))
        else:  # only this gateway's lease is spent: a fresh snapshot may renew it
            retry_after = max(1, self._lease_retry_after_s())
        enforcement = self._enforcement
        response: DenialResponse = budget_denial(
            entry,
            used=used,
            retry_after_s=retry_after,
            lease_only=not at_limit,
            message=enforcement.deny_message or DEFAULT_DENY_MESSAGE,
            currency=rule_currency(entry, self._currency),
        )
        return Decision(
            allowed=False,
            reason=response.reason,
            http_status=enforcement.deny_http_status or DEFAULT_DENY_HTTP_STATUS,
            message=response.message,
            config_version=self._config_version,
            verdict=Verdict.DENY,
            matched=self._take(matched),
            denied_by_budget_id=entry.budget_id,
            retry_after_s=retry_after,
            response_body=response.body,
            response_headers=response.headers,
        )

    def _unknown_state_denial(self) -> Decision:
        response = state_unknown_denial(self._enforcement.deny_message or DEFAULT_DENY_MESSAGE)
        return Decision(
            allowed=False,
            reason="no budget state received yet and the config denies when budget state is unknown",
            http_status=self._enforcement.deny_http_status or DEFAULT_DENY_HTTP_STATUS,
            message=response.message,
            config_version=self._config_version,
            verdict=Verdict.DENY,
            response_body=response.body,
            response_headers=response.headers,
        )

    # --- status ------------------------------------------------------------------------------------------

    def _take(self, entries: tuple[BudgetEntry, ...]) -> Taken:
        """Under the lock: the entries' figures now (BudgetFigures are built from them only when read)."""
        return Taken.of(entries, self._counts)

    def _taken(self, group: _Matched) -> Taken:
        """Under the lock: the group's figures now, taken again only when a figure changed since they were last
        taken (every change of pending or reserved moves the generation)."""
        taken = group.taken
        if taken is None or group.generation != self._generation:
            taken = group.taken = self._take(group.entries)
            group.generation = self._generation
        return taken

    def _counts(self, budget_id: str) -> tuple[int, int]:
        return self._denied.get(budget_id, 0), self._shadow_denied.get(budget_id, 0)

    def budgets(self) -> tuple[BudgetFigures, ...]:
        """Every budget that applies to this gateway, as seen now, in budget id order."""
        now = self._clock()
        with self._lock:
            if now >= self._rollover_at:
                self._roll_windows(now)
            taken = self._take(self._budgets)
        return taken.figures()

    def enforcement_counts(self) -> dict[str, tuple[int, int]]:
        """Per budget id: (denied, shadow denied) since the agent started."""
        with self._lock:
            ids = set(self._denied) | set(self._shadow_denied) | set(self._by_id)
            return {b: (self._denied.get(b, 0), self._shadow_denied.get(b, 0)) for b in sorted(ids)}

    @property
    def snapshot_time_s(self) -> float | None:
        snapshot = self._snapshot
        if snapshot is None or not snapshot.HasField("snapshot_time"):
            return None
        return snapshot.snapshot_time.seconds + snapshot.snapshot_time.nanos / 1e9

    @property
    def pending_digests(self) -> int:
        """Own events counted locally (not included in the snapshot)."""
        return self._own.count


def rule_currency(entry: BudgetEntry, config_currency: str) -> str:
    """A spend budget's currency: the budget's own, else the applied pricing table's."""
    if entry.rule.metric is not Metric.SPEND:
        return ""
    return entry.budget.currency or config_currency


__all__ = ["BudgetFigures", "BudgetView", "CheckRequest", "Decision", "ReservationLimits", "UsageEstimate"]
