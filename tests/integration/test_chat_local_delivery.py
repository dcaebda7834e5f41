"""A gateway's own messages reach its own sockets without the broker round trip back to it:
once the dispatch copy is confirmed, its room here gets the message, and the copy the broker
routes back to this instance is dropped. Other instances still get theirs through the broker,
and every socket gets each message once, in the order it was sent."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from fixtures.chat import join, running_gateway, wait_until
from rabbitry.chat.gateway import Gateway
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishResult, PublishStatus, Route


async def test_a_burst_from_one_socket_reaches_every_socket_of_both_instances_once_in_order(
    settings: Settings,
) -> None:
    async with (
        running_gateway(settings, instance="near") as near,
        running_gateway(settings, instance="far") as far,
    ):
        sender = await join(near, "lobby", "ann")
        neighbour = await join(near, "lobby", "bob")
        remote = await join(far, "lobby", "cid")
        texts = [f"burst {n}" for n in range(30)]
        # All handed over before any is confirmed, as a socket with a window of sends does.
        results = await asyncio.gather(*[near.submit(sender.client, t) for t in texts])
        assert all(r.ok for r in results)
        everyone = (sender, neighbour, remote)
        await wait_until(lambda: all(len(p.socket.texts()) >= 30 for p in everyone))
        await asyncio.sleep(0.3)  # nothing more comes: no repeat from the broker's echo
        for participant in everyone:
            assert participant.socket.texts() == texts
        # The broker still routed one copy to each hosting instance; ours was dropped unread.
        await wait_until(lambda: near.inbox.delivered == 30 and far.inbox.delivered == 30)
        assert near.echoes == 30
        assert far.echoes == 0


async def test_a_message_the_broker_did_not_take_is_not_shown_on_the_senders_instance(
    settings: Settings,
) -> None:
    # A publisher whose broker cannot be reached and that has no outbox: the message is
    # FAILED, and this instance's sockets must not see it as sent.
    unreachable = dataclasses.replace(
        settings.amqp, url="amqp://guest:guest@127.0.0.1:1/", connect_timeout=0.5
    )
    async with (
        Publisher(unreachable, name=f"{settings.namespace}-nowhere") as publisher,
        running_gateway(settings) as witness,
    ):
        gateway = Gateway(settings, publisher, instance="cutoff")
        async with gateway.running():
            await asyncio.wait_for(gateway.inbox.connected.wait(), 20)
            ann = await join(gateway, "lobby", "ann")
            bob = await join(gateway, "lobby", "bob")
            far = await join(witness, "lobby", "cid")
            result = await gateway.send(ann.client, "never sent")
            assert result.status is PublishStatus.FAILED
            await asyncio.sleep(0.5)
            assert ann.socket.texts() == bob.socket.texts() == far.socket.texts() == []


class SlowFirst(Publisher):
    """A real publisher whose first dispatch copy's outcome comes back last, as an outbox
    write or a late confirm can."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.slowed = False

    async def publish_many(
        self, items: Sequence[tuple[Message, Route]], *, use_fallback: bool = True
    ) -> list[PublishResult]:
        results = await super().publish_many(items, use_fallback=use_fallback)
        if not self.slowed and items[0][1].routing_key:  # (the history copy's key is empty)
            self.slowed = True
            await asyncio.sleep(0.5)
        return results


async def test_a_senders_messages_show_in_its_order_when_an_outcome_comes_back_late(
    settings: Settings,
) -> None:
    async with SlowFirst(settings.amqp, name=f"{settings.namespace}-slow") as publisher:
        gateway = Gateway(settings, publisher, instance="slow")
        async with gateway.running():
            await asyncio.wait_for(gateway.inbox.connected.wait(), 20)
            ann = await join(gateway, "lobby", "ann")
            bob = await join(gateway, "lobby", "bob")
            texts = [f"m{n}" for n in range(5)]
            # The first on its own (what a socket submits in one turn is published as one
            # batch): its outcome comes back after the later ones'.
            first = gateway.submit(ann.client, texts[0])
            await asyncio.sleep(0)
            later = [gateway.submit(ann.client, t) for t in texts[1:]]
            results = await asyncio.gather(first, *later)
            assert all(r.ok for r in results) and publisher.slowed
            await wait_until(lambda: len(bob.socket.texts()) >= 5)
            assert ann.socket.texts() == bob.socket.texts() == texts
