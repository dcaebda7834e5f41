"""Marks: how a gateway knows the history has stored what was routed to it before now.

A room's sockets on a gateway miss what the broker routed while the room had no binding there
(the gateway's queue was lost, or the room had no client on it yet). The history has those
messages, or will: their copies may still wait in ``<ns>.chat.history`` (after a cluster
restart the persistence workers come back after the gateways), or in a worker's prefetch.

A *mark* (``chat.mark``, ``{"mark": "<id>"}``) goes through the history queue like a message;
the worker that takes it stores it (table ``chat_mark``, with the worker's id) in the same
transaction as the batch it came in. The queue hands out in order, and each worker stores what
it took in order, so once a worker has stored a mark, everything routed before the *first* mark
of the round that this worker took is stored. A round therefore publishes marks one after the
other (paced while they reach no new worker) until every worker consuming the queue (the
broker counts them) has stored one: then
everything routed before the round began is stored, whichever worker took it. (A worker whose
connection drops finishes what it took, see ``Subscription.idempotent``, so a message it held
does not come back behind the marks.)

Callers waiting at the same time share rounds: one in flight, and one queued behind it for
everyone who came after the one in flight began (a thousand sockets reconnecting with ``since``
cost a few rounds, not a thousand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from rabbitry.chat.history import ChatHistory
from rabbitry.chat.protocol import MARK_TYPE, MessageIds
from rabbitry.chat.topology import ChatLayout
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route

log = logging.getLogger(__name__)

# How long a round is waited for: after a cluster restart the persistence workers reconnect up
# to 10 s after the broker is back (their backoff), and then work through what queued up.
MARK_WAIT = 30.0
MOST_MARKS = 64  # a round's marks at most
POLL = 0.05  # polling the database: the workers give no signal
# Between two marks that found no new worker: the broker hands a mark to a worker with room in
# its prefetch, and a busy worker has none until it stores what it holds.
PAUSE = (0.05, 1.0)

Consumers = Callable[[], Awaitable[int]]
"""How many consumers the history queue has (the persistence workers), as the broker says."""


class Marks:
    """The mark rounds of one gateway: published with ``publisher``, looked up in ``history``;
    ``consumers`` tells how many workers a round must reach (without it, or when it fails,
    one)."""

    def __init__(
        self,
        history: ChatHistory,
        publisher: Publisher,
        layout: ChatLayout,
        ids: MessageIds,
        consumers: Consumers | None = None,
    ) -> None:
        self._history = history
        self._publisher = publisher
        self._route = Route(layout.persistence_exchange, "")
        self._ids = ids
        self._consumers = consumers
        self._flight: asyncio.Task[bool] | None = None
        self._queued: asyncio.Task[bool] | None = None

    async def passed(self, timeout: float = MARK_WAIT) -> bool:
        """Whether, within ``timeout`` seconds, every worker stored a mark of a round begun
        after this call (False also when the broker or the database did not answer)."""
        if self._queued is None:
            self._queued = asyncio.create_task(self._after(self._flight))
        task = self._queued
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return False

    async def _after(self, flight: asyncio.Task[bool] | None) -> bool:
        if flight is not None:
            with contextlib.suppress(Exception):
                await flight
        # From here on, this round is in flight: who calls now waits for the next one.
        self._flight, self._queued = self._queued, None
        try:
            return await self._round()
        except Exception as exc:  # (the database is away: what waits goes on without it)
            log.warning("a mark through the history queue failed: %s", exc)
            return False

    async def _round(self) -> bool:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + MARK_WAIT
        marks: list[str] = []
        pending: str | None = None
        workers: set[str] = set()
        pause = PAUSE[0]
        while loop.time() < deadline:
            if pending is None:
                if marks and len(workers) >= await self._workers():
                    took = loop.time() - start
                    # (Slow: the workers were away or behind, and sockets waited that long.)
                    level = logging.WARNING if took > 1.0 else logging.INFO
                    log.log(level, "the history passed %d mark(s) in %.2f s", len(marks), took)
                    return True
                if len(marks) == MOST_MARKS:
                    break
                pending = await self._publish()
                if pending is None:
                    await asyncio.sleep(0.5)  # the broker did not take it: again, soon
                    continue
                marks.append(pending)
            stored = await self._history.marks(marks)
            reached = set(stored.values())
            if pending not in stored:
                await asyncio.sleep(POLL)
                continue
            pending = None
            if reached <= workers and len(reached) < await self._workers():
                await asyncio.sleep(pause)
                pause = min(pause * 2, PAUSE[1])
            workers = reached
        log.warning(
            "the history did not pass this gateway's marks in %.0f s (%d worker(s) reached, "
            "%d mark(s)): "
            "messages routed before them and stored later reach open sockets late",
            loop.time() - start,
            len(workers),
            len(marks),
        )
        return False

    async def _publish(self) -> str | None:
        mark = self._ids.new()
        message = Message(type=MARK_TYPE, payload={"mark": mark}, id=mark)
        # Not through the outbox: a mark relayed later says nothing of the queue now.
        result = await self._publisher.publish(message, self._route, use_fallback=False)
        return mark if result.ok else None

    async def _workers(self) -> int:
        if self._consumers is None:
            return 1
        failure: Exception | None = None
        for _ in range(2):  # (a channel the broker closed while it was away is opened again)
            try:
                return max(1, await self._consumers())
            except Exception as exc:
                failure = exc
        # One worker's mark, then: what that worker took is stored, and the catch-up's last
        # look covers the others' batches in most cases.
        log.warning("could not count the history's workers: %s", failure)
        return 1
