"""Settings of the control plane reporting tests run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from services.settings import ServerSettings, ServiceName


def reporting_settings(database_url: str, data_dir: Path, **overrides: Any) -> ServerSettings:
    """A control plane for reporting tests; by default its background compaction is off, so tests compact
    explicitly and know which rollups are dirty."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "data_dir": data_dir,
        "database_url": database_url,
        "services": frozenset({ServiceName.TELEMETRY, ServiceName.REPORTING, ServiceName.ADMIN}),
        "drain_delay": timedelta(0),
        "shutdown_grace": timedelta(seconds=1),
        "rollup_compaction_interval": timedelta(0),
        "ingest_workers": 0,  # tests/telemetry prepares batches both ways
    }
    return ServerSettings(**{**values, **overrides})
