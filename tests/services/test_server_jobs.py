"""Which background jobs a replica runs for the services it hosts, and that they are drained with it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from services.server import ControlPlane
from services.settings import ServerSettings, ServiceName

_FLEET_JOBS = ["heartbeat-flush", "heartbeat-status", "heartbeat-peers"]
_ROLLUP_JOB = "rollup-maintenance"


@pytest.mark.parametrize(
    ("services", "jobs"),
    [
        ("admin", ["revocation-poll"]),
        ("budget", ["revocation-poll", "config-poll", "webhook-delivery", "budget-snapshot-poll"]),
        ("telemetry", ["revocation-poll", "config-poll", _ROLLUP_JOB]),
        ("reporting", ["revocation-poll", "config-poll", _ROLLUP_JOB]),
        ("heartbeat", ["revocation-poll", "config-poll", *_FLEET_JOBS]),
        ("config", ["revocation-poll", "config-poll", *_FLEET_JOBS]),
    ],
)
async def test_each_replica_runs_the_jobs_of_what_it_hosts(
    database_url: str, tmp_path: Path, services: str, jobs: list[str]
) -> None:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=database_url,
        services=frozenset({ServiceName(services)}),
        drain_delay=timedelta(0),
    )
    async with ControlPlane(settings) as plane:
        assert sorted(plane.job_names) == sorted(jobs)


async def test_every_service_hosted_runs_each_job_once(database_url: str, tmp_path: Path) -> None:
    settings = ServerSettings(
        listen="127.0.0.1:0", data_dir=tmp_path / "var", database_url=database_url, drain_delay=timedelta(0)
    )
    async with ControlPlane(settings) as plane:
        assert sorted(plane.job_names) == sorted(
            ["revocation-poll", "config-poll", *_FLEET_JOBS, _ROLLUP_JOB, "webhook-delivery", "budget-snapshot-poll"]
        )
