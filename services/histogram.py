"""Fixed log-scale latency histogram buckets shared by ingest (bucketing) and reporting (percentiles).

Buckets are over milliseconds, 8 per decade from 1 ms to 1,000,000 ms: bucket 0 holds values below 1 ms,
bucket i (1..48) holds [10^((i-1)/8), 10^(i/8)) ms and bucket 49 holds values of 10^6 ms and above. The
layout is part of the storage schema (one rollup column per bucket), so changing it needs a migration.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Final

BUCKETS_PER_DECADE: Final = 8
DECADES: Final = 6
BUCKET_COUNT: Final = BUCKETS_PER_DECADE * DECADES + 2
"""Under 1 ms, 48 log buckets, then 10^6 ms and above."""

_US_PER_MS: Final = 1000


def _ceil_bound_us(exponent_eighths: int) -> int:
    """The smallest integer microsecond count n with n >= 1000 * 10^(exponent_eighths / 8), exactly.

    For integer inputs ``v < x`` is the same as ``v < ceil(x)``, so integer bounds make bucketing exact at
    the boundaries where a float power of ten would be off by one ulp (10^(8/8) ms must be 10,000 us).
    """
    # n >= 1000 * 10^(e/8)  <=>  n^8 >= 10^(24 + e): compare in integers only.
    target = 10 ** (24 + exponent_eighths)
    n = math.ceil(_US_PER_MS * 10 ** (exponent_eighths / BUCKETS_PER_DECADE))
    while n**8 < target:
        n += 1
    while n > 1 and (n - 1) ** 8 >= target:
        n -= 1
    return n


_UPPER_BOUNDS_US: Final[tuple[int, ...]] = tuple(_ceil_bound_us(i) for i in range(BUCKET_COUNT - 1))
"""Exclusive integer upper bounds in microseconds of buckets 0..48; bucket 49 is unbounded."""

bucket_upper_bounds_ms: Final[tuple[float, ...]] = (
    *(10 ** (i / BUCKETS_PER_DECADE) for i in range(BUCKET_COUNT - 1)),
    math.inf,
)
"""Exclusive upper bound in milliseconds of every bucket; the last one is infinity."""

_LOWER_BOUNDS_MS: Final[tuple[float, ...]] = (0.0, *bucket_upper_bounds_ms[:-1])


def bucket_bounds_us(index: int) -> tuple[int | None, int | None]:
    """Bucket `index`'s [lower, upper) bounds in integer microseconds (None: unbounded), exactly as
    bucket_index draws them, so SQL can bucket raw durations the way ingest does."""
    lower = _UPPER_BOUNDS_US[index - 1] if index > 0 else None
    upper = _UPPER_BOUNDS_US[index] if index < BUCKET_COUNT - 1 else None
    return lower, upper


def bucket_index(value_us: int) -> int:
    """The bucket holding a duration of ``value_us`` microseconds (negative values count as 0)."""
    return bisect_right(_UPPER_BOUNDS_US, value_us)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """Estimate the nearest-rank ``q`` quantile in milliseconds from bucket counts; None when empty.

    The rank is located in its bucket and interpolated geometrically inside it (linearly in bucket 0,
    which starts at 0). The overflow bucket has no upper bound, so it reports its lower bound, 10^6 ms.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be within [0, 1], got {q}")
    if len(counts) != BUCKET_COUNT:
        raise ValueError(f"expected {BUCKET_COUNT} bucket counts, got {len(counts)}")
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(counts):
        if count <= 0 or seen + count < rank:
            seen += count
            continue
        # Place the rank-th of `count` values at the centre of its share of the bucket.
        fraction = (rank - seen - 0.5) / count
        lower, upper = _LOWER_BOUNDS_MS[index], bucket_upper_bounds_ms[index]
        if index == 0:
            return upper * fraction
        if math.isinf(upper):
            return lower
        return float(lower * (upper / lower) ** fraction)
    raise AssertionError("unreachable: the rank is within the total")


def relative_bucket_error() -> float:
    """The largest relative error of a quantile estimate for values within 1 ms .. 10^6 ms.

    The estimate and the exact value lie in the same bucket, whose bounds differ by a factor 10^(1/8).
    """
    return float(10 ** (1 / BUCKETS_PER_DECADE) - 1)
