"""The real Publisher and Worker, wired to the in-memory broker instead of RabbitMQ.

Each takes the broker's seams through its constructor (``open_link``, the circuit breaker's
``clock``, a worker's ``declare``), as it takes RabbitMQ's by default: everything else,
including how a failure is retried, dead-lettered or sent to the fallback, is the code that
runs in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rabbitry.amqp.base import BaseLink
from rabbitry.messaging.middleware import Middleware
from rabbitry.messaging.publisher import Fallback, Publisher
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.topology import Topology
from rabbitry.messaging.worker import Worker

if TYPE_CHECKING:
    from rabbitry.testing.broker import MemoryBroker
    from rabbitry.testing.link import MemoryLink


def memory_publisher(
    broker: MemoryBroker,
    amqp: AmqpSettings | None,
    *,
    fallback: Fallback | None,
    name: str,
    middleware: Sequence[Middleware] = (),
) -> Publisher:
    """A :class:`~rabbitry.Publisher` whose connections go to ``broker``, its circuit breaker
    on the broker's virtual clock."""
    return Publisher(
        amqp,
        fallback=fallback,
        name=name,
        open_link=broker._connect,
        clock=lambda: broker.time,
        middleware=middleware,
    )


class MemoryWorker:
    """A copy of a :class:`~rabbitry.Worker` (same name, subscriptions, topology, settings,
    retry policy and middleware) that declares on and consumes from a :class:`MemoryBroker`,
    and the links it opened there."""

    def __init__(self, broker: MemoryBroker, worker: Worker) -> None:
        self._broker = broker
        self._links: list[MemoryLink] = []
        self.worker = Worker(
            worker.name,
            worker.subscriptions,
            worker.topology,
            amqp=worker.amqp,
            retry=worker.retry,
            middleware=worker.middleware,
            open_link=self._open_link,
            declare=self._declare,
        )

    @property
    def consuming(self) -> bool:
        """Connected, no link cut, no consumer cancelled (``connected`` clears only turns later)."""
        links = [link for link in self._links if link.has_consumed]
        return self.worker.connected.is_set() and all(
            link.is_open and link.consumers for link in links
        )

    async def _declare(self, topology: Topology) -> None:
        await self._broker._connect_declarer(self.worker.name)
        self._broker.declare(topology)

    async def _open_link(self, name: str) -> BaseLink:  # one link a (re)connection
        link = await self._broker._connect(name)
        self._links = [link]
        return link
