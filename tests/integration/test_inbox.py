"""An Inbox on RabbitMQ: what it hands its owner of a delivery, and its way back after a loss."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from helpers import running
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.inbox import Inbox
from rabbitry.messaging.topology import Exchange, ExchangeType

if TYPE_CHECKING:
    from conftest import BrokerProbe


async def test_an_inbox_message_carries_the_correlation_id_property_and_where_it_came_from(
    settings: Settings, broker: BrokerProbe
) -> None:
    exchange = Exchange(f"{settings.namespace}.inbox", ExchangeType.DIRECT)
    got: list[Message] = []
    arrived = asyncio.Event()

    def on_message(message: Message) -> None:
        got.append(message)
        arrived.set()

    inbox = Inbox(
        settings.amqp, name=f"{settings.namespace}.in", exchange=exchange, on_message=on_message
    )
    async with running(inbox):
        inbox.want("k")
        assert await inbox.bound("k", timeout=15)
        # A foreign publisher's message: the correlation id as the AMQP property, not a header.
        await broker.publish(
            exchange.name,
            "k",
            json.dumps({"n": 1}).encode(),
            headers={"rr_job": "t"},
            message_id="m-1",
            correlation_id="c-1",
        )
        await asyncio.wait_for(arrived.wait(), 15)

    (message,) = got
    assert (message.type, message.id, message.payload) == ("t", "m-1", {"n": 1})
    assert message.correlation_id == "c-1"
    assert (message.exchange, message.routing_key, message.redelivered) == (
        exchange.name,
        "k",
        False,
    )


async def test_an_inbox_whose_connection_is_cut_connects_again_with_a_new_queue_and_its_keys(
    settings: Settings, broker: BrokerProbe
) -> None:
    exchange = Exchange(f"{settings.namespace}.inbox", ExchangeType.DIRECT)
    connections: list[int] = []
    second = asyncio.Event()

    def on_connected(generation: int) -> None:
        connections.append(generation)
        if generation == 2:
            second.set()

    name = f"{settings.namespace}.in"
    inbox = Inbox(
        settings.amqp,
        name=name,
        exchange=exchange,
        on_message=lambda message: None,
        on_connected=on_connected,
    )
    async with running(inbox):
        inbox.want("k")
        assert await inbox.bound("k", timeout=15)
        first_queue = inbox.queue
        assert await broker.close_connections(name) == 1
        await asyncio.wait_for(second.wait(), 30)
        assert inbox.queue == f"{name}.2" != first_queue
        assert await inbox.bound("k", timeout=15)

    assert connections == [1, 2]
