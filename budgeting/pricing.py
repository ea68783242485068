"""Pricing: a price book (one environment's pricing table) and the exact price of one usage event's tokens, in
integer micro-units; the control plane prices events at ingest and the gateway agent prices estimates and its own
events with these same functions.

Arithmetic: every price is micro-units per million tokens, so ``tokens * price`` is an exact integer in
"micro-units per million". All kinds are summed in that unit and divided by 1,000,000 ONCE, rounding half up
(``floor((n + 500_000) / 1_000_000)``), so no per-kind rounding error accumulates.

Token kinds are disjoint (see usage.proto): input, output, cache_read, cache_write and reasoning. Category
tokens (``audio_input``, ``image_output``, ...) are already INCLUDED in one kind; where the model has a price
for the category, those tokens are priced at it instead of at their kind's price. The kind a category belongs
to is named by its suffix (``_input``, ``_output``, ``_cache_read``, ``_cache_write``, ``_reasoning``). A
priced category whose kind cannot be told from its name, or whose tokens exceed their kind's count, cannot be
priced exactly, so the cost is unknown rather than wrong.

A kind the gateway did not report contributes nothing (it cannot be charged); an event with no kind reported
at all has an unknown cost. Unset cache-read and cache-write prices are the input price; an unset reasoning
price is the output price.

Cache savings are what prompt-cache READS saved against the uncached input price:
``cache_read * (input price - cache_read price)``, rounded the same way. Cache WRITES are deliberately left
out: a write usually costs more than plain input (a premium paid for later savings), it is already part of
the cost, and netting it here would make one request's "savings" depend on how later requests reuse the cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from meterwire.config.v1 import config_service_pb2 as config_pb

MICROS_PER_UNIT_PRICE: Final = 1_000_000
"""Prices are per million tokens."""
_HALF: Final = MICROS_PER_UNIT_PRICE // 2

_CATEGORY_KIND_SUFFIXES: Final = (
    ("_cache_read", "cache_read"),
    ("_cache_write", "cache_write"),
    ("_reasoning", "reasoning"),
    ("_input", "input"),
    ("_output", "output"),
)


@dataclass(frozen=True, slots=True)
class EventCost:
    """What an event's tokens cost and what its cache reads saved, in micro-units of the table's currency."""

    cost_micros: int
    cache_savings_micros: int


def category_kind(category: str) -> str | None:
    """The token kind a category's tokens are part of, from its name's suffix; None when it names none."""
    for suffix, kind in _CATEGORY_KIND_SUFFIXES:
        if category.endswith(suffix):
            return kind
    return None


def _round_half_up(micro_millionths: int) -> int:
    # Floor division rounds toward -inf, so adding the half first rounds .5 up for negatives too.
    return (micro_millionths + _HALF) // MICROS_PER_UNIT_PRICE


def price_tokens(
    *,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read_tokens: int | None,
    cache_write_tokens: int | None,
    reasoning_tokens: int | None,
    categories: Mapping[str, int],
    price: config_pb.ModelPrice,
) -> EventCost | None:
    """The cost and cache savings of one event's tokens at `price`; None when they cannot be priced exactly."""
    reported = (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens)
    if all(count is None for count in reported):
        return None
    input_price = price.input_micros_per_million
    output_price = price.output_micros_per_million
    cache_read_price = (
        price.cache_read_micros_per_million if price.HasField("cache_read_micros_per_million") else input_price
    )
    cache_write_price = (
        price.cache_write_micros_per_million if price.HasField("cache_write_micros_per_million") else input_price
    )
    reasoning_price = (
        price.reasoning_micros_per_million if price.HasField("reasoning_micros_per_million") else output_price
    )
    counts = {
        "input": input_tokens or 0,
        "output": output_tokens or 0,
        "cache_read": cache_read_tokens or 0,
        "cache_write": cache_write_tokens or 0,
        "reasoning": reasoning_tokens or 0,
    }
    total = 0
    if categories:
        category_prices = price.category_micros_per_million
        for category, tokens in categories.items():
            if category not in category_prices or tokens == 0:
                continue  # priced at its kind's price, as part of that kind's count
            kind = category_kind(category)
            if kind is None or tokens > counts[kind]:
                return None
            counts[kind] -= tokens
            total += tokens * category_prices[category]
    total += (
        counts["input"] * input_price
        + counts["output"] * output_price
        + counts["cache_read"] * cache_read_price
        + counts["cache_write"] * cache_write_price
        + counts["reasoning"] * reasoning_price
    )
    savings = (cache_read_tokens or 0) * (input_price - cache_read_price)
    return EventCost(cost_micros=_round_half_up(total), cache_savings_micros=_round_half_up(savings))


class PriceBook:
    """An environment's pricing table indexed for lookups by (resolved model, provider)."""

    __slots__ = ("_dearest", "_prices", "currency")

    def __init__(self, table: config_pb.PricingTable | None = None) -> None:
        self.currency: str = table.currency if table is not None else ""
        self._prices: dict[tuple[str, str], config_pb.ModelPrice] = {}
        for model_price in table.models if table is not None else ():
            # The first entry for a (model, provider) wins, as a reader of the table would expect.
            self._prices.setdefault((model_price.model, model_price.provider), model_price)
        self._dearest: dict[str, config_pb.ModelPrice] = {}
        for (model, _), model_price in self._prices.items():
            known = self._dearest.get(model)
            if known is None or _dearness(model_price) > _dearness(known):
                self._dearest[model] = model_price

    def __len__(self) -> int:
        return len(self._prices)

    def lookup(self, model: str, provider: str) -> config_pb.ModelPrice | None:
        """The price for the model at this provider, else its any-provider price, else None (unpriced)."""
        if not model:
            return None
        prices = self._prices
        return prices.get((model, provider)) or prices.get((model, ""))

    def lookup_any_provider(self, model: str) -> config_pb.ModelPrice | None:
        """For an estimate made before routing (the provider unknown): the model's any-provider price, else its
        dearest provider's (by output, then input price), else None (unpriced)."""
        if not model:
            return None
        return self._prices.get((model, "")) or self._dearest.get(model)


def _dearness(price: config_pb.ModelPrice) -> tuple[int, int]:
    return (price.output_micros_per_million, price.input_micros_per_million)
