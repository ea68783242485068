"""Errors raised by the storage layer; every one derives from StorageError."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class StorageConfigError(StorageError):
    """The database URL or storage settings cannot be used (unsupported driver, bad path)."""


class DatabaseUnreachableError(StorageError):
    """The database did not accept a connection; the message names the redacted URL and the reason."""


class SchemaTooNewError(StorageError):
    """The database schema is at a revision this build of meterwire does not know (it is newer)."""
