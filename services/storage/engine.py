"""Creates the async SQLAlchemy engine for SQLite or PostgreSQL and checks that the database answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import structlog
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, SingletonThreadPool

from services.storage.errors import DatabaseUnreachableError, StorageConfigError

log = structlog.get_logger("meterwire.storage.engine")

SQLITE_DRIVER: Final = "sqlite+aiosqlite"
POSTGRES_DRIVER: Final = "postgresql+asyncpg"
SUPPORTED_URL_FORMS: Final = (
    "sqlite+aiosqlite:///<path/to/meterwire.db>",
    "postgresql+asyncpg://<user>[:<password>]@<host>[:<port>]/<database>",
)
SQLITE_FILE_NAME: Final = "meterwire.db"

SQLITE_BUSY_TIMEOUT_MS: Final = 5_000
"""How long a SQLite writer waits for another's lock before failing with "database is locked"."""

SQLITE_WRITER_CACHE_KIB: Final = 64 * 1024
"""Page cache of the ingest writer's connection: a 10,000-event transaction touches tens of MB of pages."""

CONNECT_TIMEOUT_S: Final = 5.0
"""How long opening one connection may take, so an unreachable server fails startup fast."""

PRIVATE_FILE_MODE: Final = 0o600
"""The SQLite database and the files SQLite keeps beside it hold usage data and token hashes: owner only."""
PRIVATE_DIRECTORY_MODE: Final = 0o700
"""The directory holding the SQLite database: owner only, so nobody else even lists it."""
SQLITE_SIDE_FILE_SUFFIXES: Final = ("-wal", "-shm", "-journal")
"""Files SQLite creates beside the database (with the database file's own mode)."""

POSTGRES_POOL_SIZE: Final = 10
POSTGRES_MAX_OVERFLOW: Final = 10
POSTGRES_POOL_RECYCLE_S: Final = 1_800
"""Recycle pooled connections before typical load-balancer / PgBouncer idle cut-offs."""


def redact(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, safe for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def sqlite_url(data_dir: Path) -> str:
    """The URL of meterwire's SQLite database inside ``data_dir``."""
    return f"{SQLITE_DRIVER}:///{(data_dir.absolute() / SQLITE_FILE_NAME).as_posix()}"


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """Create the engine for a ``sqlite+aiosqlite`` or ``postgresql+asyncpg`` URL.

    Its errors (and echo) never show a statement's parameters (``hide_parameters``): they are the stored data
    itself, usage events' user and API key ids above all, and a logged database error must not copy them into
    the log.

    Raises StorageConfigError for any other driver or when the SQLite directory cannot be created.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageConfigError(f"cannot parse database URL: {exc}; {_supported_forms()}") from exc
    driver = parsed.drivername
    if driver == SQLITE_DRIVER:
        return _create_sqlite_engine(parsed, echo=echo)
    if driver == POSTGRES_DRIVER:
        return create_async_engine(
            parsed,
            echo=echo,
            hide_parameters=True,
            pool_pre_ping=True,
            pool_size=POSTGRES_POOL_SIZE,
            max_overflow=POSTGRES_MAX_OVERFLOW,
            pool_recycle=POSTGRES_POOL_RECYCLE_S,
            connect_args={"timeout": CONNECT_TIMEOUT_S},
        )
    raise StorageConfigError(f"unsupported database URL {redact(parsed)}; {_supported_forms()}")


def _supported_forms() -> str:
    return "use " + " or ".join(SUPPORTED_URL_FORMS)


def _create_sqlite_engine(url: URL, *, echo: bool) -> AsyncEngine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        # Runs once at startup, before the server accepts requests, so the blocking calls are harmless.
        _prepare_private_database(Path(database), url)
    engine = create_async_engine(url, echo=echo, hide_parameters=True)
    event.listen(engine.sync_engine, "connect", _pragmas(*SQLITE_PRAGMAS))
    return engine


def _prepare_private_database(database: Path, url: URL) -> None:
    """Creates the database's directory (0700) and file (0600) before SQLite does, and makes existing ones private.

    SQLite creates a new database file 0644 (less the umask) and gives its -wal, -shm and -journal files the
    database file's own mode, so a database file that is 0600 before SQLite first opens it keeps every file
    it later creates private too; an empty file is a valid empty database.
    """
    directory = database.parent
    try:
        directory.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
        _make_directory_private(directory)
        with contextlib.suppress(FileExistsError):  # made earlier, or just now by another process
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        for path in (database, *(database.with_name(database.name + s) for s in SQLITE_SIDE_FILE_SUFFIXES)):
            _make_file_private(path)
    except OSError as exc:
        raise StorageConfigError(
            f"cannot prepare the directory {directory} for database {redact(url)}: {exc.strerror or exc}"
        ) from exc


def _make_file_private(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & ~PRIVATE_FILE_MODE:
        os.chmod(path, PRIVATE_FILE_MODE)
        log.warning("made a database file private", path=str(path), mode=f"{mode:04o}", now=f"{PRIVATE_FILE_MODE:04o}")


def _make_directory_private(directory: Path) -> None:
    status = directory.stat()
    mode = stat.S_IMODE(status.st_mode)
    if not mode & ~PRIVATE_DIRECTORY_MODE:
        return
    # A shared directory (sticky like /tmp, or someone else's) is not meterwire's to close: only the files are.
    if status.st_mode & stat.S_ISVTX or status.st_uid != os.geteuid():
        log.warning(
            "the database's directory is open to other users; the database files themselves are private",
            path=str(directory),
            mode=f"{mode:04o}",
        )
        return
    os.chmod(directory, PRIVATE_DIRECTORY_MODE)
    log.warning(
        "made the database's directory private",
        path=str(directory),
        mode=f"{mode:04o}",
        now=f"{PRIVATE_DIRECTORY_MODE:04o}",
    )


SQLITE_PRAGMAS: Final = (
    # WAL lets readers run while one writer commits; NORMAL sync is durable in WAL mode except for the
    # last transactions on power loss; SQLite leaves foreign keys off unless asked, per connection.
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_MS)}",
)


def _pragmas(*statements: str) -> Callable[[Any, ConnectionPoolEntry], None]:
    """A "connect" listener running `statements` on every new SQLite connection."""

    def run(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()

    return run


def create_sqlite_thread_engine(engine: AsyncEngine) -> Engine:
    """A synchronous engine on the same SQLite file as `engine`, for a writer that runs whole transactions in
    one worker thread (one hop off the event loop per transaction instead of one per statement).

    One connection, with the same pragmas, plus a larger page cache so big transactions do not spill, and no
    automatic checkpoints: those run inside the commit that crosses the threshold and flush the disk, so the
    writer's log is checkpointed by a storage.checkpoint.WalCheckpointer instead. Every transaction starts
    with ``BEGIN IMMEDIATE``: it holds the database's write lock from its first statement, so what it reads
    (which event ids are stored already) cannot change under it before it writes. The caller must use it from
    a single thread: the connection is opened there and never shared.
    """
    thread_engine = _sqlite_sync_engine(engine)
    event.listen(
        thread_engine,
        "connect",
        _pragmas(*SQLITE_PRAGMAS, f"PRAGMA cache_size=-{SQLITE_WRITER_CACHE_KIB}", "PRAGMA wal_autocheckpoint=0"),
    )
    # SQLAlchemy's recipe for explicit transactions on pysqlite: the driver's own implicit BEGIN (deferred,
    # emitted only before the first write) is turned off and the engine emits the BEGIN it is told to.
    event.listen(thread_engine, "connect", _driver_transactions_off)
    event.listen(thread_engine, "begin", _begin_immediate)
    return thread_engine


def create_sqlite_autocommit_engine(engine: AsyncEngine, *pragmas: str) -> Engine:
    """A synchronous engine on the same SQLite file as `engine` that runs every statement outside a transaction
    (checkpoints must), with the same pragmas and then `pragmas`; one connection, for one thread, like
    create_sqlite_thread_engine."""
    autocommit_engine = _sqlite_sync_engine(engine, isolation_level="AUTOCOMMIT")
    event.listen(autocommit_engine, "connect", _pragmas(*SQLITE_PRAGMAS, *pragmas))
    return autocommit_engine


def _sqlite_sync_engine(engine: AsyncEngine, **options: Any) -> Engine:
    if engine.dialect.name != "sqlite":
        raise ValueError(f"a synchronous SQLite engine needs a SQLite engine, not {engine.dialect.name}")
    return create_sync_engine(
        engine.url.set(drivername="sqlite"),
        poolclass=SingletonThreadPool,
        pool_size=1,
        hide_parameters=engine.sync_engine.hide_parameters,
        **options,
    )


def _driver_transactions_off(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


async def check_connection(engine: AsyncEngine) -> None:
    """Open one connection and run ``SELECT 1``; raise DatabaseUnreachableError naming the URL if not."""
    try:
        # The driver's own timeout covers the connect; this one also covers a server that accepts TCP
        # connections but never answers.
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise DatabaseUnreachableError(f"cannot reach database {redact(engine.url)}: {_reason(exc)}") from exc


async def maintenance_warnings(engine: AsyncEngine, table_names: Iterable[str]) -> list[str]:
    """What the database's own settings will make slower over time, worded for the operator.

    PostgreSQL: every ingest upsert and every compaction leaves a dead row version in the rollup tables, and
    only (auto)vacuum reclaims them; without it tables and indexes bloat and ingest and reports slow down.
    """
    if engine.dialect.name != "postgresql":
        return []
    warnings = []
    async with engine.connect() as connection:
        if await connection.scalar(text("SHOW autovacuum")) == "off":
            warnings.append(
                "autovacuum is off on this PostgreSQL server: dead rows in meterwire's rollup tables are never "
                "reclaimed, so ingest and reports slow down over time; turn it on (autovacuum = on) or run "
                "VACUUM on the usage_* tables regularly"
            )
        disabled = await connection.scalars(
            text(
                "SELECT relname FROM pg_class, unnest(reloptions) AS option "
                "WHERE relnamespace = current_schema()::regnamespace AND relname = ANY(:names) AND lower(option) IN "
                "('autovacuum_enabled=false', 'autovacuum_enabled=off', 'autovacuum_enabled=0', "
                "'autovacuum_enabled=no', 'autovacuum_enabled=f', 'autovacuum_enabled=n') ORDER BY relname"
            ),
            {"names": list(table_names)},
        )
        for name in disabled:
            warnings.append(
                f"autovacuum is disabled for table {name} (ALTER TABLE {name} RESET (autovacuum_enabled) "
                "turns it back on): its dead rows are never reclaimed, so it slows down over time"
            )
    return warnings


def _reason(exc: BaseException) -> str:
    """The driver's reason for a failed connection, on one line."""
    cause: BaseException = exc
    if isinstance(exc, SQLAlchemyError) and getattr(exc, "orig", None) is not None:
        cause = exc.orig  # type: ignore[attr-defined]
    if isinstance(cause, TimeoutError):
        reason = f"no answer within {CONNECT_TIMEOUT_S * 2:g} s"
    elif isinstance(cause, OSError) and cause.errno is not None:
        # asyncio words a refused connect as "Connect call failed ('127.0.0.1', 1)"; the errno is clearer.
        reason = os.strerror(cause.errno)
    else:
        reason = str(cause) or type(cause).__name__
    return " ".join(reason.split())
