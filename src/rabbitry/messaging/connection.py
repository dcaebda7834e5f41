"""Reaching the broker: the default way to open a link, and the reconnect loop.

Every client here opens its links through an :data:`~rabbitry.amqp.base.OpenLink`; by default
:func:`opener`'s, to the settings' URL. A long-running client (a worker, an inbox) runs one
*session* per connection, a coroutine that returns when told to stop and raises when the broker
drops it, under :func:`reconnecting`, which starts the next one after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from rabbitry.amqp.base import BaseLink, OpenLink
from rabbitry.amqp.link import Link
from rabbitry.errors import BrokerError
from rabbitry.messaging.settings import AmqpSettings

log = logging.getLogger(__name__)


def opener(amqp: AmqpSettings) -> OpenLink:
    """Opens :class:`~rabbitry.amqp.link.Link` connections to ``amqp.url``, with its timeouts."""

    async def open_link(name: str) -> BaseLink:
        return await Link.connect(
            amqp.url, name=name, timeout=amqp.connect_timeout, rpc_timeout=amqp.rpc_timeout
        )

    return open_link


def backoff_pause(
    failures: int, first: float, cap: float, draw: Callable[[], float] = random.random
) -> float:
    """The pause before the next attempt after ``failures`` losses in a row (1 = the first):
    "full jitter", a uniform draw from ``[0, min(cap, first * 2 ** (failures - 1))]``.

    Without the draw every client a broker restart dropped comes back in the same instant,
    and again at each doubling: thousands of connection attempts land together. ``draw``
    returns a float in ``[0, 1)`` (tests pass their own)."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    ceiling = min(cap, first * 2.0 ** min(failures - 1, 62))
    return ceiling * draw()


async def reconnecting(
    name: str,
    session: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    first_pause: float,
    max_pause: float,
) -> None:
    """Run ``session`` again each time the broker drops it, until ``stopping`` is set.

    After a loss the next session starts after a pause drawn by :func:`backoff_pause`: up to
    ``first_pause`` seconds after the first loss, each further loss in a row doubling the
    bound, up to ``max_pause``. A broker that is down is not hammered, one that blinked is back
    at once, and clients it dropped together do not return together. A session that returns
    (it was told to stop) ends the streak.
    """
    failures = 0
    while not stopping.is_set():
        try:
            await session()
            failures = 0
        except (BrokerError, OSError, TimeoutError) as exc:
            failures += 1
            pause = backoff_pause(failures, first_pause, max_pause)
            log.warning("%s: broker connection lost (%s); again in %.2fs", name, exc, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=pause)
