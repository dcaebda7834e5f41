"""Reliable publishing: confirms always, ``mandatory`` always, a bounded timeout, pipelining.

A message handed to :meth:`Publisher.publish` ends in exactly one of three states:

* ``PUBLISHED`` — the broker confirmed it (``basic.ack``) and routed it to a queue;
* ``PERSISTED`` — the broker could not take it (down, connection lost, nack, unroutable,
  timeout, circuit open, ``rabbit_active=false``) and the :class:`Fallback` (the outbox) stored it;
* ``FAILED`` — the same failures, when the call asked for no fallback (the requeue command does:
  a row stays pending until the broker confirms it).

If the fallback itself fails, :class:`~rabbitry.errors.StorageError` propagates: a message is
never silently lost. After a connection failure a circuit breaker sends publishes straight to
the fallback for ``AmqpSettings.circuit_open_seconds`` instead of making every caller wait for the
broker timeout, then lets the next publish probe the broker again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from rabbitry import metrics
from rabbitry.amqp.link import Link, LinkClosed, Outcome, Outgoing
from rabbitry.amqp.properties import Properties
from rabbitry.errors import BrokerError, BrokerUnavailable, PublishFailed
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.settings import AmqpSettings

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


class Fallback(Protocol):
    """Where messages go when the broker cannot take them (the outbox)."""

    async def store(self, items: Sequence[tuple[Route, Message, str]]) -> None:
        """Persist (route, message, reason) items; raise StorageError on failure."""


# Reply codes that blame the message, not the broker: access refused, not found, precondition.
_CALLER_ERRORS = frozenset({403, 404, 406})

_REASONS = {
    Outcome.NACKED: "broker nacked the message",
    Outcome.RETURNED: "unroutable: no queue is bound for this exchange and routing key",
}


def to_outgoing(message: Message, route: Route) -> Outgoing:
    props, body = envelope.encode(message)
    return Outgoing(route.exchange, route.routing_key, body, Properties(**props), True)


class Publisher:
    """Publishes :class:`Message` objects. One connection, opened lazily, reused, reopened."""

    def __init__(
        self,
        amqp: AmqpSettings | None = None,
        *,
        fallback: Fallback | None = None,
        name: str = "rabbitry",
    ) -> None:
        self._settings = amqp or AmqpSettings()
        self._fallback = fallback
        self._name = name
        self._link: Link | None = None
        self._lock = asyncio.Lock()
        self._circuit_until = 0.0
        # The circuit breaker's clock; rabbitry.testing's broker substitutes its virtual one.
        self._clock: Callable[[], float] = time.monotonic

    @property
    def fallback(self) -> Fallback | None:
        return self._fallback

    async def publish(
        self, message: Message, route: Route, *, use_fallback: bool = True
    ) -> PublishResult:
        """Publish one message; see the module docstring for the outcomes."""
        (result,) = await self.publish_many([(message, route)], use_fallback=use_fallback)
        return result

    async def publish_many(
        self, items: Sequence[tuple[Message, Route]], *, use_fallback: bool = True
    ) -> list[PublishResult]:
        """Publish many messages with one write and one wait for their confirms."""
        if not items:
            return []
        failures: dict[int, str] = {}
        try:
            link = await self._connected()
            outcomes = await self._send(link, items)
        except BrokerError as exc:
            failures = dict.fromkeys(range(len(items)), str(exc))
        else:
            failures = {i: _REASONS[o] for i, o in enumerate(outcomes) if o is not Outcome.ACKED}
        return await self._settle(items, failures, use_fallback)

    async def _send(self, link: Link, items: Sequence[tuple[Message, Route]]) -> list[Outcome]:
        outgoing = [to_outgoing(message, route) for message, route in items]
        for target, count in Counter(_target(route) for _, route in items).items():
            metrics.PUBLISHED.labels(target).inc(count)
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                if len(outgoing) == 1:
                    # Single publishes from concurrent callers share one write per loop turn.
                    item = outgoing[0]
                    return [
                        await link.publish(
                            item.exchange, item.routing_key, item.body, item.properties
                        )
                    ]
                return await link.publish_many(outgoing)
        except TimeoutError as exc:
            # A broker that does not confirm in time is treated as down: drop the link so
            # the next publish reconnects, and let the circuit breaker spare the callers.
            await self._trip(link, "no confirm within the publish timeout")
            raise BrokerUnavailable(
                f"no confirm within {self._settings.publish_timeout:g}s"
            ) from exc
        except LinkClosed as exc:
            if exc.reply_code in _CALLER_ERRORS:
                # The broker is fine; the message was wrong (e.g. 404: no such exchange). The
                # channel is gone, so reconnect next time, but don't make other callers wait.
                await self._drop(link)
                raise PublishFailed(f"refused by the broker: {exc}") from exc
            await self._trip(link, str(exc))
            raise BrokerUnavailable(f"connection lost while publishing: {exc}") from exc

    async def _settle(
        self,
        items: Sequence[tuple[Message, Route]],
        failures: dict[int, str],
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
            if fallback is None:
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

    async def _connected(self) -> Link:
        if not self._settings.active:
            raise BrokerUnavailable("rabbit_active is false: messages are stored, not sent")
        link = self._link
        if link is not None and link.is_open:
            return link
        if self._clock() < self._circuit_until:
            raise BrokerUnavailable("broker marked unavailable (circuit open after a failure)")
        async with self._lock:
            if self._link is not None and self._link.is_open:
                return self._link
            if self._clock() < self._circuit_until:
                raise BrokerUnavailable("broker marked unavailable (circuit open)")
            try:
                link = await self._open_link()
            except (OSError, LinkClosed, TimeoutError, BrokerError) as exc:
                self._circuit_until = self._clock() + self._settings.circuit_open_seconds
                raise BrokerUnavailable(f"cannot connect to the broker: {exc}") from exc
            self._link = link
            return link

    async def _open_link(self) -> Link:
        """A new link in confirm mode: the seam to the broker (``rabbitry.testing`` swaps it)."""
        link = await Link.connect(
            self._settings.url,
            name=f"{self._name}-publisher",
            timeout=self._settings.connect_timeout,
        )
        await link.confirm_select()
        return link

    async def _trip(self, link: Link, reason: str) -> None:
        log.warning("publisher connection dropped: %s", reason)
        self._circuit_until = self._clock() + self._settings.circuit_open_seconds
        await self._drop(link)

    async def _drop(self, link: Link) -> None:
        if self._link is link:
            self._link = None
        await _close_quietly(link)

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await _close_quietly(link)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _target(route: Route) -> str:
    """The metrics label: the exchange, or the queue for the default exchange."""
    return route.exchange or route.routing_key


async def _close_quietly(link: Link) -> None:
    try:
        await asyncio.wait_for(link.close(), timeout=2)
    except (OSError, LinkClosed, TimeoutError, BrokerError):
        log.debug("closing a broken link failed", exc_info=True)
