"""What publishers and consumers need of a broker connection: the link protocol.

:class:`BaseLink` is the seam between the messaging layer and a broker, as httpx's
``BaseTransport`` is between its client and the network. :class:`~rabbitry.amqp.link.Link`
implements it over the wire; :mod:`rabbitry.testing`'s ``MemoryLink`` implements it in memory.
:class:`~rabbitry.Publisher`, :class:`~rabbitry.Worker` and their consumers take an
:data:`OpenLink` and see only this protocol, so the code that decides on confirms, retries and
dead letters is the same on both.

Here too are the data a link hands back and forth (:class:`Received`; ``Outgoing`` and
``PublishOutcome`` come from :mod:`~rabbitry.amqp.confirms`) and the errors it raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rabbitry.amqp.confirms import Outgoing, PublishOutcome
from rabbitry.amqp.properties import Properties
from rabbitry.errors import BrokerError

__all__ = [
    "REPLY_TO",
    "BaseLink",
    "LinkClosed",
    "LinkError",
    "OpenLink",
    "Outgoing",
    "PublishOutcome",
    "Received",
    "Skipped",
    "Unfit",
]


REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to pseudo-queue: consumed with ``no_ack``, named in ``reply_to``."""


class LinkError(BrokerError):
    """A link could not do what was asked."""


class LinkClosed(LinkError):
    """The link is closed: by the broker (``reply_code`` and ``reply_text`` are its words, e.g.
    404 for a missing exchange, 320 for an operator's kill), by connection loss (code 0), or by
    :meth:`BaseLink.close` (200)."""

    def __init__(self, reply_text: str = "link closed", reply_code: int = 0) -> None:
        super().__init__(f"{reply_code} {reply_text}" if reply_code else reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text


class Interrupted(LinkClosed):
    """A run of pipelined calls cut short (see
    :meth:`~rabbitry.amqp.calls.RpcProtocol.call_all`): the first ``done`` calls were answered,
    in order, and none after them was. ``refused`` is True when the broker closed the channel
    over call number ``done`` itself (its Channel.Close names that method), not over a lost
    connection or a timeout."""

    def __init__(
        self, cause: LinkClosed, done: int, refused: bool, replies: Sequence[Any] = ()
    ) -> None:
        super().__init__(cause.reply_text, cause.reply_code)
        self.done = done
        self.refused = refused
        self.replies = list(replies)  # of the ``done`` calls answered


class Skipped(LinkClosed):
    """A single publish made after one the broker refused on the same channel: the broker
    dropped it unread, so it reached no queue and may be published again."""


class Unfit(LinkError):
    """Messages that cannot be sent as they are; nothing of the call was written.

    ``reasons`` maps each one's index in the call to why (properties too large for the
    broker's frame size, a short string over 255 bytes, a header value out of range).
    """

    def __init__(self, reasons: dict[int, str]) -> None:
        first = next(iter(reasons.values()))
        super().__init__(f"cannot be sent: {first}")
        self.reasons = reasons


@dataclass(slots=True)
class Received:
    """One message handed to a consumer's ``on_delivery`` callback."""

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    consumer_tag: str
    properties: Properties
    body: bytes
    error: str | None = None
    """Why the delivery did not decode (a property that is not UTF-8, ...): ``properties``
    then holds what could be read, re-encoding to the publisher's bytes, and the owner should
    dead-letter it rather than handle it."""


@dataclass(frozen=True, slots=True)
class ConsumeRequest:
    """One consumer for :meth:`BaseLink.consume_all`: ``queue``, the callback and whether it
    asks for the queue to itself (see :meth:`BaseLink.consume`)."""

    queue: str
    on_delivery: Callable[[Received], None]
    exclusive: bool = False


class BaseLink(Protocol):
    """One broker connection with one channel: confirmed publishing and consuming.

    A link that fails stays closed; its owner opens another (see :data:`OpenLink`).
    """

    closed: asyncio.Future[None]
    """Done when the link is gone: a :class:`LinkClosed` error unless :meth:`close` did it."""

    on_blocked: Callable[[str | None], None] | None
    """Set by the owner: called with the broker's reason when it blocks this connection (a
    memory or disk alarm) and with ``None`` when it unblocks it."""

    on_cancel: Callable[[str], None] | None
    """Set by the owner: called with the consumer tag when the broker cancels a consumer (its
    queue was deleted); the link stays open so deliveries in flight can still be acked. Unset,
    the link closes at once."""

    @property
    def is_open(self) -> bool:
        """True until the link closes."""
        ...

    @property
    def error(self) -> LinkClosed | None:
        """Why the link closed, once it has (``None`` while open)."""
        ...

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks this connection (an alarm), else ``None``."""
        ...

    async def confirm_select(self) -> None:
        """Put the channel in confirm mode (idempotent); publishing requires it."""
        ...

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
    ) -> asyncio.Future[PublishOutcome]:
        """Publish one message; the future gets the broker's :class:`PublishOutcome`, or fails with
        :class:`LinkClosed` (:class:`Skipped` when a refused publish before it dropped it).
        Raises :class:`Unfit` at once if it cannot be encoded."""
        ...

    async def publish_many(self, items: Sequence[Outgoing]) -> list[PublishOutcome]:
        """Publish ``items`` together and wait for all confirms; outcomes in item order.
        :class:`Unfit` says which cannot be encoded, and then nothing of the call is sent."""
        ...

    async def qos(self, prefetch_count: int) -> None:
        """Limit unacked deliveries per consumer started after this call."""
        ...

    async def consume_all(self, requests: Sequence[ConsumeRequest], window: int) -> list[str]:
        """Start a consumer for each request, at most ``window`` ``basic.consume`` calls
        unanswered at a time; their consumer tags, in order. A run cut short raises
        :class:`Interrupted`, whose ``replies`` are the tags of the consumers started."""
        ...

    async def consume(
        self,
        queue: str,
        on_delivery: Callable[[Received], None],
        *,
        consumer_tag: str | None = None,
        exclusive: bool = False,
        no_ack: bool = False,
    ) -> str:
        """Start a consumer; returns its tag. ``on_delivery`` must not block; the owner
        settles each delivery with :meth:`ack`, :meth:`nack` or :meth:`reject`, unless
        ``no_ack`` (which :data:`REPLY_TO` requires): then the broker counts it settled."""
        ...

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; deliveries already on their way still reach its callback."""
        ...

    def ack(self, delivery_tag: int, *, multiple: bool = False) -> None:
        """Acknowledge a delivery."""
        ...

    def nack(self, delivery_tag: int, *, requeue: bool) -> None:
        """Negatively acknowledge one delivery (dead-letter it unless ``requeue``)."""
        ...

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        """Reject one delivery (dead-letter it unless ``requeue``)."""
        ...

    def abort(self, exc: LinkClosed) -> None:
        """Give the link up at once: everything pending fails with ``exc``."""
        ...

    async def close(self) -> None:
        """Close the link; pending publishes fail with :class:`LinkClosed`."""
        ...


OpenLink = Callable[[str], Awaitable[BaseLink]]
"""Opens a link with the given connection name (the broker's management UI shows it)."""
