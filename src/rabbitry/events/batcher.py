"""Group commit: messages handed over one at a time, written in batches, one batch at a time.

The workflow worker stores change events in batches (one transaction per batch), but a batch
consumer decodes, validates and stores strictly in turn: while a batch is in the database, the
next one waits undecoded. :class:`Batcher` lets a per-message handler feed a single writer
instead. Each handler call :meth:`~Batcher.submit`\\ s its message and waits for its outcome;
the writer takes everything submitted so far as one batch (at most ``max_size``), and while it
is in the database the consumer goes on decoding and submitting the next messages. The batch
size follows the load by itself: one message when idle, hundreds when the database is the
bottleneck.

Order is kept: submissions join the queue in the order the handler calls were made (a
consumer starts its handler calls in delivery order, and :meth:`submit` queues before it first
yields), and batches are written one after the other. So the events of one entity are stored
in arrival order, as with a batch consumer.

A batch that fails in a way worth waiting out (``hold``: the database is down, say) is written
again, in place, backing off, before any later batch: handing it to the broker's retry queues
instead would let the later batches commit first, and its events would be stored after
events published after them. Meanwhile the later submissions wait, the consumer's prefetch
window fills, and the broker stops delivering: the queue holds the rest, in order. When every
caller of a held batch has given up (a worker stopping or losing its link: the broker gives
their deliveries back), the batch is not written again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

Write = Callable[[Sequence[T]], Awaitable[Sequence[BaseException | None]]]
Hold = Callable[[BaseException], bool]

FIRST_PAUSE = 0.1
MAX_PAUSE = 5.0


class Batcher(Generic[T]):
    """Feeds ``write`` batches of what :meth:`submit` was given, one batch at a time."""

    def __init__(self, write: Write[T], *, max_size: int, hold: Hold | None = None) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._write = write
        self._max_size = max_size
        self._hold = hold
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        """Queue ``item``; return once its batch is written, or raise its outcome."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))  # before any await: keeps the callers' order
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            # One turn of the loop first, so that the calls made in this turn share a batch.
            await asyncio.sleep(0)
            while self._queue:
                batch = self._queue[: self._max_size]
                del self._queue[: self._max_size]
                await self._write_one(batch)
        finally:
            self._writer = None
            if self._queue:  # cancelled with work left: fail it, never leave it waiting
                for _, future in self._queue:
                    if not future.done():
                        future.cancel()
                self._queue.clear()

    async def _write_one(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        if all(future.done() for _, future in batch):
            return  # every caller gave up: their deliveries went back to the broker
        try:
            attempt = 0
            while True:
                outcomes = await self._attempt(batch)
                held = next((o for o in outcomes if o is not None and self._held(o)), None)
                if held is None or all(future.done() for _, future in batch):
                    break
                attempt += 1
                pause = min(FIRST_PAUSE * 2 ** min(attempt - 1, 16), MAX_PAUSE)
                log.warning(
                    "a batch of %d failed (attempt %d), written again in %.1fs before any "
                    "later one: %s",
                    len(batch),
                    attempt,
                    pause,
                    held,
                )
                await asyncio.sleep(pause)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # its caller gave up (cancelled while draining)
                continue
            if outcome is None:
                future.set_result(None)
            else:
                future.set_exception(outcome)

    async def _attempt(
        self, batch: list[tuple[T, asyncio.Future[None]]]
    ) -> Sequence[BaseException | None]:
        try:
            outcomes = await self._write([i for i, _ in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError("the batch writer must return one outcome per item")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the writer failed as a whole: so did each of its items
            return [exc] * len(batch)
        return outcomes

    def _held(self, outcome: BaseException) -> bool:
        return self._hold is not None and self._hold(outcome)
