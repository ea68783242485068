"""`meterwire simulate`: plays realistic gateway traffic through a real agent and summarises what it sent."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from meterwire.common.v1 import usage_pb2

# Aliases callers ask for, each with an ordered list of (model, provider): the first, then fallbacks.
ALIASES: dict[str, list[tuple[str, str]]] = {
    "fast": [("gpt-4o-mini", "openai"), ("claude-3-5-haiku", "anthropic")],
    "smart": [("gpt-4o", "openai"), ("claude-sonnet-4", "anthropic"), ("gemini-2.5-pro", "google")],
    "embed": [("text-embedding-3-small", "openai"), ("embed-v4", "cohere")],
}
_ERRORS = [
    (429, "rate_limited", "rate limit reached"),
    (503, "overloaded", "provider overloaded"),
    (504, "timeout", ""),
]


@dataclass
class ModelTotals:
    attempts: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Summary:
    """What the simulation sent."""

    requests: int = 0
    attempts: int = 0
    dropped: int = 0
    failed_requests: int = 0
    by_model: dict[str, ModelTotals] = field(default_factory=lambda: defaultdict(ModelTotals))
    event_ids: list[str] = field(default_factory=list)


def make_request(
    rng: random.Random, *, api_keys: int = 8, users: int = 40, error_rate: float = 0.08
) -> list[usage_pb2.UsageEvent]:
    """The attempts of one gateway request: a failed attempt falls back to the alias's next target."""
    alias = rng.choices(list(ALIASES), weights=[6, 3, 1])[0]
    request_id = f"req-{uuid.UUID(int=rng.getrandbits(128)).hex[:20]}"
    embedding = alias == "embed"
    streaming = not embedding and rng.random() < 0.6
    common = {
        "request_id": request_id,
        "api_key_id": f"key-{rng.randrange(api_keys):02d}",
        "user_id": f"user-{rng.randrange(users):03d}",
        "tags": {
            "team": rng.choice(["search", "support", "growth"]),
            "feature": rng.choice(["chat", "summary", "rag"]),
        },
        "route": "/v1/embeddings" if embedding else "/v1/chat/completions",
        "request_type": usage_pb2.REQUEST_TYPE_EMBEDDING if embedding else usage_pb2.REQUEST_TYPE_CHAT,
        "requested_model": alias,
        "credential_type": usage_pb2.CREDENTIAL_TYPE_MANAGED if rng.random() < 0.85 else usage_pb2.CREDENTIAL_TYPE_BYOK,
        "streaming": streaming,
    }
    events = []
    for attempt, (model, provider) in enumerate(ALIASES[alias], start=1):
        failed = attempt < len(ALIASES[alias]) and rng.random() < error_rate
        event = usage_pb2.UsageEvent(attempt=attempt, resolved_model=model, provider=provider, **common)  # type: ignore[arg-type]
        event.event_time.GetCurrentTime()
        latency_ms = rng.randint(40, 400) if failed else rng.randint(150, 4000)
        event.latency.FromMilliseconds(latency_ms)
        event.gateway_latency.FromMilliseconds(rng.randint(1, 12))
        if failed:
            status, error_type, message = rng.choice(_ERRORS)
            event.status_code, event.error_type, event.error_message = status, error_type, message
        else:
            event.status_code = 200
            cached = rng.randint(0, 800) if rng.random() < 0.3 else 0
            event.tokens.input = rng.randint(20, 3000)
            event.tokens.cache_read = cached
            if not embedding:
                event.tokens.output = rng.randint(5, 1200)
                if model in ("gpt-4o", "gemini-2.5-pro") and rng.random() < 0.3:
                    event.tokens.reasoning = rng.randint(50, 900)
            if streaming:
                event.ttft.FromMilliseconds(min(latency_ms, rng.randint(80, 900)))
        events.append(event)
        if not failed:
            break
    return events


Recorder = Callable[[usage_pb2.UsageEvent], Awaitable[bool]]


async def simulate(
    record: Recorder,
    *,
    rate: float,
    count: int | None,
    duration: timedelta | None,
    seed: int,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Sends requests at `rate` per second until `count` requests or `duration` elapsed; returns the totals."""
    rng = random.Random(seed)
    summary = Summary()
    started = time.monotonic()
    deadline = started + duration.total_seconds() if duration else None
    last_progress = 0.0
    while (count is None or summary.requests < count) and (deadline is None or time.monotonic() < deadline):
        events = make_request(rng)
        summary.requests += 1
        for event in events:
            recorded = await record(event)
            summary.attempts += 1
            totals = summary.by_model[event.resolved_model]
            totals.attempts += 1
            totals.errors += 1 if event.error_type else 0
            totals.input_tokens += event.tokens.input
            totals.output_tokens += event.tokens.output
            if recorded:
                summary.event_ids.append(event.event_id)
            else:
                summary.dropped += 1
        summary.failed_requests += 1 if events[-1].error_type else 0
        if rate > 0:
            lag = started + summary.requests / rate - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
            elif summary.requests % 256 == 0:
                await asyncio.sleep(0)  # let the agent's own tasks run at full speed
        if on_progress is not None and time.monotonic() - last_progress >= 1.0:
            last_progress = time.monotonic()
            on_progress(summary)
    return summary


def simulate_command(
    agent: Annotated[
        str | None, typer.Option("--agent", help="A running agent daemon's --listen address (unix:///… or host:port).")
    ] = None,
    control_plane: Annotated[
        str | None, typer.Option("--control-plane", help="Without --agent: run an agent in-process against this.")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="In-process agent: gateway token file.")
    ] = None,
    environment: Annotated[str, typer.Option("--environment", "-e", help="In-process agent: the environment.")] = "",
    data_dir: Annotated[Path, typer.Option("--data-dir", help="In-process agent: its data dir.")] = Path("var/agent"),
    rate: Annotated[float, typer.Option(help="Requests per second; 0: as fast as possible.")] = 50.0,
    count: Annotated[int | None, typer.Option(help="Stop after this many requests.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed plays the same traffic.")] = 1,
) -> None:
    """Play realistic gateway traffic through an agent: aliases with fallbacks, keys, users, tags, streaming, errors."""
    from services.cli.client import fail

    if count is None and duration is None:
        count = 1000
    if agent is None and (control_plane is None or token_file is None or not environment):
        fail("give --agent ADDRESS, or --control-plane, --token-file and --environment for an in-process agent", code=2)
    summary = asyncio.run(_run(agent, control_plane, token_file, environment, data_dir, rate, count, duration, seed))
    _print_summary(summary)


async def _run(
    agent: str | None,
    control_plane: str | None,
    token_file: Path | None,
    environment: str,
    data_dir: Path,
    rate: float,
    count: int | None,
    duration: float | None,
    seed: int,
) -> Summary:
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    span = timedelta(seconds=duration) if duration else None
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("simulating", total=count or (duration and duration * rate) or None)

        def report(summary: Summary) -> None:
            progress.update(task, completed=summary.requests)
            if not console.is_terminal:
                console.print(
                    f"sent {summary.requests} requests, {summary.attempts} attempts, dropped {summary.dropped}"
                )

        if agent is not None:
            return await _through_daemon(agent, rate, count, span, seed, report)
        assert control_plane is not None
        assert token_file is not None
        return await _in_process(control_plane, token_file, environment, data_dir, rate, count, span, seed, report)


async def _through_daemon(
    address: str, rate: float, count: int | None, span: timedelta | None, seed: int, report: Callable[[Summary], None]
) -> Summary:
    import grpc

    from meterwire.agent.v1 import agent_service_pb2 as agent_pb
    from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = agent_grpc.AgentServiceStub(channel)

        async def record(event: usage_pb2.UsageEvent) -> bool:
            response = await stub.RecordUsage(agent_pb.RecordUsageRequest(event=event), timeout=10)
            event.event_id = response.event_id
            return response.outcome in (agent_pb.RECORD_OUTCOME_QUEUED, agent_pb.RECORD_OUTCOME_COMMITTED)

        return await simulate(record, rate=rate, count=count, duration=span, seed=seed, on_progress=report)


async def _in_process(
    control_plane: str,
    token_file: Path,
    environment: str,
    data_dir: Path,
    rate: float,
    count: int | None,
    span: timedelta | None,
    seed: int,
    report: Callable[[Summary], None],
) -> Summary:
    from gateway_agent import AgentSettings, GatewayAgent

    token = (await asyncio.to_thread(token_file.read_text)).strip()
    settings = AgentSettings(control_plane=control_plane, token=token, environment_id=environment, data_dir=data_dir)
    async with GatewayAgent(settings) as gateway_agent:

        async def record(event: usage_pb2.UsageEvent) -> bool:
            return (await gateway_agent.record(event)).spooled

        return await simulate(record, rate=rate, count=count, duration=span, seed=seed, on_progress=report)


def _print_summary(summary: Summary) -> None:
    from rich.table import Table

    from services.cli.output import console

    table = Table("model", "attempts", "errors", "input tokens", "output tokens", title="sent")
    for model, totals in sorted(summary.by_model.items()):
        table.add_row(
            model, str(totals.attempts), str(totals.errors), f"{totals.input_tokens:,}", f"{totals.output_tokens:,}"
        )
    console.print(table)
    console.print(
        f"requests {summary.requests}  attempts {summary.attempts}  failed requests {summary.failed_requests}"
        f"  dropped by the agent {summary.dropped}"
    )
