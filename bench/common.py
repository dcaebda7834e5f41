"""What the benchmarks share: where the services are, the 256-byte message, fresh databases.

The scripts run as ``python bench/<name>.py``, which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
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

_BROKER_PID: list[int] = []


def _ticks(pid: int | str) -> int:
    """User and system clock ticks process ``pid`` has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def broker_cpu() -> float:
    """CPU seconds the broker on 5672 has used so far (anyone else's load on it included)."""
    if not _BROKER_PID:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "eval", "os:getpid()."],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        _BROKER_PID.append(int(out.strip().strip('"')))
    return _ticks(_BROKER_PID[0]) / os.sysconf("SC_CLK_TCK")


def postgres_cpu() -> float:
    """CPU seconds every PostgreSQL process alive now has used so far (backends that ended
    meanwhile are not counted: read it around a span its connections outlive)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                comm = Path(entry.path, "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("postgres"):
                ticks += _ticks(entry.name)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of every core since boot, from /proc/stat: their difference over a
    span says how much of the machine was in use."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


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
