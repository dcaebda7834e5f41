"""Consuming: handlers by message type, settle-once, retry with backoff, dead-letter with reason.

Each delivery is settled exactly once, after its handler finished:

* the handler returned → ``basic.ack``;
* it raised :class:`Retry` or any other exception → a copy goes to the retry queue of the
  policy's delay tier with ``x-rabbitry-attempt`` + 1, and only once the broker confirmed that
  copy is the original acked; past ``max_attempts`` the message is dead-lettered instead;
* the message is malformed (:class:`~rabbitry.errors.MessageError`: bad JSON, no ``rr_job`` in
  strict mode, a schema error) or the handler raised :class:`Reject` → it goes to ``Q.dlq`` at
  once, with ``x-rabbitry-reason`` and ``x-rabbitry-error`` headers, then the original is acked.

If the retry or dead-letter copy cannot be confirmed, the original is not acked: the broker
redelivers it after reconnecting, so nothing is lost on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rabbitry import metrics
from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.link import Delivery, Link, LinkClosed, Outcome, Outgoing
from rabbitry.amqp.properties import Properties
from rabbitry.errors import MessageError
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.topology import dlq_name, retry_queue_name

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[Sequence[Message]], Awaitable[Sequence[BaseException | None]]]


class Retry(Exception):
    """Raised by a handler: try this message again later (after ``delay`` seconds if given)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        self.delay = delay
        self.reason = reason or "retry requested"


class Reject(Exception):
    """Raised by a handler: this message can never succeed; dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Subscription:
    """What to consume from one queue and how.

    ``handlers`` maps a message type (``rr_job``) to its handler; ``default`` takes the other
    types (without one, an unknown type is dead-lettered). ``batch`` takes lists of up to
    ``batch_size`` messages instead and returns one outcome per message (``None`` = done).
    ``prefetch``, ``concurrency`` and ``strict`` override the :class:`AmqpSettings` values.
    """

    queue: str
    handlers: Mapping[str, Handler] = field(default_factory=dict)
    default: Handler | None = None
    batch: BatchHandler | None = None
    batch_size: int = 100
    prefetch: int | None = None
    concurrency: int | None = None
    strict: bool | None = None  # None: AmqpSettings.strict_rr_job


class Consumer:
    """Runs one :class:`Subscription` on one :class:`Link` until stopped or the link dies."""

    def __init__(
        self, settings: AmqpSettings, subscription: Subscription, link: Link, policy: RetryPolicy
    ) -> None:
        self._settings = settings
        self._sub = subscription
        self._link = link
        self._policy = policy
        self._pending: deque[Delivery] = deque()
        self._ready = asyncio.Event()
        self._tag: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._queue_label = subscription.queue

    async def start(self) -> None:
        prefetch = self._sub.prefetch or self._settings.prefetch
        await self._link.qos(prefetch)  # before basic.consume: qos applies to later consumers
        self._tag = await self._link.consume(self._sub.queue, self._on_delivery)
        workers = 1 if self._sub.batch else (self._sub.concurrency or self._settings.concurrency)
        loop_body = self._batch_loop if self._sub.batch else self._loop
        self._tasks = [asyncio.create_task(loop_body()) for _ in range(workers)]

    def _on_delivery(self, delivery: Delivery) -> None:
        self._pending.append(delivery)
        self._ready.set()

    async def _next(self) -> Delivery | None:
        while not self._pending:
            if self._stopping:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()

    async def _loop(self) -> None:
        while (delivery := await self._next()) is not None:
            await self._process(delivery)

    async def _batch_loop(self) -> None:
        assert self._sub.batch is not None
        while (first := await self._next()) is not None:
            batch = [first]
            while self._pending and len(batch) < self._sub.batch_size:
                batch.append(self._pending.popleft())
            await self._process_batch(batch)

    async def _process(self, delivery: Delivery) -> None:
        metrics.CONSUMED.labels(self._queue_label).inc()
        try:
            message = self._decode(delivery)
            handler = self._handler_for(message)
            with metrics.HANDLER_SECONDS.labels(self._queue_label).time():
                await handler(message)
        except Exception as exc:  # every failure is settled below, by policy
            await self._settle_failure(delivery, exc)
        else:
            self._ack(delivery)

    async def _process_batch(self, deliveries: list[Delivery]) -> None:
        assert self._sub.batch is not None
        metrics.CONSUMED.labels(self._queue_label).inc(len(deliveries))
        decoded: list[tuple[Delivery, Message]] = []
        for delivery in deliveries:
            try:
                decoded.append((delivery, self._decode(delivery)))
            except MessageError as exc:
                await self._settle_failure(delivery, exc)
        if not decoded:
            return
        try:
            outcomes = await self._sub.batch([m for _, m in decoded])
        except Exception as exc:
            outcomes = [exc] * len(decoded)
        if len(outcomes) != (n := len(decoded)):  # a buggy handler fails its batch, not the loop
            outcomes = [RuntimeError("batch handler must return one outcome per message")] * n
        for (delivery, _), outcome in zip(decoded, outcomes, strict=True):
            if outcome is None:
                self._ack(delivery)
            else:
                await self._settle_failure(delivery, outcome)

    def _decode(self, delivery: Delivery) -> Message:
        props = delivery.properties
        return envelope.decode(
            delivery.body,
            props.headers,
            message_id=props.message_id,
            timestamp=props.timestamp,
            correlation_id=props.correlation_id,
            exchange=delivery.exchange,
            routing_key=delivery.routing_key,
            redelivered=delivery.redelivered,
            strict=self._settings.strict_rr_job if self._sub.strict is None else self._sub.strict,
        )

    def _handler_for(self, message: Message) -> Handler:
        handler = self._sub.handlers.get(message.type, self._sub.default)
        if handler is None:
            raise Reject(f"no handler for message type {message.type!r}")
        return handler

    def _ack(self, delivery: Delivery) -> None:
        if not self._link.is_open:
            return  # the broker requeues every unacked delivery of a lost channel
        self._link.ack(delivery.delivery_tag)
        metrics.ACKED.labels(self._queue_label).inc()

    async def _settle_failure(self, delivery: Delivery, exc: BaseException) -> None:
        attempt = _attempt(delivery) + 1
        if isinstance(exc, MessageError | Reject):
            delay = None
        else:
            requested = exc.delay if isinstance(exc, Retry) else None
            delay = self._policy.next_delay_ms(attempt, requested)
        reason = exc.reason if isinstance(exc, Retry | Reject) else str(exc)
        error = f"{type(exc).__name__}: {reason}"[:1000]
        if delay is None:
            target = dlq_name(self._sub.queue)
            extra = {
                envelope.REASON_HEADER: reason[:1000] or type(exc).__name__,
                envelope.ERROR_HEADER: error,
                envelope.ORIGIN_QUEUE_HEADER: self._sub.queue,
                envelope.ATTEMPT_HEADER: Int64(attempt),
            }
            log.warning("dead-lettering %s from %s: %s", _id(delivery), self._sub.queue, error)
        else:
            target = retry_queue_name(self._sub.queue, delay)
            extra = {envelope.ATTEMPT_HEADER: Int64(attempt), envelope.ERROR_HEADER: error}
            log.info("retry %d of %s in %d ms: %s", attempt, _id(delivery), delay, error)
        if await self._forward(delivery, target, extra):
            self._ack(delivery)
            counter = metrics.DEAD_LETTERED if delay is None else metrics.RETRIED
            counter.labels(self._queue_label).inc()

    async def _forward(self, delivery: Delivery, queue: str, extra: Mapping[str, Any]) -> bool:
        """Publish a copy to ``queue`` via the default exchange; True once confirmed."""
        props = delivery.properties
        headers = {**dict(props.headers or {}), **extra}
        copy = Properties(
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            headers=headers,
            delivery_mode=2,
            priority=props.priority,
            correlation_id=props.correlation_id,
            message_id=props.message_id,
            timestamp=props.timestamp,
            type=props.type,
            app_id=props.app_id,
        )
        try:
            (outcome,) = await asyncio.wait_for(
                self._link.publish_many([Outgoing("", queue, delivery.body, copy, True)]),
                timeout=self._settings.publish_timeout,
            )
        except (LinkClosed, TimeoutError) as exc:
            log.warning("could not forward %s to %s: %s", _id(delivery), queue, exc)
            return False
        if outcome is not Outcome.ACKED:
            # The retry/dead-letter queue is missing: leave the original unacked rather than
            # lose it; the broker redelivers it once the topology is declared again.
            log.error("forward of %s to %s was %s", _id(delivery), queue, outcome.name)
            if self._link.is_open:
                self._link.nack(delivery.delivery_tag, requeue=True)
            return False
        return True

    async def stop(self, timeout: float) -> None:
        """Stop taking work, finish what is in flight (up to ``timeout``), give back the rest."""
        self._stopping = True
        if self._tag is not None and self._link.is_open:
            with contextlib.suppress(LinkClosed):
                await self._link.cancel(self._tag)
        # Prefetched deliveries no worker has started go back to the queue at once.
        while self._pending:
            delivery = self._pending.pop()
            if self._link.is_open:
                self._link.nack(delivery.delivery_tag, requeue=True)
        self._ready.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d handler(s) still busy after %gs: cancelled", len(late), timeout)
                await asyncio.gather(*late, return_exceptions=True)

    def abandon(self) -> None:
        """The link died: in-flight work cannot be settled; the broker requeues it."""
        self._stopping = True
        self._pending.clear()
        self._ready.set()
        for task in self._tasks:
            task.cancel()


def _attempt(delivery: Delivery) -> int:
    value = (delivery.properties.headers or {}).get(envelope.ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _id(delivery: Delivery) -> str:
    headers = delivery.properties.headers or {}
    rr_id = headers.get("rr_id")
    return str(rr_id or delivery.properties.message_id or f"delivery {delivery.delivery_tag}")
