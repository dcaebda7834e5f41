"""ConnectedClient: one WebSocket in one room, with a bounded send queue of its own.

A room hands each frame to every client with :meth:`ConnectedClient.offer`, which never waits:
a client whose queue is full cannot keep up, so it is disconnected (close code 1013, "try again
later") instead of slowing its room down. Its own task, :meth:`ConnectedClient.pump`, writes
the queue to the socket.

While a client catches up (``?since=``, or its gateway's queue came back after a loss), live
messages are held back and sent after the missed ones, each message once: :meth:`hold`, then
:meth:`replay`. The replay waits for room in the send queue (the pump's pace), so a gap of any
size goes through the bounded queue page by page instead of overflowing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from rabbitry.chat.protocol import ChatMessage, encode_frame, in_sender_order

log = logging.getLogger(__name__)

SEND_QUEUE = 256
LINES = 32  # messages a client that asked for lines may get in one frame, at most
HELD = 4096  # live messages a catching-up client may have waiting behind its replay
TOO_SLOW = 1013  # "Try Again Later": the server would not wait for this client
RECONNECT = 1012  # "Service Restart": reconnect (elsewhere), with ?since=


@dataclass(frozen=True, slots=True)
class Member:
    """Who is behind a socket: what sessions authenticated."""

    tenant: str
    user_id: str
    username: str
    session_id: str


Send = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


class ConnectedClient:
    """One socket of one :class:`Member` in one room."""

    def __init__(
        self,
        member: Member,
        room: str,
        send: Send,
        close: Close,
        *,
        token: str = "",
        queue_size: int = SEND_QUEUE,
        lines: bool = False,
    ) -> None:
        self.member = member
        self.room = room
        self.token = token
        """The session token the socket was opened with (re-checked after a reconnect)."""
        self._send = send
        self._close = close
        self.lines = lines
        """The client asked for several messages per frame, one JSON object a line, when
        more than one waits in its queue: one socket write for them all."""
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self._held: list[ChatMessage] | None = None
        self.closed_reason: str | None = None
        """Why the server closed this client, once it did."""
        self._code = 1000
        self.finished = asyncio.Event()
        """Set once the pump has stopped: the close frame is sent, or the socket was gone."""
        self.last_settled: asyncio.Future[None] | None = None
        """Done once this socket's last message sent was shown here (or failed): the next
        one waits for it, so a sender's own messages show in the order it sent them even when
        their confirms (or the outbox's writes) come back in another."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.member.tenant, self.room)

    def offer(self, message: ChatMessage, frame: str) -> bool:
        """Queue ``frame`` (``message``, encoded) without waiting; False if the client is gone."""
        if self.closed_reason is not None:
            return False
        if self._held is not None:
            self._held.append(message)
            if len(self._held) <= HELD:
                return True
        else:
            try:
                self._queue.put_nowait(frame)
                return True
            except asyncio.QueueFull:
                pass
        self.disconnect(TOO_SLOW, "too slow: the send queue is full")
        return False

    @property
    def holding(self) -> bool:
        """True while live messages are held back behind a replay."""
        return self._held is not None

    @property
    def first_held(self) -> str | None:
        """The id of the first live message held back, if any."""
        return self._held[0].id if self._held else None

    @property
    def seams(self) -> set[str]:
        """The ids of the first live message held back from each sender: a sender's messages
        routed before these went to the history ahead of them."""
        first: dict[str, str] = {}
        for message in self._held or ():
            first.setdefault(message.sender, message.id)
        return set(first.values())

    def hold(self) -> None:
        """Hold live messages back until :meth:`replay` has sent what was missed."""
        if self._held is None:
            self._held = []

    async def replay(
        self,
        pages: AsyncIterable[Sequence[ChatMessage]],
        tail: Iterable[ChatMessage] = (),
    ) -> int:
        """Queue every message of ``pages``, then of ``tail`` and the held live ones (each
        sender's in the order sent), each id once and waiting for room in the send queue;
        then live messages flow again.
        Returns how many were queued (fewer if the client went away meanwhile)."""
        sent: set[str] = set()
        queued = 0
        try:
            async with contextlib.aclosing(self._replayed(pages, tail)) as messages:
                async for message in messages:
                    if message.id in sent:
                        continue
                    if not await self._replay_one(message, sent):
                        return queued
                    queued += 1
            return queued
        finally:
            self._held = None

    async def _replayed(
        self, pages: AsyncIterable[Sequence[ChatMessage]], tail: Iterable[ChatMessage]
    ) -> AsyncGenerator[ChatMessage]:
        """What a replay sends, in its order: the pages, the tail, then the held live ones."""
        async for page in pages:
            for message in page:
                yield message
        # The tail with what is held by now, each sender's in the order sent: a catch-up's
        # missed messages are its tail, and when the queue was lost twice in a row, a message
        # the first new queue delivered (held) may be earlier than one the second loss took
        # (missed, from the history).
        held, self._held = self._held or [], []
        for message in in_sender_order([*tail, *held]):
            yield message
        # Held messages arrive while the replay drains them; the last check here and the
        # switch back to live delivery (replay's ``finally``) happen with no await between
        # them, so none slips by.
        while self._held:
            # Each sender's in the order sent: a gateway's own message that waited for its
            # copy back from the new queue is held after its sender's next one, which was
            # held at its confirm (the cluster restart fault case showed such pairs).
            held, self._held = in_sender_order(self._held), []
            for message in held:
                yield message

    async def _replay_one(self, message: ChatMessage, sent: set[str]) -> bool:
        if self.closed_reason is not None:
            return False
        sent.add(message.id)
        await self._queue.put(encode_frame(message.frame()))
        return self.closed_reason is None

    def _more(self, first: str) -> tuple[str, bool]:
        """``first`` and what else waits in the queue (up to :data:`LINES`), one a line (a
        JSON text has no raw newline); True if the close came up behind them."""
        frames = [first]
        queue = self._queue
        while not queue.empty() and len(frames) < LINES:
            frame = queue.get_nowait()
            if frame is None:
                return "\n".join(frames), True
            frames.append(frame)
        return "\n".join(frames), False

    def disconnect(self, code: int, reason: str) -> None:
        """Close the socket soon (from the pump task), with ``code`` and ``reason``."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._code = code
        # Drop what is queued: the close must not wait behind frames of a stuck client.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def send_now(self, frame: str) -> bool:
        """Queue a frame of the client's own (an error reply); False if the queue is full."""
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    async def pump(self) -> None:
        """Write queued frames to the socket until :meth:`disconnect` or a send fails."""
        try:
            await self._pump()
        finally:
            self.finished.set()

    async def _pump(self) -> None:
        queue = self._queue
        closing = False
        while not closing and (frame := await queue.get()) is not None:
            if self.lines and not queue.empty():
                frame, closing = self._more(frame)
            try:
                await self._send(frame)
            except Exception as exc:  # the socket went away: the reader sees it too
                log.debug("send to %s failed: %s", self.member.username, exc)
                self.closed_reason = self.closed_reason or "send failed"
                return
        try:
            await self._close(self._code, self.closed_reason or "")
        except Exception:
            log.debug("closing a socket that was already gone", exc_info=True)
