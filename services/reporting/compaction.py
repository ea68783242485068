"""Compaction and retention moved to services.accounting; these names stay importable here for callers
written against the old place: `meterwire db prune` (services/cli) and the reporting oracle test, which is
kept byte for byte."""

from __future__ import annotations

from services.accounting.compaction import compact, dirty_hour_starts, prune
from services.accounting.maintenance import maintain

__all__ = ["compact", "dirty_hour_starts", "maintain", "prune"]
