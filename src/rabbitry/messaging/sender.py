"""One confirmed publishing connection: a publisher's, or the one a worker's consumers send
their retry and dead-letter copies on (never the connections they consume from: a broker
alarm blocks a connection that publishes, acks included, and RabbitMQ advises keeping the two
apart).

The connection opens lazily and reopens after a failure. After a failure a circuit breaker
fails sends at once for ``circuit_open_seconds`` rather than make every caller wait for the
broker's timeout. While the broker blocks the connection (a memory or disk alarm) a send
fails at once with :data:`BLOCKED` in its reason, or, for a caller that would rather wait (a
consumer holding a delivery), waits up to the publish timeout for the alarm to clear. A
publish the broker refuses (no such exchange) fails alone: the messages it took down with the
channel are sent again on a new connection, so nothing is stored or sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from rabbitry import metrics
from rabbitry.amqp.link import Link, LinkClosed, Outcome, Outgoing, Skipped, Unfit
from rabbitry.errors import BrokerError, BrokerUnavailable, PublishFailed
from rabbitry.messaging.settings import AmqpSettings

log = logging.getLogger(__name__)

BLOCKED = "blocked by the broker (memory/disk alarm)"

Verdict = tuple[Outcome, str]
"""What became of one message: the broker's outcome, and why when it is not ``ACKED``."""

# Reply codes that blame the message, not the broker: access refused, not found, precondition.
_CALLER_ERRORS = frozenset({403, 404, 406})

_ACKED: Verdict = (Outcome.ACKED, "")
_REASONS = {
    Outcome.NACKED: "broker nacked the message",
    Outcome.RETURNED: "unroutable: no queue is bound for this exchange and routing key",
}
# A refused publish takes down what follows it on the channel; each round sends those again.
_ROUNDS = 4


class Sender:
    """Sends :class:`Outgoing` messages on one connection it owns and waits for confirms.

    ``open_link`` opens a connection in confirm mode (by default :meth:`Link.connect` to the
    settings' URL, named ``name``); ``clock`` is the circuit breaker's.
    """

    def __init__(
        self,
        settings: AmqpSettings,
        name: str,
        *,
        open_link: Callable[[], Awaitable[Link]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._settings = settings
        self._open_link = open_link or self._connect
        self._clock = clock
        self._link: Link | None = None
        self._lock = asyncio.Lock()
        self._circuit_until = 0.0
        self._blocked: str | None = None
        self._unblocked = asyncio.Event()
        self._unblocked.set()

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks this connection, else ``None``."""
        return self._blocked

    async def send(
        self, items: Sequence[Outgoing], *, wait_unblocked: bool = False
    ) -> list[Verdict]:
        """Publish ``items`` and wait for the broker; one verdict per item, in order.

        Raises :class:`BrokerUnavailable` when there is no connection, the circuit is open,
        the broker blocks the connection (unless ``wait_unblocked``, then after the publish
        timeout) or does not confirm in time, and :class:`PublishFailed` when it closed the
        channel for a reason it did not pin on one message. A message that cannot be encoded
        gets ``UNFIT`` and is not sent; the others still are.
        """
        verdicts: list[Verdict] = [_ACKED] * len(items)
        todo = list(range(len(items)))
        for _ in range(_ROUNDS):
            if not todo:
                return verdicts
            link = await self._connected(wait_unblocked)
            batch = [items[i] for i in todo]
            try:
                outcomes = await self._publish(link, batch)
            except Unfit as exc:
                for position, reason in exc.reasons.items():
                    verdicts[todo[position]] = (Outcome.UNFIT, reason)
                todo = [i for position, i in enumerate(todo) if position not in exc.reasons]
                continue
            again: list[int] = []
            for index, (outcome, reason) in zip(todo, outcomes, strict=True):
                if outcome is Outcome.ACKED:
                    continue
                if outcome is Outcome.SKIPPED:
                    again.append(index)
                else:
                    verdicts[index] = (outcome, reason)
            if again or not link.is_open:
                await self._drop(link)  # the channel is gone; the next round opens another
            todo = again
        for index in todo:
            reason = "dropped by the broker after refused publishes; not sent again"
            verdicts[index] = (Outcome.SKIPPED, reason)
        return verdicts

    async def _publish(self, link: Link, batch: Sequence[Outgoing]) -> list[Verdict]:
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                if len(batch) == 1:
                    # Single sends from concurrent callers share one write per loop turn.
                    item = batch[0]
                    future = link.publish(
                        item.exchange,
                        item.routing_key,
                        item.body,
                        item.properties,
                        mandatory=item.mandatory,
                    )
                    try:
                        outcomes = [await future]
                    except Skipped:
                        return [(Outcome.SKIPPED, "")]
                    except LinkClosed as exc:
                        if exc.reply_code not in _CALLER_ERRORS:
                            raise
                        # This message was refused: it fails alone, the broker is fine.
                        await self._drop(link)
                        return [(Outcome.REFUSED, f"refused by the broker: {exc}")]
                else:
                    outcomes = await link.publish_many(batch)
        except TimeoutError as exc:
            # A broker that does not confirm in time is treated as down: drop the link so
            # the next send reconnects, and let the circuit breaker spare the callers.
            blocked = f" ({BLOCKED}: {self._blocked})" if self._blocked else ""
            await self._trip(link, f"no confirm within the publish timeout{blocked}")
            timeout = self._settings.publish_timeout
            raise BrokerUnavailable(f"no confirm within {timeout:g}s{blocked}") from exc
        except LinkClosed as exc:
            if exc.reply_code in _CALLER_ERRORS:
                # The broker is fine; a message was wrong. The channel is gone, so reconnect
                # next time, but don't make other callers wait.
                await self._drop(link)
                raise PublishFailed(f"refused by the broker: {exc}") from exc
            await self._trip(link, str(exc))
            raise BrokerUnavailable(f"connection lost while publishing: {exc}") from exc
        return [self._verdict(link, outcome) for outcome in outcomes]

    @staticmethod
    def _verdict(link: Link, outcome: Outcome) -> Verdict:
        if outcome is Outcome.ACKED:
            return _ACKED
        if outcome is Outcome.REFUSED:
            return (outcome, f"refused by the broker: {link.error}")
        return (outcome, _REASONS.get(outcome, ""))

    async def _connected(self, wait_unblocked: bool) -> Link:
        if not self._settings.active:
            raise BrokerUnavailable("rabbit_active is false: messages are stored, not sent")
        link = self._link
        if link is None or not link.is_open:
            link = await self._reconnect()
        if self._blocked is not None:
            if wait_unblocked:
                await self._wait_unblocked()
            else:
                raise BrokerUnavailable(f"{BLOCKED}: {self._blocked}")
        return link

    async def _wait_unblocked(self) -> None:
        reason = self._blocked
        try:
            async with asyncio.timeout(self._settings.publish_timeout):
                await self._unblocked.wait()
        except TimeoutError:
            timeout = self._settings.publish_timeout
            raise BrokerUnavailable(f"{BLOCKED} for over {timeout:g}s: {reason}") from None

    async def _reconnect(self) -> Link:
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
            self._set_blocked(None)
            link.on_blocked = lambda reason: self._on_blocked(link, reason)
            self._link = link
            return link

    async def _connect(self) -> Link:
        link = await Link.connect(
            self._settings.url,
            name=self.name,
            timeout=self._settings.connect_timeout,
            rpc_timeout=self._settings.rpc_timeout,
        )
        await link.confirm_select()
        return link

    def _on_blocked(self, link: Link, reason: str | None) -> None:
        if link is self._link:
            self._set_blocked(reason)

    def _set_blocked(self, reason: str | None) -> None:
        self._blocked = reason
        metrics.BLOCKED.labels(self.name).set(0 if reason is None else 1)
        if reason is None:
            self._unblocked.set()
        else:
            self._unblocked.clear()

    async def _trip(self, link: Link, reason: str) -> None:
        log.warning("%s: connection dropped: %s", self.name, reason)
        self._circuit_until = self._clock() + self._settings.circuit_open_seconds
        await self._drop(link)

    async def _drop(self, link: Link) -> None:
        if self._link is link:
            self._link = None
            self._set_blocked(None)  # a new connection starts unblocked
        await _close_quietly(link)

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await _close_quietly(link)
            self._set_blocked(None)


async def _close_quietly(link: Link) -> None:
    try:
        await asyncio.wait_for(link.close(), timeout=3)
    except (OSError, LinkClosed, TimeoutError, BrokerError):
        log.debug("closing a broken link failed", exc_info=True)
