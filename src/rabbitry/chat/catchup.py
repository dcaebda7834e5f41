"""CatchUp: what a gateway sends its open sockets once its queue came back after a loss.

While a gateway's connection is away, what the broker routes to it is lost with its exclusive
queue; the history has it (or will). When the new queue is bound, each room's sockets hold
their live messages back, and each room is caught up from the history, from the last message
the room delivered before the loss: what it missed goes to every open socket once, each
sender's messages in the order sent, then the held live ones (:meth:`CatchUp.room`).

The history may not have them yet. So the catch-up first waits until the history queue passed
a mark published after the rebind (:mod:`rabbitry.chat.marks`), then until the history holds
each sender's first held live message, and looks once more a moment later for what other
workers were still committing. For a minute afterwards it reads what the
history stores late (a history copy the broker nacked while its queue elected a leader goes
through the outbox) and sends it to the rooms that have not delivered it: late, not never.

:func:`stored_position` is also what a ``since=`` recovery anchors on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from rabbitry.chat.client import RECONNECT, ConnectedClient
from rabbitry.chat.history import REORDER, ChatHistory
from rabbitry.chat.manager import Manager
from rabbitry.chat.marks import Marks
from rabbitry.chat.protocol import ChatMessage, in_sender_order, is_stamped
from rabbitry.chat.room import VirtualRoom
from rabbitry.chat.topology import ChatLayout

log = logging.getLogger(__name__)

PAGE = 500  # history rows a catch-up reads at a time
CATCH_UP_ROOMS = 8  # rooms catching up at once after a reconnect (database connections)
SEAM_WAIT = 5.0  # how long a recovery (``since``) waits for the history to store ``since``
# How long a catch-up holds live messages back waiting for the history to reach them: after a
# node's crash the history queue elects a new leader and its workers reconnect (seconds).
CATCH_UP_WAIT = 15.0
STRAGGLERS = 1.0  # when a catch-up looks again for messages the workers stored late
LATE_WATCH = 60.0  # how long after a catch-up the history is read for late messages
LATE_POLL = 1.0

Seen = tuple[int | None, str | None]  # where what a room delivered starts: position, id


@dataclass(frozen=True, slots=True)
class Anchor:
    """Where a room's catch-up started: its last delivery before the loss, and its place in
    the store (None: not stored)."""

    room: VirtualRoom
    since: str
    position: int | None


@dataclass(frozen=True, slots=True)
class Held:
    """A room whose sockets wait for their catch-up after the queue came back."""

    room: VirtualRoom
    clients: list[ConnectedClient]
    since: str
    """The room's last delivery before the loss."""
    delivered: frozenset[str]
    """What the room delivered up to ``since`` (its recent messages)."""


class CatchUp:
    """The catch-ups of one gateway: ``history`` read once it passed a round of ``marks``,
    rooms found in ``manager``; ``bound`` tells which of the gateway's queues (its inbox's
    generation) has its rooms bound now, None while it has none."""

    def __init__(
        self,
        history: ChatHistory,
        marks: Marks,
        layout: ChatLayout,
        manager: Manager,
        bound: Callable[[], int | None],
    ) -> None:
        self.history = history
        self.layout = layout
        self.manager = manager
        self._marks = marks
        self._bound = bound
        self._marked: int | None = None  # the queue a round of marks last passed after
        self._watches: set[asyncio.Task[None]] = set()
        self.caught_up = 0
        """Messages sent to open sockets by catch-ups."""

    async def rooms(self, rooms: Sequence[Held]) -> None:
        """Catch up every held room, :data:`CATCH_UP_ROOMS` at a time, once the history queue
        passed this gateway's mark; then watch for late messages."""
        limit = asyncio.Semaphore(CATCH_UP_ROOMS)
        anchors: dict[str, Anchor] = {}
        start = max(0, await self.history.top() - REORDER)
        if any(held.clients for held in rooms):
            await self._queue_settled()

        async def one(held: Held) -> None:
            async with limit:
                try:
                    await self.room(held, anchors)
                except Exception:
                    # The client is told: it reconnects with ?since= and recovers that way.
                    log.exception("catching up room %s failed", held.room.key)
                    for client in held.clients:
                        client.disconnect(RECONNECT, "resync: reconnect with since")

        await asyncio.gather(*(one(held) for held in rooms if held.clients))
        if anchors:
            watch = asyncio.create_task(self._watch_late(anchors, start))
            self._watches.add(watch)
            watch.add_done_callback(self._watches.discard)

    async def room(self, held: Held, anchors: dict[str, Anchor] | None = None) -> int:
        """Send the held clients what the history has after the room's last delivery before
        the loss and the room has not delivered, each sender's in the order sent; then their
        held live messages. Returns how many messages were missed."""
        room, clients, since = held.room, held.clients, held.since
        # The store's order is not quite the delivery order (competing workers), and its
        # window before ``since`` holds what the room delivered: skip what it delivered.
        delivered = set(held.delivered)
        position = await stored_position(self.history, room.tenant, room.room, since)
        # What the room delivered before its last 200 is behind it: the window below
        # ``since`` reaches no further back than those 200.
        seen_from = await self.history.lowest(room.tenant, room.room, list(delivered))
        seen: Seen = (seen_from, min(delivered, default=None))
        if anchors is not None:
            anchors[room.key] = Anchor(room, since, position)
        await self._seam(room, since, position, seen, clients)
        # Competing persistence workers may still be committing a batch with a missed message
        # stored after the seam's: look once more, a moment later, before the held live
        # messages go (sent after them, a missed message would be out of its sender's order).
        await asyncio.sleep(STRAGGLERS)
        # The queue may have been lost again meanwhile (a cluster stops its nodes one by one):
        # what the broker routed until the next one was bound reached only the history.
        await self._queue_settled()
        missed = [
            m
            for m in await self._all_since(room, since, position, seen)
            # (held live messages, delivered by the room, follow in the order they came)
            if m.id not in delivered and room.remember(m.id)
        ]
        # The store's order, each sender's messages in the order they were sent.
        missed = in_sender_order(missed)
        if missed and room.last_id == since:  # (a live delivery meanwhile moved it on)
            room.last_id = missed[-1].id
        await asyncio.gather(*(client.replay(_none(), missed) for client in clients))
        self.caught_up += len(missed) * len(clients)
        if missed:
            log.warning(
                "room %s: %d message(s) routed while the queue was away (after %s), sent to %d "
                "socket(s)",
                room.key,
                len(missed),
                since,
                len(clients),
            )
        return len(missed)

    async def _queue_settled(self) -> None:
        """Wait (at most :data:`CATCH_UP_WAIT`) until the gateway has a queue with its rooms
        bound, and a round of marks passed after it was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_WAIT
        while loop.time() < deadline:
            bound = self._bound()
            if bound is None:
                await asyncio.sleep(0.1)  # (away: the inbox binds the rooms once it is back)
            elif bound == self._marked:
                return
            else:
                await self._marks.passed()  # (rooms catching up at once share a round)
                self._marked = bound

    async def _seam(
        self,
        room: VirtualRoom,
        since: str,
        position: int | None,
        seen: Seen,
        clients: Sequence[ConnectedClient],
    ) -> None:
        # Whatever was routed before the new queue's binding went to the history too, each
        # sender's ahead of its first live message held after the binding (one publisher's
        # messages reach the history queue in order). Wait (bounded) until the history has
        # every sender's, so what the workers were still storing is not skipped: the first
        # held message alone may be a sender's whose history copies are quick, while another
        # sender's lag (its own messages shown here at once, without the broker).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_WAIT
        while True:
            missed = await self._all_since(room, since, position, seen)
            seams = set().union(*(c.seams for c in clients))
            if seams <= {m.id for m in missed}:
                return
            if loop.time() > deadline:
                log.warning("room %s: the history is behind; late messages follow", room.key)
                return
            await asyncio.sleep(0.05)  # polling the database: the workers give no signal

    async def _all_since(
        self, room: VirtualRoom, since: str, position: int | None, seen: Seen
    ) -> list[ChatMessage]:
        found: list[ChatMessage] = []
        seen_from, oldest = seen
        async for page in self.history.since(
            room.tenant, room.room, since, position, page=PAGE, seen_from=seen_from, oldest=oldest
        ):
            found.extend(page)
        return found

    async def _watch_late(self, anchors: dict[str, Anchor], cursor: int) -> None:
        """For :data:`LATE_WATCH` seconds after a catch-up, deliver what the history stores
        late to the rooms that were caught up and have not delivered it: a message whose
        history copy went through the outbox (its queue's leader was lost, the broker
        nacked it) while its live copy was routed before this instance's queue was bound
        reaches its sockets that way, late rather than never."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LATE_WATCH
        try:
            while loop.time() < deadline:
                await asyncio.sleep(LATE_POLL)
                late: list[str] = []
                while True:
                    cursor, found = await self.history.stored_after(cursor, page=PAGE)
                    for position, message in found:
                        key = self.layout.room_key(message.tenant, message.room)
                        anchor = anchors.get(key)
                        if anchor is None or self.manager.rooms.get(key) is not anchor.room:
                            continue
                        after = anchor.position is None or position > anchor.position
                        if (
                            after
                            and message.id != anchor.since
                            and not anchor.room.seen(message.id)
                        ):
                            anchor.room.deliver(message)
                            late.append(message.id)
                    if len(found) < PAGE:
                        break
                if late:  # (as they come: an operator sees when, not a minute later)
                    log.warning(
                        "%d message(s) stored late in the history, sent after their catch-up: %s%s",
                        len(late),
                        ", ".join(late[:5]),
                        ", …" if len(late) > 5 else "",
                    )
        except Exception:  # the database is away: clients still recover with ?since=
            log.exception("watching the history for late messages failed")

    async def close(self) -> None:
        """Stop watching for late messages."""
        for watch in list(self._watches):
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch


async def _none() -> AsyncIterator[list[ChatMessage]]:
    nothing: list[list[ChatMessage]] = []  # (a catch-up's missed messages are the tail)
    for page in nothing:
        yield page


async def stored_position(history: ChatHistory, tenant: str, room: str, since: str) -> int | None:
    """``since``'s place in the store, waiting (at most :data:`SEAM_WAIT`) for the workers to
    store it: recovery is anchored there. None if it does not come, or if ``since`` is no
    message's id (a room's start): recovery then goes by ids."""
    if not is_stamped(since):
        return None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SEAM_WAIT
    while (position := await history.position(tenant, room, since)) is None:
        if loop.time() > deadline:
            log.warning(
                "recovery in %s.%s: %s is not stored yet; going by ids", tenant, room, since
            )
            return None
        await asyncio.sleep(0.05)  # polling the database: the workers give no signal
    return position
