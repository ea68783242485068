"""Backoff with full jitter stays within its bounds and covers them."""

from __future__ import annotations

import random
from datetime import timedelta

from gateway_agent.channel import Backoff


def test_backoff_caps_double_from_100ms_up_to_30s() -> None:
    backoff = Backoff(initial=timedelta(milliseconds=100), maximum=timedelta(seconds=30))
    caps = [backoff.cap(n) for n in range(12)]
    assert caps[:4] == [0.1, 0.2, 0.4, 0.8]
    assert caps[8] == 25.6
    assert caps[9:] == [30.0, 30.0, 30.0]
    assert backoff.cap(10_000) == 30.0


def test_full_jitter_delays_fall_anywhere_between_zero_and_the_cap() -> None:
    backoff = Backoff(rng=random.Random(7))
    for attempt in (0, 3, 20):
        delays = [backoff.delay(attempt) for _ in range(2000)]
        cap = backoff.cap(attempt)
        assert all(0.0 <= d <= cap for d in delays)
        # Full jitter: spread over the whole range, not clustered near the cap.
        assert min(delays) < 0.05 * cap
        assert max(delays) > 0.95 * cap
