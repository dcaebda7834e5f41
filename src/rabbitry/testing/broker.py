"""An in-memory RabbitMQ for unit tests: exchanges, queues, bindings, TTLs, dead letters, acks.

The clients are Rabbitry's own (:meth:`MemoryBroker.publisher` is a real
:class:`~rabbitry.Publisher`, :meth:`MemoryBroker.running` runs a real
:class:`~rabbitry.Worker`); this side does only what the broker would. Time is virtual: a
message waiting in a retry queue moves on when :meth:`MemoryBroker.advance` moves the clock past
its TTL, or at once with ``drain(retries=True)``, so no test waits for a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from rabbitry.amqp.base import REPLY_TO, LinkClosed, LinkError, Outgoing, PublishOutcome
from rabbitry.amqp.properties import Properties, decode_properties, encode_properties
from rabbitry.errors import BrokerUnavailable, NotFound, PublishUnroutable
from rabbitry.messaging.middleware import Middleware
from rabbitry.messaging.publisher import Fallback, Publisher
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.topology import Topology
from rabbitry.messaging.worker import Worker
from rabbitry.testing.clients import MemoryWorker, memory_publisher
from rabbitry.testing.link import MemoryLink, Unacked
from rabbitry.testing.queues import Held, MemoryQueue, QueuedMessage
from rabbitry.testing.vhost import VirtualHost

# A message that expires into a queue that expires it again, forever, is a topology bug; this
# many expiries in one drain() or advance() call stop it with an error instead of a hang.
MAX_EXPIRIES = 100_000
REPLY_PREFIX = REPLY_TO + "."


class MemoryBroker(VirtualHost):
    """One virtual host of an in-memory RabbitMQ; ``topology`` is declared at once."""

    def __init__(self, topology: Topology | None = None) -> None:
        super().__init__()
        self._links: list[MemoryLink] = []
        self._reply_links: dict[str, MemoryLink] = {}  # direct reply-to address -> its channel
        self._workers: list[MemoryWorker] = []  # started by running(): drain() waits on them
        self._down = False
        self._alarm: str | None = None
        self._changed = asyncio.Event()
        self._dispatching = False
        self.connection_attempts = 0
        """Every connection a client tried to open, refused ones included."""
        self.channel_errors: list[str] = []
        """Protocol errors a client made (an ack of an unknown tag…): each closed its link."""
        if topology is not None:
            self.declare(topology)

    def _queue_deleted(self, queue: MemoryQueue) -> None:
        # The broker cancels its consumers; each link does what Link does on basic.cancel.
        for link in list(self._links):
            for tag in [t for t, c in link.consumers.items() if c.queue is queue]:
                link.cancelled_by_broker(tag)

    # --- clients --------------------------------------------------------------------------

    def publisher(
        self,
        amqp: AmqpSettings | None = None,
        *,
        fallback: Fallback | None = None,
        name: str = "rabbitry",
        middleware: Sequence[Middleware] = (),
    ) -> Publisher:
        """A real :class:`~rabbitry.Publisher` (same arguments) connected to this broker."""
        return memory_publisher(self, amqp, fallback=fallback, name=name, middleware=middleware)

    @contextlib.asynccontextmanager
    async def running(self, worker: Worker, *, timeout: float = 10.0) -> AsyncIterator[Worker]:
        """Run ``worker`` (its subscriptions, topology, settings and retry policy) on this
        broker: entered once it consumes, stopped and drained on exit. Yields the running copy."""
        # Declared here first so that a topology error fails now, not as a reconnect loop.
        self.declare(worker.topology)
        memory = MemoryWorker(self, worker)
        stopping = asyncio.Event()
        task = asyncio.create_task(memory.worker.run(stopping))
        self._workers.append(memory)
        try:
            started = asyncio.ensure_future(memory.worker.connected.wait())
            done, _ = await asyncio.wait(
                [started, task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            started.cancel()
            if task in done:
                task.result()
                raise RuntimeError(f"worker {worker.name} returned before it consumed")
            if started not in done:
                raise TimeoutError(f"worker {worker.name} did not consume within {timeout:g}s")
            yield memory.worker
        finally:
            self._workers.remove(memory)
            stopping.set()
            await task

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        **properties: Any,
    ) -> None:
        """Publish raw bytes as a foreign client would (a PHP service, a malformed message).

        Raises :class:`~rabbitry.NotFound` for a missing exchange and
        :class:`~rabbitry.PublishUnroutable` when no queue takes it (it is mandatory).
        """
        props = Properties(headers=None if headers is None else dict(headers), **properties)
        try:
            outcome = self._accept(Outgoing(exchange, routing_key, body), encode_properties(props))
        except LinkClosed as exc:
            raise NotFound(exc.reply_text) from exc
        if outcome is PublishOutcome.RETURNED:
            raise PublishUnroutable(f"no queue bound to {exchange!r} for {routing_key!r}")
        await asyncio.sleep(0)

    # --- looking inside -------------------------------------------------------------------

    @property
    def connections(self) -> list[str]:
        """Names of the open connections, as the management UI lists them."""
        return [link.name for link in self._links]

    def counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of ``queue``."""
        held = self._held(queue)
        unacked = sum(u.queue is held for link in self._links for u in link.unacked.values())
        return len(held.ready), unacked

    # --- time and outages -----------------------------------------------------------------

    async def drain(self, *, retries: bool = False, timeout: float = 10.0) -> None:
        """Wait until every delivered message is settled and nothing is left to deliver.

        Messages waiting in a retry queue stay there, unless ``retries``: then the clock jumps
        to each one's expiry in turn until none is left, so every message ends handled or
        dead-lettered. ``timeout`` (real seconds) bounds handlers that never return.
        """
        await self._run_clock(math.inf if retries else self._now, timeout)

    async def advance(self, seconds: float, *, timeout: float = 10.0) -> None:
        """Move the virtual clock ``seconds`` on: messages whose TTL passes meanwhile expire (a
        retry queue sends them back to their work queue) in order, each handled before the next.
        The publishers' circuit breakers run on the same clock."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        await self._run_clock(self._now + seconds, timeout)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The broker is down inside the block: open connections are cut, new ones refused."""
        self._down = True
        self.close_connections("", "broker outage")
        try:
            yield
        finally:
            self._down = False

    @contextlib.contextmanager
    def alarm(self, reason: str = "memory alarm") -> Iterator[None]:
        """A resource alarm inside the block: RabbitMQ blocks every connection that publishes
        (``connection.blocked``), so their publishes wait unconfirmed until it clears."""
        self._alarm = reason
        for link in list(self._links):
            if link.publishes:
                link.set_blocked(reason)
        try:
            yield
        finally:
            self._alarm = None
            for link in list(self._links):
                link.set_blocked(None)

    @property
    def alarm_reason(self) -> str | None:
        return self._alarm

    def close_connections(self, name_part: str, reason: str = "test") -> int:
        """Force-close every connection whose name contains ``name_part`` (as ``rabbitmqctl
        close_connection`` does); return how many."""
        cut = [link for link in self._links if name_part in link.name]
        for link in cut:
            link.fail(LinkClosed(f"CONNECTION_FORCED - {reason}", 320))
        return len(cut)

    # --- what the links and clients call --------------------------------------------------

    async def _connect(self, name: str) -> MemoryLink:
        self.connection_attempts += 1
        await asyncio.sleep(0)
        if self._down:
            raise LinkError("cannot connect to the in-memory broker: it is down")
        link = MemoryLink(self, name)
        self._links.append(link)
        return link

    async def _connect_declarer(self, name: str) -> None:
        self.connection_attempts += 1
        await asyncio.sleep(0)
        if self._down:
            raise BrokerUnavailable(f"connect {name}-declarer: the in-memory broker is down")

    def _accept(self, item: Outgoing, encoded: bytes) -> PublishOutcome:
        """Route one publish whose properties came encoded as on the wire."""
        if item.exchange and item.exchange not in self._exchanges:
            raise LinkClosed(f"NOT_FOUND - no exchange '{item.exchange}' in vhost '/'", 404)
        # Decoded from the wire encoding: consumers get exactly what RabbitMQ would hand
        # them (integers of any width as int, whole-second timestamps, bytes as bytes).
        properties = decode_properties(encoded)
        if not item.exchange and item.routing_key.startswith(REPLY_PREFIX):
            return self._reply(item, properties)
        message = QueuedMessage(item.exchange, item.routing_key, bytes(item.body), properties)
        queues = self._route(item.exchange, item.routing_key)
        for queue in queues:
            queue.put(message, self._now)
        self._poke()
        return PublishOutcome.RETURNED if not queues and item.mandatory else PublishOutcome.ACKED

    def _reply(self, item: Outgoing, properties: Properties) -> PublishOutcome:
        """Direct reply-to: straight to the requesting channel, never through a queue;
        returned when that channel is gone, as RabbitMQ does with ``mandatory``."""
        link = self._reply_links.get(item.routing_key)
        if link is None or not link.is_open:
            return PublishOutcome.RETURNED if item.mandatory else PublishOutcome.ACKED
        body = bytes(item.body)
        asyncio.get_running_loop().call_soon(link.deliver_reply, item.routing_key, body, properties)
        return PublishOutcome.ACKED

    def _give_back(self, held: Unacked, *, requeue: bool) -> None:
        if self._queues.get(held.queue.name) is not held.queue:
            return  # its queue was deleted meanwhile
        if requeue:
            message = replace(held.message, redelivered=True)
            held.queue.ready.appendleft(Held(message, held.expires_at))
        else:
            self._dead_letter(held.queue, held.message, "rejected")
        self._poke()

    def _forget(self, link: MemoryLink) -> None:
        if link in self._links:
            self._links.remove(link)
        if link.reply_address is not None:
            self._reply_links.pop(link.reply_address, None)
        self._poke()

    def _queue(self, name: str) -> MemoryQueue | None:
        return self._queues.get(name)

    # --- delivering and settling ----------------------------------------------------------

    def _poke(self) -> None:
        """Something changed: wake drain() and deliver what can be delivered, next loop turn."""
        self._changed.set()
        if self._dispatching:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop, so no consumer either: nothing to deliver to
        self._dispatching = True
        loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatching = False
        for queue in list(self._queues.values()):
            while queue.ready:
                takers = [
                    consumer
                    for link in self._links
                    for consumer in link.consumers.values()
                    if consumer.queue is queue and consumer.has_room
                ]
                if not takers:
                    break
                consumer = takers[queue.turn % len(takers)]  # round robin, as RabbitMQ does
                queue.turn += 1
                held = queue.ready.popleft()
                consumer.link.deliver(consumer, held.message, held.expires_at)
        self._changed.set()

    def _idle(self) -> bool:
        if self._dispatching or any(link.unacked for link in self._links):
            return False
        # A worker whose connection was cut is reconnecting (unless the broker is down): what
        # went back to its queues is not done with yet.
        return self._down or all(worker.consuming for worker in self._workers)

    async def _run_clock(self, until: float, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._settled(deadline)
        for _ in range(MAX_EXPIRIES):
            if not self._expire(until):
                break
            self._poke()
            await self._settled(deadline)
        else:
            raise RuntimeError(f"{MAX_EXPIRIES} expiries and counting: a dead-letter cycle?")
        if until != math.inf:
            self._now = max(self._now, until)

    async def _settled(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not self._idle():
            if loop.time() >= deadline:
                busy = sum(len(link.unacked) for link in self._links)
                raise TimeoutError(f"not settled in time: {busy} delivery(ies) unacked")
            self._changed.clear()
            # Woken by every change the broker sees; a worker's reconnect is not one of them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(deadline - loop.time(), 0.05))
