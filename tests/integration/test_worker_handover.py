"""Worker.hand_over on a queue with a single active consumer: the next consumer takes the queue
from the oldest message the first one had not acked, in queue order, and the first one stands
by behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from helpers import Eventually, publish
from rabbitry.config import Settings
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.topology import work_queue

if TYPE_CHECKING:
    from conftest import WorkerRunner


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


COUNT = 200
HELD = 50  # the first worker's handler finishes these, then holds every later one


async def test_hand_over_gives_the_queue_to_the_next_consumer_from_its_oldest_unacked_message(
    settings: Settings, run_worker: WorkerRunner, eventually: Eventually
) -> None:
    queue = f"{settings.namespace}.ordered"
    topology = work_queue(queue, policy=settings.retry, single_active=True)
    first: list[int] = []
    second: list[int] = []
    never = asyncio.Event()

    async def first_handler(message: Message) -> None:
        first.append(message.payload["n"])
        if len(first) > HELD:
            await never.wait()  # in flight, unacked, when the queue is handed over

    async def second_handler(message: Message) -> None:
        second.append(message.payload["n"])

    async with (
        run_worker(
            [Subscription(queue, default=first_handler, prefetch=10, keep_order=True)],
            topology,
            name=f"{settings.namespace}-first",
        ) as one,
        run_worker(
            [Subscription(queue, default=second_handler, prefetch=10)],
            topology,
            name=f"{settings.namespace}-second",
        ),
    ):
        await publish(settings, queue, *(Message(type="t", payload={"n": n}) for n in range(COUNT)))
        await eventually(holds(lambda: len(first) > HELD), what="the first worker holding messages")
        assert second == []  # standing by
        assert await one.hand_over()
        await eventually(holds(lambda: len(second) == COUNT - HELD), what="the rest, on the second")
        assert second == list(range(HELD, COUNT))  # from the oldest unacked on, in order
        assert first[:HELD] == list(range(HELD))
        # Consuming again, behind the second: nothing more reaches it.
        assert one.connected.is_set() and not one.handing_over
        taken = len(first)
        await publish(settings, queue, Message(type="t", payload={"n": COUNT}))
        await eventually(holds(lambda: second[-1] == COUNT), what="a later message, on the second")
        assert len(first) == taken
