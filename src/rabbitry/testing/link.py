"""A connection to the in-memory broker: the :class:`~rabbitry.amqp.base.BaseLink` protocol.

The real :class:`~rabbitry.Publisher`, :class:`~rabbitry.Worker` and their consumers run on it
unchanged, so what they decide (confirms, retries, dead letters, the circuit breaker) is the
production code's, not a copy. Only what a broker would do lives on this side: the broker's
replies (``PublishOutcome``), channel errors (:class:`LinkClosed` with RabbitMQ's reply codes and
texts), deliveries to ``on_delivery`` and the settling of their tags.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from rabbitry.amqp import wire
from rabbitry.amqp.base import (
    REPLY_TO,
    BaseLink,
    ConsumeRequest,
    Interrupted,
    LinkClosed,
    LinkError,
    Outgoing,
    PublishOutcome,
    Received,
    Skipped,
    Unfit,
)
from rabbitry.amqp.properties import Properties, encode_properties
from rabbitry.amqp.protocol import CHANNEL
from rabbitry.testing.queues import MemoryQueue, QueuedMessage

if TYPE_CHECKING:
    from rabbitry.testing.broker import MemoryBroker

log = logging.getLogger(__name__)

FRAME_MAX = 131072  # what RabbitMQ offers and Link accepts


@dataclass(eq=False, slots=True)
class MemoryConsumer:
    link: MemoryLink
    tag: str
    queue: MemoryQueue
    on_delivery: Callable[[Received], None]
    prefetch: int  # 0: unlimited, as basic.qos 0
    unacked: int = 0

    @property
    def has_room(self) -> bool:
        return self.prefetch == 0 or self.unacked < self.prefetch


@dataclass(slots=True)
class Unacked:
    queue: MemoryQueue
    message: QueuedMessage
    consumer: MemoryConsumer
    expires_at: float | None = field(default=None)


class MemoryLink(BaseLink):
    """One connection and channel of the in-memory broker; made by the broker only."""

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.name = name
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.unacked: dict[int, Unacked] = {}
        self.consumers: dict[str, MemoryConsumer] = {}
        self.has_consumed = False
        self.on_cancel = None
        self.on_blocked = None
        self._broker = broker
        self._error: LinkClosed | None = None
        self._blocked: str | None = None
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._confirming = False
        self._refused = False  # a publish of this link's was refused (and closed it)
        self._confirming_tasks: set[asyncio.Future[None]] = set()
        self._prefetch = 0
        self.reply_address: str | None = None
        self._reply_consumer: tuple[str, Callable[[Received], None]] | None = None
        self._tags = itertools.count(1)
        self._consumer_tags = itertools.count(1)

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    @property
    def error(self) -> LinkClosed | None:
        return self._error

    @property
    def blocked(self) -> str | None:
        return self._blocked

    @property
    def publishes(self) -> bool:
        """In confirm mode: the kind of connection an alarm blocks."""
        return self._confirming

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed.done():
            raise LinkClosed("closed by the client", 200)

    # --- publishing -----------------------------------------------------------------------

    async def confirm_select(self) -> None:
        self._check_open()
        self._confirming = True
        if (alarm := self._broker.alarm_reason) is not None:
            # RabbitMQ blocks a connection that publishes during an alarm; told next turn,
            # once the owner has had the chance to set on_blocked.
            asyncio.get_running_loop().call_soon(self.set_blocked, alarm)

    def _publishing(self) -> None:
        self._check_open()
        if not self._confirming:
            raise LinkError("call confirm_select() before publishing")

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
    ) -> asyncio.Future[PublishOutcome]:
        self._publishing()  # as Link: a closed link refuses at once, a channel error comes later
        (encoded,) = _encoded([Outgoing(exchange, routing_key, body, properties, mandatory)])
        future: asyncio.Future[PublishOutcome] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._confirm_one(encoded, future))
        self._confirming_tasks.add(task)
        task.add_done_callback(self._confirming_tasks.discard)
        return future

    async def _confirm_one(
        self, item: tuple[Outgoing, bytes], future: asyncio.Future[PublishOutcome]
    ) -> None:
        try:
            (outcome,) = await self._route([item])
        except LinkClosed as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if future.done():
            return
        if outcome is PublishOutcome.REFUSED:
            assert self._error is not None
            future.set_exception(self._error)
        elif outcome is PublishOutcome.SKIPPED:
            refusal = self._error
            code = 0 if refusal is None else refusal.reply_code
            text = f"not published: dropped by the broker after a refused publish ({refusal})"
            future.set_exception(Skipped(text, code))
        else:
            future.set_result(outcome)

    async def publish_many(self, items: Sequence[Outgoing]) -> list[PublishOutcome]:
        if not items:
            return []
        self._publishing()
        return await self._route(_encoded(items))

    async def _route(self, items: Sequence[tuple[Outgoing, bytes]]) -> list[PublishOutcome]:
        # While an alarm blocks this connection the broker reads nothing from it: no routing,
        # no confirm, until it clears (or the link goes).
        await asyncio.sleep(0)  # a confirm takes at least a turn of the loop
        await self._unblocked.wait()
        if self.closed.done() and not self._refused:
            # Gone before the broker read these (cut, given up on, closed): as on Link, they
            # fail with the reason; only a refused publish leaves the ones after it skipped.
            raise self._error or LinkClosed("closed by the client", 200)
        outcomes: list[PublishOutcome] = []
        for item, properties in items:
            if self._error is not None:
                outcomes.append(PublishOutcome.SKIPPED)  # dropped unread after the refused one
                continue
            try:
                if item.properties.reply_to == REPLY_TO:
                    item, properties = self._addressed(item)
                outcomes.append(self._broker._accept(item, properties))
            except LinkClosed as exc:  # a channel error: the broker closes the channel
                self._refused = True
                self.fail(exc)
                outcomes.append(PublishOutcome.REFUSED)
        return outcomes

    def _addressed(self, item: Outgoing) -> tuple[Outgoing, bytes]:
        """A request's ``reply_to`` as RabbitMQ rewrites it: this channel's reply address."""
        if self.reply_address is None:
            raise LinkClosed("PRECONDITION_FAILED - fast reply consumer does not exist", 406)
        properties = replace(item.properties, reply_to=self.reply_address)
        rewritten = Outgoing(item.exchange, item.routing_key, item.body, properties, item.mandatory)
        return rewritten, encode_properties(properties)

    def set_blocked(self, reason: str | None) -> None:
        """The broker blocks (an alarm) or unblocks this connection."""
        if reason == self._blocked or self.closed.done():
            return
        self._blocked = reason
        if reason is None:
            self._unblocked.set()
        else:
            self._unblocked.clear()
        if self.on_blocked is not None:
            self.on_blocked(reason)

    # --- consuming ------------------------------------------------------------------------

    async def qos(self, prefetch_count: int) -> None:
        self._check_open()
        self._prefetch = prefetch_count

    async def consume_all(self, requests: Sequence[ConsumeRequest], window: int) -> list[str]:
        tags: list[str] = []
        for request in requests:
            try:
                tag = await self.consume(
                    request.queue, request.on_delivery, exclusive=request.exclusive
                )
            except LinkClosed as exc:
                raise Interrupted(exc, len(tags), exc.reply_code == 404, tags) from None
            tags.append(tag)
        return tags

    async def consume(
        self,
        queue: str,
        on_delivery: Callable[[Received], None],
        *,
        consumer_tag: str | None = None,
        exclusive: bool = False,
        no_ack: bool = False,
    ) -> str:
        self._check_open()
        if queue == REPLY_TO:
            return self._consume_replies(on_delivery, consumer_tag, no_ack)
        target = self._broker._queue(queue)
        if target is None:
            exc = LinkClosed(f"NOT_FOUND - no queue '{queue}' in vhost '/'", 404)
            self.fail(exc)
            raise exc
        tag = consumer_tag or f"amq.ctag-{self.name}-{next(self._consumer_tags)}"
        self.consumers[tag] = MemoryConsumer(self, tag, target, on_delivery, self._prefetch)
        self.has_consumed = True
        self._broker._poke()
        return tag

    def _consume_replies(
        self, on_delivery: Callable[[Received], None], consumer_tag: str | None, no_ack: bool
    ) -> str:
        """Direct reply-to: a pseudo-queue per channel, consumed without acks; a request
        published here with ``reply_to=amq.rabbitmq.reply-to`` carries this channel's address."""
        if not no_ack:
            exc = LinkClosed("PRECONDITION_FAILED - reply consumer cannot acknowledge", 406)
            self.fail(exc)
            raise exc
        tag = consumer_tag or f"amq.ctag-{self.name}-{next(self._consumer_tags)}"
        self.reply_address = f"{REPLY_TO}.{self.name}.{id(self):x}"
        self._reply_consumer = (tag, on_delivery)
        self._broker._reply_links[self.reply_address] = self
        return tag

    def deliver_reply(self, routing_key: str, body: bytes, properties: Properties) -> None:
        """A message published to this channel's reply address, handed over unacked."""
        if self._reply_consumer is None or not self.is_open:
            return
        tag, on_delivery = self._reply_consumer
        delivery = Received(next(self._tags), False, "", routing_key, tag, properties, body)
        try:
            on_delivery(delivery)
        except Exception:
            log.exception("on_delivery for %s raised on a reply", tag)

    async def cancel(self, consumer_tag: str) -> None:
        self._check_open()
        self.consumers.pop(consumer_tag, None)

    def cancelled_by_broker(self, tag: str) -> None:
        """basic.cancel from the broker (the queue was deleted), handled as Link handles it."""
        self.consumers.pop(tag, None)
        if self.on_cancel is not None:
            self.on_cancel(tag)
        else:
            self.fail(LinkClosed("consumer cancelled by the broker (its queue was deleted?)"))

    def deliver(
        self, consumer: MemoryConsumer, message: QueuedMessage, expires: float | None
    ) -> None:
        tag = next(self._tags)
        self.unacked[tag] = Unacked(consumer.queue, message, consumer, expires)
        consumer.unacked += 1
        try:
            consumer.on_delivery(message.delivered(tag, consumer.tag))
        except Exception:  # as Link does: the delivery stays unsettled
            log.exception("on_delivery for %s raised; delivery %d unsettled", consumer.tag, tag)

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        self._settle(delivery_tag, multiple, requeue=None)

    def nack(self, delivery_tag: int, *, requeue: bool) -> None:
        self._settle(delivery_tag, False, requeue=requeue)

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self._settle(delivery_tag, False, requeue=requeue)

    def _settle(self, delivery_tag: int, multiple: bool, *, requeue: bool | None) -> None:
        self._check_open()
        if multiple:
            tags = sorted(tag for tag in self.unacked if tag <= delivery_tag)
        else:
            tags = [delivery_tag]
        if not tags or tags[-1] not in self.unacked:
            # RabbitMQ closes the channel: a tag settled twice, or one it never gave out.
            reason = f"PRECONDITION_FAILED - unknown delivery tag {delivery_tag}"
            self._broker.channel_errors.append(f"{self.name}: {reason}")
            self.fail(LinkClosed(reason, 406))
            return
        for tag in tags:
            held = self.unacked.pop(tag)
            held.consumer.unacked -= 1
            if requeue is not None:
                self._broker._give_back(held, requeue=requeue)
        self._broker._poke()

    # --- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        if not self.closed.done():
            self._end(None)
        await asyncio.shield(self.closed)

    def abort(self, exc: LinkClosed) -> None:
        """The owner gives up on the link (as :meth:`Link.abort`): what is pending fails with
        ``exc``, and publishes held by an alarm never reach a queue."""
        self.fail(exc)

    def fail(self, exc: LinkClosed) -> None:
        """The broker closed this link (a channel error, a forced close, an outage)."""
        if not self.closed.done():
            self._error = exc
            self._end(exc)

    def _end(self, exc: LinkClosed | None) -> None:
        self.consumers.clear()
        self._reply_consumer = None
        self._unblocked.set()  # held publishes see the link gone
        # Unsettled deliveries go back to their queues, marked redelivered, first tag first.
        for tag in sorted(self.unacked, reverse=True):
            self._broker._give_back(self.unacked.pop(tag), requeue=True)
        if exc is None:
            self.closed.set_result(None)
        else:
            self.closed.set_exception(exc)
            self.closed.add_done_callback(_consume_exception)
        self._broker._forget(self)


def _encoded(items: Sequence[Outgoing]) -> list[tuple[Outgoing, bytes]]:
    """Each item with its encoded properties, as Link encodes them; :class:`Unfit` (nothing
    sent) if any cannot be, the way the wire would refuse it."""
    encoded: list[tuple[Outgoing, bytes]] = []
    unfit: dict[int, str] = {}
    for index, item in enumerate(items):
        try:
            properties = encode_properties(item.properties)
            wire.encode_publish(
                CHANNEL,
                item.exchange,
                item.routing_key,
                b"",
                properties,
                mandatory=item.mandatory,
                frame_max=FRAME_MAX,
            )
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            unfit[index] = str(exc)
            continue
        encoded.append((item, properties))
    if unfit:
        raise Unfit(unfit)
    return encoded


def _consume_exception(future: asyncio.Future[None]) -> None:
    # Nobody may await ``closed``; reading the exception keeps asyncio from logging it.
    if not future.cancelled():
        future.exception()
