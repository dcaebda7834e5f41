"""Marks: how a gateway knows the history queue has passed what was routed before now.

A room's sockets on a gateway miss what the broker routed while the room had no binding there
(the gateway's queue was lost, or the room had no client on it yet). The history has those
messages, or will: their copies may still wait in ``<ns>.chat.history`` (after a cluster
restart the persistence workers come back after the gateways), or in a worker's batch. A
*mark* (``chat.mark``, ``{"mark": "<id>"}``) published through the history queue after the
binding says, once a worker has stored it (table ``chat_mark``, in its batch's transaction),
that every copy routed there before it has reached a worker: the queue is first in, first
out. What is left is in other workers' batches still committing (a catch-up looks again a
moment later for those).

Callers waiting at the same time share marks: one in flight, and one queued behind it for
everyone who came after the one in flight was published (a thousand sockets reconnecting
with ``since`` cost a few marks, not a thousand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rabbitry.chat.history import ChatHistory
from rabbitry.chat.protocol import MARK_TYPE, MessageIds
from rabbitry.chat.topology import ChatLayout
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route

log = logging.getLogger(__name__)

# How long a mark is waited for: after a cluster restart the persistence workers reconnect up
# to 10 s after the broker is back (their backoff), and then work through what queued up.
MARK_WAIT = 30.0
POLL = 0.05  # polling the database: the workers give no signal


class Marks:
    """The marks of one gateway: published with ``publisher``, looked up in ``history``."""

    def __init__(
        self, history: ChatHistory, publisher: Publisher, layout: ChatLayout, ids: MessageIds
    ) -> None:
        self._history = history
        self._publisher = publisher
        self._route = Route(layout.persistence_exchange, "")
        self._ids = ids
        self._flight: asyncio.Task[bool] | None = None
        self._queued: asyncio.Task[bool] | None = None

    async def passed(self, timeout: float = MARK_WAIT) -> bool:
        """Whether, within ``timeout`` seconds, a worker stored a mark published after this
        call began (False also when the broker or the database did not answer)."""
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
        # From here on, this mark is in flight: who calls now waits for the next one.
        self._flight, self._queued = self._queued, None
        try:
            return await self._one()
        except Exception as exc:  # (the database is away: what waits goes on without it)
            log.warning("a mark through the history queue failed: %s", exc)
            return False

    async def _one(self) -> bool:
        mark = self._ids.new()
        message = Message(type=MARK_TYPE, payload={"mark": mark}, id=mark)
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + MARK_WAIT
        published = False
        while loop.time() < deadline:
            if not published:
                # Not through the outbox: a mark relayed later says nothing of the queue now.
                result = await self._publisher.publish(message, self._route, use_fallback=False)
                published = result.ok
            if published and await self._history.marked(mark):
                took = loop.time() - start
                # (Slow: the workers were away or behind, and sockets waited that long.)
                level = logging.WARNING if took > 1.0 else logging.INFO
                log.log(level, "the history queue passed mark %s in %.2f s", mark, took)
                return True
            await asyncio.sleep(POLL if published else 0.5)
        log.warning(
            "the history queue did not pass a mark in %.0f s: messages routed before it and "
            "stored later reach open sockets late",
            MARK_WAIT,
        )
        return False
