"""The spool's SQLite file: its schema, opened private, damage told from a full disk, set aside, dead letters read."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway_agent.private_files import private_sqlite_database
from gateway_agent.settings import Durability

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    enqueue_us INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    field TEXT NOT NULL,
    message TEXT NOT NULL,
    dead_time_us INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS budget_digests (
    seq INTEGER PRIMARY KEY,
    event_time_us INTEGER NOT NULL,
    api_key_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    resolved_model TEXT NOT NULL,
    provider TEXT NOT NULL,
    route TEXT NOT NULL,
    tags TEXT NOT NULL,
    spend_micros INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    requests INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS budget_state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
# budget_digests: acknowledged events the last budget snapshot does not include yet (they still count locally);
# budget_state: the last BudgetSnapshot ('snapshot'), so a restart while the control plane is away keeps it.
# Words SQLite uses when a file is damaged or is not a database at all (as opposed to busy or full).
_CORRUPTION_MARKERS = ("not a database", "malformed", "corrupt", "file is encrypted")


def is_corruption(error: BaseException) -> bool:
    return isinstance(error, sqlite3.DatabaseError) and any(m in str(error).lower() for m in _CORRUPTION_MARKERS)


def is_disk_full(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, sqlite3.OperationalError) and ("full" in text or "disk i/o" in text)


@dataclass(frozen=True)
class DeadLetter:
    """One event the control plane rejected, kept with the reason."""

    sequence: int
    event_id: str
    reason: str
    field: str
    message: str
    dead_time_us: int
    payload: bytes


def connect(path: Path, *, durability: Durability) -> sqlite3.Connection:
    private_sqlite_database(path)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={'FULL' if durability is Durability.FSYNC else 'NORMAL'}")
    connection.executescript(_SCHEMA)
    return connection


def set_aside(path: Path) -> Path:
    """Renames a damaged spool (and its WAL) out of the way, keeping it for forensics."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}-{time.time_ns() % 1_000_000}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


def iter_dead_letters(path: Path, *, limit: int | None = None) -> Iterator[DeadLetter]:
    """Reads dead letters straight from a spool file (read-only; works while the agent runs)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = "SELECT seq, event_id, reason, field, message, dead_time_us, payload FROM dead_letters ORDER BY seq"
        params: tuple[int, ...] = ()
        if limit is not None:
            query += " LIMIT ?"
            params = (limit,)
        for row in connection.execute(query, params):
            yield DeadLetter(*row)
    finally:
        connection.close()
