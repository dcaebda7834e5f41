"""The chat-persist worker: the one history queue shared by competing workers, each message
stored once by id (on SQLite and PostgreSQL), anything else dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from helpers import Eventually
from rabbitry.chat.history import ChatHistory
from rabbitry.chat.persistence import PersistenceWorker
from rabbitry.chat.protocol import MESSAGE_TYPE, ChatMessage, MessageIds, floor_id, now
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import dlq_name
from rabbitry.storage.database import Database

if TYPE_CHECKING:
    from conftest import BrokerProbe

IDS = MessageIds()


@asynccontextmanager
async def _workers(settings: Settings, database: Database, count: int) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    services = [PersistenceWorker(settings, database, batch_size=20) for _ in range(count)]
    tasks = [asyncio.create_task(s.run(stopping)) for s in services]
    try:
        for service in services:
            await asyncio.wait_for(service.connected.wait(), 20)
        yield
    finally:
        stopping.set()
        await asyncio.gather(*tasks)


def _chat(room: str, text: str) -> ChatMessage:
    return ChatMessage(IDS.new(), "acme", room, "ann", text, now())


async def test_competing_workers_store_every_message_once_even_when_it_arrives_twice(
    settings: Settings, db: Database, broker: BrokerProbe, eventually: Eventually
) -> None:
    layout = ChatLayout(settings.namespace)
    chats = [_chat("lobby", f"m{i}") for i in range(200)]
    history = ChatHistory(db)
    async with _workers(settings, db, 3), Publisher(settings.amqp) as publisher:
        route = Route(layout.persistence_exchange, "")
        items = [(Message(MESSAGE_TYPE, c.payload(), id=c.id), route) for c in chats]
        # Every message twice, as a redelivery after a worker's crash would bring it.
        results = await publisher.publish_many(items + items[:50])
        assert all(r.ok for r in results)

        async def all_stored() -> bool:
            return len(await history.page("acme", "lobby", limit=200)) == 200

        await eventually(all_stored, what="200 messages in the history")
        await eventually(
            lambda: _empty(broker, layout.history_queue), what="the history queue to drain"
        )
    page = await history.page("acme", "lobby", limit=200)
    assert [m.id for m in page] == [c.id for c in reversed(chats)]
    assert page[0] == chats[-1]
    older = await history.page("acme", "lobby", limit=50, before=page[49].id)
    assert [m.text for m in older] == [f"m{i}" for i in range(149, 99, -1)]
    # Recovery follows the store's order: whatever was stored after m196, each once, and
    # among them what came after it (competing workers may have stored older ones later).
    after = [m.text for m in await history.after("acme", "lobby", chats[196].id)]
    assert {"m197", "m198", "m199"} <= set(after) and len(after) == len(set(after))
    assert "m196" not in after


async def test_a_message_that_is_not_a_chat_message_is_dead_lettered_with_its_reason(
    settings: Settings, db: Database, broker: BrokerProbe, eventually: Eventually
) -> None:
    layout = ChatLayout(settings.namespace)
    good = _chat("lobby", "fine")
    async with _workers(settings, db, 1), Publisher(settings.amqp) as publisher:
        route = Route(layout.persistence_exchange, "")
        await publisher.publish_many(
            [
                (Message("chat.message", {"id": "nope"}), route),
                (Message("something.else", good.payload()), route),
                (Message(MESSAGE_TYPE, good.payload(), id=good.id), route),
            ]
        )

        async def two_dead() -> bool:
            ready, _ = await broker.counts(dlq_name(layout.history_queue))
            return ready == 2

        await eventually(two_dead, what="two dead letters")
    dead = await broker.get_all(dlq_name(layout.history_queue))
    reasons = sorted(d.headers["x-rabbitry-reason"] for d in dead)
    assert "not a chat message" in reasons[0] and "not a chat message" in reasons[1]
    bodies = sorted(json.dumps(json.loads(d.body), sort_keys=True) for d in dead)
    assert bodies == sorted(json.dumps(b, sort_keys=True) for b in ({"id": "nope"}, good.payload()))
    assert [m.text for m in await ChatHistory(db).page("acme", "lobby")] == ["fine"]


async def _empty(broker: BrokerProbe, queue: str) -> bool:
    return await broker.counts(queue) == (0, 0)


async def test_recovery_after_an_id_finds_what_was_sent_after_it_whatever_the_commit_order(
    db: Database,
) -> None:
    history = ChatHistory(db)
    ids = MessageIds()
    seen, first, second = (
        ChatMessage(ids.new(2_000_000_000_000 + n), "acme", "lobby", "ann", text, now())
        for n, text in enumerate(["seen", "first", "second"])
    )
    # Competing persistence workers: the message sent after ``seen`` is committed before it.
    await history.store([first])
    await history.store([seen])
    await history.store([second])
    await history.store([first])  # a redelivery changes nothing
    assert [m.text for m in await history.after("acme", "lobby", seen.id)] == ["first", "second"]
    assert [m.text for m in await history.after("acme", "lobby", first.id)] == ["second"]
    assert await history.after("acme", "lobby", second.id) == []
    assert [m.text for m in await history.after("acme", "lobby", floor_id(0))] == [
        "seen",
        "first",
        "second",
    ]
