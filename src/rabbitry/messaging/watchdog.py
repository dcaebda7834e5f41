"""The confirm watchdog: one timer that bounds, by the publish timeout, the wait for the
confirm of every single publish a :class:`~rabbitry.messaging.sender.Sender` has in flight.

One timer per sender instead of one ``asyncio.timeout`` per publish (a timer, a task lookup and
a cancel path per message): the oldest unconfirmed publish decides, and when it is late its
link is given up (:class:`NoConfirm`), which fails every publish waiting on it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from rabbitry.amqp.base import BaseLink, LinkClosed, PublishOutcome


class NoConfirm(LinkClosed):
    """The broker did not confirm a publish within the publish timeout."""


class ConfirmWatchdog:
    """Watches publishes' confirms; gives up a link whose oldest one is ``timeout`` late."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._inflight: deque[tuple[float, asyncio.Future[PublishOutcome], BaseLink]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, link: BaseLink, future: asyncio.Future[PublishOutcome]) -> None:
        """Bound the wait for ``future``'s confirm by the publish timeout."""
        inflight = self._inflight
        while inflight and inflight[0][1].done():
            inflight.popleft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        inflight.append((deadline, future, link))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._check)

    def unconfirmed_on(self, link: BaseLink) -> list[asyncio.Future[PublishOutcome]]:
        """The watched publishes on ``link`` still waiting for their confirm."""
        return [future for _, future, on in self._inflight if on is link and not future.done()]

    def cancel(self) -> None:
        """Stop the timer (the sender is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        inflight = self._inflight
        while inflight and inflight[0][1].done():
            inflight.popleft()
        if not inflight:
            return
        deadline, _, link = inflight[0]
        loop = asyncio.get_running_loop()
        if deadline > loop.time():
            self._timer = loop.call_at(deadline, self._check)
            return
        inflight.popleft()
        link.abort(NoConfirm(f"no confirm within {self._timeout:g}s"))
        if inflight:
            self._timer = loop.call_at(inflight[0][0], self._check)
