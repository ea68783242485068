"""Settings of the control plane budget tests run: webhook delivery and alert polls fast enough to watch."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from services.settings import ServerSettings


def budget_settings(database_url: str, data_dir: Path) -> ServerSettings:
    return ServerSettings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        database_url=database_url,
        drain_delay=timedelta(0),
        ingest_workers=0,
        shutdown_grace=timedelta(seconds=1),
        webhook_delivery_interval=timedelta(milliseconds=50),
        webhook_max_backoff=timedelta(milliseconds=200),
        webhook_timeout=timedelta(seconds=2),
        budget_alert_poll_interval=timedelta(milliseconds=50),
    )
