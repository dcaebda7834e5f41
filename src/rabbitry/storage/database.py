"""The process's database: an async engine, a session factory and the migration runner.

Migrations run under a lock, so any number of processes started together on a fresh database
all come up: the first migrates, the others wait and then find nothing left to do. On
PostgreSQL the lock is an advisory lock (held by a connection: a process that dies releases
it); on SQLite, an exclusive ``flock`` on a file beside the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from rabbitry.errors import StorageError
from rabbitry.storage.migrations import Migrations

# The advisory lock key of Rabbitry's migrations on PostgreSQL: any fixed bigint, the same in
# every process of every version ("rabbitry" in ASCII).
MIGRATION_LOCK = 0x7261626269747279
# How often a process waiting for SQLite's migration lock tries again.
_SQLITE_LOCK_POLL = 0.05


class Database:
    """Owns the engine. Use ``async with Database(url) as db`` or call :meth:`close`."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self._echo = echo
        if url.startswith("sqlite"):
            _ensure_sqlite_dir(url)
        # No statement parameters in errors or echo (a user's data, a token's hash): the
        # errors end in logs.
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True, "hide_parameters": True}
        if url.startswith("sqlite"):
            # One writer at a time is SQLite's model; a busy timeout turns lock contention
            # into waiting instead of "database is locked" errors.
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer_engine: AsyncEngine | None = None

    @property
    def writer_engine(self) -> AsyncEngine:
        """A pool of its own for writers that talk to the driver themselves, one statement
        after another (the event store's PostgreSQL append), without the ping the main pool
        sends on every checkout: a round trip per batch, measured at about a fifth of the
        workflow worker's throughput. Such a writer must treat a dead connection as transient
        (invalidate it and run its transaction again), which costs one failed attempt after
        the server restarted instead of a ping on every batch."""
        if self._writer_engine is None:
            self._writer_engine = create_async_engine(
                self.url, echo=self._echo, pool_pre_ping=False, hide_parameters=True
            )
        return self._writer_engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session in a transaction, committed on success; database errors become
        :class:`StorageError`."""
        with database_errors():
            async with self.sessions.begin() as session:
                yield session

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a transaction (no unit of work, no identity map: what a query
        over many rows wants), committed on success; database errors become
        :class:`StorageError`."""
        with database_errors():
            async with self.engine.begin() as connection:
                yield connection

    async def upgrade(
        self, revision: str = "heads", *, migrations: Migrations | None = None
    ) -> None:
        """Apply the ``migrations`` (every installed part's by default) up to ``revision``.

        Raises :class:`StorageError` with the driver's one-line reason (an unreachable server,
        a missing database, a failed migration), never the driver's own exception.
        """
        from alembic import command  # imported here: it is slow, and only migrations need it

        config = (migrations or Migrations.installed()).config(self.url)
        try:
            async with self._migration_lock():
                await asyncio.to_thread(command.upgrade, config, revision)
        except StorageError:
            raise
        except Exception as exc:  # Alembic and every driver raise their own types
            raise StorageError(f"cannot migrate the database: {_reason(exc)}") from exc

    @asynccontextmanager
    async def _migration_lock(self) -> AsyncIterator[None]:
        """Hold the database's migration lock (waiting for another process's to end)."""
        if self.is_sqlite:
            path = _sqlite_path(self.url)
            if path is None:  # in memory: nobody else can see it
                yield
                return
            async with _file_lock(Path(f"{path}.migrations.lock")):
                yield
            return
        if self.engine.dialect.name != "postgresql":
            yield
            return
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                yield
            finally:
                with contextlib.suppress(SQLAlchemyError, OSError):  # gone: the lock with it
                    await connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK}
                    )

    async def close(self) -> None:
        if self._writer_engine is not None:
            await self._writer_engine.dispose()
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@contextmanager
def database_errors() -> Iterator[None]:
    """Turns what SQLAlchemy and the drivers raise into :class:`StorageError`: the one place
    that does."""
    try:
        yield
    except SQLAlchemyError as exc:
        hint = "; is the database set up? `rabbitry db upgrade` creates its tables"
        raise StorageError(
            f"database error: {type(exc).__name__}: {driver_message(exc)}"
            + (hint if _missing_table(exc) else "")
        ) from exc
    except OSError as exc:  # a refused or dropped connection (TimeoutError too), from the driver
        raise StorageError(f"database unreachable: {exc}") from exc


@asynccontextmanager
async def open_database(url: str, *, upgrade: bool = True) -> AsyncIterator[Database]:
    """The database at ``url``, migrated to the latest revision unless ``upgrade`` is false."""
    database = Database(url)
    try:
        if upgrade:
            await database.upgrade()
        yield database
    finally:
        await database.close()


def _reason(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy appends the statement and a link)."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


@asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive ``flock`` on ``path``, polled so that waiting stays cancellable."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_SQLITE_LOCK_POLL)
        yield  # closing the descriptor releases the lock
    finally:
        os.close(descriptor)


def _sqlite_path(url: str) -> str | None:
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return path if path and path != ":memory:" else None


def _ensure_sqlite_dir(url: str) -> None:
    path = _sqlite_path(url)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # WAL is a property of the file: switch once, here, before any pooled connection
        # exists. Switching on every connect fails at once ("database is locked") when
        # another connection is writing, whatever the busy timeout.
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _missing_table(exc: SQLAlchemyError) -> bool:
    """Whether the statement met a table that does not exist (SQLite says so in words,
    PostgreSQL with SQLSTATE 42P01): most often a database no one migrated."""
    cause = getattr(exc, "orig", None)
    return getattr(cause, "sqlstate", None) == "42P01" or "no such table" in str(cause)


def driver_message(exc: BaseException) -> str:
    """The driver's own words, on one line: without SQLAlchemy's dump of the statement and its
    parameters, which would carry data into the log."""
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0][:500] if lines else type(exc).__name__
