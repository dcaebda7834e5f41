"""Run consumers as a daemon: connect, declare, consume; reconnect when the broker drops us;
on stop (SIGTERM/SIGINT), stop taking work, drain in-flight handlers and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from rabbitry.amqp.base import BaseLink, LinkClosed, OpenLink
from rabbitry.amqp.declarer import Declarer
from rabbitry.messaging.connection import opener, reconnecting
from rabbitry.messaging.consumer import Consumer, Subscription
from rabbitry.messaging.middleware import Middleware
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.sender import Sender
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.topology import Topology

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0

Declare = Callable[[Topology], Awaitable[None]]
"""Declares a topology on the broker (idempotent)."""


class Worker:
    """Consumes ``subscriptions`` after declaring ``topology``; a
    :class:`~rabbitry.messaging.service.Service` (run it with ``serve(worker)``).

    ``name`` prefixes its connection names, as the broker's management UI shows them.
    ``middleware`` runs around every handler call (see :mod:`rabbitry.messaging.middleware`).
    ``open_link`` and ``declare`` are the seams to the broker (by default RabbitMQ at
    ``amqp.url``); :mod:`rabbitry.testing`'s in-memory broker passes its own.
    """

    def __init__(
        self,
        name: str,
        subscriptions: Sequence[Subscription],
        topology: Topology,
        *,
        amqp: AmqpSettings | None = None,
        retry: RetryPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        open_link: OpenLink | None = None,
        declare: Declare | None = None,
    ) -> None:
        self.name = name
        self._settings = amqp or AmqpSettings()
        self._subscriptions = list(subscriptions)
        self._topology = topology
        self._policy = retry or RetryPolicy()
        self._middleware = tuple(middleware)
        self._open_link = open_link or opener(self._settings)
        self._declare = declare or self._declare_on_broker
        self.connected = asyncio.Event()  # set while consuming; tests and health checks wait on it

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(self._subscriptions)

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def amqp(self) -> AmqpSettings:
        return self._settings

    @property
    def retry(self) -> RetryPolicy:
        return self._policy

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        return self._middleware

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping``, then drain; reconnect when the broker drops us."""
        await reconnecting(
            self.name,
            lambda: self._session(stopping),
            stopping,
            first_pause=0.5,
            max_pause=MAX_BACKOFF,
        )

    async def _session(self, stopping: asyncio.Event) -> None:
        """One connection's lifetime: returns on stop, raises when the broker drops us."""
        await self._declare(self._topology)
        links: list[BaseLink] = []
        consumers: list[Consumer] = []
        # Retry and dead-letter copies go over a connection of their own, never one consumed
        # from: a broker alarm blocks a connection that publishes, and its acks with it.
        sender = Sender(self._settings, f"{self.name}-forward", open_link=self._open_link)
        try:
            for subscription in self._subscriptions:
                # One link per subscription: basic.qos and flow control stay per queue.
                link = await self._open_link(f"{self.name}-{subscription.queue}")
                links.append(link)
                consumer = Consumer(
                    self._settings,
                    subscription,
                    link,
                    self._policy,
                    sender=sender,
                    middleware=self._middleware,
                )
                await consumer.start()
                consumers.append(consumer)
            self.connected.set()
            log.info("%s: consuming %s", self.name, ", ".join(s.queue for s in self._subscriptions))
            stop_task = asyncio.ensure_future(stopping.wait())
            lost = [asyncio.ensure_future(_wait_closed(link)) for link in links]
            done, _ = await asyncio.wait([stop_task, *lost], return_when=asyncio.FIRST_COMPLETED)
            for task in [stop_task, *lost]:
                task.cancel()
            if stop_task in done:
                log.info("%s: stopping; draining in-flight messages", self.name)
                await asyncio.gather(*(c.stop(self._settings.drain_timeout) for c in consumers))
                return
            for consumer in consumers:
                consumer.abandon()
            raise LinkClosed("connection lost")
        finally:
            self.connected.clear()
            for link in links:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.close(), timeout=3)
            await sender.close()

    async def _declare_on_broker(self, topology: Topology) -> None:
        amqp = self._settings
        declarer = await Declarer.connect(
            amqp.url, name=self.name, timeout=amqp.connect_timeout, rpc_timeout=amqp.rpc_timeout
        )
        async with declarer:
            await declarer.declare(topology)


async def _wait_closed(link: BaseLink) -> None:
    with contextlib.suppress(BaseException):
        await asyncio.shield(link.closed)
