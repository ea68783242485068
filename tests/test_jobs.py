"""The periodic-job runner: steps repeat, failures are retried, drain runs final steps once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from services.jobs import JobRunner, PeriodicJob

_FAST = timedelta(milliseconds=10)


async def test_a_job_repeats_and_a_failing_step_does_not_end_it() -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("the database hiccuped")

    async with JobRunner([PeriodicJob("flaky", _FAST, step, run_at_start=True)]):
        for _ in range(200):
            if len(calls) >= 4:
                break
            await asyncio.sleep(0.01)
    assert len(calls) >= 4


async def test_drain_stops_the_loops_and_runs_each_final_step_once() -> None:
    order: list[str] = []

    async def never() -> None:
        order.append("step")

    async def final(name: str) -> None:
        order.append(name)

    runner = JobRunner(
        [
            PeriodicJob("first", timedelta(hours=1), never, final_step=lambda: final("first")),
            PeriodicJob("second", timedelta(hours=1), never, final_step=lambda: final("second")),
        ]
    )
    await runner.start()
    await runner.shutdown()
    await runner.shutdown()
    assert order == ["second", "first"]


async def test_a_job_with_no_interval_is_disabled_and_names_are_unique() -> None:
    calls: list[int] = []

    async def step() -> None:
        calls.append(1)

    runner = JobRunner([PeriodicJob("off", timedelta(0), step, run_at_start=True)])
    async with runner:
        await asyncio.sleep(0.05)
    assert calls == []
    with pytest.raises(ValueError, match="already added"):
        runner.add(PeriodicJob("off", _FAST, step))
