"""Request/reply over RabbitMQ's direct reply-to (``amq.rabbitmq.reply-to``).

A :class:`Requester` keeps one connection that consumes the pseudo-queue
``amq.rabbitmq.reply-to`` (no acks, as the broker requires) and publishes each request on that
same channel, with ``reply_to`` set to it and a ``correlation_id`` of its own: the broker
routes a reply straight back to this channel, with no reply queue to declare or delete. The
consumer on the other side sends its handler's return value there
(:class:`~rabbitry.messaging.consumer.Consumer`), or an error reply when it dead-letters the
request.

Every request ends within its timeout: with the reply, :class:`~rabbitry.errors.RequestFailed`
(its handler rejected it), :class:`~rabbitry.errors.RequestTimeout`, a
:class:`~rabbitry.errors.PublishFailed` (no queue took the request) or
:class:`~rabbitry.errors.BrokerUnavailable` (no connection, or it dropped while waiting). A
request is never stored in the outbox: its caller is waiting for the answer now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rabbitry.amqp.base import REPLY_TO, BaseLink, LinkError, OpenLink, PublishOutcome, Received
from rabbitry.amqp.properties import properties_of
from rabbitry.errors import (
    BrokerUnavailable,
    MessageError,
    PublishNacked,
    PublishUnroutable,
    RequestFailed,
    RequestTimeout,
)
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import Message

log = logging.getLogger(__name__)


class Requester:
    """Sends requests and waits for their replies; one lazily opened connection (``open_link``,
    the publisher's, named ``name``), reopened after it drops."""

    def __init__(self, open_link: OpenLink, name: str) -> None:
        self._open_link = open_link
        self._name = name
        self._link: BaseLink | None = None
        self._opening = asyncio.Lock()
        self._waiting: dict[str, asyncio.Future[Message]] = {}

    async def request(self, message: Message, exchange: str, routing_key: str) -> Message:
        """Publish ``message`` as a request and return its reply; bound by the caller's
        timeout (see :meth:`Publisher.request`), which cancels the wait."""
        link = await self._ready()
        correlation = message.id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        try:
            fields = envelope.encode_properties(message)
            fields["reply_to"] = REPLY_TO
            fields["correlation_id"] = correlation
            fields["delivery_mode"] = 1  # a request outlives neither its requester nor a restart
            try:
                outcome = await link.publish(
                    exchange, routing_key, message.body(), properties_of(fields), mandatory=True
                )
            except LinkError as exc:
                raise BrokerUnavailable(f"request not sent: {exc}") from exc
            if outcome is PublishOutcome.RETURNED:
                raise PublishUnroutable(
                    f"no queue took the request ({exchange!r}, {routing_key!r})"
                )
            if outcome is not PublishOutcome.ACKED:
                raise PublishNacked(f"the broker did not take the request: {outcome}")
            return await future
        finally:
            self._waiting.pop(correlation, None)

    async def _ready(self) -> BaseLink:
        async with self._opening:
            if self._link is not None and self._link.is_open:
                return self._link
            try:
                link = await self._open_link(self._name)
                await link.confirm_select()
                await link.consume(REPLY_TO, self._on_reply, no_ack=True)
            except (LinkError, OSError, TimeoutError) as exc:
                raise BrokerUnavailable(f"cannot open a connection for requests: {exc}") from exc
            link.closed.add_done_callback(lambda _: self._lost(link))
            self._link = link
            return link

    def _on_reply(self, delivery: Received) -> None:
        props = delivery.properties
        future = self._waiting.get(props.correlation_id or "")
        if future is None or future.done():
            log.info("reply to no waiting request (%s): dropped", props.correlation_id)
            return
        headers = props.headers or {}
        reason = headers.get(envelope.REASON_HEADER)
        if reason is not None:
            text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            future.set_exception(RequestFailed(text or "request failed"))
            return
        try:
            reply = envelope.decode(
                delivery.body,
                headers,
                message_id=props.message_id,
                timestamp=props.timestamp,
                correlation_id=props.correlation_id,
                strict=False,
                exchange=delivery.exchange,
                routing_key=delivery.routing_key,
            )
        except MessageError as exc:
            future.set_exception(exc)
        else:
            future.set_result(reply)

    def _lost(self, link: BaseLink) -> None:
        if self._link is link:
            self._link = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("connection lost while awaiting a reply"))

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.close(), timeout=3)


async def request(
    requester: Requester, message: Message, exchange: str, routing_key: str, timeout: float
) -> Message:
    """:meth:`Requester.request` bounded by ``timeout`` seconds: a
    :class:`~rabbitry.errors.RequestTimeout` rather than a hang."""
    try:
        async with asyncio.timeout(timeout):
            return await requester.request(message, exchange, routing_key)
    except TimeoutError:
        raise RequestTimeout(
            f"no reply to {message.type!r} ({message.id}) within {timeout:g}s"
        ) from None
