"""ConnectedClient: one WebSocket in one room, with a bounded send queue of its own.

A room hands each frame to every client with :meth:`ConnectedClient.offer`, which never waits:
a client whose queue is full cannot keep up, so it is disconnected (close code 1013, "try again
later") instead of slowing its room down. Its own task, :meth:`ConnectedClient.pump`, writes
the queue to the socket.

While a reconnecting client catches up (``?since=``), live frames are held back and sent after
the missed ones, each message once: :meth:`hold`, then :meth:`catch_up`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from rabbitry.chat.protocol import ChatMessage, encode_frame

log = logging.getLogger(__name__)

SEND_QUEUE = 256
TOO_SLOW = 1013  # "Try Again Later": the server would not wait for this client


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
    ) -> None:
        self.member = member
        self.room = room
        self.token = token
        """The session token the socket was opened with (re-checked after a reconnect)."""
        self._send = send
        self._close = close
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self._held: list[ChatMessage] | None = None
        self.closed_reason: str | None = None
        """Why the server closed this client, once it did."""
        self._code = 1000
        self.finished = asyncio.Event()
        """Set once the pump has stopped: the close frame is sent, or the socket was gone."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.member.tenant, self.room)

    def offer(self, message: ChatMessage, frame: str) -> bool:
        """Queue ``frame`` (``message``, encoded) without waiting; False if the client is gone."""
        if self.closed_reason is not None:
            return False
        if self._held is not None:
            self._held.append(message)
            if len(self._held) <= self._queue.maxsize:
                return True
        else:
            try:
                self._queue.put_nowait(frame)
                return True
            except asyncio.QueueFull:
                pass
        self.disconnect(TOO_SLOW, "too slow: the send queue is full")
        return False

    def hold(self) -> None:
        """Hold live messages back until :meth:`catch_up`."""
        self._held = []

    def catch_up(self, missed: Sequence[ChatMessage]) -> int:
        """Queue ``missed`` in order, then the held live messages not among them; returns how
        many were queued."""
        held, self._held = self._held or [], None
        sent = set()
        queued = 0
        for message in [*missed, *held]:
            if message.id in sent:
                continue
            sent.add(message.id)
            if not self.offer(message, encode_frame(message.frame())):
                break
            queued += 1
        return queued

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
        while (frame := await self._queue.get()) is not None:
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
