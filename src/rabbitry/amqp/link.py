"""A lean AMQP 0-9-1 connection with one channel, for Rabbitry's hot paths.

aio-pika spends most of its ~200 µs per message on a Future (often a Task) and a socket write
per message. :class:`Link` is an :class:`asyncio.Protocol` instead: publishes made in one loop
turn are encoded by :mod:`~rabbitry.amqp.wire` and leave in one ``transport.write``,
confirms are tracked per window (:mod:`~rabbitry.amqp.confirms`), deliveries are handed to
a plain callback straight from ``data_received``, and the acks they cause go out together at
the end of the turn, folded into one ``multiple=True`` ack when they are consecutive
(:mod:`~rabbitry.amqp.settles`). The connection itself is
:mod:`~rabbitry.amqp.protocol`'s.

Topology, reconnection and the rest stay on aio-pika; a Link that fails stays closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pamqp import commands

from rabbitry.amqp import wire
from rabbitry.amqp.base import (
    REPLY_TO,
    ConsumeRequest,
    Interrupted,
    LinkClosed,
    LinkError,
    Received,
    Skipped,
    Unfit,
)
from rabbitry.amqp.calls import RpcProtocol
from rabbitry.amqp.confirms import Confirms, Outgoing, PublishOutcome
from rabbitry.amqp.properties import Properties, encode_properties
from rabbitry.amqp.protocol import CHANNEL
from rabbitry.amqp.settles import AckFolder
from rabbitry.amqp.url import Endpoint

__all__ = [
    "Link",
    "LinkClosed",
    "LinkError",
    "Outgoing",
    "PublishOutcome",
    "Received",
    "Skipped",
    "Unfit",
]

log = logging.getLogger(__name__)

# When many single publishes are made in one loop turn, write every this many frame pieces
# (about 40 messages) instead of all at the end of the turn: the broker works on the first
# ones while the rest are encoded, rather than waiting for all of them and then making us
# wait for it.
_EAGER_PIECES = 1024

_REPLY_ADDRESS = REPLY_TO + "."  # what the broker rewrites a request's reply_to into
# RabbitMQ names the exchange a refused publish went to in its reply text.
_REFUSED_EXCHANGE = re.compile(r"exchange '(.*?)' in vhost")

# What encoding a caller's properties can raise: a short string over 255 bytes, an octet or
# integer out of range, a header value of no AMQP type.
_ENCODING_ERRORS = (ValueError, TypeError, OverflowError, struct.error)


class Link(RpcProtocol):
    """One AMQP connection and its channel 1: confirmed publishing and consuming; the
    :class:`~rabbitry.amqp.base.BaseLink` protocol over the wire.

    Create with :meth:`connect`; see :class:`~rabbitry.amqp.protocol.AmqpProtocol` for
    ``connect``, ``close``, ``abort``, ``is_open``, ``closed``, ``blocked`` and ``on_blocked``,
    and :class:`~rabbitry.amqp.calls.RpcProtocol` for ``call_all``.
    """

    on_cancel: Callable[[str], None] | None
    """Hook the owner may set: called with the consumer tag when the broker cancels a consumer
    (its queue was deleted). The link stays open, so deliveries in flight can still be acked;
    the owner closes it when they are. Unset, the link closes at once."""

    def __init__(
        self,
        endpoint: Endpoint,
        name: str,
        heartbeat: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(endpoint, name, heartbeat, loop)
        self._confirms: Confirms | None = None
        self._consumers: dict[str, Callable[[Received], None]] = {}
        self._acks = AckFolder(CHANNEL)
        # The method that announced the content being assembled, and whether it is a return.
        self._method: tuple[Any, ...] | None = None
        self._is_return = False
        self._refused: str | None = None  # the exchange of a publish the broker refused
        self.on_cancel = None

    def _on_channel_close(self, method: commands.Channel.Close) -> None:
        if (method.class_id, method.method_id) == (60, 40):  # basic.publish was refused
            found = _REFUSED_EXCHANGE.search(method.reply_text or "")
            if found is not None:
                self._refused = found.group(1)

    def _on_failed(self, exc: LinkClosed) -> None:
        confirms, refused = self._confirms, self._refused
        if confirms is None:
            pass
        elif refused is None or not confirms.refuse(refused, exc, _skipped(exc)):
            # A refused publish fails alone (refuse): what came before it went through, what
            # came after it was dropped unread and may be sent again (see confirms.py).
            confirms.fail(exc)
        self._consumers.clear()

    def _flush_tail(self) -> bytes | None:
        return self._acks.take_run()  # after this turn's single settles: see settles.py

    # --- reading -----------------------------------------------------------------------

    def _on_method(self, channel: int, payload: bytes) -> None:
        method = wire.method_id(payload)
        if method == wire.BASIC_DELIVER:
            try:
                self._method = wire.parse_deliver(payload)
            except UnicodeDecodeError as exc:  # a foreign publisher's routing key
                self._method = wire.parse_deliver(payload, "surrogateescape")
                self._content_error = f"exchange or routing key is not UTF-8 ({exc.reason})"
            self._is_return = False
        elif method == wire.BASIC_ACK or method == wire.BASIC_NACK:
            tag, multiple, _ = wire.parse_confirm(payload)
            if self._confirms is not None:
                outcome = (
                    PublishOutcome.ACKED if method == wire.BASIC_ACK else PublishOutcome.NACKED
                )
                self._confirms.settle(tag, multiple, outcome)
        elif method == wire.BASIC_RETURN:
            self._method = wire.parse_return(payload)
            self._is_return = True
        else:
            super()._on_method(channel, payload)

    def _control_handlers(self) -> dict[int, Callable[[int, Any], None]]:
        handlers = super()._control_handlers()
        handlers[commands.Basic.Cancel.index] = self._basic_cancel
        return handlers

    def _basic_cancel(self, channel: int, method: commands.Basic.Cancel) -> None:
        # The broker cancels a consumer whose queue was deleted (consumer_cancel_notify).
        # Closing the whole link hands the problem to the owner's reconnect path, which
        # declares the queue again and resumes; a silently idle consumer would not.
        tag = method.consumer_tag or ""
        self._consumers.pop(tag, None)
        if self.on_cancel is not None:
            log.warning("broker cancelled consumer %s", tag)
            self.on_cancel(tag)
            return
        log.warning("broker cancelled consumer %s: closing the link", tag)
        self._flush()
        reason = "consumer cancelled by the broker (its queue was deleted?)"
        close = commands.Connection.Close(200, reason, 0, 0)
        self._terminate(LinkClosed(reason), wire.method_frame(0, close), wait_close_ok=True)

    def _on_message(self, body: bytes) -> None:
        fields, properties, error = self._method, self._properties, self._content_error
        self._method = self._properties = None
        if error:
            self._content_error = ""
        if fields is None or properties is None:
            raise wire.FrameError("content frames without a delivering method")
        if self._error is not None:
            return  # arrived after the channel closed: its tag is void, nobody to give it to
        if self._is_return:
            _, _, exchange, routing_key = fields
            # The broker echoes the property bytes it received: compare those, not decoded
            # fields, so look-alike messages are told apart (confirms.py).
            raw = self._header[12:]
            if self._confirms is None or not (
                self._confirms.returned(exchange, routing_key, body, raw)
                or self._returned_request(exchange, routing_key, body, properties)
            ):
                log.warning("unmatched basic.return from %r with key %r", exchange, routing_key)
            return
        consumer_tag, tag, redelivered, exchange, routing_key = fields
        callback = self._consumers.get(consumer_tag)
        if callback is None:  # cancelled meanwhile: give it back rather than lose it
            self._acks.settled(tag)
            self._send(wire.encode_reject(CHANNEL, tag, requeue=True))
            return
        delivery = Received(
            tag, redelivered, exchange, routing_key, consumer_tag, properties, body, error or None
        )
        try:
            callback(delivery)
        except Exception:
            # Raising into the transport would drop the connection under every consumer, and
            # a tag left unsettled would hold a prefetch slot (and every later ack's folding)
            # for the life of the link: give it back once, dead-letter it the second time.
            log.exception("on_delivery for %s raised on delivery %d", consumer_tag, tag)
            self._acks.settled(tag)
            self._send(wire.encode_reject(CHANNEL, tag, requeue=not redelivered))

    def _returned_request(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties
    ) -> bool:
        """A returned request sent with direct reply-to: the broker echoes the ``reply_to``
        it rewrote to this channel's address, so match the bytes as they were published."""
        if self._confirms is None or not (properties.reply_to or "").startswith(_REPLY_ADDRESS):
            return False
        published = encode_properties(replace(properties, reply_to=REPLY_TO))
        return self._confirms.returned(exchange, routing_key, body, published)

    # --- publishing --------------------------------------------------------------------

    async def confirm_select(self) -> None:
        """Put the channel in confirm mode; publishing requires it."""
        if self._confirms is not None:
            return
        self._check_open()
        # Tags count from the select, so track from now, not from the SelectOk.
        self._confirms = Confirms()
        await self._call(commands.Confirm.Select())

    def _publishing(self) -> Confirms:
        self._check_open()
        if self._confirms is None:
            raise LinkError("call confirm_select() before publishing")
        return self._confirms

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
    ) -> asyncio.Future[PublishOutcome]:
        """Publish one message; the future gets the broker's :class:`PublishOutcome`.

        Writes are coalesced with the rest of this loop turn's; while the transport is paused
        they wait in memory until it resumes.
        """
        confirms = self._publishing()
        try:
            encoded = encode_properties(properties)
            frames = wire.encode_publish(
                CHANNEL,
                exchange,
                routing_key,
                body,
                encoded,
                mandatory=mandatory,
                frame_max=self._frame_max,
            )
        except _ENCODING_ERRORS as exc:
            raise Unfit({0: str(exc)}) from None
        future: asyncio.Future[PublishOutcome] = self._loop.create_future()
        outgoing = Outgoing(exchange, routing_key, body, properties, mandatory)
        confirms.add((outgoing,), future, True, (encoded,))
        out = self._out
        out += frames
        if len(out) >= _EAGER_PIECES:
            self._flush()  # many callers this turn: let the broker start on the first ones
        else:
            self._schedule_flush()
        return future

    async def publish_many(self, items: Sequence[Outgoing]) -> list[PublishOutcome]:
        """Publish ``items`` in one write and wait for all confirms; outcomes in item order.

        Waits first while the transport is paused, and otherwise writes before it first
        yields: calls started one after another leave in that order, each as soon as it is
        encoded. If any item cannot be encoded, :class:`Unfit` says which and nothing of this
        call is written.
        """
        if not items:
            return []
        self._publishing()
        await self._drain()
        confirms = self._publishing()
        frames = self._encode_all(items)
        future: asyncio.Future[list[PublishOutcome]] = self._loop.create_future()
        confirms.add(tuple(items), future, False, frames.encoded)
        self._out += frames.pieces
        self._flush()
        return await future

    def _encode_all(self, items: Sequence[Outgoing]) -> _Encoded:
        frame_max = self._frame_max
        pieces: list[bytes] = []
        encoded_all: list[bytes] = []
        last_properties: Properties | None = None
        encoded = b""
        unfit: dict[int, str] = {}
        for index in range(len(items)):
            try:
                item = items[index]  # a lazy sequence encodes the message now
                if item.properties is not last_properties:  # batches often share one
                    encoded = encode_properties(item.properties)
                    last_properties = item.properties
                pieces += wire.encode_publish(
                    CHANNEL,
                    item.exchange,
                    item.routing_key,
                    item.body,
                    encoded,
                    mandatory=item.mandatory,
                    frame_max=frame_max,
                )
            except _ENCODING_ERRORS as exc:
                unfit[index] = str(exc)
                last_properties = None
            encoded_all.append(encoded)
        if unfit:
            raise Unfit(unfit)
        return _Encoded(pieces, encoded_all)

    # --- consuming ---------------------------------------------------------------------

    async def qos(self, prefetch_count: int) -> None:
        """Limit unacked deliveries per consumer started after this call."""
        await self._call(commands.Basic.Qos(prefetch_count=prefetch_count))

    async def consume(
        self,
        queue: str,
        on_delivery: Callable[[Received], None],
        *,
        consumer_tag: str | None = None,
        exclusive: bool = False,
        no_ack: bool = False,
    ) -> str:
        """Start a consumer; ``on_delivery`` runs inside ``data_received`` for each message.

        It must not block, and it settles each delivery with :meth:`ack`, :meth:`nack` or
        :meth:`reject`. If it raises, the error is logged and the delivery stays unsettled.
        With ``no_ack`` (direct reply-to requires it) the broker counts each delivery settled
        as it sends it, and the callback settles nothing.
        """
        method = commands.Basic.Consume(
            queue=queue, consumer_tag=consumer_tag or "", exclusive=exclusive, no_ack=no_ack
        )
        reply = await self._call(method, self._registrar(on_delivery))
        return str(reply.consumer_tag)

    async def consume_all(self, requests: Sequence[ConsumeRequest], window: int) -> list[str]:
        """Start a consumer for each request, their ``basic.consume`` calls pipelined
        (:meth:`call_all`): thousands of consumers in a few round trips. Their tags, in order;
        :class:`Interrupted` carries the tags of those started when the run is cut short."""
        methods = [commands.Basic.Consume(queue=r.queue, exclusive=r.exclusive) for r in requests]
        hooks = [self._registrar(r.on_delivery) for r in requests]
        try:
            replies = await self.call_all(methods, window, hooks)
        except Interrupted as exc:
            tags = [str(reply.consumer_tag) for reply in exc.replies]
            raise Interrupted(exc, exc.done, exc.refused, tags) from None
        return [str(reply.consumer_tag) for reply in replies]

    def _registrar(
        self, on_delivery: Callable[[Received], None]
    ) -> Callable[[commands.Basic.ConsumeOk], None]:
        def register(reply: commands.Basic.ConsumeOk) -> None:
            # Runs before the deliveries that may follow in the same read.
            self._consumers[reply.consumer_tag or ""] = on_delivery

        return register

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; deliveries already on the wire still reach its callback."""

        def unregister(_: commands.Basic.CancelOk) -> None:
            self._consumers.pop(consumer_tag, None)

        await self._call(commands.Basic.Cancel(consumer_tag), unregister)

    # --- a queue of the link's own ------------------------------------------------------
    # An exclusive queue can only be declared, bound and consumed on the connection that owns
    # it, so these live here rather than on the aio-pika declarer.

    async def declare_exchange(self, exchange: str, type: str, *, durable: bool = True) -> None:
        """Declare ``exchange`` (idempotent when it exists with the same type)."""
        await self._call(
            commands.Exchange.Declare(exchange=exchange, exchange_type=type, durable=durable)
        )

    async def declare_queue(
        self,
        queue: str,
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
    ) -> str:
        """Declare ``queue`` on this connection; returns its name as the broker confirmed it."""
        method = commands.Queue.Declare(
            queue=queue, durable=durable, exclusive=exclusive, auto_delete=auto_delete
        )
        reply = await self._call(method)
        return str(reply.queue)

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        """Bind ``queue`` to ``exchange`` with ``routing_key`` (a repeat is a no-op)."""
        await self._call(
            commands.Queue.Bind(queue=queue, exchange=exchange, routing_key=routing_key)
        )

    async def unbind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        """Remove one binding (removing a missing one is a no-op on RabbitMQ)."""
        method = commands.Queue.Unbind(queue=queue, exchange=exchange, routing_key=routing_key)
        await self._call(method)

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge a delivery; sent with everything else at the end of this loop turn."""
        self._check_open()
        frame = self._acks.ack(delivery_tag, multiple=multiple)
        if frame is not None:
            self._out.append(frame)
        self._schedule_flush()

    def nack(self, delivery_tag: int, *, requeue: bool) -> None:
        """Negatively acknowledge one delivery (dead-letter it unless ``requeue``)."""
        self._check_open()
        self._acks.settled(delivery_tag)
        self._send(wire.encode_nack(CHANNEL, delivery_tag, requeue=requeue))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        """Reject one delivery (dead-letter it unless ``requeue``)."""
        self._check_open()
        self._acks.settled(delivery_tag)
        self._send(wire.encode_reject(CHANNEL, delivery_tag, requeue=requeue))


@dataclass(slots=True)
class _Encoded:
    pieces: list[bytes]  # frame pieces, joined when written
    encoded: list[bytes]  # each message's encoded properties, to match returns


def _skipped(refusal: LinkClosed) -> Skipped:
    text = f"not published: dropped by the broker after a refused publish ({refusal})"
    return Skipped(text, refusal.reply_code)
