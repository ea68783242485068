"""Each environment's price book, read through the config hub (the pricing rules themselves are budgeting.pricing,
shared with the gateway agent)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from budgeting.pricing import MICROS_PER_UNIT_PRICE, EventCost, PriceBook, category_kind, price_tokens

if TYPE_CHECKING:  # ingest worker processes price with PriceBook alone and import no config code
    from services.config.store import StoredConfig

__all__ = [
    "MICROS_PER_UNIT_PRICE",
    "EventCost",
    "LatestConfigs",
    "PriceBook",
    "PriceBooks",
    "Pricing",
    "category_kind",
    "price_tokens",
]


@dataclass(frozen=True, slots=True)
class Pricing:
    """An environment's pricing table, parsed and serialized (b"": it has none); ingest worker processes
    receive the serialized form."""

    book: PriceBook
    serialized: bytes


_NO_PRICING: Final = Pricing(PriceBook(), b"")


class LatestConfigs(Protocol):
    """Where the current config version of each environment is held (services.config.hub.ConfigHub)."""

    def latest(self, environment_id: str) -> StoredConfig | None: ...


class PriceBooks:
    """Every environment's pricing table and currency, read through the config hub's latest versions.

    The hub holds each environment's current config in memory (published at once by this process, polled
    from other replicas), so pricing costs no database read; a table is parsed once per config version.
    """

    def __init__(self, configs: LatestConfigs) -> None:
        self._configs = configs
        self._parsed: dict[str, tuple[StoredConfig, Pricing]] = {}

    def get(self, environment_id: str) -> Pricing:
        """The environment's pricing as of its current config version."""
        stored = self._configs.latest(environment_id)
        if stored is None:
            return _NO_PRICING
        parsed = self._parsed.get(environment_id)
        if parsed is not None and parsed[0] is stored:
            return parsed[1]
        table = stored.config.pricing if stored.config.HasField("pricing") else None
        pricing = _NO_PRICING if table is None else Pricing(PriceBook(table), table.SerializeToString())
        self._parsed[environment_id] = (stored, pricing)
        return pricing

    def currency(self, environment_ids: Iterable[str]) -> str:
        """The pricing currency of the environments when they share one; "" when they differ or have none."""
        currencies = {self.get(environment_id).book.currency for environment_id in environment_ids}
        currencies.discard("")
        return currencies.pop() if len(currencies) == 1 else ""
