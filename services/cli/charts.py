"""Terminal charts for usage reports: horizontal bars for rankings, sparklines for trends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

_SPARKS: Final = "▁▂▃▄▅▆▇█"
_BAR_EIGHTHS: Final = " ▏▎▍▌▋▊▉█"


def sparkline(values: Sequence[float]) -> str:
    """One character per value, scaled between the series' min and max (all equal: a flat low line)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high == low:
        return _SPARKS[0] * len(values)
    scale = (len(_SPARKS) - 1) / (high - low)
    return "".join(_SPARKS[round((value - low) * scale)] for value in values)


def bar(value: float, maximum: float, width: int) -> str:
    """A bar of `width` cells for `value` out of `maximum`, with eighth-cell resolution."""
    if maximum <= 0 or value <= 0:
        return ""
    eighths = round(min(value / maximum, 1.0) * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_BAR_EIGHTHS[rest] if rest else "")
