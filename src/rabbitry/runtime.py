"""Process-level wiring shared by the CLI and the HTTP app: a database, a publisher whose
fallback is the outbox, and small one-shot operations (publish one, consume and print)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from rabbitry.config import Settings
from rabbitry.layout import system_topology
from rabbitry.messaging.connection import Declarer
from rabbitry.messaging.consumer import Consumer, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.link import Link
from rabbitry.messaging.publisher import Publisher, PublishResult, Route
from rabbitry.messaging.retry import policy_of
from rabbitry.storage import Database


@asynccontextmanager
async def open_database(settings: Settings, *, upgrade: bool = True) -> AsyncIterator[Database]:
    """The database, migrated to the latest revision unless ``upgrade`` is false."""
    database = Database(settings.sql_url)
    try:
        if upgrade:
            await database.upgrade()
        yield database
    finally:
        await database.close()


@asynccontextmanager
async def open_publisher(settings: Settings, database: Database) -> AsyncIterator[Publisher]:
    """A publisher whose fallback is the outbox ledger in ``database``."""
    from rabbitry.outbox.ledger import Ledger

    async with Publisher(settings, fallback=Ledger(database)) as publisher:
        yield publisher


async def publish_one(
    settings: Settings, message: Message, exchange: str, routing_key: str
) -> PublishResult:
    async with open_database(settings) as database, open_publisher(settings, database) as pub:
        return await pub.publish(message, Route(exchange, routing_key))


@dataclass(frozen=True)
class DeclaredCount:
    exchanges: int
    queues: int
    bindings: int


async def declare_system(settings: Settings, tenants: list[str]) -> DeclaredCount:
    topology = system_topology(settings, tenants)
    url = settings.amqp_url.get_secret_value()
    async with await Declarer.connect(url, timeout=settings.connect_timeout) as declarer:
        await declarer.declare(topology)
    return DeclaredCount(len(topology.exchanges), len(topology.queues), len(topology.bindings))


async def consume_printing(
    settings: Settings,
    queue: str,
    emit: Callable[[dict[str, Any]], None],
    *,
    count: int | None = None,
    idle_timeout: float | None = None,
) -> int:
    """Consume ``queue``, calling ``emit`` with each decoded message; returns how many."""
    seen = 0
    done = asyncio.Event()
    activity = asyncio.Event()

    async def show(message: Message) -> None:
        nonlocal seen
        if count is not None and seen >= count:
            raise RuntimeError("over count")  # pragma: no cover - prefetch bounds this
        seen += 1
        activity.set()
        emit(
            {
                "type": message.type,
                "id": message.id,
                "payload": message.payload,
                "headers": {k: list(v) for k, v in message.headers.items()},
                "tenant": message.tenant,
                "attempt": message.attempt,
                "extra": {k: _plain(v) for k, v in message.extra.items()},
            }
        )
        if count is not None and seen >= count:
            done.set()

    url = settings.amqp_url.get_secret_value()
    link = await Link.connect(url, name="rabbitry-consume", timeout=settings.connect_timeout)
    try:
        await link.confirm_select()
        prefetch = min(count, settings.prefetch) if count else settings.prefetch
        subscription = Subscription(
            queue, default=show, prefetch=prefetch, concurrency=1, strict=False
        )
        consumer = Consumer(settings, subscription, link, policy_of(settings))
        await consumer.start()
        while not done.is_set():
            activity.clear()
            waiter = asyncio.ensure_future(activity.wait())
            watched: list[asyncio.Future[Any]] = [waiter, link.closed]
            finished, _ = await asyncio.wait(
                watched, timeout=idle_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            if not finished or link.closed.done():
                break
        await consumer.stop(timeout=settings.drain_timeout)
    finally:
        with contextlib.suppress(Exception):
            await link.close()
    return seen


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
