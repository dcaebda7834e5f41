"""Broker loss: when the gateway's connection is closed from the broker side, the instance
declares a new queue, binds every room that still has clients, and messages flow again while
the sockets stay open.

A broker *restart* is not exercised here: the broker is shared with everyone else's tests on
this machine, and restarting it would break theirs. Closing the gateway's own connection by
name is the same event for the gateway (its queue and bindings are gone, its link is dead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fixtures.chat import bindings, join, running_gateway, settled, wait_until
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings

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
