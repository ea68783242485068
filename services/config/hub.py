"""The current config version of every environment, with in-process push and a database poll across replicas.

A version stored through this process is published at once. Another replica sharing the database stores
versions this process never sees, so a cheap poll (one GROUP BY over the config_versions primary key every
`config_poll_interval`, a job the server runs: `poll_job`) picks those up and publishes them here too: agents
connected to any replica get every version, at most one poll interval late.

Built once by the server and shared by whatever reads config (the config service, the fleet's heartbeat
intervals, pricing, report currency).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from services.config import store
from services.config.store import StoredConfig
from services.jobs import PeriodicJob
from services.settings import ServerSettings
from services.storage.uow import UnitOfWork

log = structlog.get_logger("meterwire.config")


class ConfigHub:
    """Keeps the latest StoredConfig per environment; watchers wait for a version newer than theirs."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings) -> None:
        self._engine = engine
        self._settings = settings
        self._latest: dict[str, StoredConfig] = {}
        self._intervals: dict[str, timedelta] = {}
        self._changed: dict[str, asyncio.Event] = {}

    async def load(self) -> None:
        """Publishes the current version of every environment (once, at start)."""
        async with UnitOfWork(self._engine) as uow:
            for stored in await store.latest_of_every_environment(uow.connection):
                self.publish(stored)

    def poll_job(self) -> PeriodicJob:
        return PeriodicJob("config-poll", self._settings.config_poll_interval, self.poll)

    def latest(self, environment_id: str) -> StoredConfig | None:
        return self._latest.get(environment_id)

    def latest_version(self, environment_id: str) -> int:
        stored = self._latest.get(environment_id)
        return 0 if stored is None else stored.version

    def heartbeat_interval(self, environment_id: str) -> timedelta:
        """The interval agents of the environment are told: its config's, else the server default."""
        return self._intervals.get(environment_id, self._settings.heartbeat_interval)

    def publish(self, stored: StoredConfig) -> None:
        """Makes `stored` current if it is newer than what this process knows, and wakes its watchers."""
        known = self._latest.get(stored.environment_id)
        if known is not None and known.version >= stored.version:
            return
        self._latest[stored.environment_id] = stored
        agent = stored.config.agent
        if agent.HasField("heartbeat_interval"):
            self._intervals[stored.environment_id] = agent.heartbeat_interval.ToTimedelta()
        else:
            self._intervals.pop(stored.environment_id, None)
        changed = self._changed.pop(stored.environment_id, None)
        if changed is not None:
            changed.set()

    async def wait_newer(self, environment_id: str, known_version: int) -> StoredConfig:
        """The environment's current version as soon as it is above `known_version` (at once if it is)."""
        while True:
            stored = self._latest.get(environment_id)
            if stored is not None and stored.version > known_version:
                return stored
            await self._changed.setdefault(environment_id, asyncio.Event()).wait()

    async def poll(self) -> None:
        """Publishes versions other replicas stored since the last poll."""
        async with UnitOfWork(self._engine) as uow:
            newest = await store.latest_version_numbers(uow.connection)
            for environment_id, version in newest.items():
                if version > self.latest_version(environment_id):
                    stored = await store.get_version(uow.connection, environment_id, version)
                    if stored is not None:
                        log.info(
                            "config version seen from another replica", environment=environment_id, version=version
                        )
                        self.publish(stored)
