"""Validation of an EnvironmentConfig: every problem found, each naming its field path and the fix."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from google.protobuf.duration_pb2 import Duration

from meterwire.config.v1 import config_service_pb2 as pb
from services.accounting.bounds import MAX_PRICE_MICROS_PER_MILLION
from services.errors import InvalidArgumentError
from services.validation import require_duration


@dataclass(frozen=True, slots=True)
class ConfigLimits:
    """What the server accepts from agents, so a config never asks agents for more than ingest allows."""

    max_batch_events: int
    max_batch_bytes: int


MAX_ALIASES: Final = 1_000
MAX_TARGETS: Final = 32
MAX_PRICES: Final = 10_000
MAX_DISABLED_KEYS: Final = 100_000
MAX_NAME_BYTES: Final = 256
MAX_DENY_MESSAGE_BYTES: Final = 1024
HEARTBEAT_INTERVAL_RANGE: Final = (timedelta(seconds=1), timedelta(minutes=5))
BATCH_LINGER_MAX: Final = timedelta(seconds=10)
MAX_UNACKED_BATCHES: Final = 1024
MIN_SPOOL_BYTES: Final = 1024 * 1024
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_KEY_ID = re.compile(r"^[\x21-\x7e]+$")
"""Printable ASCII without spaces: ids and fingerprints, never a secret (which the agent never sends)."""


class ConfigInvalidError(InvalidArgumentError):
    """INVALID_ARGUMENT listing every problem, each as `field.path: problem`."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(*problems[0])
        self.problems = problems
        self.args = ("; ".join(f"{field}: {problem}" for field, problem in problems),)

    def __str__(self) -> str:
        return str(self.args[0])


def validate_config(config: pb.EnvironmentConfig, limits: ConfigLimits, *, field: str = "config") -> None:
    """Raises ConfigInvalidError naming every bad field; returns when the config can be stored."""
    problems = [
        *_pricing_problems(config.pricing, f"{field}.pricing"),
        *_alias_problems(config, field),
        *_agent_problems(config.agent, limits, f"{field}.agent"),
        *_enforcement_problems(config.budget_enforcement, f"{field}.budget_enforcement"),
        *_disabled_key_problems(config.disabled_api_key_ids, f"{field}.disabled_api_key_ids"),
    ]
    if problems:
        raise ConfigInvalidError(problems)


def _name_problem(value: str, field: str, *, required: bool = True) -> tuple[str, str] | None:
    if required and not value.strip():
        return (field, "is required")
    if len(value.encode()) > MAX_NAME_BYTES:
        return (field, f"is longer than {MAX_NAME_BYTES} bytes")
    if value != value.strip():
        return (field, f"{value!r} has leading or trailing spaces")
    return None


def _pricing_problems(pricing: pb.PricingTable, field: str) -> Iterable[tuple[str, str]]:
    if len(pricing.models) > MAX_PRICES:
        yield (f"{field}.models", f"has {len(pricing.models)} prices, at most {MAX_PRICES}")
        return
    if pricing.models and not pricing.currency:
        yield (f"{field}.currency", "is required when there are prices (an ISO 4217 code such as 'USD')")
    elif pricing.currency and not _CURRENCY.fullmatch(pricing.currency):
        yield (f"{field}.currency", f"{pricing.currency!r} is not an ISO 4217 code such as 'USD'")
    seen: dict[tuple[str, str], int] = {}
    for index, price in enumerate(pricing.models):
        at = f"{field}.models[{index}]"
        for problem in (
            _name_problem(price.model, f"{at}.model"),
            _name_problem(price.provider, f"{at}.provider", required=False),
        ):
            if problem:
                yield problem
        key = (price.model, price.provider)
        if key in seen:
            yield (
                f"{at}.model",
                f"{price.model!r} (provider {price.provider or 'any'!r}) is already priced at "
                f"{field}.models[{seen[key]}]",
            )
        seen.setdefault(key, index)
        for name in ("input_micros_per_million", "output_micros_per_million"):
            wrong = _price_problem(getattr(price, name))
            if wrong:
                yield (f"{at}.{name}", wrong)
        for name in ("cache_read_micros_per_million", "cache_write_micros_per_million", "reasoning_micros_per_million"):
            wrong = _price_problem(getattr(price, name)) if price.HasField(name) else None  # type: ignore[arg-type]
            if wrong:
                yield (f"{at}.{name}", wrong)
        for category, micros in sorted(price.category_micros_per_million.items()):
            if not category.strip():
                yield (f"{at}.category_micros_per_million", "has an empty category name")
            wrong = _price_problem(micros)
            if wrong:
                yield (f"{at}.category_micros_per_million[{category!r}]", wrong)


def _price_problem(micros: int) -> str | None:
    """A price outside 0..MAX_PRICE_MICROS_PER_MILLION: above it, an event within ingest's token bounds could be
    priced beyond int64 (services.accounting.bounds has the arithmetic)."""
    if micros < 0:
        return f"must not be negative (got {micros})"
    if micros > MAX_PRICE_MICROS_PER_MILLION:
        return (
            f"{micros} is above the largest price accepted, {MAX_PRICE_MICROS_PER_MILLION} micros per million "
            "tokens (100 currency units per token); check its unit"
        )
    return None


def _priced(pricing: pb.PricingTable) -> set[tuple[str, str]]:
    return {(price.model, price.provider) for price in pricing.models}


def _alias_problems(config: pb.EnvironmentConfig, field: str) -> Iterable[tuple[str, str]]:
    if len(config.aliases) > MAX_ALIASES:
        yield (f"{field}.aliases", f"has {len(config.aliases)} aliases, at most {MAX_ALIASES}")
        return
    priced = _priced(config.pricing)
    first_at: dict[str, int] = {}
    for index, alias in enumerate(config.aliases):
        at = f"{field}.aliases[{index}]"
        problem = _name_problem(alias.alias, f"{at}.alias")
        if problem:
            yield problem
        elif alias.alias in first_at:
            yield (f"{at}.alias", f"{alias.alias!r} is already defined at {field}.aliases[{first_at[alias.alias]}]")
        first_at.setdefault(alias.alias, index)
        if not alias.targets:
            yield (f"{at}.targets", "needs at least one target (model and provider)")
        if len(alias.targets) > MAX_TARGETS:
            yield (f"{at}.targets", f"has {len(alias.targets)} targets, at most {MAX_TARGETS}")
        for t_index, target in enumerate(alias.targets):
            t_at = f"{at}.targets[{t_index}]"
            problem = _name_problem(target.model, f"{t_at}.model") or _name_problem(
                target.provider, f"{t_at}.provider", required=False
            )
            if problem:
                yield problem
                continue
            # A price limited to another provider does not price this target; an unscoped one does.
            if target.provider:
                has_price = (target.model, "") in priced or (target.model, target.provider) in priced
            else:  # no provider named: any price for the model will do
                has_price = any(model == target.model for model, _ in priced)
            if not has_price:
                yield (f"{t_at}.model", f"{target.model!r} has no price in {field}.pricing (add one to pricing.models)")


def _duration_problem(value: Duration, field: str, low: timedelta, high: timedelta) -> tuple[str, str] | None:
    """The shared range check (services.validation), as one problem among those a config may have."""
    try:
        require_duration(value, field=field, low=low, high=high)
    except InvalidArgumentError as error:
        return (error.field, error.problem)
    return None


def _agent_problems(agent: pb.AgentSettings, limits: ConfigLimits, field: str) -> Iterable[tuple[str, str]]:
    durations = (
        ("heartbeat_interval", *HEARTBEAT_INTERVAL_RANGE),
        ("batch_linger", timedelta(0), BATCH_LINGER_MAX),
    )
    for name, low, high in durations:
        if agent.HasField(name):  # type: ignore[arg-type]
            problem = _duration_problem(getattr(agent, name), f"{field}.{name}", low, high)
            if problem:
                yield problem
    if agent.max_batch_events > limits.max_batch_events:
        yield (
            f"{field}.max_batch_events",
            f"{agent.max_batch_events} is above the server's limit of {limits.max_batch_events} events per batch",
        )
    if agent.max_batch_bytes > limits.max_batch_bytes:
        yield (
            f"{field}.max_batch_bytes",
            f"{agent.max_batch_bytes} is above the server's limit of {limits.max_batch_bytes} bytes per batch",
        )
    if agent.max_unacked_batches > MAX_UNACKED_BATCHES:
        yield (f"{field}.max_unacked_batches", f"{agent.max_unacked_batches} is above {MAX_UNACKED_BATCHES}")
    if agent.spool_max_bytes < 0:
        yield (f"{field}.spool_max_bytes", f"must be 0 (the default) or positive (got {agent.spool_max_bytes})")
    elif 0 < agent.spool_max_bytes < MIN_SPOOL_BYTES:
        yield (f"{field}.spool_max_bytes", f"{agent.spool_max_bytes} is below the minimum of {MIN_SPOOL_BYTES} (1 MiB)")


def _enforcement_problems(enforcement: pb.BudgetEnforcement, field: str) -> Iterable[tuple[str, str]]:
    status = enforcement.deny_http_status
    if status and not 400 <= status <= 599:
        yield (f"{field}.deny_http_status", f"{status} is not an HTTP error status (400-599), or 0 for 429")
    if len(enforcement.deny_message.encode()) > MAX_DENY_MESSAGE_BYTES:
        yield (f"{field}.deny_message", f"is longer than {MAX_DENY_MESSAGE_BYTES} bytes")


def _disabled_key_problems(key_ids: Iterable[str], field: str) -> Iterable[tuple[str, str]]:
    keys = list(key_ids)
    if len(keys) > MAX_DISABLED_KEYS:
        yield (field, f"has {len(keys)} ids, at most {MAX_DISABLED_KEYS}")
        return
    first_at: dict[str, int] = {}
    for index, key_id in enumerate(keys):
        at = f"{field}[{index}]"
        if not key_id:
            yield (at, "is empty")
        elif len(key_id.encode()) > MAX_NAME_BYTES or not _KEY_ID.fullmatch(key_id):
            yield (
                at,
                f"{key_id[:40]!r} is not an API key id (printable ASCII, no spaces, at most {MAX_NAME_BYTES} bytes)",
            )
        elif key_id in first_at:
            yield (at, f"{key_id!r} is listed twice (first at {field}[{first_at[key_id]}])")
        first_at.setdefault(key_id, index)
