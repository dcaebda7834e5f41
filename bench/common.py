"""What the benchmarks share: where the services are, the 256-byte message, fresh databases.

The scripts run as ``python bench/<name>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints

from rabbitry.storage import Database

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# A JSON job of 256 bytes, the size of a typical RoadRunner job in the figures.
PAYLOAD = {"id": 0, "text": "x" * 220}


def body() -> bytes:
    """PAYLOAD as compact JSON, padded with spaces to 256 bytes."""
    raw = json.dumps(PAYLOAD, separators=(",", ":")).encode()
    return raw + b" " * (256 - len(raw))


Drop = Callable[[], Awaitable[None]]


async def create_database(
    kind: str, directory: Path, admin_dsn: str = POSTGRES_ADMIN
) -> tuple[str, Drop]:
    """A fresh database for one run: a SQLite file in ``directory``, or a PostgreSQL database
    ``rabbitry_bench_<hex>`` on the server of ``admin_dsn``. Returns its SQLAlchemy URL and a
    coroutine function that drops it."""
    if kind == "sqlite":

        async def nothing() -> None:
            return None

        return f"sqlite+aiosqlite:///{directory / 'bench.db'}", nothing
    name = f"rabbitry_bench_{uuid.uuid4().hex[:12]}"
    await _admin(admin_dsn, f'CREATE DATABASE "{name}"')  # our own name: [a-z0-9_] only

    async def drop() -> None:
        await _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    parts = urlsplit(admin_dsn)
    return urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", "", "")), drop


@asynccontextmanager
async def fresh_database(admin_dsn: str = POSTGRES_ADMIN) -> AsyncIterator[Database]:
    """A migrated, empty PostgreSQL database for the run, dropped afterwards."""
    url, drop = await create_database("postgresql", Path("."), admin_dsn)
    db = Database(url)
    try:
        await db.upgrade()
        yield db
    finally:
        await db.close()
        await drop()


async def _admin(admin_dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
