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


async def reconnecting(
    name: str,
    session: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    *,
    first_pause: float,
    max_pause: float,
) -> None:
    """Run ``session`` again each time the broker drops it, until ``stopping`` is set.

    After a loss the next session starts ``first_pause`` seconds later, and each further loss
    in a row doubles the pause, up to ``max_pause``: a broker that is down is not hammered, one
    that blinked is back at once. A session that returns (it was told to stop) ends the streak.
    """
    pause = first_pause
    while not stopping.is_set():
        try:
            await session()
            pause = first_pause
        except (BrokerError, OSError, TimeoutError) as exc:
            log.warning("%s: broker connection lost (%s); again in %.2fs", name, exc, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=pause)
            pause = min(pause * 2, max_pause)
