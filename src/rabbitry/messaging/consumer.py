"""Consuming: handlers by message type, settle-once, retry with backoff, dead-letter with reason.

Each delivery is settled exactly once, after its handler finished:

* the handler returned → ``basic.ack``;
* it raised :class:`Retry` or any other exception → a copy goes to the retry queue of the
  policy's delay tier with ``x-rabbitry-attempt`` + 1, and only once the broker confirmed that
  copy is the original acked; past ``max_attempts`` the message is dead-lettered instead;
* the message is malformed (:class:`~rabbitry.errors.MessageError`: bad JSON, no ``rr_job`` in
  strict mode, a schema error, properties that do not decode such as a ``message_id`` that is
  not UTF-8) or the handler raised :class:`Reject` → it goes to ``Q.dlq`` at once, with
  ``x-rabbitry-reason`` and ``x-rabbitry-error`` headers, then the original is acked.

Copies go over a publishing connection of their own (a :class:`~rabbitry.messaging.sender.
Sender`), never the one consumed from: a broker alarm blocks a connection that publishes,
and acks would stop with it. A retry copy the broker returns (its retry queue is missing) is
dead-lettered with that reason instead of re-running the handler. If a copy cannot be
confirmed (no connection, an alarm longer than the publish timeout, no confirm in time, the
dead-letter queue missing), the original is given back to the queue after a pause, never
left unsettled: nothing is lost, and the consumer keeps its prefetch window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from rabbitry import metrics
from rabbitry.amqp.base import (
    BaseLink,
    ConsumeRequest,
    LinkError,
    Outgoing,
    PublishOutcome,
    Received,
)
from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.properties import properties_of
from rabbitry.errors import BrokerError, MessageError
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import REASON_HEADER, Message
from rabbitry.messaging.middleware import Middleware, wrap_handler
from rabbitry.messaging.payloads import Handler
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.sender import Sender
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.settlement import Reject as Reject
from rabbitry.messaging.settlement import Retry as Retry
from rabbitry.messaging.settlement import copy_properties, failed
from rabbitry.messaging.subscription import Subscription as Subscription
from rabbitry.messaging.topology import dlq_name, retry_queue_name
from rabbitry.messaging.tracing import Tracing

# The `X as X` imports re-export what callers (the parts, tests, the bench) import from here,
# though it lives in the modules this one was split into.

log = logging.getLogger(__name__)


class Consumer:
    """Runs one :class:`Subscription` on one link until stopped or the link dies.

    ``sender`` carries the retry and dead-letter copies (a worker shares one among its
    consumers); without one the consumer opens its own and closes it when it stops.

    ``on_cancelled`` makes the link a shared one: the owner routes the broker's
    ``basic.cancel`` to :meth:`cancelled_by_broker` and sets ``basic.qos`` itself, and once the
    cancelled consumer has drained it calls ``on_cancelled(consumer)`` instead of closing the
    link, which its siblings still use.
    """

    def __init__(
        self,
        settings: AmqpSettings,
        subscription: Subscription,
        link: BaseLink,
        policy: RetryPolicy,
        *,
        sender: Sender | None = None,
        middleware: Sequence[Middleware] = (),
        on_cancelled: Callable[[Consumer], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_cancelled = on_cancelled
        self._sub = subscription
        # The chain is built once per handler: without middleware, the handler itself.
        self._handlers = {
            job: wrap_handler(handler, middleware) for job, handler in subscription.resolved.items()
        }
        default = subscription.resolved_default
        self._default = None if default is None else wrap_handler(default, middleware)
        # With tracing, the retry and dead-letter copies are spans too (see _forward).
        self._tracing = next((m for m in middleware if isinstance(m, Tracing)), None)
        self._link = link
        self._policy = policy
        self._owns_sender = sender is None
        self._sender = sender or Sender(settings, f"rabbitry-{subscription.queue}-forward")
        self._pending: deque[Received] = deque()
        # The handler loops waiting for a delivery, each on a future of its own: a delivery
        # wakes one of them. An Event woke all of them for each read from the socket, and all
        # but a few went back to sleep (with a prefetch-sized pool, as the workflow worker
        # has, that was more wake-ups than deliveries).
        self._idle: deque[asyncio.Future[None]] = deque()
        self._tag: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._cancelled = False  # by the broker
        self._chores: set[asyncio.Task[None]] = set()
        self._queue_label = subscription.queue
        # Looked up once: a label lookup costs more than the increment, on every message.
        self._consumed = metrics.CONSUMED.labels(subscription.queue)
        self._acked = metrics.ACKED.labels(subscription.queue)
        self._handler_seconds = metrics.HANDLER_SECONDS.labels(subscription.queue)

    @property
    def subscription(self) -> Subscription:
        return self._sub

    @property
    def prefetch(self) -> int:
        return self._sub.prefetch or self._settings.prefetch

    @property
    def tag(self) -> str | None:
        """The broker's consumer tag, once started."""
        return self._tag

    async def start(self) -> None:
        if self._on_cancelled is None:
            # The link stays open when the broker cancels us, so work in flight can be acked.
            self._link.on_cancel = self.cancelled_by_broker
            await self._link.qos(self.prefetch)  # before basic.consume: applies to later ones
        self.started(
            await self._link.consume(
                self._sub.queue, self._on_delivery, exclusive=self._sub.exclusive
            )
        )

    @property
    def request(self) -> ConsumeRequest:
        """What starts this consumer, for an owner that starts many at once
        (:meth:`~rabbitry.amqp.base.BaseLink.consume_all`), then calls :meth:`started`."""
        return ConsumeRequest(self._sub.queue, self._on_delivery, self._sub.exclusive)

    def started(self, tag: str) -> None:
        """The broker started this consumer as ``tag``: run its handlers."""
        self._tag = tag
        if self._sub.batch:
            workers = self._sub.concurrency or 1
        else:
            workers = self._sub.concurrency or self._settings.concurrency
        loop_body = self._batch_loop if self._sub.batch else self._loop
        self._tasks = [asyncio.create_task(loop_body()) for _ in range(workers)]

    def _on_delivery(self, delivery: Received) -> None:
        self._pending.append(delivery)
        self._wake(1)

    def _wake(self, count: int | None) -> None:
        """Wake ``count`` waiting handler loops (``None``: all of them)."""
        while self._idle and (count is None or count > 0):
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if count is not None:
                    count -= 1

    async def _next(self) -> Received | None:
        if self._stopping and self._sub.keep_order:
            return None  # the rest goes back to the queue with the link, in order
        while not self._pending:
            if self._stopping:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(1)  # woken for a delivery it will not take: pass it on
                raise
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

    async def _process(self, delivery: Received) -> None:
        self._consumed.inc()
        try:
            message = self._decode(delivery)
            handler = self._handler_for(message)
            started = time.perf_counter()
            try:
                result = await handler(message)
            finally:
                self._handler_seconds.observe(time.perf_counter() - started)
        except Exception as exc:  # every failure is settled below, by policy
            await self._settle_failure(delivery, exc)
        else:
            if delivery.properties.reply_to:  # a request: answer it before the ack
                await self._reply(delivery, message, result)
            self._ack(delivery)

    async def _reply(self, delivery: Received, request: Message | None, result: object) -> None:
        """Send the handler's return value to the requester (direct reply-to or a queue).

        The work is done, so a reply that cannot be sent does not run the handler again: the
        requester's timeout tells it. A returned :class:`Message` goes as it is."""
        if isinstance(result, Message):
            reply = result
        else:
            assert request is not None
            reply = Message(f"{request.type}.reply", result)
        correlation = delivery.properties.correlation_id or _id(delivery)
        try:
            props, body = envelope.encode(reply)
        except MessageError as exc:
            log.error("reply to %s is not sendable: %s", _id(delivery), exc)
            return
        props["correlation_id"] = correlation
        props["delivery_mode"] = 1  # a reply is worth nothing once its requester is gone
        target = str(delivery.properties.reply_to)
        try:
            ((outcome, why),) = await self._sender.send(
                [Outgoing("", target, body, properties_of(props), True)]
            )
        except BrokerError as exc:
            outcome, why = None, str(exc)
        if outcome is not PublishOutcome.ACKED:
            log.warning("reply to %s not delivered (%s): %s", _id(delivery), outcome, why)

    async def _process_batch(self, deliveries: list[Received]) -> None:
        assert self._sub.batch is not None
        self._consumed.inc(len(deliveries))
        decoded: list[tuple[Received, Message]] = []
        malformed: list[tuple[Received, MessageError]] = []
        for delivery in deliveries:
            try:
                decoded.append((delivery, self._decode(delivery)))
            except MessageError as exc:
                malformed.append((delivery, exc))
        # No await before the handler starts: with several batch calls at once, a call that
        # yielded here would let a later one hand over later deliveries first.
        outcomes: Sequence[BaseException | None] = []
        if decoded:
            # One observation per batch call, of the whole call (per message would cost a
            # clock read and a histogram update each, for a time shared by the whole list).
            started = time.perf_counter()
            try:
                outcomes = await self._sub.batch([m for _, m in decoded])
            except Exception as exc:
                outcomes = [exc] * len(decoded)
            self._handler_seconds.observe(time.perf_counter() - started)
        for delivery, error in malformed:
            await self._settle_failure(delivery, error)
        if not decoded:
            return
        if len(outcomes) != (n := len(decoded)):  # a buggy handler fails its batch, not the loop
            outcomes = [RuntimeError("batch handler must return one outcome per message")] * n
        for (delivery, _), outcome in zip(decoded, outcomes, strict=True):
            if outcome is None:
                self._ack(delivery)
            else:
                await self._settle_failure(delivery, outcome)

    def _decode(self, delivery: Received) -> Message:
        strict = self._settings.strict_rr_job if self._sub.strict is None else self._sub.strict
        return envelope.decode_received(delivery, strict=strict, queue=self._sub.queue)

    def _handler_for(self, message: Message) -> Handler:
        handler = self._handlers.get(message.type, self._default)
        if handler is None:
            raise Reject(f"no handler for message type {message.type!r}")
        return handler

    def _ack(self, delivery: Received) -> None:
        if not self._link.is_open:
            return  # the broker requeues every unacked delivery of a lost channel
        self._link.ack(delivery.delivery_tag)
        self._acked.inc()

    async def _settle_failure(self, delivery: Received, exc: BaseException) -> None:
        decision = failed(delivery, exc, self._policy)
        attempt, error = decision.attempt, decision.error
        delay, reason = decision.delay, decision.reason  # a missing retry queue changes both
        outcome: PublishOutcome | None = None
        if delay is not None:
            target = retry_queue_name(self._sub.queue, delay)
            extra = {envelope.ATTEMPT_HEADER: Int64(attempt), envelope.ERROR_HEADER: error}
            log.info("retry %d of %s in %d ms: %s", attempt, _id(delivery), delay, error)
            outcome = await self._copy(delivery, target, extra, attempt, error, dead_letter=False)
            if outcome is PublishOutcome.RETURNED:
                # The retry queue is missing (deleted, or a tier never declared): running the
                # handler again at once would spin; dead-letter it, saying why.
                reason = f"retry queue {target} is missing; the retry was: {reason}"
                delay = None
        if delay is None:
            extra = {
                envelope.REASON_HEADER: reason[:1000] or type(exc).__name__,
                envelope.ERROR_HEADER: error,
                envelope.ORIGIN_QUEUE_HEADER: self._sub.queue,
                envelope.ATTEMPT_HEADER: Int64(attempt),
            }
            log.warning("dead-lettering %s from %s: %s", _id(delivery), self._sub.queue, error)
            target = dlq_name(self._sub.queue)
            outcome = await self._copy(delivery, target, extra, attempt, reason, dead_letter=True)
        if outcome is PublishOutcome.ACKED:
            if delay is None and delivery.properties.reply_to:
                # A request that will never be answered: its requester hears why at once.
                failure = Message("rabbitry.request-failed", None, extra={REASON_HEADER: reason})
                await self._reply(delivery, failure, failure)
            self._ack(delivery)
            counter = metrics.DEAD_LETTERED if delay is None else metrics.RETRIED
            counter.labels(self._queue_label).inc()
        else:
            await self._give_back(delivery)

    async def _copy(
        self,
        delivery: Received,
        target: str,
        extra: Mapping[str, Any],
        attempt: int,
        reason: str,
        *,
        dead_letter: bool,
    ) -> PublishOutcome | None:
        """:meth:`_forward`, in a span of its own when the worker traces."""
        if self._tracing is None:
            return await self._forward(delivery, target, extra)
        with self._tracing.forwarding(
            delivery.properties.headers,
            self._sub.queue,
            target,
            dead_letter=dead_letter,
            attempt=attempt,
            reason=reason,
        ) as forward:
            outcome = await self._forward(delivery, target, {**extra, **forward.headers})
            forward.confirmed = outcome is PublishOutcome.ACKED
        return outcome

    async def _forward(
        self, delivery: Received, queue: str, extra: Mapping[str, Any]
    ) -> PublishOutcome | None:
        """Publish a copy to ``queue`` via the default exchange: the broker's outcome, or
        ``None`` when it could not be sent (no connection, blocked too long, no confirm)."""
        copy = copy_properties(delivery.properties, extra)
        try:
            # An alarm blocks the sender, not this consumer: hold the delivery until it
            # clears (up to the publish timeout) rather than run the handler again.
            ((outcome, why),) = await self._sender.send(
                [Outgoing("", queue, delivery.body, copy, True)], wait_unblocked=True
            )
        except BrokerError as exc:
            log.warning("could not forward %s to %s: %s", _id(delivery), queue, exc)
            return None
        if outcome is not PublishOutcome.ACKED:
            log.error("forward of %s to %s failed: %s", _id(delivery), queue, why)
        return outcome

    async def _give_back(self, delivery: Received) -> None:
        """Requeue a delivery whose copy was not confirmed, after a pause (not a hot loop)."""
        if not self._stopping:
            await asyncio.sleep(self._policy.base_delay)
        if self._link.is_open:
            self._link.nack(delivery.delivery_tag, requeue=True)

    def cancelled_by_broker(self, tag: str) -> None:
        """The broker cancelled us (the queue was deleted): finish what is in flight, so its
        acks go out, then close the link so the owner reconnects and declares again, or, on a
        shared link, tell the owner (``on_cancelled``)."""
        if tag != self._tag or self._stopping:
            return
        self._cancelled = True
        self._chore(self._wind_down())

    async def _wind_down(self) -> None:
        await self.stop(self._settings.drain_timeout)
        if self._on_cancelled is not None:
            self._on_cancelled(self)
        else:
            await self._link.close()

    def _chore(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def stop(self, timeout: float) -> None:
        """Stop taking work, finish what is in flight (up to ``timeout``), give back the rest."""
        self._stopping = True
        keep = self._sub.keep_order
        if self._tag is not None and self._link.is_open and not self._cancelled and not keep:
            with contextlib.suppress(LinkError):  # closed, or no reply in time: it is gone
                await self._link.cancel(self._tag)
        # Prefetched deliveries no worker has started go back to the queue at once, in the
        # order they came (a quorum queue delivers what was given back in that order).
        while self._pending and not keep:
            delivery = self._pending.popleft()
            if self._link.is_open:
                self._link.nack(delivery.delivery_tag, requeue=True)
        self._wake(None)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d handler(s) still busy after %gs: cancelled", len(late), timeout)
                await asyncio.gather(*late, return_exceptions=True)
        if self._owns_sender:
            await self._sender.close()

    def abandon(self) -> None:
        """The link died: in-flight work cannot be settled; the broker requeues it. An
        idempotent subscription's work is finished first (see :class:`Subscription`)."""
        self._stopping = True
        self._wake(None)
        if self._sub.idempotent and not self._sub.keep_order:
            # What was delivered, started or not, is done now (its acks are lost), so it does
            # not wait for the broker to give it back behind later messages.
            self._chore(self._finish())
            return
        self._pending.clear()
        for task in self._tasks:
            task.cancel()
        if self._owns_sender:
            self._chore(self._sender.close())

    async def _finish(self) -> None:
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self._settings.drain_timeout)
            for task in late:
                task.cancel()
        if self._owns_sender:
            await self._sender.close()


def _id(delivery: Received) -> str:
    headers = delivery.properties.headers or {}
    rr_id = headers.get("rr_id")
    return str(rr_id or delivery.properties.message_id or f"delivery {delivery.delivery_tag}")
