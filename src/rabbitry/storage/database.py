"""The process's database: an async engine, a session factory and the migration runner."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from rabbitry.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


class Database:
    """Owns the engine. Use ``async with Database(url) as db`` or call :meth:`close`."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        if url.startswith("sqlite"):
            _ensure_sqlite_dir(url)
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
        if url.startswith("sqlite"):
            # One writer at a time is SQLite's model; a busy timeout turns lock contention
            # into waiting instead of "database is locked" errors.
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on success; database errors become
        :class:`StorageError`."""
        try:
            async with self.sessions.begin() as session:
                yield session
        except (SQLAlchemyError, OSError) as exc:  # drivers raise bare OSError when unreachable
            raise StorageError(f"database error: {type(exc).__name__}: {exc}") from exc

    async def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations up to ``revision``.

        Raises :class:`StorageError` with the driver's one-line reason (an unreachable server,
        a missing database, a failed migration), never the driver's own exception.
        """
        from alembic import command  # imported here: it is slow, and only migrations need it

        try:
            await asyncio.to_thread(command.upgrade, alembic_config(self.url), revision)
        except StorageError:
            raise
        except Exception as exc:  # Alembic and every driver raise their own types
            raise StorageError(f"cannot migrate the database: {_reason(exc)}") from exc

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1].split("?", 1)[0]
    if path and path != ":memory:":
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
