"""The gateway's own queue and its bindings, read back from the broker: a room is bound while
it has clients on the instance, and only then, however joins and leaves race."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from fixtures.chat import Participant, bindings, join, running_gateway, settled, wait_until
from helpers import Eventually
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings

if TYPE_CHECKING:
    from conftest import BrokerProbe


async def test_an_instance_queue_is_exclusive_auto_delete_and_bound_only_for_rooms_with_clients(
    settings: Settings, broker: BrokerProbe, eventually: Eventually
) -> None:
    layout = ChatLayout(settings.namespace)
    async with running_gateway(settings) as gateway:
        queue = gateway.inbox.queue
        assert queue is not None and queue.startswith(f"{settings.namespace}.chat.gateway.")
        assert await bindings(layout.dispatch_exchange) == set()
        ann = await join(gateway, "lobby", "ann")
        bob = await join(gateway, "lobby", "bob")
        eve = await join(gateway, "lobby", "eve", tenant="globex")
        assert await bindings(layout.dispatch_exchange) == {
            (queue, "acme.lobby"),
            (queue, "globex.lobby"),
        }
        await ann.leave()
        assert await bindings(layout.dispatch_exchange) == {
            (queue, "acme.lobby"),
            (queue, "globex.lobby"),
        }
        await bob.leave()
        await eve.leave()

        async def unbound() -> bool:
            return await bindings(layout.dispatch_exchange) == set()

        await eventually(unbound, what="the last clients' leaving to unbind both rooms")
    queues, _ = await broker.objects(f"{settings.namespace}.chat.gateway.")
    assert queues == []  # auto-delete: the queue went with its connection


async def test_joins_and_leaves_racing_on_one_room_never_leave_a_stale_or_missing_binding(
    settings: Settings, broker: BrokerProbe
) -> None:
    layout = ChatLayout(settings.namespace)
    rng = random.Random(11)
    async with running_gateway(settings) as gateway:
        queue = gateway.inbox.queue

        async def churn(user: str, rounds: int) -> None:
            for _ in range(rounds):
                member = await join(gateway, "busy", user)
                await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005]))
                await member.leave()
                await asyncio.sleep(rng.choice([0, 0.001]))

        for round_ in range(4):
            await asyncio.gather(*(churn(f"u{i}", 15) for i in range(12)))
            # Quiet now: nobody is in the room, so nothing may be bound for it.
            await settled(gateway)
            assert await bindings(layout.dispatch_exchange) == set(), f"round {round_}"
            stayer = await join(gateway, "busy", "stayer")
            await asyncio.gather(*(churn(f"v{i}", 10) for i in range(12)))
            await settled(gateway)
            assert await bindings(layout.dispatch_exchange) == {(queue, "acme.busy")}
            # And the binding that is there carries messages: the stayer gets one, once.
            await gateway.send(stayer.client, f"still here {round_}")

            def arrived(s: Participant = stayer, text: str = f"still here {round_}") -> bool:
                return text in s.socket.texts()

            await wait_until(arrived)
            assert stayer.socket.texts().count(f"still here {round_}") == 1
            await stayer.leave()
