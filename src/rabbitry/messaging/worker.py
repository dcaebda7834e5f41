"""Run consumers as a daemon: connect, declare, consume; reconnect when the broker drops us;
on stop (SIGTERM/SIGINT), stop taking work, drain in-flight handlers and exit.

A worker consumes every queue over **one connection**, a consumer per queue, so a process
serving thousands of queues holds one consumer connection, not thousands. Subscriptions can be
added (:meth:`Worker.subscribe`) and removed (:meth:`Worker.unsubscribe`) while it runs.

What may go wrong, and what happens:

* the broker cancels one consumer (``basic.cancel``: its queue was deleted): that consumer
  drains, its queue is declared again and consumed again; the connection and every other
  consumer carry on;
* the connection drops: every consumer is given up (the broker requeues their unacked
  deliveries), and after a jittered pause the next connection consumes everything again. It
  consumes at once, without declaring the queues a previous connection had declared (they are
  durable): after a broker outage thousands of queues are back in as many pipelined
  ``basic.consume`` calls, not in thousands of declarations. If a queue went missing
  meanwhile, its ``basic.consume`` fails, and the connection after that declares everything;
* a subscription's topology is refused (it exists with other arguments): that subscription is
  dropped, with an error in the log; the others are served.

:meth:`Worker.hand_over` closes the connection on purpose and consumes again at once: on a
queue with a single active consumer, the broker gives back what it delivered and was not
acked and makes the next consumer active, in one step, so that nothing is taken out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rabbitry.amqp.base import BaseLink, Interrupted, LinkClosed, LinkError, OpenLink
from rabbitry.amqp.pipeline import Pipeline
from rabbitry.errors import BrokerError, ConfigError, RabbitryError
from rabbitry.messaging.connection import opener, reconnecting
from rabbitry.messaging.consumer import Consumer, Subscription
from rabbitry.messaging.middleware import Middleware
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.sender import Sender
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.topology import Topology

log = logging.getLogger(__name__)

MAX_BACKOFF = 10.0
NOT_FOUND = 404  # the broker's reply code for a queue that does not exist

Declare = Callable[[Topology], Awaitable[None]]
"""Declares a topology on the broker (idempotent)."""


@dataclass(frozen=True, slots=True)
class _Wanted:
    subscription: Subscription
    topology: Topology  # what its queue needs declared (shared by a subscribe() call's group)


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
        self._topology = topology
        self._policy = retry or RetryPolicy()
        self._middleware = tuple(middleware)
        self._open_link = open_link or opener(self._settings)
        self._declare = declare
        self._wanted: dict[str, _Wanted] = {}
        for subscription in subscriptions:
            self._want(subscription, Topology())  # declared with ``topology``, each session
        self._link: BaseLink | None = None
        self._sender: Sender | None = None
        self._consumers: dict[str, Consumer] = {}  # by queue, on the current connection
        self._by_tag: dict[str, Consumer] = {}
        self._lock = asyncio.Lock()  # one change of the consumers at a time
        self._undeclared: set[str] = set()  # queues whose topology awaits a declaration
        self._missing = False  # a basic.consume found no queue
        self._chores: set[asyncio.Task[None]] = set()
        self._handed: asyncio.Future[None] | None = None  # set by hand_over(), until it ends
        self.connected = asyncio.Event()  # set while consuming; tests and health checks wait on it

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        return tuple(w.subscription for w in self._wanted.values())

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

    def subscribed(self, queue: str) -> bool:
        """Whether ``queue`` is among the subscriptions (consumed whenever connected)."""
        return queue in self._wanted

    def consuming(self, queue: str) -> bool:
        """Whether ``queue`` has a consumer on the current connection."""
        return queue in self._consumers

    async def subscribe(
        self, subscriptions: Sequence[Subscription], topology: Topology | None = None
    ) -> None:
        """Add ``subscriptions`` while running (or before): declare ``topology`` (what their
        queues need), then consume. Returns once they consume on the current connection, or
        at once when there is none (the next one will). The broker refusing the topology
        raises :class:`~rabbitry.errors.ConfigError` and adds nothing; a connection lost
        meanwhile is the reconnect loop's to mend, with these subscriptions in."""
        topology = topology or Topology()
        queues = [s.queue for s in subscriptions]
        async with self._lock:
            if len(set(queues)) != len(queues) or any(q in self._wanted for q in queues):
                raise ValueError(f"{self.name}: a queue is subscribed already: {queues}")
            link = self._link
            if link is None or not link.is_open:
                for subscription in subscriptions:
                    self._want(subscription, topology)
                self._undeclared.update(queues)
                return
            try:
                async with self._declaring() as declaring:
                    await declaring.declare(topology)
            except BrokerError as exc:
                # The next connection declares them, with everything else.
                log.warning("%s: could not declare for %s: %s", self.name, queues, exc)
                for subscription in subscriptions:
                    self._want(subscription, topology)
                self._undeclared.update(queues)
                link.abort(LinkClosed(f"declaring failed: {exc}"))
                return
            for subscription in subscriptions:
                self._want(subscription, topology)
            try:
                await self._consume(link, [self._wanted[q] for q in queues])
            except LinkError as exc:
                log.warning("%s: connection lost while subscribing (%s)", self.name, exc)

    async def unsubscribe(self, queue: str) -> None:
        """Stop consuming ``queue``: cancel its consumer and let its handlers finish (up to the
        drain timeout). Unknown queues are ignored."""
        async with self._lock:
            self._wanted.pop(queue, None)
            consumer = self._consumers.pop(queue, None)
        if consumer is not None:
            self._forget(consumer)
            await consumer.stop(self._settings.drain_timeout)

    async def hand_over(self) -> bool:
        """Close the connection (the acks issued so far go first) without cancelling the
        consumers, and consume again on a new one at once; ``False`` when not connected.

        On a queue with a single active consumer this hands it to the next consumer: the
        broker requeues what this one held unacked and makes the next one active in the same
        step, so it takes the queue from its oldest message on. (``basic.cancel`` would make
        it active at once, while this worker still holds older messages.) Handlers in flight
        are cancelled, as on a lost connection. Returns once the consumers are given up."""
        link = self._link
        if link is None or not link.is_open or self._handed is not None:
            return False
        handed = self._handed = asyncio.get_running_loop().create_future()
        try:
            try:
                await asyncio.wait_for(link.close(), timeout=self._settings.rpc_timeout)
            except (BrokerError, OSError, TimeoutError):
                link.abort(LinkClosed("handed over"))  # the broker did not answer: drop it
            await asyncio.shield(handed)
            # Still handing over (see handing_over) until the next connection consumes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), self._settings.rpc_timeout)
        finally:
            self._handed = None
        return True

    @property
    def handing_over(self) -> bool:
        """True from :meth:`hand_over` until the next connection consumes (or it gave up
        waiting): not consuming for a moment, on purpose."""
        return self._handed is not None

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping``, then drain; reconnect when the broker drops us."""
        try:
            await reconnecting(
                self.name,
                lambda: self._session(stopping),
                stopping,
                first_pause=0.5,
                max_pause=MAX_BACKOFF,
            )
        finally:
            for chore in list(self._chores):
                chore.cancel()

    def _want(self, subscription: Subscription, topology: Topology) -> None:
        self._wanted[subscription.queue] = _Wanted(subscription, topology)

    async def _session(self, stopping: asyncio.Event) -> None:
        """One connection's lifetime: returns on stop, raises when the broker drops us."""
        link: BaseLink | None = None
        # Retry and dead-letter copies go over a connection of their own (opened on first
        # use), never the one consumed from: a broker alarm blocks a connection that
        # publishes, and its acks with it.
        sender = Sender(self._settings, f"{self.name}-forward", open_link=self._open_link)
        try:
            async with self._lock:
                await self._declare_wanted()
                link = await self._open_link(self.name)
                link.on_cancel = self._on_broker_cancel
                self._link, self._sender = link, sender
                await self._consume(link, list(self._wanted.values()))
                if not link.is_open:
                    raise link.error or LinkClosed("connection lost")
            self.connected.set()
            log.info("%s: consuming %d queue(s) on one connection", self.name, len(self._wanted))
            stop_task = asyncio.ensure_future(stopping.wait())
            lost = asyncio.ensure_future(_wait_closed(link))
            done, _ = await asyncio.wait([stop_task, lost], return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            lost.cancel()
            async with self._lock:
                consumers = list(self._consumers.values())
                self._link = None
            if stop_task in done:
                log.info("%s: stopping; draining in-flight messages", self.name)
                await asyncio.gather(*(c.stop(self._settings.drain_timeout) for c in consumers))
                return
            for consumer in consumers:
                consumer.abandon()
            if self._handed is not None:  # closed on purpose: consume again, behind the others
                log.info("%s: handed over; consuming again", self.name)
                return
            raise link.error or LinkClosed("connection lost")
        finally:
            self.connected.clear()
            if self._handed is not None and not self._handed.done():
                self._handed.set_result(None)  # its consumers are given up, however it ended
            self._link = None
            self._consumers.clear()
            self._by_tag.clear()
            if self._missing:
                # A queue went missing while we were away: declare them all, not just it (the
                # broker names only the first; a restart may have lost more).
                self._undeclared = set(self._wanted)
                self._missing = False
            if link is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.close(), timeout=3)
            await sender.close()

    async def _declare_wanted(self) -> None:
        """The worker's topology, then each subscription's that no connection before declared
        (a group's topology once, however many queues share it), in one pipelined round."""
        queues_of: dict[int, list[str]] = {}
        topologies: dict[int, Topology] = {}
        # In the order they were subscribed: what a caller subscribed last (a queue that
        # expires when unused, say) is declared last, just before the consumes.
        for queue, wanted in self._wanted.items():
            if queue in self._undeclared and _has(wanted.topology):
                topologies.setdefault(id(wanted.topology), wanted.topology)
                queues_of.setdefault(id(wanted.topology), [])
        for queue, wanted in self._wanted.items():  # every queue of a group, declared or not
            if id(wanted.topology) in queues_of:
                queues_of[id(wanted.topology)].append(queue)
        groups: list[tuple[Topology, list[str]]] = [(self._topology, [])]
        groups += [(topologies[k], queues_of[k]) for k in topologies]

        def declared(index: int) -> None:
            # Progress is kept: a connection lost half-way does not start over from nothing.
            self._undeclared.difference_update(groups[index][1])

        async with self._declaring() as declaring:
            refused = await declaring.declare_groups([t for t, _ in groups], declared)
        if 0 in refused:
            raise refused[0]
        later: RabbitryError | None = None
        for index, error in refused.items():
            queues = groups[index][1]
            if isinstance(error, ConfigError):
                # One queue the broker has with other arguments must not stop the rest.
                log.error("%s: dropping %s: %s", self.name, ", ".join(queues), error)
                for queue in queues:
                    self._wanted.pop(queue, None)
                self._undeclared.difference_update(queues)
            else:
                later = later or error  # may pass (a missing exchange): the next connection
        if later is not None:
            raise later
        self._undeclared.clear()

    @contextlib.asynccontextmanager
    async def _declaring(self) -> AsyncIterator[_Round]:
        """A round of declarations: on RabbitMQ, a pipelined declarer on a connection of its
        own for the round, closed after it; else the ``declare`` seam, one group at a time."""
        if self._declare is not None:
            yield _OneByOne(self._declare)
            return
        amqp = self._settings
        async with Pipeline(
            amqp.url,
            name=self.name,
            timeout=amqp.connect_timeout,
            rpc_timeout=amqp.rpc_timeout,
            window=amqp.pipeline_window,
        ) as pipeline:
            yield pipeline

    async def _consume(self, link: BaseLink, wanted: Sequence[_Wanted]) -> None:
        """Start a consumer for each of ``wanted`` on ``link``. ``basic.qos`` applies to the
        consumers started after it, so they go in groups of one prefetch, each group's
        ``basic.consume`` calls pipelined (a few round trips for thousands, not thousands)."""
        groups: dict[int, list[Consumer]] = {}
        for item in wanted:
            consumer = Consumer(
                self._settings,
                item.subscription,
                link,
                self._policy,
                sender=self._sender,
                middleware=self._middleware,
                on_cancelled=self._on_consumer_cancelled,
            )
            groups.setdefault(consumer.prefetch, []).append(consumer)
        for prefetch, group in groups.items():
            await link.qos(prefetch)
            await self._start(link, group)

    async def _start(self, link: BaseLink, consumers: Sequence[Consumer]) -> None:
        """Start ``consumers``, their ``basic.consume`` calls pipelined in a sliding window."""
        requests = [consumer.request for consumer in consumers]
        failed: Interrupted | None = None
        try:
            tags = await link.consume_all(requests, self._settings.pipeline_window)
        except Interrupted as exc:
            tags, failed = [str(tag) for tag in exc.replies], exc
        for consumer, tag in zip(consumers, tags, strict=False):
            # Registered even if a later one failed: the connection's end abandons them all.
            consumer.started(tag)
            self._consumers[consumer.subscription.queue] = consumer
            self._by_tag[tag] = consumer
        if failed is not None:
            queue = consumers[len(tags)].subscription.queue
            if failed.reply_code == NOT_FOUND:
                self._missing = True  # declare everything on the next connection
            raise LinkClosed(f"consume {queue}: {failed.reply_text}", failed.reply_code)

    def _forget(self, consumer: Consumer) -> None:
        if consumer.tag is not None:
            self._by_tag.pop(consumer.tag, None)

    def _on_broker_cancel(self, tag: str) -> None:
        consumer = self._by_tag.get(tag)
        if consumer is not None:
            consumer.cancelled_by_broker(tag)

    def _on_consumer_cancelled(self, consumer: Consumer) -> None:
        """A consumer the broker cancelled has drained: declare its queue and consume again."""
        self._forget(consumer)
        task = asyncio.ensure_future(self._resubscribe(consumer))
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _resubscribe(self, cancelled: Consumer) -> None:
        queue = cancelled.subscription.queue
        async with self._lock:
            link = self._link
            if self._consumers.get(queue) is not cancelled:
                return  # unsubscribed, or the connection went and took it
            del self._consumers[queue]
            wanted = self._wanted.get(queue)
            if wanted is None or link is None or not link.is_open:
                return
            log.warning(
                "%s: the broker cancelled the consumer of %s; declaring it", self.name, queue
            )
            try:
                async with self._declaring() as declaring:
                    await declaring.declare(self._topology | wanted.topology)
                await self._consume(link, [wanted])
            except ConfigError as exc:
                log.error("%s: dropping %s: %s", self.name, queue, exc)
                self._wanted.pop(queue, None)
            except BrokerError as exc:
                # Cannot declare or consume now: the next connection will, with all the rest.
                log.warning(
                    "%s: could not consume %s again (%s); reconnecting", self.name, queue, exc
                )
                link.abort(LinkClosed(f"resubscribing {queue} failed: {exc}"))


class _Round(Protocol):
    """A round of declarations (:class:`~rabbitry.amqp.pipeline.Pipeline` on RabbitMQ)."""

    async def declare(self, topology: Topology) -> None: ...

    async def declare_groups(
        self, groups: Sequence[Topology], on_done: Callable[[int], None] | None = None
    ) -> dict[int, RabbitryError]: ...


class _OneByOne:
    """A round through a :data:`Declare` seam: one group at a time; a group it refuses
    (:class:`ConfigError`) is reported and the rest declared, any other error raised."""

    def __init__(self, declare: Declare) -> None:
        self._declare = declare

    async def declare(self, topology: Topology) -> None:
        await self._declare(topology)

    async def declare_groups(
        self, groups: Sequence[Topology], on_done: Callable[[int], None] | None = None
    ) -> dict[int, RabbitryError]:
        refused: dict[int, RabbitryError] = {}
        for index, group in enumerate(groups):
            try:
                await self._declare(group)
            except ConfigError as exc:
                refused[index] = exc
                continue
            if on_done is not None:
                on_done(index)
        return refused


def _has(topology: Topology) -> bool:
    return bool(topology.exchanges or topology.queues or topology.bindings)


async def _wait_closed(link: BaseLink) -> None:
    with contextlib.suppress(BaseException):
        await asyncio.shield(link.closed)
