"""An atomic on-disk cache of the last good config versions, so the agent can serve while the control plane is away."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gateway_agent.private_files import open_private, private_directory, private_files
from meterwire.config.v1 import config_service_pb2 as config_pb

log = structlog.get_logger("meterwire.agent.config_cache")

CURRENT = "config.current.json"
PREVIOUS = "config.previous.json"


class CacheCorruptError(Exception):
    """A cache file is unreadable or its checksum does not match."""


@dataclass(frozen=True)
class CachedConfig:
    """One cached config version and when the agent applied it."""

    config_version: config_pb.ConfigVersion
    applied_time: datetime
    source: str
    """Which file it came from: "current" or "previous"."""

    @property
    def version(self) -> int:
        return int(self.config_version.version)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(config_version: config_pb.ConfigVersion, applied_time: datetime) -> bytes:
    payload = config_version.SerializeToString(deterministic=True)
    body = {
        "format": 1,
        "environment_id": config_version.environment_id,
        "version": config_version.version,
        "applied_time": applied_time.isoformat(),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload": base64.b64encode(payload).decode(),
    }
    return json.dumps(body, indent=1).encode()


def _decode(data: bytes, source: str) -> CachedConfig:
    try:
        body = json.loads(data)
        payload = base64.b64decode(body["payload"], validate=True)
        if hashlib.sha256(payload).hexdigest() != body["payload_sha256"]:
            raise CacheCorruptError("checksum mismatch")
        config_version = config_pb.ConfigVersion.FromString(payload)
        applied_time = datetime.fromisoformat(body["applied_time"])
    except CacheCorruptError:
        raise
    except Exception as error:  # any parse failure means the file is damaged
        raise CacheCorruptError(f"{type(error).__name__}: {error}") from None
    if config_version.version != body["version"]:
        raise CacheCorruptError("version field does not match the payload")
    return CachedConfig(config_version, applied_time, source)


class ConfigCache:
    """Two files in the data dir: the current version and the previous good one. Writes are blocking."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.corrupt_files_seen = 0

    def save(self, config_version: config_pb.ConfigVersion, *, applied_time: datetime | None = None) -> None:
        """Atomically makes `config_version` current, keeping the former current as the previous good one."""
        private_directory(self.directory)
        data = _encode(config_version, applied_time or datetime.now(UTC))
        current = self.directory / CURRENT
        temp = self.directory / f".{CURRENT}.tmp-{os.getpid()}"
        with os.fdopen(open_private(temp), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # A crash between the two renames leaves only the previous file: the loader falls back to it.
        if current.exists() and self._readable(current):
            os.replace(current, self.directory / PREVIOUS)
        os.replace(temp, current)
        _fsync_dir(self.directory)

    def _readable(self, path: Path) -> bool:
        try:
            _decode(path.read_bytes(), "current")
        except (OSError, CacheCorruptError):
            return False
        return True

    def load(self) -> CachedConfig | None:
        """The current version, else the previous good one (a damaged file is logged loudly), else None.

        Files and a directory an older version left readable by others are made private first (logged).
        """
        if self.directory.is_dir():
            private_directory(self.directory)
            private_files(path for path in self.directory.iterdir() if path.is_file())
        for name, source in ((CURRENT, "current"), (PREVIOUS, "previous")):
            path = self.directory / name
            if not path.exists():
                continue
            try:
                return _decode(path.read_bytes(), source)
            except (OSError, CacheCorruptError) as error:
                self.corrupt_files_seen += 1
                log.error(
                    "config cache file is damaged; trying the previous good one", path=str(path), error=str(error)
                )
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(path.name + ".corrupt"))
        return None
