"""The write side of the wire client's connection: every frame queued in one loop turn goes
out in one ``transport.write``, and frames are held while the transport is paused.

:class:`~rabbitry.amqp.protocol.AmqpProtocol` is a :class:`FrameWriter`; it owns the
transport (set in ``connection_made``, dropped in ``connection_lost``) and the heartbeats,
which read :attr:`FrameWriter._sent` to tell whether the connection was idle.
"""

from __future__ import annotations

import asyncio


class FrameWriter(asyncio.Protocol):
    """Coalesced, back-pressured writes of whole frames on one transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._sent = False  # something was written since the heartbeat last looked

    # --- asyncio.Protocol --------------------------------------------------------------

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None
        self._flush()

    # --- writing -----------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        self._out.append(frame)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Write what is queued at the end of this loop turn, together with what follows."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self._transport
        if self._paused or transport is None or transport.is_closing():
            return  # resume_writing flushes
        tail = self._flush_tail()
        if tail is not None:
            self._out.append(tail)
        if self._out:
            transport.write(b"".join(self._out))
            self._out.clear()
            self._sent = True

    async def _drain(self) -> None:
        if self._paused:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)

    def _flush_tail(self) -> bytes | None:
        """Hook: a frame that must follow everything else queued this turn."""
        return None
