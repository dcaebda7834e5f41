"""Reliable publishing: confirms always, ``mandatory`` always, a bounded timeout, pipelining.

A message handed to :meth:`Publisher.publish` ends in exactly one of three states:

* ``PUBLISHED`` — the broker confirmed it (``basic.ack``) and routed it to a queue;
* ``PERSISTED`` — the broker could not take it (down, connection lost, blocked by a memory or
  disk alarm, nack, unroutable, refused, timeout, circuit open, ``rabbit_active=false``) and
  the :class:`Fallback` (the outbox) stored it;
* ``FAILED`` — the same failures, when the call asked for no fallback (the requeue command does:
  a row stays pending until the broker confirms it); and, fallback or not, a message that can
  never be sent as it is (headers larger than the broker's frame size, a property over 255
  bytes): storing it would only fail again later.

A result's ``refused`` tells the broker *refusing* a message (no such exchange, unroutable,
access refused: :func:`~rabbitry.messaging.verdicts.is_refusal`) from the broker being
unavailable: waiting does not help the former, someone must change the topology.

If the fallback itself fails, :class:`~rabbitry.errors.StorageError` propagates: a message is
never silently lost. The connection, its circuit breaker and the broker's alarms are
:class:`~rabbitry.messaging.sender.Sender`'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, Self

from rabbitry import metrics
from rabbitry.amqp.base import OpenLink, Outgoing, PublishOutcome
from rabbitry.amqp.properties import properties_of
from rabbitry.errors import BrokerError, BrokerUnavailable
from rabbitry.messaging import envelope, rpc
from rabbitry.messaging.connection import opener
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.middleware import Gathering, Middleware, wrap_publish
from rabbitry.messaging.parts import LazyOutgoing
from rabbitry.messaging.rpc import Requester
from rabbitry.messaging.sender import Sender
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.verdicts import is_refusal
from rabbitry.metrics import CounterChild

log = logging.getLogger(__name__)


class PublishStatus(StrEnum):
    PUBLISHED = "published"
    PERSISTED = "persisted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes; ``queue`` names the outbox registry entry, if any."""

    exchange: str
    routing_key: str
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    message_id: str
    status: PublishStatus
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is PublishStatus.PUBLISHED

    @property
    def refused(self) -> bool:
        """Whether the broker refused the message (no such exchange, unroutable, access
        refused) rather than being unavailable: stored or not, it will not go as it is."""
        return self.error is not None and is_refusal(self.error)


class Fallback(Protocol):
    """Where messages go when the broker cannot take them (the outbox)."""

    async def store(self, items: Sequence[tuple[Route, Message, str]]) -> None:
        """Persist (route, message, reason) items; raise StorageError on failure."""


def to_outgoing(message: Message, route: Route) -> Outgoing:
    props, body = envelope.encode(message)
    return Outgoing(route.exchange, route.routing_key, body, properties_of(props), True)


class _Encoding(LazyOutgoing):
    """A call's messages, encoded as the sender asks for each one.

    The sender writes a large batch in parts, and the broker starts on the first part while
    the next is encoded. The bodies are encoded up front for the whole call, so a payload
    that is not JSON fails the call (MessageError) before anything is sent.
    """

    def __init__(self, items: Sequence[tuple[Message, Route]]) -> None:
        self._items = items
        self._bodies = [message.body() for message, _ in items]

    def __len__(self) -> int:
        return len(self._items)

    def _at(self, index: int) -> Outgoing:
        message, route = self._items[index]
        props = properties_of(envelope.encode_properties(message))
        return Outgoing(route.exchange, route.routing_key, self._bodies[index], props, True)


class Publisher:
    """Publishes :class:`Message` objects. One connection, opened lazily, reused, reopened.

    ``open_link`` opens that connection (by default to ``amqp.url``) and ``clock`` is its
    circuit breaker's: :mod:`rabbitry.testing`'s in-memory broker passes its own.
    """

    def __init__(
        self,
        amqp: AmqpSettings | None = None,
        *,
        fallback: Fallback | None = None,
        name: str = "rabbitry",
        open_link: OpenLink | None = None,
        clock: Callable[[], float] = time.monotonic,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self._settings = amqp or AmqpSettings()
        self._fallback = fallback
        self._target_counters: dict[str, tuple[CounterChild, CounterChild]] = {}
        self._sender = Sender(self._settings, f"{name}-publisher", open_link=open_link, clock=clock)
        self._open_link = open_link or opener(self._settings)
        self._name = name
        self._requester: Requester | None = None
        self._middleware = tuple(middleware)
        # The publish chains (with and without the fallback) end in the class's publish. With
        # publish middleware the instance's publish enters them; without, publish is left as
        # it is, so a publisher without middleware pays nothing for it, not even a call.
        inner = type(self).publish
        self._chains = {
            use: wrap_publish(functools.partial(inner, self, use_fallback=use), middleware)
            for use in (True, False)
        }
        if self._chains[True] is not None:
            self.publish = self._chained  # type: ignore[method-assign]

    @property
    def fallback(self) -> Fallback | None:
        return self._fallback

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks the connection (a memory or disk alarm)."""
        return self._sender.blocked

    async def publish(
        self, message: Message, route: Route, *, use_fallback: bool = True
    ) -> PublishResult:
        """Publish one message; see the module docstring for the outcomes.

        Concurrent calls share writes and confirms (see :class:`Sender`); this path is kept
        lean because services call it once per message (publish middleware, when there is
        some, replaces it on the instance: see ``__init__``).
        """
        outgoing = to_outgoing(message, route)
        published, confirmed = self._counters(_target(route))
        published.inc()
        try:
            ((outcome, reason),) = await self._sender.send((outgoing,))
        except BrokerError as exc:
            outcome, reason = None, str(exc)
        if outcome is PublishOutcome.ACKED:
            confirmed.inc()
            return PublishResult(message.id, PublishStatus.PUBLISHED)
        unfit = {0} if outcome is PublishOutcome.UNFIT else set()
        (result,) = await self._settle([(message, route)], {0: reason}, unfit, use_fallback)
        return result

    async def _chained(
        self, message: Message, route: Route, *, use_fallback: bool = True
    ) -> PublishResult:
        """:meth:`publish` through the publish middleware."""
        chain = self._chains[use_fallback]
        assert chain is not None
        return await chain(message, route)

    async def request(self, message: Message, route: Route, *, timeout: float) -> Message:
        """Send ``message`` as a request and return the reply: what the handler that
        consumed it returned (see :mod:`rabbitry.messaging.rpc`). Raises
        :class:`~rabbitry.errors.RequestTimeout` after ``timeout`` seconds without one, and
        :class:`~rabbitry.errors.RequestFailed` when the handler rejected it; a request is
        never stored in the fallback."""
        if not self._settings.active:
            raise BrokerUnavailable("the broker is switched off (rabbit_active=false)")
        if self._requester is None:
            self._requester = Requester(self._open_link, f"{self._name}-requests")
        return await rpc.request(
            self._requester, message, route.exchange, route.routing_key, timeout
        )

    def _counters(self, target: str) -> tuple[CounterChild, CounterChild]:
        # A label lookup costs more than the increment; publishers reuse a few targets.
        counters = self._target_counters.get(target)
        if counters is None:
            counters = (metrics.PUBLISHED.labels(target), metrics.CONFIRMED.labels(target))
            if len(self._target_counters) < 1024:
                self._target_counters[target] = counters
        return counters

    async def publish_many(
        self, items: Sequence[tuple[Message, Route]], *, use_fallback: bool = True
    ) -> list[PublishResult]:
        """Publish many messages with one wait for their confirms (with publish middleware,
        each goes through it on its own, and what comes out is sent as one batch)."""
        if not items:
            return []
        if self._chains[use_fallback] is not None:
            return await self._gathered(items, use_fallback)
        return await self._batch(items, use_fallback)

    async def _gathered(
        self, items: Sequence[tuple[Message, Route]], use_fallback: bool
    ) -> list[PublishResult]:
        gathering = Gathering(len(items), functools.partial(self._batch, use_fallback=use_fallback))

        async def one(slot: int, message: Message, route: Route) -> PublishResult:
            try:
                return await gathering.chain(slot, self._middleware)(message, route)
            finally:
                await gathering.finished(slot)

        return list(await asyncio.gather(*(one(n, m, r) for n, (m, r) in enumerate(items))))

    async def _batch(
        self, items: Sequence[tuple[Message, Route]], use_fallback: bool
    ) -> list[PublishResult]:
        outgoing = _Encoding(items)
        targets = Counter(_target(route) for _, route in items)
        for target, count in targets.items():
            self._counters(target)[0].inc(count)
        failures: dict[int, str] = {}
        unfit: set[int] = set()
        try:
            verdicts = await self._sender.send(outgoing)
        except BrokerError as exc:
            failures = dict.fromkeys(range(len(items)), str(exc))
        else:
            for index, (outcome, reason) in enumerate(verdicts):
                if outcome is not PublishOutcome.ACKED:
                    failures[index] = reason
                    if outcome is PublishOutcome.UNFIT:
                        unfit.add(index)
        if not failures:  # the common case: every message confirmed
            for target, count in targets.items():
                self._counters(target)[1].inc(count)
            return [PublishResult(message.id, PublishStatus.PUBLISHED) for message, _ in items]
        return await self._settle(items, failures, unfit, use_fallback)

    async def _settle(
        self,
        items: Sequence[tuple[Message, Route]],
        failures: dict[int, str],
        unfit: set[int],
        use_fallback: bool,
    ) -> list[PublishResult]:
        results: list[PublishResult] = []
        to_store: list[tuple[Route, Message, str]] = []
        fallback = self._fallback if use_fallback else None
        for index, (message, route) in enumerate(items):
            reason = failures.get(index)
            if reason is None:
                metrics.CONFIRMED.labels(_target(route)).inc()
                results.append(PublishResult(message.id, PublishStatus.PUBLISHED))
                continue
            metrics.FAILED.labels(_target(route)).inc()
            if fallback is None or index in unfit:
                if index in unfit:
                    reason = f"cannot be sent: {reason}"
                results.append(PublishResult(message.id, PublishStatus.FAILED, reason))
            else:
                to_store.append((route, message, reason))
                results.append(PublishResult(message.id, PublishStatus.PERSISTED, reason))
        if fallback is not None and to_store:
            await fallback.store(to_store)  # StorageError propagates: never a silent loss
            for route, _, _ in to_store:
                metrics.PERSISTED.labels(_target(route)).inc()
            log.warning("%d message(s) stored in the outbox: %s", len(to_store), to_store[0][2])
        return results

    async def close(self) -> None:
        if self._requester is not None:
            await self._requester.close()
        await self._sender.close()

    async def __aenter__(self) -> Self:  # a subclass entered is that subclass
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _target(route: Route) -> str:
    """The metrics label: the exchange, or the queue for the default exchange."""
    return route.exchange or route.routing_key
