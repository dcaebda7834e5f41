"""The real Publisher and Worker, connected to the in-memory broker instead of RabbitMQ.

Each overrides only the seams that open connections (``_open_link``, ``_declare``) and the
circuit breaker's clock: everything else, including how a failure is retried, dead-lettered or
sent to the fallback, is the code that runs in production.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from rabbitry.amqp.link import Link
from rabbitry.messaging.publisher import Fallback, Publisher
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.worker import Worker

if TYPE_CHECKING:
    from rabbitry.testing.broker import MemoryBroker
    from rabbitry.testing.link import MemoryLink

# MemoryLink has the part of Link that Publisher, Worker and Consumer use; the behaviour suite
# runs them on both, so a new use of Link shows up there as a failure, not as silent drift.


class MemoryPublisher(Publisher):
    """A :class:`~rabbitry.Publisher` whose connections go to a :class:`MemoryBroker`."""

    def __init__(
        self,
        broker: MemoryBroker,
        amqp: AmqpSettings | None = None,
        *,
        fallback: Fallback | None = None,
        name: str = "rabbitry",
    ) -> None:
        super().__init__(amqp, fallback=fallback, name=name)
        self._broker = broker
        self._clock = lambda: broker.time

    async def _open_link(self) -> Link:
        link = await self._broker._connect(f"{self._name}-publisher")
        await link.confirm_select()
        return cast(Link, link)


class MemoryWorker(Worker):
    """A copy of a :class:`~rabbitry.Worker` (same name, subscriptions, topology, settings and
    retry policy) that declares on and consumes from a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker, worker: Worker) -> None:
        super().__init__(
            worker.name,
            worker.subscriptions,
            worker.topology,
            amqp=worker.amqp,
            retry=worker.retry,
        )
        self._broker = broker
        self._links: list[MemoryLink] = []

    @property
    def consuming(self) -> bool:
        """Connected, no link cut, no consumer cancelled (``connected`` clears only turns later)."""
        links = [link for link in self._links if link.has_consumed]
        return self.connected.is_set() and all(link.is_open and link.consumers for link in links)

    async def _declare(self) -> None:  # the first step of each (re)connection
        self._links = []
        await self._broker._connect_declarer(self.name)
        self._broker.declare(self.topology)

    async def _open_link(self, name: str) -> Link:
        link = await self._broker._connect(name)
        self._links.append(link)
        return cast(Link, link)
