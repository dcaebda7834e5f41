"""One confirmed publishing connection: a publisher's, or the one a worker's consumers send
their retry and dead-letter copies on (never the connections they consume from: a broker
alarm blocks a connection that publishes, acks included, and RabbitMQ advises keeping the two
apart).

The connection opens lazily and reopens after a failure. After a failure a circuit breaker
fails sends at once for ``circuit_open_seconds`` rather than make every caller wait for the
broker's timeout. While the broker blocks the connection (a memory or disk alarm) a send
fails at once with :data:`~rabbitry.messaging.verdicts.BLOCKED` in its reason, or, for a
caller that would rather wait (a consumer holding a delivery), waits up to the publish timeout
for the alarm to clear.

The sends already on the wire when the block arrives (the first publish on a fresh connection
is one: RabbitMQ blocks a connection when it publishes) do not wait out the publish timeout
either: what the broker took before it stopped reading is confirmed at once, so after a short
grace (:data:`BLOCKED_GRACE`) the connection is dropped, which fails the rest, and the circuit
opens with the alarm as its reason. The broker discards what it had not read, so those go to
the caller's fallback once; a message it had read but not yet confirmed when the grace ended
is both routed and stored: at least once, with the same message id, which consumers dedupe. A
publish the broker refuses (no such exchange) fails alone: the messages it took down with the
channel are sent again on a new connection, so nothing is stored or sent twice.

A connection whose publish was nacked is replaced for the sends after it (once it is
:data:`RETIRE_AFTER` seconds old), and closed once those in flight on it had their time: a
channel of RabbitMQ 3.10 that first published to a quorum queue while the queue's leader was
down nacks every later publish to that queue for as long as the channel lives, though a new
leader took over seconds later (its client of the queue keeps asking the dead node). Only a new
channel sees the new leader. The sends after the nack go out on the new connection only once
every publish in flight on the old one is confirmed, nacked or failed: that channel may be
stalled (asking a node that is down), and the broker routes what two connections carry in no
order between them, so a later message would reach its queues before an earlier one. One
sender's messages are routed in the order they were sent (a chat room's, for one).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from rabbitry import metrics
from rabbitry.amqp.base import (
    BaseLink,
    LinkClosed,
    OpenLink,
    Outgoing,
    PublishOutcome,
    Skipped,
    Unfit,
)
from rabbitry.errors import BrokerError, BrokerUnavailable, PublishFailed
from rabbitry.messaging.connection import opener
from rabbitry.messaging.parts import parts as in_parts
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.verdicts import (
    ACKED,
    BLOCKED,
    CALLER_ERRORS,
    REFUSED,
    Verdict,
)
from rabbitry.messaging.verdicts import verdict as verdict_of
from rabbitry.messaging.watchdog import ConfirmWatchdog, NoConfirm

log = logging.getLogger(__name__)

BLOCKED_GRACE = 0.5
"""Seconds the sends in flight when the broker blocks the connection may still be confirmed
before they fail over. A publish the broker read before the alarm is confirmed in a few
milliseconds (tens on a quorum queue); one it has not read never will be until the alarm
clears."""

RETIRE_AFTER = 1.0
"""Seconds a connection must have been open before a nack replaces it: enough for a queue that
nacks for good (full, with ``x-overflow: reject-publish``) to cost at most one new connection a
second, short enough that a channel stuck on a dead leader is left a second after it is."""

# A refused publish takes down what follows it on the channel; each round sends those again.
_ROUNDS = 4


class Sender:
    """Sends :class:`Outgoing` messages on one connection it owns and waits for confirms.

    ``open_link`` opens its connections, named ``name`` (by default to the settings' URL), and
    the sender puts each in confirm mode; ``clock`` is the circuit breaker's.
    """

    def __init__(
        self,
        settings: AmqpSettings,
        name: str,
        *,
        open_link: OpenLink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._settings = settings
        self._open_link = open_link or opener(settings)
        self._clock = clock
        self._link: BaseLink | None = None
        self._lock = asyncio.Lock()
        self._circuit_until = 0.0
        self._blocked: str | None = None
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._confirms = ConfirmWatchdog(settings.publish_timeout)
        self._impatient = 0  # sends in progress that would rather fail over than wait
        self._alarm = ""  # the reason of the alarm that opened the circuit, while it is open
        self._opened_at = 0.0  # when the current link was opened (by ``clock``)
        self._retiring: set[asyncio.Task[None]] = set()  # links replaced after a nack, closing
        # Publishes in flight on a link replaced after a nack: the next link waits for them.
        self._settling: list[asyncio.Future[Any]] = []
        self._calls: set[tuple[BaseLink, asyncio.Future[Any]]] = set()  # batch parts in flight
        self._queued = 0  # sends waiting for a link behind the lock: later ones queue too

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks this connection (or, once that connection was
        given up for it, while the circuit it opened lasts), else ``None``."""
        if self._blocked is None and self._alarm and self._clock() < self._circuit_until:
            return self._alarm
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
        if wait_unblocked:
            return await self._send(items, True)
        self._impatient += 1
        try:
            return await self._send(items, False)
        finally:
            self._impatient -= 1

    async def _send(self, items: Sequence[Outgoing], wait_unblocked: bool) -> list[Verdict]:
        link = self._link
        if (
            len(items) == 1
            and link is not None
            and link.is_open
            and self._blocked is None
            and not self._queued
        ):
            # The common case, kept short: services publish one message per call.
            (item,) = items
            try:
                verdict = await self._publish_one(link, item)
            except (TimeoutError, LinkClosed) as exc:
                raise await self._failed(link, exc) from exc
            if verdict[0] is PublishOutcome.NACKED:
                self._nacked(link)
            if verdict[0] is not PublishOutcome.SKIPPED:
                return [verdict]
            await self._drop(link)  # dropped behind another's refused publish: send it again
        verdicts: list[Verdict] = [ACKED] * len(items)
        todo = list(range(len(items)))
        for _ in range(_ROUNDS):
            if not todo:
                return verdicts
            link = await self._connected(wait_unblocked)
            again: list[int] = []
            nacked = False
            for index, verdict in await self._publish(link, items, todo, verdicts):
                if verdict[0] is PublishOutcome.SKIPPED:
                    again.append(index)
                elif verdict is not ACKED:
                    verdicts[index] = verdict
                    nacked = nacked or verdict[0] is PublishOutcome.NACKED
            if again or not link.is_open:
                await self._drop(link)  # the channel is gone; the next round opens another
            elif nacked:
                self._nacked(link)
            todo = again
        for index in todo:
            reason = "dropped by the broker after refused publishes; not sent again"
            verdicts[index] = (PublishOutcome.SKIPPED, reason)
        return verdicts

    async def _publish(
        self, link: BaseLink, items: Sequence[Outgoing], todo: list[int], verdicts: list[Verdict]
    ) -> list[tuple[int, Verdict]]:
        """Send ``items[i]`` for each ``i`` in ``todo``: (i, verdict) for each one sent;
        those that cannot be encoded get their verdict in ``verdicts`` and are not sent."""
        try:
            if len(todo) == 1:
                return [(todo[0], await self._publish_one(link, items[todo[0]]))]
            async with asyncio.timeout(self._settings.publish_timeout):
                return await self._publish_parts(link, items, todo, verdicts)
        except (TimeoutError, LinkClosed) as exc:
            raise await self._failed(link, exc) from exc

    async def _failed(self, link: BaseLink, exc: TimeoutError | LinkClosed) -> BrokerError:
        """What a send that failed with ``exc`` raises; the link is dropped either way."""
        if isinstance(exc, _Blocked):
            await self._trip(link, str(exc))
            return BrokerUnavailable(str(exc))
        if isinstance(exc, TimeoutError | NoConfirm):
            # A broker that does not confirm in time is treated as down: drop the link so
            # the next send reconnects, and let the circuit breaker spare the callers.
            blocked = f" ({BLOCKED}: {self._blocked})" if self._blocked else ""
            await self._trip(link, f"no confirm within the publish timeout{blocked}")
            timeout = self._settings.publish_timeout
            return BrokerUnavailable(f"no confirm within {timeout:g}s{blocked}")
        if exc.reply_code in CALLER_ERRORS:
            # The broker is fine; a message was wrong. The channel is gone, so reconnect
            # next time, but don't make other callers wait.
            await self._drop(link)
            return PublishFailed(f"{REFUSED}: {exc}")
        await self._trip(link, str(exc))
        return BrokerUnavailable(f"connection lost while publishing: {exc}")

    async def _publish_parts(
        self, link: BaseLink, items: Sequence[Outgoing], todo: list[int], verdicts: list[Verdict]
    ) -> list[tuple[int, Verdict]]:
        # In parts (of messaging.parts.SIZE messages), one call each, started in order: a call
        # encodes its part (the items are encoded as they are read) and writes it before the
        # next starts, so the broker works on one part while the next is encoded, rather than
        # waiting for the whole batch and then making us wait for it.
        parts = in_parts(items, todo)
        calls = [asyncio.ensure_future(link.publish_many(part)) for _, part in parts]
        for call in calls:
            self._calls.add((link, call))
            call.add_done_callback(functools.partial(_forget, self._calls, link))
        sent: list[tuple[int, Verdict]] = []
        try:
            for (positions, part), call in zip(parts, calls, strict=True):
                try:
                    outcomes = await call
                except Unfit as exc:
                    for position, reason in exc.reasons.items():
                        verdicts[positions[position]] = (PublishOutcome.UNFIT, reason)
                    fit = [p for p in range(len(positions)) if p not in exc.reasons]
                    positions = [positions[p] for p in fit]
                    outcomes = await link.publish_many([part[p] for p in fit])
                verdicts_of = [verdict_of(link, outcome) for outcome in outcomes]
                sent += zip(positions, verdicts_of, strict=True)
        finally:
            for call in calls:
                if not call.done():
                    call.cancel()
                call.add_done_callback(_retrieved)
        return sent

    async def _publish_one(self, link: BaseLink, item: Outgoing) -> Verdict:
        try:
            # Single sends from concurrent callers share one write per loop turn.
            future = link.publish(
                item.exchange,
                item.routing_key,
                item.body,
                item.properties,
                mandatory=item.mandatory,
            )
        except Unfit as exc:
            return (PublishOutcome.UNFIT, exc.reasons[0])
        self._confirms.watch(link, future)
        try:
            return verdict_of(link, await future)
        except NoConfirm:
            raise
        except Skipped:
            return (PublishOutcome.SKIPPED, "")
        except LinkClosed as exc:
            if exc.reply_code not in CALLER_ERRORS:
                raise
            # This message was refused: it fails alone, the broker is fine.
            await self._drop(link)
            return (PublishOutcome.REFUSED, f"{REFUSED}: {exc}")

    async def _connected(self, wait_unblocked: bool) -> BaseLink:
        if not self._settings.active:
            raise BrokerUnavailable("rabbit_active is false: messages are stored, not sent")
        link = self._link
        if link is None or not link.is_open or self._queued:
            # (Also when others wait for a link: a later send must not overtake them.)
            self._queued += 1
            try:
                link = await self._reconnect()
            finally:
                self._queued -= 1
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

    async def _reconnect(self) -> BaseLink:
        if self._clock() < self._circuit_until:
            if self._alarm:
                raise BrokerUnavailable(f"{BLOCKED}: {self._alarm} (circuit open)")
            raise BrokerUnavailable("broker marked unavailable (circuit open after a failure)")
        async with self._lock:
            if self._link is not None and self._link.is_open:
                return self._link
            if self._clock() < self._circuit_until:
                raise BrokerUnavailable("broker marked unavailable (circuit open)")
            if self._settling:
                # What the replaced link carries goes first (bounded by the publish timeout,
                # after which its watchdog fails it).
                settling, self._settling = self._settling, []
                await asyncio.wait(settling)
            try:
                link = await self._open_confirming()
            except (OSError, LinkClosed, TimeoutError, BrokerError) as exc:
                self._circuit_until = self._clock() + self._settings.circuit_open_seconds
                raise BrokerUnavailable(f"cannot connect to the broker: {exc}") from exc
            self._alarm = ""
            self._set_blocked(None)
            link.on_blocked = lambda reason: self._on_blocked(link, reason)
            self._link = link
            self._opened_at = self._clock()
            return link

    async def _open_confirming(self) -> BaseLink:
        link = await self._open_link(self.name)
        try:
            await link.confirm_select()
        except BaseException:
            await _close_quietly(link)
            raise
        return link

    def _on_blocked(self, link: BaseLink, reason: str | None) -> None:
        if link is self._link:
            self._set_blocked(reason)
            if reason is not None:
                grace = min(BLOCKED_GRACE, self._settings.publish_timeout)
                asyncio.get_running_loop().call_later(grace, self._give_up_blocked, link)

    def _give_up_blocked(self, link: BaseLink) -> None:
        """The grace after a block is over: drop the connection if sends that would rather
        fail over still wait on it (patient ones wait for the alarm to clear)."""
        reason = link.blocked
        if link is not self._link or reason is None or not self._impatient:
            return
        log.warning("%s: %s: failing over the sends in flight", self.name, reason)
        self._alarm = reason
        link.abort(_Blocked(f"{BLOCKED}: {reason}"))

    def _set_blocked(self, reason: str | None) -> None:
        self._blocked = reason
        # A connection given up for an alarm counts as blocked until a new one is opened.
        metrics.BLOCKED.labels(self.name).set(0 if reason is None and not self._alarm else 1)
        if reason is None:
            self._unblocked.set()
        else:
            self._unblocked.clear()

    async def _trip(self, link: BaseLink, reason: str) -> None:
        log.warning("%s: connection dropped: %s", self.name, reason)
        self._circuit_until = self._clock() + self._settings.circuit_open_seconds
        await self._drop(link)

    def _nacked(self, link: BaseLink) -> None:
        """The broker nacked a publish on ``link``: the sends after this one go on a new
        connection (see the module docstring), unless ``link`` is younger than
        :data:`RETIRE_AFTER`. The sends in flight on it keep it until the publish timeout."""
        if link is not self._link or self._clock() - self._opened_at < RETIRE_AFTER:
            return
        log.warning(
            "%s: the broker nacked a publish; the next sends go on a new connection", self.name
        )
        self._link = None
        self._set_blocked(None)
        self._settling = [
            *self._confirms.unconfirmed_on(link),
            *(call for on, call in self._calls if on is link and not call.done()),
        ]
        task = asyncio.ensure_future(self._close_later(link))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_later(self, link: BaseLink) -> None:
        try:
            # Every publish on it is confirmed, nacked or timed out (failing the link) by then.
            await asyncio.sleep(self._settings.publish_timeout)
        finally:
            await _close_quietly(link)

    async def _drop(self, link: BaseLink) -> None:
        if self._link is link:
            self._link = None
            self._set_blocked(None)  # a new connection starts unblocked
        await _close_quietly(link)

    async def close(self) -> None:
        self._confirms.cancel()
        link, self._link = self._link, None
        alarm, self._alarm = self._alarm, ""
        retiring = list(self._retiring)
        for task in retiring:
            task.cancel()  # closes its link now
        await asyncio.gather(*retiring, return_exceptions=True)
        if link is not None:
            await _close_quietly(link)
        if link is not None or alarm:
            self._set_blocked(None)


class _Blocked(LinkClosed):
    """The broker blocked the connection (an alarm) with sends in flight that fail over."""


def _forget(
    calls: set[tuple[BaseLink, asyncio.Future[Any]]], link: BaseLink, call: asyncio.Future[Any]
) -> None:
    calls.discard((link, call))


def _retrieved(future: asyncio.Future[Any]) -> None:
    # When one part fails the call, the others' errors are nobody's news.
    if not future.cancelled():
        future.exception()


async def _close_quietly(link: BaseLink) -> None:
    try:
        await asyncio.wait_for(link.close(), timeout=3)
    except (OSError, LinkClosed, TimeoutError, BrokerError):
        log.debug("closing a broken link failed", exc_info=True)
