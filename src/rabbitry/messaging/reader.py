"""Reading a queue once, for inspection: ``rabbitry consume`` and scripts.

Unlike a :class:`~rabbitry.messaging.worker.Worker`, it does not reconnect: it reads until
``count`` messages were handled, the queue stayed idle for ``idle_timeout`` seconds or the
connection was lost, then returns. Each message is acked after ``handle`` returns; a malformed
one is dead-lettered with its reason, as by any consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from rabbitry.amqp.link import Link
from rabbitry.messaging.consumer import Consumer, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settings import AmqpSettings


async def read_queue(
    amqp: AmqpSettings,
    queue: str,
    handle: Callable[[Message], None],
    *,
    count: int | None = None,
    idle_timeout: float | None = None,
    retry: RetryPolicy | None = None,
    name: str = "rabbitry-consume",
) -> int:
    """Consume ``queue``, calling ``handle`` with each decoded message; returns how many."""
    seen = 0
    done = asyncio.Event()
    activity = asyncio.Event()

    async def show(message: Message) -> None:
        nonlocal seen
        if count is not None and seen >= count:
            raise RuntimeError("over count")  # pragma: no cover - prefetch bounds this
        seen += 1
        activity.set()
        handle(message)
        if count is not None and seen >= count:
            done.set()

    link = await Link.connect(amqp.url, name=name, timeout=amqp.connect_timeout)
    try:
        await link.confirm_select()
        prefetch = min(count, amqp.prefetch) if count else amqp.prefetch
        subscription = Subscription(
            queue, default=show, prefetch=prefetch, concurrency=1, strict=False
        )
        consumer = Consumer(amqp, subscription, link, retry or RetryPolicy())
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
        await consumer.stop(timeout=amqp.drain_timeout)
    finally:
        with contextlib.suppress(Exception):
            await link.close()
    return seen
