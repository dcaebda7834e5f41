"""Fixtures of the event-sourcing integration tests: real databases and a real broker.

A test module loads them with ``pytest_plugins = ("events_fixtures",)``; the fixture names
start with ``events_`` so that they never shadow another part's fixtures. A
PostgreSQL database is created fresh per test and dropped afterwards; every test gets its own
broker namespace, whose exchanges and queues are deleted afterwards. Nothing is skipped: if a
service is down, the test fails.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import asyncpg
import pytest

from rabbitry.config import ModuleConfig, Settings
from rabbitry.events.topology import events_topology, module_topology
from rabbitry.messaging.topology import Topology
from rabbitry.storage.database import Database

POSTGRES_ADMIN = "postgresql://root@127.0.0.1:5432/postgres"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_DB_NAME = re.compile(r"^rabbitry_e_[0-9a-f]{12}$")

MODULES = [
    ModuleConfig(name="crm", routing_keys=["customer.*", "invoice.paid"]),
    ModuleConfig(name="billing", routing_keys=["invoice.#"]),
    ModuleConfig(name="mailer", routing_keys=["*.created"]),
]


def _quoted(name: str) -> str:
    # CREATE/DROP DATABASE cannot take bind parameters; the name is generated here and checked.
    if not _DB_NAME.match(name):
        raise ValueError(name)
    return '"' + name + '"'


async def create_postgres_database() -> str:
    name = f"rabbitry_e_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute("CREATE DATABASE " + _quoted(name))
    finally:
        await conn.close()
    return f"postgresql+asyncpg://root@127.0.0.1:5432/{name}"


async def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[-1]
    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute("DROP DATABASE IF EXISTS " + _quoted(name) + " WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def events_db_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'rabbitry.db'}"
        yield url
        return
    url = await create_postgres_database()
    try:
        yield url
    finally:
        await drop_postgres_database(url)


@pytest.fixture
async def events_db(events_db_url: str) -> AsyncIterator[Database]:
    db = Database(events_db_url)
    await db.upgrade()
    try:
        yield db
    finally:
        await db.close()


def make_settings(database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings with a namespace of their own and short retry delays."""
    values: dict[str, Any] = {
        "namespace": f"t{uuid.uuid4().hex[:12]}",
        "amqp_url": AMQP_URL,
        "database_url": database_url,
        "retry_base_delay": 0.05,
        "retry_max_delay": 0.2,
        "max_attempts": 3,
        "modules": MODULES,
        "drain_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


async def delete_topology(topology: Topology) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        for queue in topology.queues:
            channel = await connection.channel()
            await channel.queue_delete(queue.name)
            await channel.close()
        for exchange in topology.exchanges:
            channel = await connection.channel()
            await channel.exchange_delete(exchange.name)
            await channel.close()
    finally:
        await connection.close()


@pytest.fixture
async def events_settings(events_db_url: str) -> AsyncIterator[Settings]:
    """Settings on the test's database and its own broker namespace, cleaned up afterwards."""
    value = make_settings(events_db_url)
    try:
        yield value
    finally:
        await delete_topology(events_topology(value) | module_topology(value, value.modules))


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def queue_messages(queue: str, *, limit: int = 1000) -> list[aio_pika.IncomingMessage]:
    """Take up to ``limit`` messages off ``queue`` (acknowledging them)."""
    connection = await aio_pika.connect(AMQP_URL)
    taken: list[aio_pika.IncomingMessage] = []
    try:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=False)
        while len(taken) < limit:
            message = await q.get(fail=False, no_ack=True)
            if message is None:
                break
            taken.append(message)
    finally:
        await connection.close()
    return taken
