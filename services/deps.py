"""The shared objects of one control plane (ServiceDeps): built once at start, handed to every servicer factory and
to the console, which read through them as the RPCs do."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from services.admin.service import AdminService
from services.budget.changes import BudgetChanges
from services.config.hub import ConfigHub
from services.heartbeat.fleet import Fleet
from services.pricing import PriceBooks
from services.revocation import Revocations
from services.settings import ServerSettings


@dataclass(frozen=True)
class ServiceDeps:
    """The shared objects of one control plane, built once at start and handed to every servicer factory."""

    settings: ServerSettings
    engine: AsyncEngine
    admin: AdminService
    revocations: Revocations
    config_hub: ConfigHub
    """The latest config of every environment (loaded when a service that reads config is hosted)."""
    fleet: Fleet
    """Every gateway's heartbeat state (loaded when heartbeat or config is hosted)."""
    prices: PriceBooks
    """Each environment's pricing table and currency, read through the config hub."""
    budget_changes: BudgetChanges
    """Wakes budget snapshot streams when usage commits or budgets change (the writer and budgets tell it)."""

    @classmethod
    def build(cls, settings: ServerSettings, engine: AsyncEngine) -> ServiceDeps:
        """Constructs the shared objects; none touches the database until loaded."""
        revocations = Revocations(engine, poll_interval=settings.revocation_poll_interval)
        admin = AdminService(engine, revocations=revocations, token_cache_ttl=settings.revocation_poll_interval)
        hub = ConfigHub(engine, settings)
        fleet = Fleet(engine, settings, hub)
        changes = BudgetChanges(engine, poll_interval=settings.budget_snapshot_poll_interval)
        return cls(settings, engine, admin, revocations, hub, fleet, PriceBooks(hub), changes)
