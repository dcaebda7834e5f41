"""Group commit: messages handed over one at a time, written in batches, a few batches at once.

The workflow worker stores change events in batches (one transaction per batch), but a batch
consumer decodes, validates and stores strictly in turn: while a batch is in the database, the
next one waits undecoded. :class:`Batcher` lets a per-message handler feed a single writer
instead. Each handler call :meth:`~Batcher.submit`\\ s its message and waits for its outcome;
the writer takes everything submitted so far as one batch (at most ``max_size``), and while it
is in the database the consumer goes on decoding and submitting the next messages. The batch
size follows the load by itself: one message when idle, hundreds when the database is the
bottleneck.

Order is kept per key (an entity, for the workflow worker): submissions join the queue in the
order the handler calls were made (a consumer starts its handler calls in delivery order, and
:meth:`submit` queues before it first yields). Up to ``in_flight`` batches are written at once,
but no two of them share a key: an item whose key is in a batch being written waits for a
later batch, and so do the items of that key behind it, in their order. So the events of one
entity are stored in arrival order, as with one batch at a time, while a second batch is
already in the database (measured in ``bench/events.py``, see docs/performance.md).

A batch that fails in a way worth waiting out (``hold``: the database is down, say) is written
again, in place, backing off, and its keys stay taken until it is through: no later item of its
keys is written before it. Handing it to the broker's retry queues instead would let later
batches commit first, and its events would be stored after events published after them.
Meanwhile the later submissions of its keys wait (those of other keys go on in the other
batches), the consumer's prefetch window fills, and the broker stops delivering: the queue
holds the rest, in order. When every
caller of a held batch has given up (a worker stopping or losing its link: the broker gives
their deliveries back), the batch is not written again.

A worker handing its queue over to another (:mod:`.partitions`) first pauses its batcher: no
batch starts, the ones being written end, and only then does its connection close; what was
queued and not written goes back to the broker, and :meth:`~Batcher.resume` forgets it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

Write = Callable[[Sequence[T]], Awaitable[Sequence[BaseException | None]]]
Hold = Callable[[BaseException], bool]
Key = Callable[[T], Hashable]

FIRST_PAUSE = 0.1
MAX_PAUSE = 5.0


class _Callers:
    """The outcomes of one :meth:`Batcher.submit_all` call's items, and the one future its
    caller waits on, done when the last of them is settled (a future per item, gathered, cost
    a callback per item). Cancelled: the caller gave up, or the writers were torn down."""

    __slots__ = ("future", "outcomes", "pending")

    def __init__(self, future: asyncio.Future[None], count: int) -> None:
        self.future = future
        self.outcomes: list[BaseException | None] = [None] * count
        self.pending = count

    def settle(self, index: int, outcome: BaseException | None) -> None:
        self.outcomes[index] = outcome
        self.pending -= 1
        if not self.pending and not self.future.done():
            self.future.set_result(None)


@dataclass(slots=True)
class _Entry(Generic[T]):
    item: T
    key: Hashable
    callers: _Callers
    index: int  # in its call's items

    @property
    def gone(self) -> bool:
        """Whether its caller gave up (or the writers were torn down): an entry being written
        is not settled yet, so its call's future is done only then."""
        return self.callers.future.done()


def _one_key(_: object) -> None:
    return None


class Batcher(Generic[T]):
    """Feeds ``write`` batches of what :meth:`submit` was given: up to ``in_flight`` batches
    at once, no two of them with an item of the same ``key`` (without ``key``, every item has
    the same one: one batch at a time)."""

    def __init__(
        self,
        write: Write[T],
        *,
        max_size: int,
        hold: Hold | None = None,
        key: Key[T] | None = None,
        in_flight: int = 1,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self._write = write
        self._max_size = max_size
        self._hold = hold
        self._key: Key[T] = key or _one_key
        self._in_flight = in_flight
        self._queue: list[_Entry[T]] = []
        self._busy: set[Hashable] = set()  # the keys of the batches being written
        self._writers: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self._paused = False

    async def submit(self, item: T) -> None:
        """Queue ``item``; return once its batch is written, or raise its outcome."""
        (outcome,) = await self.submit_all((item,))
        if outcome is not None:
            raise outcome

    async def submit_all(self, items: Sequence[T]) -> list[BaseException | None]:
        """Queue ``items``, in their order, as :meth:`submit` would one by one; return once
        each is written or failed, with one outcome per item (``None``: written). One caller
        waiting for many items costs one wake-up, where a caller per item costs one each.
        Raises :class:`asyncio.CancelledError` when the writers were torn down (see _ended):
        never an outcome to settle a message with."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        callers = _Callers(loop.create_future(), len(items))
        key = self._key
        queue = self._queue
        for index, item in enumerate(items):  # before any await: keeps the callers' order
            queue.append(_Entry(item, key(item), callers, index))
        if not self._scheduled and len(self._writers) < self._in_flight:
            # One turn of the loop first, so that the calls made in this turn share a batch.
            self._scheduled = True
            loop.call_soon(self._start)
        await callers.future
        return callers.outcomes

    async def pause(self) -> None:
        """Start no batch until :meth:`resume`, and return once the batches being written
        (and written again, if held) have ended."""
        self._paused = True
        while self._writers:
            await asyncio.wait(set(self._writers))

    def resume(self) -> None:
        """Write again; items whose callers gave up meanwhile are dropped, not written."""
        self._paused = False
        self._queue = [entry for entry in self._queue if not entry.gone]
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        """Start writing as many batches as there are free places for (and items to take)."""
        self._scheduled = False
        while not self._paused and len(self._writers) < self._in_flight and self._queue:
            batch = self._take()
            if not batch:
                return  # every waiting item's key is being written: the next end starts it
            keys = {entry.key for entry in batch}
            self._busy |= keys
            writer = asyncio.create_task(self._write_one(batch))
            self._writers.add(writer)
            writer.add_done_callback(functools.partial(self._ended, keys))

    def _take(self) -> list[_Entry[T]]:
        """The next batch: the oldest waiting items whose keys no batch being written holds."""
        batch: list[_Entry[T]] = []
        left: list[_Entry[T]] = []
        for index, entry in enumerate(self._queue):
            if len(batch) == self._max_size:
                left.extend(self._queue[index:])
                break
            # Every later item of a busy key is skipped too, so each key keeps its order.
            (left if entry.key in self._busy else batch).append(entry)
        self._queue = left
        return batch

    def _ended(self, keys: set[Hashable], writer: asyncio.Task[None]) -> None:
        self._writers.discard(writer)
        self._busy -= keys
        if writer.cancelled():  # the writers are being torn down: fail what waits, never leave it
            for entry in self._queue:
                entry.callers.future.cancel()
            self._queue.clear()
            return
        self._start()

    async def _write_one(self, batch: list[_Entry[T]]) -> None:
        if all(entry.gone for entry in batch):
            return  # every caller gave up: their deliveries went back to the broker
        try:
            attempt = 0
            while True:
                outcomes = await self._attempt(batch)
                held = next((o for o in outcomes if o is not None and self._held(o)), None)
                if held is None or all(entry.gone for entry in batch):
                    break
                attempt += 1
                pause = min(FIRST_PAUSE * 2 ** min(attempt - 1, 16), MAX_PAUSE)
                log.warning(
                    "a batch of %d failed (attempt %d), written again in %.1fs before any "
                    "later one of its keys: %s",
                    len(batch),
                    attempt,
                    pause,
                    held,
                )
                await asyncio.sleep(pause)
        except asyncio.CancelledError:
            for entry in batch:
                entry.callers.future.cancel()
            raise
        for entry, outcome in zip(batch, outcomes, strict=True):
            # A caller that gave up (cancelled while draining) is never woken: its future is
            # done already.
            entry.callers.settle(entry.index, outcome)

    async def _attempt(self, batch: list[_Entry[T]]) -> Sequence[BaseException | None]:
        try:
            outcomes = await self._write([entry.item for entry in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError("the batch writer must return one outcome per item")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the writer failed as a whole: so did each of its items
            return [exc] * len(batch)
        return outcomes

    def _held(self, outcome: BaseException) -> bool:
        return self._hold is not None and self._hold(outcome)
