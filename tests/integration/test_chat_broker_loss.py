"""Broker loss: when the gateway's connection is closed from the broker side, the instance
declares a new queue, binds every room that still has clients, and messages flow again while
the sockets stay open.

A catch-up after the loss reads the history (on SQLite and PostgreSQL) once the history queue
has passed the gateway's mark.

A broker *restart* is not exercised here: the broker is shared with everyone else's tests on
this machine, and restarting it would break theirs. Closing the gateway's own connection by
name is the same event for the gateway (its queue and bindings are gone, its link is dead).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fixtures.chat import (
    bindings,
    join,
    persistence_workers,
    running_gateway,
    settled,
    wait_until,
)
from helpers import Eventually
from rabbitry.chat.catchup import STRAGGLERS
from rabbitry.chat.history import ChatHistory
from rabbitry.chat.protocol import MESSAGE_TYPE, ChatMessage, MessageIds, now
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import BrokerProbe


async def test_after_its_connection_is_closed_by_the_broker_the_gateway_rebinds_every_room(
    settings: Settings, broker: BrokerProbe
) -> None:
    layout = ChatLayout(settings.namespace)
    async with running_gateway(settings) as gateway:
        first_queue = gateway.inbox.queue
        members = [await join(gateway, room, user) for room in ("r1", "r2", "r3") for user in "ab"]
        await members[0].leave()  # r1 keeps one client, so it must come back bound

        assert await broker.close_connections(gateway.inbox.name, "test: broker-side close") == 1
        await wait_until(lambda: gateway.inbox.queue not in (None, first_queue), timeout=20)
        await settled(gateway)
        second_queue = gateway.inbox.queue
        assert await bindings(layout.dispatch_exchange) == {
            (second_queue, "acme.r1"),
            (second_queue, "acme.r2"),
            (second_queue, "acme.r3"),
        }
        queues, _ = await broker.objects(f"{settings.namespace}.chat.gateway.")
        assert queues == [second_queue]  # the old one died with its connection

        for member in members[1:]:
            assert member.client.closed_reason is None  # nobody was disconnected
        r2_a, r2_b = members[2], members[3]
        await gateway.send(r2_a.client, "back again")
        await wait_until(lambda: "back again" in r2_b.socket.texts())
        await wait_until(lambda: "back again" in r2_a.socket.texts())
        # Exactly once each, and only in r2.
        assert [m.socket.texts() for m in members[1:]] == [
            [],
            ["back again"],
            ["back again"],
            [],
            [],
        ]


async def test_a_catch_up_waits_until_the_history_queue_passed_what_was_routed_before_it(
    settings: Settings, db: Database, broker: BrokerProbe, eventually: Eventually
) -> None:
    # After a cluster restart the gateways' queues come back before the persistence workers:
    # a message whose dispatch copy died with the old queue sits in the history queue. The
    # catch-up must wait for it, so that the sender's next (live) message is shown after it.
    layout = ChatLayout(settings.namespace)
    history = ChatHistory(db)
    ids = MessageIds()
    dispatch = Route(layout.dispatch_exchange, "acme.lobby")
    stored = Route(layout.persistence_exchange, "")

    def sent(text: str) -> tuple[ChatMessage, Message]:
        chat = ChatMessage(ids.new(), "acme", "lobby", "bob", text, now())
        return chat, Message(MESSAGE_TYPE, chat.payload(), id=chat.id, tenant="acme")

    async with (
        running_gateway(settings, history=history) as gateway,
        Publisher(settings.amqp, name=f"{settings.namespace}-other-gateway") as other,
    ):
        reader = await join(gateway, "lobby", "ann")
        await settled(gateway)
        chat0, b0 = sent("b0")
        async with persistence_workers(settings, db, 1):
            assert all(r.ok for r in await other.publish_many([(b0, dispatch), (b0, stored)]))
            await wait_until(lambda: reader.socket.texts() == ["b0"])
            await eventually(lambda: _stored(history, chat0.id), what="b0 in the history")
        # b1..b3: routed to the history only (their dispatch copies went to a queue now gone).
        missed = [sent(f"b{n}")[1] for n in (1, 2, 3)]
        assert all(r.ok for r in await other.publish_many([(m, stored) for m in missed]))
        first_queue = gateway.inbox.queue
        assert await broker.close_connections(gateway.inbox.name, "test: broker-side close") == 1
        await wait_until(lambda: gateway.inbox.queue not in (None, first_queue), timeout=20)
        await settled(gateway)
        # No persistence worker yet: the catch-up has nothing to read, and waits for its mark.
        await asyncio.sleep(STRAGGLERS + 1.0)
        _, b4 = sent("b4")  # the sender's next message, live
        assert all(r.ok for r in await other.publish_many([(b4, dispatch), (b4, stored)]))
        await asyncio.sleep(0.5)
        assert reader.socket.texts() == ["b0"]  # held behind the catch-up
        async with persistence_workers(settings, db, 1):
            await wait_until(lambda: len(reader.socket.texts()) == 5, timeout=20)
            assert reader.socket.texts() == ["b0", "b1", "b2", "b3", "b4"]
            assert gateway.caught_up == 3
        await reader.leave()


async def _stored(history: ChatHistory, message_id: str) -> bool:
    return await history.position("acme", "lobby", message_id) is not None
