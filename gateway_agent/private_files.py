"""Keeps the agent's data dir private: the spool and config cache hold usage data and the environment's config."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger("meterwire.agent.files")

PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_DIRECTORY_MODE: Final = 0o700
SQLITE_SIDE_FILE_SUFFIXES: Final = ("-wal", "-shm", "-journal")
"""Files SQLite creates beside a database, with the database file's own mode."""


def private_directory(directory: Path) -> None:
    """Creates `directory` (and missing parents) owner-only, or makes an existing one owner-only.

    A shared directory (sticky like /tmp, or another user's) is not the agent's to close: it is left as it is,
    with a warning, and the files in it are still private.
    """
    directory.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    status = directory.stat()
    mode = stat.S_IMODE(status.st_mode)
    if not mode & ~PRIVATE_DIRECTORY_MODE:
        return
    if status.st_mode & stat.S_ISVTX or status.st_uid != os.geteuid():
        log.warning(
            "an agent directory is open to other users; its files themselves are private",
            path=str(directory),
            mode=f"{mode:04o}",
        )
        return
    os.chmod(directory, PRIVATE_DIRECTORY_MODE)
    log.warning("made an agent directory private", path=str(directory), mode=f"{mode:04o}")


def private_files(paths: Iterable[Path]) -> None:
    """Makes those of `paths` that exist owner-only (read and write), logging each one that was not."""
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & ~PRIVATE_FILE_MODE:
            os.chmod(path, PRIVATE_FILE_MODE)
            log.warning("made an agent file private", path=str(path), mode=f"{mode:04o}")


def private_sqlite_database(database: Path) -> None:
    """Creates `database` empty and 0600 before SQLite opens it, and makes it and its side files private.

    SQLite would create a new database file 0644 (less the umask) and gives the -wal, -shm and -journal files it
    makes later the database file's mode, so a private database file keeps all of them private; an empty file
    is a valid empty database.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    private_files([database, *(database.with_name(database.name + s) for s in SQLITE_SIDE_FILE_SUFFIXES)])


def open_private(path: Path) -> int:
    """A new file (truncated if it exists) for writing, owner-only: a descriptor for os.fdopen."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    os.fchmod(descriptor, PRIVATE_FILE_MODE)  # O_CREAT's mode does not apply to a file that already existed
    return descriptor
