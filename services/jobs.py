"""Background jobs of the control plane: one periodic-job shape, run and drained by the server's JobRunner.

Every timer of the server (rollup compaction and pruning, heartbeat flush, status checks and peer refresh,
token revocation and config polls) is a PeriodicJob: a name, an interval and one async step. The server builds
the runner once, adds the jobs that belong to the services it hosts, starts them after the database is ready
and drains them on shutdown. A failing step is logged and retried at the next interval; it never ends the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from prometheus_client import Counter

from services.lifecycle import Managed, cancel_and_wait

log = structlog.get_logger("meterwire.jobs")

JOB_FAILURES = Counter(
    "meterwire_job_failures_total", "Background job steps that raised (retried next interval).", ["job"]
)

Step = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """One background job: `step` every `interval`, the first one an interval after start."""

    name: str
    """Names the job in logs, task names and the failure metric."""
    interval: timedelta
    """Time between the end of one step and the start of the next; zero or less disables the job."""
    step: Step
    """One run of the job; an exception is logged and the next interval retries."""
    run_at_start: bool = False
    """Run one step as soon as the job starts instead of after the first interval."""
    final_step: Step | None = None
    """Run once when the job is drained, after its loop stopped (e.g. flush what is still in memory)."""

    @property
    def enabled(self) -> bool:
        return self.interval.total_seconds() > 0


class JobRunner(Managed):
    """Runs PeriodicJobs as asyncio tasks. `async with JobRunner(jobs):` starts and drains them."""

    def __init__(self, jobs: list[PeriodicJob] | None = None) -> None:
        self._jobs: list[PeriodicJob] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        for job in jobs or ():
            self.add(job)

    @property
    def names(self) -> list[str]:
        return [job.name for job in self._jobs]

    def add(self, job: PeriodicJob) -> None:
        """Adds a job; one added after start() starts at once."""
        if job.name in self.names:
            raise ValueError(f"a job named {job.name!r} is already added")
        self._jobs.append(job)
        if self._started:
            self._launch(job)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for job in self._jobs:
            self._launch(job)

    def _launch(self, job: PeriodicJob) -> None:
        if job.enabled:
            self._tasks.append(asyncio.get_running_loop().create_task(self._loop(job), name=job.name))

    async def _loop(self, job: PeriodicJob) -> None:
        period = job.interval.total_seconds()
        if not job.run_at_start:
            await asyncio.sleep(period)
        while True:
            await run_step(job.name, job.step)
            await asyncio.sleep(period)

    async def shutdown(self) -> None:
        """Cancels every loop (a step cut off mid-transaction rolls back), then runs the final steps, last
        added first; safe to call twice."""
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        if not self._started:
            return
        self._started = False
        for job in reversed(self._jobs):
            if job.final_step is not None:
                await run_step(job.name, job.final_step)


async def run_step(name: str, step: Step) -> None:
    """Runs one step of a job, logging (never raising) what it raised."""
    try:
        await step()
    except Exception:
        JOB_FAILURES.labels(name).inc()
        log.exception("background job failed; retrying at the next interval", job=name)
