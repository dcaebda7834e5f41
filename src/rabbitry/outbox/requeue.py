"""Re-publish pending ledger rows (``rabbitry requeue``), streaming.

A run takes the rows matching its filter that exist when it starts, oldest first, one batch at
a time: lease the batch (:meth:`Ledger.claim`), publish it with confirms and *no* fallback,
then mark each row processed only if the broker confirmed it, or pending again with
``attempts + 1`` and ``last_error``. A failed row never stops the others. Leasing, publishing
and marking overlap (three batches at most in memory, whatever the number of rows); the
progress callback sees each batch's outcomes once they are recorded.

The re-published message is the stored one: same message id, body bytes and headers, so a
consumer can drop a copy it already handled. Delivery is at-least-once: a run killed between
the broker's confirm and the database update leaves rows pending that were delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rabbitry.errors import MessageError, StorageError
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.ledger import Cursor, Ledger, PendingRow

log = logging.getLogger(__name__)

MAX_DISTINCT_ERRORS = 20


@dataclass(frozen=True, slots=True)
class RequeueOptions:
    """How a run proceeds. The relay respects back-off and stops at a wholly failed batch (the
    broker is most likely still down); a user's run tries everything."""

    batch_size: int = 500
    # Longer than a batch can take (publish timeout + connect timeout), so no other run
    # takes a row this one is still publishing.
    lease: dt.timedelta = dt.timedelta(seconds=120)
    respect_backoff: bool = False
    stop_on_failed_batch: bool = False


@dataclass(frozen=True, slots=True)
class RowOutcome:
    row: PendingRow
    error: str | None = None

    @property
    def published(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class RequeueReport:
    published: int = 0
    failed: int = 0
    stopped_early: bool = False
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        text = f"{self.published} published, {self.failed} failed"
        if self.stopped_early:
            text += " (stopped early: a whole batch failed)"
        return text


Progress = Callable[[Sequence[RowOutcome]], None]


async def requeue(
    ledger: Ledger,
    publisher: Publisher,
    where: RequeueFilter,
    *,
    options: RequeueOptions = RequeueOptions(),
    progress: Progress | None = None,
    stopping: asyncio.Event | None = None,
    exchanges: ExchangeCheck | None = None,
) -> RequeueReport:
    """Re-publish the pending rows matching ``where``; see the module docstring.

    With ``exchanges``, rows whose exchange no longer exists fail on their own instead of
    taking their batch down with them (see :mod:`rabbitry.outbox.exchanges`).

    Raises :class:`StorageError` if the database fails (rows leased so far are released when
    possible, else their lease expires).
    """
    cursor = await ledger.start(where)
    if cursor is None:
        return RequeueReport()
    run = _Run(ledger, publisher, where, options, progress, stopping, exchanges)
    return await run.go(cursor)


Batch = list[PendingRow] | BaseException | None


class _Run:
    """One run, pipelined: while batch k is being published, batch k+1 is being leased and
    batch k-1 marked, so the database and the broker work at the same time. At most three
    batches are in memory; every leased row is either settled or released at the end."""

    def __init__(
        self,
        ledger: Ledger,
        publisher: Publisher,
        where: RequeueFilter,
        options: RequeueOptions,
        progress: Progress | None,
        stopping: asyncio.Event | None,
        exchanges: ExchangeCheck | None,
    ) -> None:
        self.ledger = ledger
        self.publisher = publisher
        self.where = where
        self.options = options
        self.progress = progress
        self.stopping = stopping
        self.exchanges = exchanges
        self.token = str(uuid.uuid4())
        self.leased: set[int] = set()
        self.report = RequeueReport()

    async def go(self, cursor: Cursor) -> RequeueReport:
        batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        claimer = asyncio.create_task(self._claim_ahead(cursor, batches))
        settling: asyncio.Task[None] | None = None
        try:
            while (batch := await batches.get()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                outcomes = await _publish(self.publisher, batch, self.exchanges)
                if settling is not None:
                    await settling
                settling = asyncio.create_task(self._settle(outcomes))
                if self.options.stop_on_failed_batch and all(o.error for o in outcomes):
                    self.report.stopped_early = True
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
                await self.ledger.release(self.token, sorted(self.leased))
        return self.report

    async def _claim_ahead(self, cursor: Cursor, batches: asyncio.Queue[Batch]) -> None:
        try:
            while self.stopping is None or not self.stopping.is_set():
                rows = await self.ledger.claim(
                    self.where,
                    cursor,
                    token=self.token,
                    limit=self.options.batch_size,
                    lease=self.options.lease,
                    respect_backoff=self.options.respect_backoff,
                )
                if not rows:
                    break
                self.leased.update(row.id for row in rows)
                cursor = Cursor(cursor.max_id, rows[-1].created_at, rows[-1].id)
                await batches.put(rows)
        except Exception as exc:  # handed to the publishing loop, which raises it
            await batches.put(exc)
            return
        await batches.put(None)

    async def _settle(self, outcomes: Sequence[RowOutcome]) -> None:
        await self.ledger.settle(
            self.token,
            published=[o.row.id for o in outcomes if o.error is None],
            failed=[(o.row.id, o.row.attempts, o.error) for o in outcomes if o.error],
        )
        self.leased.difference_update(o.row.id for o in outcomes)
        _count(self.report, outcomes)
        if self.progress is not None:
            self.progress(outcomes)


async def _publish(
    publisher: Publisher, rows: Sequence[PendingRow], exchanges: ExchangeCheck | None
) -> list[RowOutcome]:
    outcomes: dict[int, RowOutcome] = {}
    items: list[tuple[Message, Route]] = []
    sent: list[PendingRow] = []
    missing = await exchanges.missing({r.exchange for r in rows}) if exchanges else set()
    for row in rows:
        if row.exchange in missing:
            outcomes[row.id] = RowOutcome(row, f"exchange {row.exchange!r} does not exist")
            continue
        try:
            items.append((row.message(), row.route()))
        except MessageError as exc:
            outcomes[row.id] = RowOutcome(row, f"cannot rebuild the stored message: {exc}")
            continue
        sent.append(row)
    results = await publisher.publish_many(items, use_fallback=False)
    for row, result in zip(sent, results, strict=True):
        error = None if result.status is PublishStatus.PUBLISHED else result.error or "failed"
        outcomes[row.id] = RowOutcome(row, error)
    return [outcomes[row.id] for row in rows]


def _count(report: RequeueReport, outcomes: Sequence[RowOutcome]) -> None:
    failed = 0
    for outcome in outcomes:
        if outcome.error is None:
            report.published += 1
            continue
        failed += 1
        # Errors are counted by text; a few distinct ones are enough to tell the user why.
        if outcome.error in report.errors or len(report.errors) < MAX_DISTINCT_ERRORS:
            report.errors[outcome.error] = report.errors.get(outcome.error, 0) + 1
    report.failed += failed
    if failed:
        log.warning("requeue: %d of %d row(s) failed in this batch", failed, len(outcomes))
