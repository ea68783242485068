"""A seeded random usage dataset and the plain-Python oracle its reports are checked against."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from meterwire.common.v1 import usage_pb2

ENVIRONMENTS = ("alpha", "beta")
GATEWAYS = (("alpha", "gw-1"), ("alpha", "gw-2"), ("beta", "gw-1"))
MODELS = (("gpt-4o", "openai"), ("claude-3-5-sonnet", "anthropic"), ("llama-3-70b", "bedrock"), ("o3", "openai"))
TEAMS = ("red", "green", "blue")


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event as the oracle sees it: the gateway it came through and its protobuf."""

    environment_id: str
    gateway_id: str
    message: usage_pb2.UsageEvent
    time_us: int = field(compare=False)


def _micros(value: Timestamp | Duration) -> int:
    return value.seconds * 1_000_000 + value.nanos // 1000


def make_dataset(count: int, *, seed: int, now: datetime) -> list[Event]:
    """`count` distinct events over the 3 days before `now` (minus 10 minutes), requests of 1-3 attempts."""
    rng = random.Random(seed)
    start = now - timedelta(days=3)
    span_us = int((timedelta(days=3) - timedelta(minutes=10)) / timedelta(microseconds=1))
    events: list[Event] = []
    request = 0
    while len(events) < count:
        request += 1
        environment_id, gateway_id = GATEWAYS[rng.randrange(len(GATEWAYS))]
        attempts = rng.choice((1, 1, 1, 1, 2, 3))
        moment = start + timedelta(microseconds=rng.randrange(span_us))
        key = f"key-{rng.randrange(5)}"
        user = f"user-{rng.randrange(8)}"
        team = rng.choice(TEAMS) if rng.random() < 0.7 else None
        requested = MODELS[rng.randrange(len(MODELS))][0]
        for attempt in range(1, attempts + 1):
            model, provider = (
                MODELS[rng.randrange(len(MODELS))]
                if attempt > 1
                else next(pair for pair in MODELS if pair[0] == requested)
            )
            message = usage_pb2.UsageEvent(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                request_id=f"{environment_id}-req-{request}",
                attempt=attempt,
                api_key_id=key,
                user_id=user,
                route=rng.choice(("/v1/chat/completions", "/v1/embeddings")),
                request_type=rng.choice((usage_pb2.REQUEST_TYPE_CHAT, usage_pb2.REQUEST_TYPE_EMBEDDING)),
                requested_model=requested,
                resolved_model=model,
                provider=provider,
                credential_type=rng.choice((usage_pb2.CREDENTIAL_TYPE_MANAGED, usage_pb2.CREDENTIAL_TYPE_BYOK)),
                streaming=rng.random() < 0.4,
                sequence=len(events) + 1,
            )
            message.event_time.FromDatetime(moment + timedelta(milliseconds=attempt * 700))
            final = attempt == attempts
            roll = rng.random()
            if roll < 0.05:
                pass  # status unknown
            elif not final or roll < 0.12:
                message.status_code = rng.choice((429, 500, 503, 400))
                message.error_type = "rate_limited" if message.status_code == 429 else "upstream"
            else:
                message.status_code = 200
            if team is not None:
                message.tags["team"] = team
            if rng.random() < 0.5:
                message.tags["feature"] = rng.choice(("search", "chat"))
            if rng.random() < 0.92:
                message.tokens.input = rng.randrange(0, 20_000)
                if rng.random() < 0.9:
                    message.tokens.output = rng.randrange(0, 4_000)
                if rng.random() < 0.3:
                    message.tokens.cache_read = rng.randrange(0, 8_000)
                if rng.random() < 0.1:
                    message.tokens.cache_write = rng.randrange(0, 3_000)
                if rng.random() < 0.2:
                    message.tokens.reasoning = rng.randrange(0, 2_000)
                if rng.random() < 0.04 and message.tokens.input:
                    message.tokens.categories["audio_input"] = rng.randrange(0, message.tokens.input + 1)
            if rng.random() < 0.85:
                message.cost_micros = rng.randrange(0, 900_000)
            if rng.random() < 0.3:
                message.cache_savings_micros = rng.randrange(0, 50_000)
            if rng.random() < 0.95:
                message.latency.FromMicroseconds(int(math.exp(rng.gauss(13.0, 1.0))) + 5_000)
                message.gateway_latency.FromMicroseconds(rng.randrange(100, 5_000))
            if message.streaming and rng.random() < 0.9:
                message.ttft.FromMicroseconds(int(math.exp(rng.gauss(12.0, 0.8))) + 2_000)
            events.append(Event(environment_id, gateway_id, message, _micros(message.event_time)))
            if len(events) == count:
                break
    return events


class Figures:
    """Every UsageSummary figure of a set of events, computed directly from the events."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.requests = self.attempts = self.successes = self.errors = 0
        self.tokens = dict.fromkeys(("input", "output", "cache_read", "cache_write", "reasoning"), 0)
        self.categories: dict[str, int] = {}
        self.cost = self.savings = self.unknown_tokens = self.unpriced = 0
        self.latencies: list[int] = []
        self.ttfts: list[int] = []
        for event in events:
            message = event.message
            self.attempts += 1
            self.requests += message.attempt == 1
            if message.HasField("status_code"):
                if message.status_code < 400:
                    self.successes += 1
                else:
                    self.errors += 1
            known = False
            for kind in self.tokens:
                if message.tokens.HasField(kind):  # type: ignore[arg-type]
                    self.tokens[kind] += getattr(message.tokens, kind)
                    known = True
            self.unknown_tokens += not known
            for category, value in message.tokens.categories.items():
                self.categories[category] = self.categories.get(category, 0) + value
            if message.HasField("cost_micros"):
                self.cost += message.cost_micros
            else:
                self.unpriced += 1
            self.savings += message.cache_savings_micros
            if message.HasField("latency"):
                self.latencies.append(_micros(message.latency))
            if message.HasField("ttft"):
                self.ttfts.append(_micros(message.ttft))

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    def metric(self, name: str) -> float:
        """A figure by its reporting Metric suffix (REQUESTS, COST, LATENCY_P95, ...)."""
        simple = {
            "REQUESTS": self.requests,
            "ATTEMPTS": self.attempts,
            "SUCCESSES": self.successes,
            "ERRORS": self.errors,
            "COST": self.cost,
            "TOTAL_TOKENS": self.total_tokens,
            "INPUT_TOKENS": self.tokens["input"],
        }
        if name in simple:
            return simple[name]
        if name == "LATENCY_P95":
            return exact_quantile_ms(self.latencies, 0.95) or 0.0
        raise KeyError(name)


def exact_quantile_ms(values_us: Sequence[int], q: float) -> float | None:
    """The nearest-rank quantile, exactly."""
    if not values_us:
        return None
    ordered = sorted(values_us)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1] / 1000


def within_bucket_error(estimate_ms: float, exact_ms: float) -> bool:
    """Histogram buckets are 10^(1/8) wide: an estimate and the value share one, so they differ by less."""
    ratio = 10 ** (1 / 8) * 1.0001
    return exact_ms / ratio <= estimate_ms <= exact_ms * ratio


def local_day_start_us(time_us: int, zone: ZoneInfo) -> int:
    """The start of the local calendar day holding an instant, computed independently of the server."""
    local = datetime.fromtimestamp(time_us / 1e6, tz=UTC).astimezone(zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    return int(midnight.timestamp()) * 1_000_000


def grouped(events: Iterable[Event], key: Callable[[Event], object]) -> dict[object, list[Event]]:
    groups: dict[object, list[Event]] = {}
    for event in events:
        groups.setdefault(key(event), []).append(event)
    return groups
