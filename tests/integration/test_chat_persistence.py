"""The chat-persist worker: the one history queue shared by competing workers, each message
stored once by id (on SQLite and PostgreSQL), anything else dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from fixtures.chat import Participant, join, persistence_workers, running_gateway, wait_until
from helpers import Eventually
from rabbitry.chat.client import Member
from rabbitry.chat.history import ChatHistory
from rabbitry.chat.marks import Marks
from rabbitry.chat.models import StoredChatMark
from rabbitry.chat.persistence import PersistenceWorker
from rabbitry.chat.protocol import MARK_TYPE, MESSAGE_TYPE, ChatMessage, MessageIds, floor_id, now
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings
from rabbitry.messaging import Declarer
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import dlq_name
from rabbitry.storage.database import Database

if TYPE_CHECKING:
    from conftest import BrokerProbe

IDS = MessageIds()


def _chat(room: str, text: str) -> ChatMessage:
    return ChatMessage(IDS.new(), "acme", room, "ann", text, now())


async def test_competing_workers_store_every_message_once_even_when_it_arrives_twice(
    settings: Settings, db: Database, broker: BrokerProbe, eventually: Eventually
) -> None:
    layout = ChatLayout(settings.namespace)
    chats = [_chat("lobby", f"m{i}") for i in range(200)]
    history = ChatHistory(db)
    async with persistence_workers(settings, db, 3), Publisher(settings.amqp) as publisher:
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
    position = await history.position("acme", "lobby", chats[196].id)
    after = [m.text for m in await _since(history, chats[196].id, position)]
    assert {"m197", "m198", "m199"} <= set(after) and len(after) == len(set(after))
    assert "m196" not in after


async def test_a_message_that_is_not_a_chat_message_is_dead_lettered_with_its_reason(
    settings: Settings, db: Database, broker: BrokerProbe, eventually: Eventually
) -> None:
    layout = ChatLayout(settings.namespace)
    good = _chat("lobby", "fine")
    mark = IDS.new()
    async with persistence_workers(settings, db, 1), Publisher(settings.amqp) as publisher:
        route = Route(layout.persistence_exchange, "")
        await publisher.publish_many(
            [
                (Message("chat.message", {"id": "nope"}), route),
                (Message("something.else", good.payload()), route),
                (Message(MARK_TYPE, {"mark": "not-an-id"}), route),
                (Message(MESSAGE_TYPE, good.payload(), id=good.id), route),
                (Message(MARK_TYPE, {"mark": mark}), route),
            ]
        )

        async def three_dead() -> bool:
            ready, _ = await broker.counts(dlq_name(layout.history_queue))
            return ready == 3

        await eventually(three_dead, what="three dead letters")
    dead = await broker.get_all(dlq_name(layout.history_queue))
    reasons = sorted(d.headers["x-rabbitry-reason"] for d in dead)
    assert "not a chat mark" in reasons[0]
    assert "not a chat message" in reasons[1] and "not a chat message" in reasons[2]
    bodies = sorted(json.dumps(json.loads(d.body), sort_keys=True) for d in dead)
    expected = ({"id": "nope"}, good.payload(), {"mark": "not-an-id"})
    assert bodies == sorted(json.dumps(b, sort_keys=True) for b in expected)
    history = ChatHistory(db)
    assert [m.text for m in await history.page("acme", "lobby")] == ["fine"]
    # The good mark was stored with the batch (a gateway's catch-up waits for it).
    stored = await history.marks([mark, IDS.new()])
    assert list(stored) == [mark] and len(stored[mark]) == 32  # (the worker's id)


async def _empty(broker: BrokerProbe, queue: str) -> bool:
    return await broker.counts(queue) == (0, 0)


async def _since(
    history: ChatHistory, since: str, position: int | None, **kwargs: Any
) -> list[ChatMessage]:
    return [
        m async for page in history.since("acme", "lobby", since, position, **kwargs) for m in page
    ]


async def test_recovery_follows_the_store_order_so_a_gateway_clock_behind_hides_nothing(
    db: Database,
) -> None:
    history = ChatHistory(db)
    ids = MessageIds()
    base = 2_000_000_000_000
    early = ChatMessage(ids.new(base), "acme", "lobby", "ann", "early", now())
    seen = ChatMessage(ids.new(base + 10), "acme", "lobby", "ann", "seen", now())
    # Sent after ``seen`` through a gateway whose clock is an hour behind: its id sorts first.
    behind = ChatMessage(
        MessageIds().new(base - 3_600_000), "acme", "lobby", "bob", "behind", now()
    )
    later = ChatMessage(ids.new(base + 20), "acme", "lobby", "ann", "later", now())
    for message in (early, seen, behind, later):
        await history.store([message])
    position = await history.position("acme", "lobby", seen.id)
    assert position is not None
    assert await history.position("acme", "lobby", "0" * 8 + "-0000-7000-8000-" + "0" * 12) is None
    # By ids alone ``behind`` would be hidden; the store's order has it after ``seen``.
    assert [m.text for m in await _since(history, seen.id, None)] == ["later"]
    assert [m.text for m in await _since(history, seen.id, position, reorder=0)] == [
        "behind",
        "later",
    ]
    # The window below ``since`` brings what the client may already have (it drops ids it
    # saw): ``early`` here; never ``seen`` itself.
    assert [m.text for m in await _since(history, seen.id, position)] == [
        "early",
        "behind",
        "later",
    ]
    # Paged: the same rows, one page at a time.
    assert [m.text for m in await _since(history, seen.id, position, page=1)] == [
        "early",
        "behind",
        "later",
    ]
    assert (
        await _since(
            history, later.id, await history.position("acme", "lobby", later.id), reorder=0
        )
        == []
    )


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
    position = await history.position("acme", "lobby", seen.id)
    assert position is not None
    # Committed before ``seen``: the ids stamped after ``since`` bring it back even with no
    # window below ``since`` (the window is for a message both stamped early and committed
    # early), and so does the window.
    assert [m.text for m in await _since(history, seen.id, position, reorder=0)] == [
        "first",
        "second",
    ]
    assert [m.text for m in await _since(history, seen.id, position)] == ["first", "second"]
    assert [m.text for m in await _since(history, seen.id, position + 1_000_000)] == [
        "first",
        "second",
    ]  # (a batch of ``seen``'s retried long after: the ids still bring ``first``)
    assert [m.text for m in await _since(history, seen.id, None)] == ["first", "second"]
    assert [m.text for m in await _since(history, floor_id(0), None)] == [
        "seen",
        "first",
        "second",
    ]


async def test_two_competing_workers_committing_out_of_send_order_hide_nothing_from_since(
    settings: Settings, db: Database, eventually: Eventually
) -> None:
    layout = ChatLayout(settings.namespace)
    history = ChatHistory(db)
    chats = [_chat("lobby", f"m{i}") for i in range(12)]
    route = Route(layout.persistence_exchange, "")
    stopping = asyncio.Event()
    slow, fast = (PersistenceWorker(settings, db, batch_size=6) for _ in range(2))
    # The first worker takes m0-m5 (``since`` is m3) and is held before it commits, while the
    # second takes what follows and commits first: the store's order is not the send order.
    holding, release = asyncio.Event(), asyncio.Event()
    store = slow.history.store

    async def held_store(messages: Any, marks: Any = (), worker: str = "") -> None:
        holding.set()
        await release.wait()
        await store(messages, marks, worker)

    slow.history.store = held_store  # type: ignore[method-assign]
    tasks = [asyncio.create_task(slow.run(stopping))]
    try:
        async with Publisher(settings.amqp) as publisher:
            await asyncio.wait_for(slow.connected.wait(), 20)
            items = [(Message(MESSAGE_TYPE, c.payload(), id=c.id), route) for c in chats]
            assert all(r.ok for r in await publisher.publish_many(items[:6]))
            await asyncio.wait_for(holding.wait(), 20)
            tasks.append(asyncio.create_task(fast.run(stopping)))
            await asyncio.wait_for(fast.connected.wait(), 20)
            assert all(r.ok for r in await publisher.publish_many(items[6:]))

            async def fast_committed() -> bool:
                return bool(await history.page("acme", "lobby"))

            await eventually(fast_committed, what="the second worker's commit")
            release.set()

            async def all_stored() -> bool:
                return len(await history.page("acme", "lobby", limit=50)) == len(chats)

            await eventually(all_stored, what="every message stored")
    finally:
        release.set()
        stopping.set()
        await asyncio.gather(*tasks)
    since = chats[3]
    position = await history.position("acme", "lobby", since.id)
    assert position is not None
    positions = {m.id: await history.position("acme", "lobby", m.id) for m in chats}
    overtaken = [m.text for m in chats[4:] if positions[m.id] < position]  # type: ignore[operator]
    assert overtaken  # sent after ``since``, committed before it
    recovered = await _since(history, since.id, position)
    texts = [m.text for m in recovered]
    assert {m.text for m in chats[4:]} <= set(texts)  # nothing lost
    assert len(texts) == len(set(texts)) and since.text not in texts  # each once
    assert [positions[m.id] for m in recovered] == sorted(positions[m.id] for m in recovered)  # type: ignore[type-var]


async def test_a_recovery_sends_each_senders_messages_in_order_while_the_history_lacks_earlier_ones(
    settings: Settings, db: Database
) -> None:
    # A persistence batch failed (the database was away) and waits in the retry queues while
    # the sender's later messages are stored: the room here delivered them all, in order.
    history = ChatHistory(db)
    async with running_gateway(settings, history=history) as gateway:
        ann = await join(gateway, "lobby", "ann")
        room = gateway.manager.rooms[gateway.manager.key_of(ann.client)]
        first, *retried, a4, a5 = [_chat("lobby", f"a{n}") for n in range(6)]
        for message in (first, *retried, a4, a5):
            room.deliver(message)
        await history.store([first])
        await history.store([a4, a5])
        back = Participant(gateway, Member("acme", "bob", "bob", "s-bob"), "lobby")
        back.client.hold()
        await gateway.manager.join(back.client)
        assert await gateway.recover(back.client, first.id, history) == 5
        await wait_until(lambda: len(back.socket.texts()) == 5)
        assert back.socket.texts() == ["a1", "a2", "a3", "a4", "a5"]
        await back.leave()
        await ann.leave()


async def test_a_recovery_waits_for_what_the_history_queue_still_holds_from_before_the_join(
    settings: Settings, db: Database, eventually: Eventually
) -> None:
    # The room had no client on this gateway: what was sent after ``since`` reached only the
    # history queue, whose workers are slow (here: not running yet). The recovery must not
    # read the store before the queue passed what was routed before the join.
    layout = ChatLayout(settings.namespace)
    history = ChatHistory(db)
    route = Route(layout.persistence_exchange, "")
    since, *after = [_chat("lobby", f"m{n}") for n in range(4)]
    async with (
        running_gateway(settings, history=history) as gateway,
        Publisher(settings.amqp) as publisher,
    ):
        async with persistence_workers(settings, db, 1):
            assert (await publisher.publish(_message(since), route)).ok

            async def since_stored() -> bool:
                return await history.position("acme", "lobby", since.id) is not None

            await eventually(since_stored, what="since in the history")
        assert all(
            r.ok for r in await publisher.publish_many([(_message(m), route) for m in after])
        )
        back = Participant(gateway, Member("acme", "bob", "bob", "s-bob"), "lobby")
        back.client.hold()
        await gateway.manager.join(back.client)
        recovery = asyncio.create_task(gateway.recover(back.client, since.id, history))
        await asyncio.sleep(1.0)
        assert not recovery.done()  # waiting for the history queue
        async with persistence_workers(settings, db, 1):
            assert await recovery == 3
        await wait_until(lambda: len(back.socket.texts()) == 3)
        assert back.socket.texts() == ["m1", "m2", "m3"]
        await back.leave()


def _message(chat: ChatMessage) -> Message:
    return Message(MESSAGE_TYPE, chat.payload(), id=chat.id, tenant=chat.tenant)


async def test_recoveries_waiting_at_the_same_time_share_their_marks(
    settings: Settings, db: Database
) -> None:
    history = ChatHistory(db)
    async with (
        persistence_workers(settings, db, 1),
        Publisher(settings.amqp) as publisher,
    ):
        marks = Marks(history, publisher, ChatLayout(settings.namespace), MessageIds())
        assert await marks.passed()  # one alone
        assert all(await asyncio.gather(*(marks.passed() for _ in range(50))))
        # Then 50 more, in three waves while marks are in flight.
        waves = []
        for _ in range(3):
            waves += [asyncio.ensure_future(marks.passed()) for _ in range(50 // 3)]
            await asyncio.sleep(0.01)
        assert all(await asyncio.gather(*waves))
    async with db.session() as session:
        stored = await session.scalar(select(func.count()).select_from(StoredChatMark))
    # The first, one for the 50 together, and at most one a wave (one in flight, one queued).
    assert stored is not None and 2 <= stored <= 5


async def test_a_round_of_marks_waits_for_every_worker_so_none_still_holds_an_earlier_message(
    settings: Settings, db: Database, eventually: Eventually
) -> None:
    # Worker A took every message (its prefetch is full) and is slow to store them; worker B
    # is quick and gets every mark. A mark stored by B alone says nothing of A's messages: the
    # round goes on until A too stored one.
    layout = ChatLayout(settings.namespace)
    history = ChatHistory(db)
    route = Route(layout.persistence_exchange, "")
    chats = [_chat("lobby", f"m{n}") for n in range(settings.prefetch)]
    stopping = asyncio.Event()
    slow, quick = (PersistenceWorker(settings, db, batch_size=20) for _ in range(2))
    holding, release = asyncio.Event(), asyncio.Event()
    store = slow.history.store

    async def held_store(messages: Any, marks: Any = (), worker: str = "") -> None:
        if messages:
            holding.set()
            await release.wait()
        await store(messages, marks, worker)

    slow.history.store = held_store  # type: ignore[method-assign]
    tasks = [asyncio.create_task(slow.run(stopping))]
    try:
        async with (
            Publisher(settings.amqp) as publisher,
            await Declarer.connect(settings.amqp.url) as declarer,
        ):

            async def workers() -> int:
                return (await declarer.queue_status(layout.history_queue)).consumers

            await asyncio.wait_for(slow.connected.wait(), 20)
            items = [(_message(m), route) for m in chats]
            assert all(r.ok for r in await publisher.publish_many(items))
            await asyncio.wait_for(holding.wait(), 20)
            tasks.append(asyncio.create_task(quick.run(stopping)))
            await asyncio.wait_for(quick.connected.wait(), 20)
            marks = Marks(history, publisher, layout, MessageIds(), workers)
            passed = asyncio.create_task(marks.passed())
            await asyncio.sleep(1.5)
            assert not passed.done()  # B stored marks; A holds every message
            stored_by = set((await _all_marks(db)).values())
            assert stored_by == {quick.id}
            release.set()
            assert await passed
            # Every message routed before the round is stored once it passed.
            for chat in chats:
                assert await history.position("acme", "lobby", chat.id) is not None
            assert set((await _all_marks(db)).values()) == {quick.id, slow.id}
    finally:
        release.set()
        stopping.set()
        await asyncio.gather(*tasks)


async def _all_marks(db: Database) -> dict[str, str]:
    async with db.session() as session:
        rows = await session.execute(select(StoredChatMark.id, StoredChatMark.worker))
        return {mark: worker for mark, worker in rows}
