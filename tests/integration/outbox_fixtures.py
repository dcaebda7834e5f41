"""Fixtures and helpers of the outbox's integration tests (imported by its test modules).

Import the fixtures by their function names (``db_fixture``, ``topic_fixture``,
``namespace_fixture``); tests ask for them as ``db``, ``topic`` and ``outbox_ns``. Every test
gets a fresh database (a SQLite file, or a PostgreSQL database created for it and dropped
afterwards) and its own broker namespace ``t<hex>``, whose exchange and queue are deleted
afterwards. A service that is down makes the tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from rabbitry.config import RegistryEntry, Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.filters import Origin
from rabbitry.outbox.ledger import Ledger
from rabbitry.outbox.models import PendingMessage
from rabbitry.storage import Database

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
# Nothing listens there: connecting is refused at once.
DEAD_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(name="db", params=BACKENDS)
async def db_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
        try:
            await database.upgrade()
            yield database
        finally:
            await database.close()
        return
    name = f"rabbitry_t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')  # name is ours: [a-z0-9_] only
    finally:
        await admin.close()
    database = Database(PG_URL.format(name=name))
    try:
        await database.upgrade()
        yield database
    finally:
        await database.close()
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass(frozen=True)
class Topic:
    """One test's broker objects: a topic exchange and a queue bound to it with ``#``."""

    namespace: str
    exchange: str
    queue: str

    def route(self, routing_key: str = "test.key", queue: str | None = None) -> Route:
        return Route(self.exchange, routing_key, queue=queue)


@pytest.fixture(name="outbox_ns")
def namespace_fixture() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(name="topic")
async def topic_fixture(outbox_ns: str) -> AsyncIterator[Topic]:
    spec = Topic(outbox_ns, f"{outbox_ns}.x", f"{outbox_ns}.q")
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(spec.exchange, aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue(spec.queue, durable=True)
        await queue.bind(exchange, "#")
        yield spec
    finally:
        channel = await connection.channel()
        await channel.queue_delete(spec.queue)
        await channel.exchange_delete(spec.exchange)
        await connection.close()


def make_settings(db: Database, namespace: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "namespace": namespace,
        "amqp_url": AMQP_URL,
        "database_url": db.url,
        "publish_timeout": 5.0,
        "connect_timeout": 2.0,
        "circuit_open_seconds": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def drain_ids(queue: str, *, idle: float = 1.0) -> list[str]:
    """Consume ``queue`` until it stays empty for ``idle`` seconds; the message ids, in order."""
    ids: list[str] = []
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        declared = await channel.declare_queue(queue, passive=True)
        async with declared.iterator() as messages:
            while True:
                try:
                    message = await asyncio.wait_for(messages.__anext__(), timeout=idle)
                except TimeoutError:
                    break
                ids.append(str(message.message_id))
                await message.ack()
    finally:
        await connection.close()
    return ids


async def drain_messages(queue: str, *, idle: float = 1.0) -> list[aio_pika.IncomingMessage]:
    """Like :func:`drain_ids` but the whole messages (body, headers, properties)."""
    found: list[aio_pika.IncomingMessage] = []
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while True:
            message = await declared.get(fail=False, timeout=idle)
            if message is None:
                break
            await message.ack()
            found.append(message)
    finally:
        await connection.close()
    return found


async def seed_rows(
    db: Database,
    rows: Iterable[tuple[Route, Message, str]],
    *,
    origin: Origin = Origin.CONTINGENCY,
) -> list[int]:
    return await Ledger(db).add(list(rows), origin=origin)


async def set_created_at(db: Database, ids_and_times: dict[int, object]) -> None:
    from sqlalchemy import update

    async with db.session() as session:
        for row_id, when in ids_and_times.items():
            await session.execute(
                update(PendingMessage).where(PendingMessage.id == row_id).values(created_at=when)
            )


async def pending_ids(db: Database) -> set[str]:
    from sqlalchemy import select

    async with db.session() as session:
        result = await session.execute(
            select(PendingMessage.message_id).where(PendingMessage.processed.is_(False))
        )
        return {row[0] for row in result}


def close_connection(connection_name: str) -> int:
    """Close, with ``rabbitmqctl``, every broker connection named ``connection_name``; returns
    how many. Only this test's connections: other tests share the broker."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    pattern = re.compile(r'\{"connection_name","' + re.escape(connection_name) + r'"\}')
    closed = 0
    for line in listing.splitlines():
        pid, _, properties = line.partition("\t")
        if pattern.search(properties):
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid.strip(), "test: killed midway"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            closed += 1
    return closed


class LatencyProxy:
    """A TCP proxy to RabbitMQ that delays every chunk by ``delay`` seconds each way.

    A slow link keeps many publishes in flight at any instant, so a connection killed with
    ``rabbitmqctl`` (which takes a second or more to act) surely dies mid-publish. Closing
    either side closes the other, as a real network path would. While ``refusing`` is set,
    new connections are hung up at once: the broker is "down" for this proxy's clients only.
    """

    def __init__(self, delay: float, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.delay = delay
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refusing = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for w in (writer, up_writer):
            w.close()
        self._tasks.difference_update(pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + self.delay, data))
            chunks.put_nowait((loop.time() + self.delay, b""))
            await sender
        finally:
            sender.cancel()


async def eventually(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = ""
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.1)


def registry_entry(topic: Topic, name: str, **fields: object) -> RegistryEntry:
    values: dict[str, object] = {
        "name": name,
        "description": f"{name} queue",
        "exchange": topic.exchange,
        "routing_key": f"{name}.key",
    }
    values.update(fields)
    return RegistryEntry(**values)  # type: ignore[arg-type]
