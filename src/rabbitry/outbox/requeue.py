"""Re-publish pending outbox messages (``rabbitry requeue``), streaming.

A run takes the rows matching its filter that exist when it starts, oldest first, one batch at
a time: lease the batch (:meth:`~rabbitry.outbox.store.Outbox.claim`), re-check the lease right
before publishing (a batch claimed more than half a lease ago is renewed in the database first,
:meth:`~rabbitry.outbox.store.Outbox.renew`: a row another run took over while this one was
paused is not published again), publish with confirms and *no* fallback, then mark each row
processed only if the broker confirmed it, or pending again with ``attempts + 1`` and
``last_error``. A failed row never stops the others. Leasing, publishing and marking overlap
(three batches at most in memory, whatever the number of rows); the progress callback sees each
batch's outcomes
once they are recorded.

What is not the rows' fault is not held against them:

* rows of an exchange that does not exist (or was deleted during the run) fail alone, and are
  published in a publish of their own, so that the channel the broker closes over them takes
  no other exchange's rows with it (:mod:`rabbitry.outbox.exchanges`);
* when a whole batch fails, the run asks whether the broker is reachable before recording
  anything. If it is not, the batch is given back untouched and the run waits for the broker
  (``broker_wait``), then tries the batch again; if the broker stays away it stops, leaving the
  rest untouched, and its report says so;
* rows that failed while the broker answers, for a reason waiting cures (nacked, blocked by an
  alarm, not confirmed in time: :attr:`~rabbitry.outbox.filters.Failure.UNAVAILABLE`), are
  tried once more at once (the publisher may just have replaced its connection), then again
  after growing pauses, from the same ``broker_wait`` budget, each pause logged (on stderr for
  the command). A quorum queue whose leader was lost nacks publishes until another node leads
  it, a few seconds; a run waits that out and sends everything, rather than record the rest as
  failed. What still fails when the budget is spent is recorded;
* rows leased by another run are skipped and counted (``skipped``).

A run stops early when ``stopping`` is set (``rabbitry requeue`` sets it on SIGTERM/SIGINT):
the batch being published is finished and marked, the batches leased ahead are given back
(:meth:`~rabbitry.outbox.store.Outbox.release`), and the report says why it stopped.

The re-published message is the stored one: same message id, body bytes and headers, so a
consumer can drop a copy it already handled. Delivery is at-least-once: a run killed (SIGKILL)
between the broker's confirm and the database update leaves the batch in flight pending,
leased until its lease ends; that batch, at most, is sent again.

An operator's requeue (the back-office, :func:`requeue_messages`) is the same run, for
everything pending that matches a filter or for selected rows (a selected row that was
processed already is made pending again first: an explicit re-send); rows it got confirmed get
``requeued_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rabbitry.errors import Invalid, StorageError
from rabbitry.messaging.publisher import Publisher
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.leases import Cursor
from rabbitry.outbox.message import OutboxMessage
from rabbitry.outbox.report import Progress, curable, tally, wholly_failed
from rabbitry.outbox.report import RequeueReport as RequeueReport
from rabbitry.outbox.report import RowOutcome as RowOutcome
from rabbitry.outbox.republish import publish_rows
from rabbitry.outbox.store import Outbox

# The `X as X` imports re-export what callers (tests, the bench) import from here, though it
# lives in the modules this one was split into.

log = logging.getLogger(__name__)

MAX_SELECTED = 10_000
TAKEN_OVER = "taken over by another run after this run's lease ended"
# A batch older than this share of its lease is re-checked in the database before publishing.
RENEW_AFTER = 0.5
STOP_ASKED = "asked to stop"
# The pauses before rows that failed while the broker answers are tried again: doubling.
FIRST_PAUSE = 0.5
MAX_PAUSE = 5.0


@dataclass(frozen=True, slots=True)
class RequeueOptions:
    """How a run proceeds. The relay respects back-off, stops at a wholly failed batch and
    never waits for the broker (its next pass probes again); a user's run tries everything."""

    batch_size: int = 500
    # Longer than a batch can take (publish timeout + connect timeout), so no other run
    # takes a row this one is still publishing.
    lease: dt.timedelta = dt.timedelta(seconds=120)
    respect_backoff: bool = False
    stop_on_failed_batch: bool = False
    # How long a run waits, in all, for a broker that went away (before it stops and leaves
    # the remaining rows untouched) or that nacks (before it records those rows failed).
    broker_wait: float = 30.0


async def requeue(
    outbox: Outbox,
    publisher: Publisher,
    where: RequeueFilter,
    *,
    options: RequeueOptions = RequeueOptions(),
    progress: Progress | None = None,
    stopping: asyncio.Event | None = None,
    exchanges: ExchangeCheck | None = None,
) -> RequeueReport:
    """Re-publish the pending rows matching ``where``; see the module docstring.

    With ``exchanges``, rows whose exchange no longer exists fail on their own, and a wholly
    failed batch is told apart from a broker that is down. ``publisher`` should have no
    circuit breaker (``circuit_open_seconds=0``, as :func:`without_circuit` gives): a run
    decides itself when the broker is down, and a circuit would fail rows without trying them.

    Raises :class:`StorageError` if the database fails (rows leased so far are released when
    possible, else their lease expires).
    """
    cursor = await outbox.start(where)
    if cursor is None:
        return RequeueReport()
    run = _Run(outbox, publisher, where, options, progress, stopping, exchanges)
    return await run.go(cursor)


@dataclass(frozen=True, slots=True)
class _Leased:
    """A batch as claimed, and when (both clocks: the monotonic one stops while the machine
    sleeps, the wall clock can jump)."""

    rows: list[OutboxMessage]
    monotonic: float
    wall: float

    def age(self) -> float:
        return max(time.monotonic() - self.monotonic, time.time() - self.wall)


Batch = _Leased | BaseException | None


class _Run:
    """One run, pipelined: while batch k is being published, batch k+1 is being leased and
    batch k-1 marked, so the database and the broker work at the same time. At most three
    batches are in memory; every leased row is either settled or released at the end."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        where: RequeueFilter,
        options: RequeueOptions,
        progress: Progress | None,
        stopping: asyncio.Event | None,
        exchanges: ExchangeCheck | None,
    ) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.where = where
        self.options = options
        self.progress = progress
        self.stopping = stopping or asyncio.Event()
        self.exchanges = exchanges
        self.token = str(uuid.uuid4())
        self.report = RequeueReport()
        self.waited = 0.0
        # (created_at, id) of the last row of the last batch whose outcome is recorded.
        self.recorded_upto: tuple[dt.datetime, int] | None = None

    async def go(self, cursor: Cursor) -> RequeueReport:
        batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        claimer = asyncio.create_task(self._claim_ahead(cursor, batches))
        settling: asyncio.Task[None] | None = None
        try:
            while (leased := await batches.get()) is not None:
                if isinstance(leased, BaseException):
                    raise leased
                batch = leased.rows
                outcomes = await self._publish_batch(leased)
                if outcomes is None:  # the broker is gone: the batch stays untouched
                    break
                if settling is not None:
                    await settling
                settling = asyncio.create_task(self._settle(outcomes))
                self.recorded_upto = (batch[-1].created_at, batch[-1].id)
                if self.report.stopped is not None:  # the broker went away after a part of it
                    break
                if self.options.stop_on_failed_batch and wholly_failed(outcomes):
                    self.report.stopped = "a whole batch failed"
                    break
                if self.stopping.is_set():
                    self.report.stopped = STOP_ASKED
                    break
            if settling is not None:
                await settling
        finally:
            claimer.cancel()
            await asyncio.gather(claimer, return_exceptions=True)
            if settling is not None and not settling.done():
                # Published rows: record them, or a later run publishes them again.
                await asyncio.gather(settling, return_exceptions=True)
            with contextlib.suppress(StorageError):
                await self.outbox.release(self.token)
        with contextlib.suppress(StorageError):
            await self._count_the_rest(cursor.max_id)
        return self.report

    async def _count_the_rest(self, max_id: int) -> None:
        """Rows another run holds (skipped), and, if this run stopped early, the rows it left
        untouched: those after the last batch it recorded, not held by another run."""
        self.report.skipped = await self.outbox.held_elsewhere(self.where, max_id, self.token)
        if self.report.stopped is not None:
            self.report.left = await self.outbox.untouched(self.where, max_id, self.recorded_upto)

    async def _claim_ahead(self, cursor: Cursor, batches: asyncio.Queue[Batch]) -> None:
        try:
            while not self.stopping.is_set():
                # Before the claim: its lease ends at the latest a lease after this moment,
                # however long the claim then takes to come back (or the process is paused).
                started = (time.monotonic(), time.time())
                claim = asyncio.ensure_future(
                    self.outbox.claim(
                        self.where,
                        cursor,
                        token=self.token,
                        limit=self.options.batch_size,
                        lease=self.options.lease,
                        respect_backoff=self.options.respect_backoff,
                    )
                )
                try:
                    # Shielded: a claim cancelled halfway could commit its lease after the run
                    # released the rest; let it finish, so the release at the end covers it.
                    rows = await asyncio.shield(claim)
                except asyncio.CancelledError:
                    await asyncio.gather(claim, return_exceptions=True)
                    raise
                if not rows:
                    break
                cursor = Cursor(cursor.max_id, rows[-1].created_at, rows[-1].id)
                await batches.put(_Leased(rows, *started))
        except Exception as exc:  # handed to the publishing loop, which raises it
            await batches.put(exc)
            return
        await batches.put(None)

    async def _publish_batch(self, leased: _Leased) -> list[RowOutcome] | None:
        """Publish the rows of ``leased`` this run still holds, trying those that fail for a
        reason waiting cures again (see the module docstring); ``None`` when the broker is
        unreachable and the run stops with none of them published (the batch untouched)."""
        done: dict[int, RowOutcome] = {}
        todo = leased.rows
        pause = FIRST_PAUSE
        retried = False
        while True:
            todo = await self._still_ours(todo, leased)
            if not todo:
                break
            outcomes = await publish_rows(self.publisher, todo, self.exchanges)
            done.update((o.row.id, o) for o in outcomes)
            todo = [o.row for o in outcomes if curable(o)]
            if not todo or self.exchanges is None:
                break
            if wholly_failed(outcomes) and not await self.exchanges.reachable():
                if await self._wait_for_broker():
                    continue
                self.report.stopped = (
                    STOP_ASKED
                    if self.stopping.is_set()
                    else f"the broker is unreachable ({outcomes[0].error}); "
                    f"waited {self.waited:g}s for it"
                )
                if not any(o.published for o in done.values()):
                    return None
                break  # record what this batch got published, and the rest as failed
            if not retried:
                # The broker answers: the failure was the messages', or a connection that has
                # just been replaced. One more try at once tells.
                retried = True
                continue
            if not await self._wait_out(todo, outcomes, pause):
                break
            pause = min(pause * 2, MAX_PAUSE)
        return [done[row.id] for row in leased.rows if row.id in done]

    async def _wait_out(
        self, todo: Sequence[OutboxMessage], outcomes: Sequence[RowOutcome], pause: float
    ) -> bool:
        """Pause before ``todo`` (rows that failed while the broker answers) are tried again;
        False when the ``broker_wait`` budget is spent or the run is asked to stop."""
        pause = min(pause, self.options.broker_wait - self.waited)
        if pause <= 0 or self.stopping.is_set():
            return False
        reason = next(o.error for o in outcomes if o.error is not None and curable(o))
        log.warning(
            "requeue: %d row(s) failed (%s); again in %gs (waited %gs of %gs)",
            len(todo),
            reason,
            pause,
            self.waited,
            self.options.broker_wait,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=pause)
        self.waited += pause
        return not self.stopping.is_set()

    async def _still_ours(self, batch: list[OutboxMessage], leased: _Leased) -> list[OutboxMessage]:
        """The rows of ``batch`` this run may publish: all of them while its lease is young;
        else only those the database says are still leased to it (renewed)."""
        if leased.age() < self.options.lease.total_seconds() * RENEW_AFTER:
            # Renewing costs a write of every row on the critical path (a third of the run's
            # throughput, measured); a lease this young cannot have been taken over, with
            # clocks that differ by less than the remaining half of the lease.
            return batch
        held = await self.outbox.renew(self.token, [r.id for r in batch], self.options.lease)
        if len(held) < len(batch):
            log.warning("requeue: %d row(s) %s", len(batch) - len(held), TAKEN_OVER)
        return [r for r in batch if r.id in held]

    async def _wait_for_broker(self) -> bool:
        """Wait (in all, at most ``broker_wait`` seconds per run) until the broker takes a
        connection again; False when it did not, or the run was asked to stop."""
        delay = 0.5
        assert self.exchanges is not None
        while self.waited < self.options.broker_wait and not self.stopping.is_set():
            pause = min(delay, self.options.broker_wait - self.waited)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=pause)
            self.waited += pause
            delay = min(delay * 2, 5.0)
            if not self.stopping.is_set() and await self.exchanges.reachable():
                log.info("requeue: the broker is back after %gs", self.waited)
                return True
        return False

    async def _settle(self, outcomes: Sequence[RowOutcome]) -> None:
        await self.outbox.settle(
            self.token,
            published=[o.row.id for o in outcomes if o.error is None],
            failed=[(o.row.id, o.row.attempts, o.error, o.failure) for o in outcomes if o.error],
        )
        failed = tally(self.report, outcomes)
        if failed:
            log.warning("requeue: %d of %d row(s) failed in this batch", failed, len(outcomes))
        if self.progress is not None:
            self.progress(outcomes)


def without_circuit(amqp: AmqpSettings) -> AmqpSettings:
    """The settings of a run's publisher: no circuit breaker (see :func:`requeue`)."""
    return replace(amqp, circuit_open_seconds=0.0)


async def requeue_messages(
    outbox: Outbox,
    publisher: Publisher,
    where: RequeueFilter,
    *,
    exchanges: ExchangeCheck | None = None,
    progress: Progress | None = None,
    options: RequeueOptions = RequeueOptions(),
) -> RequeueReport:
    """Requeue what ``where`` selects, as ``rabbitry requeue`` does (:func:`requeue`).

    With ``where.ids`` (selected rows, at most :data:`MAX_SELECTED`), processed rows among
    them are made pending again first; deleted rows are never sent. Rows the broker confirmed
    get ``requeued_at``.
    """
    if where.ids is not None:
        if len(where.ids) > MAX_SELECTED:
            raise Invalid(f"select at most {MAX_SELECTED} rows")
        await outbox.reopen(sorted(where.ids))
    stamping: list[asyncio.Task[None]] = []

    def recorded(outcomes: Sequence[RowOutcome]) -> None:
        published = [o.row.id for o in outcomes if o.published]
        if published:
            stamping.append(asyncio.create_task(outbox.mark_requeued(published)))
        if progress is not None:
            progress(outcomes)

    try:
        return await requeue(
            outbox, publisher, where, options=options, progress=recorded, exchanges=exchanges
        )
    finally:
        await asyncio.gather(*stamping)


def selected(ids: Sequence[int]) -> RequeueFilter:
    """The filter of "requeue these rows"."""
    if not ids:
        raise Invalid("no row selected")
    return RequeueFilter(ids=frozenset(ids))
