"""The in-memory broker's queues: messages as a consumer receives them, TTLs, dead-lettering.

What a queue does with a message comes from its declared arguments, exactly as on RabbitMQ:
``x-message-ttl`` (and a message's own ``expiration``) makes it expire, and
``x-dead-letter-exchange``/``x-dead-letter-routing-key`` say where an expired or rejected
message goes, with the broker's ``x-death`` record updated the way RabbitMQ 3.x does it
(one entry per queue and reason, its ``count`` incremented, the latest first).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from rabbitry.amqp.base import Received
from rabbitry.amqp.properties import Properties
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.topology import Queue

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message held by the in-memory broker: what a consumer (or ``basic.get``) receives."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties
    redelivered: bool = False

    @property
    def headers(self) -> dict[str, Any]:
        """The AMQP headers: ``rr_*``, ``x-rabbitry-reason``, the broker's ``x-death``…"""
        return dict(self.properties.headers or {})

    def message(self, *, strict: bool = False) -> Message:
        """Decode it as a consumer would (raises :class:`~rabbitry.MessageError` if malformed)."""
        return envelope.decode_received(self.delivered(0, ""), strict=strict)

    def delivered(self, delivery_tag: int, consumer_tag: str) -> Received:
        """What a consumer receives of it, with the broker's tags."""
        return Received(
            delivery_tag,
            self.redelivered,
            self.exchange,
            self.routing_key,
            consumer_tag,
            self.properties,
            self.body,
        )


@dataclass(slots=True)
class Held:
    """A message in a queue, with the virtual time it expires at (``None``: never)."""

    message: QueuedMessage
    expires_at: float | None


class MemoryQueue:
    """One declared queue: its spec, its ready messages and what its arguments make it do."""

    def __init__(self, spec: Queue) -> None:
        self.spec = spec
        arguments = spec.argument_map()
        ttl = arguments.get("x-message-ttl")
        self.ttl: float | None = None if ttl is None else int(ttl) / 1000
        self.dead_letter_exchange: str | None = arguments.get("x-dead-letter-exchange")
        self.dead_letter_key: str | None = arguments.get("x-dead-letter-routing-key")
        self.ready: deque[Held] = deque()
        self.turn = 0  # round robin over its consumers

    @property
    def name(self) -> str:
        return self.spec.name

    def put(self, message: QueuedMessage, now: float) -> None:
        self.ready.append(Held(message, _expiry(self.ttl, message.properties, now)))

    def expired(self, now: float) -> list[QueuedMessage]:
        """Take the expired messages off the head: RabbitMQ expires messages only there."""
        taken: list[QueuedMessage] = []
        while self.ready and (due := self.ready[0].expires_at) is not None and due <= now:
            taken.append(self.ready.popleft().message)
        return taken

    def next_expiry(self) -> float | None:
        return self.ready[0].expires_at if self.ready else None

    def dead_letter_target(self, message: QueuedMessage) -> tuple[str, str] | None:
        """(exchange, routing key) a dead letter of this queue goes to; ``None``: dropped."""
        if self.dead_letter_exchange is None:
            return None
        key = message.routing_key if self.dead_letter_key is None else self.dead_letter_key
        return self.dead_letter_exchange, key


def _expiry(ttl: float | None, properties: Properties, now: float) -> float | None:
    limits = [] if ttl is None else [ttl]
    if properties.expiration is not None:
        try:
            limits.append(int(properties.expiration) / 1000)
        except ValueError:
            log.warning("ignoring a non-numeric expiration %r", properties.expiration)
    return now + min(limits) if limits else None


def dead_lettered(message: QueuedMessage, queue: str, reason: str, when: dt.datetime) -> Properties:
    """The properties of ``message`` dead-lettered from ``queue`` for ``reason``
    (``expired``, ``rejected``): its ``x-death`` record updated, its ``expiration`` dropped."""
    headers = dict(message.properties.headers or {})
    deaths = [dict(d) for d in headers.get("x-death") or [] if isinstance(d, Mapping)]
    for index, death in enumerate(deaths):
        if death.get("queue") == queue and death.get("reason") == reason:
            entry = deaths.pop(index)
            entry["count"] = int(entry.get("count") or 0) + 1
            break
    else:
        entry = {
            "count": 1,
            "reason": reason,
            "queue": queue,
            "time": when,
            "exchange": message.exchange,
            "routing-keys": [message.routing_key],
        }
    headers["x-death"] = [entry, *deaths]
    headers.setdefault("x-first-death-exchange", message.exchange)
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    return replace(message.properties, headers=headers, expiration=None)
