"""The workflow module: stores every change event, and logs every module message.

It consumes the event-sourcing queues (``<ns>.event-sourcing.p<k>``, one per partition), whose
change events it validates and appends to the event store, and its own module queue
``<ns>.module.workflow``, bound ``#`` on ``<ns>.modules``, so that it hears every message any
module sends. Both are stored in batches: one transaction per batch, not per message (change
events by group commit, one writer per partition: the next batch is decoded while the
previous one is being stored, see :mod:`.batcher`).

Each entity's events are stored in the order they were published (docs/events.md says where
that ends): each partition queue has a single active consumer, so one worker at a time stores
a partition, in queue order, and the others stand by (with several partitions, the workers
share them out, see :mod:`.partitions`); a batch the database fails is written
again in place before any later one (nothing goes through the retry queues, which would let
later events overtake it), and nothing is acked before it is stored. An invalid change event,
or one the database refuses, is dead-lettered at once with its reason (``x-rabbitry-reason``)
and never holds up the valid ones of its batch, which are stored in arrival order.
Before it consumes the partitions, a worker drains the single queue of earlier versions, if
there is one (:mod:`.legacy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import Callable, Hashable, Mapping, Sequence

from rabbitry.config import Settings
from rabbitry.errors import MessageError, StorageError
from rabbitry.events.batcher import Batcher
from rabbitry.events.incoming import Row, parse_row
from rabbitry.events.legacy import drain_legacy
from rabbitry.events.message_log import MessageLog
from rabbitry.events.partitions import Sharing
from rabbitry.events.portable import check_json, check_text
from rabbitry.events.store import EventStore, check_message_id
from rabbitry.events.topology import (
    WORKFLOW_MODULE,
    EventsLayout,
    partition_topology,
    topology,
)
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.tracing import tracing_middleware
from rabbitry.messaging.worker import Worker
from rabbitry.storage import Database, open_database

Outcomes = list[BaseException | None]

# Messages per transaction: enough to amortise the commit and the round trips (measured best
# around 250 on PostgreSQL, see docs/performance.md), few enough to keep a retry cheap.
BATCH_SIZE = 250
# Batches in the database at once with one partition (no two with the same entity, see
# .batcher): while one waits for its round trip, the next is already being written (measured
# 1.24-1.35x one at a time, docs/performance.md). With partitions, each has one: K writers
# already keep the database busy, and two each, in smaller batches, measured slower (0.78x).
IN_FLIGHT = 2
# The smallest hand-over of change events the worker plans for (see event_subscription).
HANDOVER = 50
# Seconds a partition being handed over waits for its batches in the database to end.
PARTITION_HANDOVER_WAIT = 10.0
MAX_NAME_LENGTH = 255  # the message log's text columns
# Allocations between two young collections (Python's default is 700). The worker keeps
# thousands of young objects alive at once (a prefetch window of messages, each with its
# handler's frame, future and decoded body), so at the default every collection scans them
# again: the worker's CPU per stored event measured 47-51 µs at 700, 41-42 at 50,000
# (bench/events.py, docs/performance.md). Garbage cycles wait longer: a few MB at most.
YOUNG_COLLECTION = 50_000


class WorkflowWorker:
    """The workflow module's worker on ``database``: a :class:`~rabbitry.messaging.Service`."""

    name = "workflow"

    def __init__(
        self,
        settings: Settings,
        database: Database,
        *,
        batch_size: int = BATCH_SIZE,
        in_flight: int | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.store = EventStore(database)
        self.log = MessageLog(database)
        layout = EventsLayout(settings.namespace)
        self._settings = settings
        self._batch_size = batch_size
        if in_flight is None:
            in_flight = IN_FLIGHT if settings.events_partitions == 1 else 1
        # SQLite writes one transaction at a time: a second batch would only wait for its lock.
        self._in_flight = 1 if database.is_sqlite else in_flight
        # Per queue: the batches in the database, as many decoded and waiting behind them, and
        # as many again arriving, since the broker refills the window only once a commit's
        # acks reach it (bench/events.py, case (ch): 1.11x the events stored per second with
        # half this window; docs/performance.md).
        if prefetch is None:
            prefetch = max(settings.prefetch, 4 * self._in_flight * batch_size)
        self._prefetch = prefetch
        self._middleware = tracing_middleware()
        queues = [layout.partition_queue(p) for p in range(settings.events_partitions)]
        self._batchers: list[Batcher[Message]] = []
        self._sharing: Sharing | None = None
        if len(queues) > 1:
            self._sharing = Sharing(settings.amqp, queues, self._hand_over)
        partitions = [self.event_subscription(q, partition=p) for p, q in enumerate(queues)]
        # With partitions, each has a connection of its own, so that it can be handed over to
        # another worker on its own (see .partitions); with one, the module queue's is enough.
        self._partition_workers: list[Worker] = []
        if self._sharing is not None:
            self._partition_workers = [
                Worker(
                    f"{self.name}-p{p}",
                    [subscription],
                    # Its own queue only: each hand-over declares it again, not everything.
                    partition_topology(settings, p),
                    amqp=settings.amqp,
                    retry=settings.retry,
                    middleware=self._middleware,
                )
                for p, subscription in enumerate(partitions)
            ]
            partitions = []
        self.worker = Worker(
            self.name,
            [
                *partitions,
                # It hears everything, so it logs messages without rr_job too (as RoadRunner's
                # "deduced_by_rr") instead of dead-lettering them.
                Subscription(
                    layout.module_queue(WORKFLOW_MODULE),
                    batch=self.log_messages,
                    batch_size=batch_size,
                    prefetch=prefetch,
                    strict=False,
                ),
            ],
            topology(settings),
            amqp=settings.amqp,
            retry=settings.retry,
            # Each stored event's span lasts until its batch is committed.
            middleware=self._middleware,
        )
        self._connected = self.worker.connected if self._sharing is None else asyncio.Event()

    def event_subscription(
        self, queue: str, *, exclusive: bool = False, partition: int | None = None
    ) -> Subscription:
        """Store the change events of ``queue``, in queue order, with a writer of its own
        (``partition``: the event-sourcing partition it is, counted for sharing them)."""
        # Handed over one by one and stored in batches (group commit, see .batcher): the next
        # batches are decoded, validated and written while the previous one is in the
        # database, no two with the same entity at once. A batch that fails for any reason but
        # its own events is written again before any later one of its entities (see .batcher:
        # the retry queues would reorder).
        events: Batcher[Message] = Batcher(
            self.store_events,
            max_size=self._batch_size,
            hold=_hold,
            key=entity_key,
            in_flight=self._in_flight,
        )
        count: Callable[[int], None] | None = None  # the partition's deliveries, for sharing
        if partition is not None:
            self._batchers.append(events)
            if self._sharing is not None:
                count = functools.partial(self._sharing.delivered, partition)

        if self._middleware:
            # Traced: a handler call per message, so that each event has its span (until its
            # batch is committed); the middleware wraps handlers, not batch calls.
            async def store(message: Message) -> None:
                if count is not None:
                    count(1)
                await events.submit(message)  # raises the message's outcome, if not stored

            return Subscription(
                queue,
                default=store,
                prefetch=self._prefetch,
                concurrency=self._prefetch,
                exclusive=exclusive,
                keep_order=True,
            )

        # Untraced: the consumer hands over what has arrived, in delivery order, a list at a
        # time (Batcher.submit_all), and its calls wait for whole lists: one wake-up per list
        # instead of one per message (measured 44-46 µs of CPU per event to 33-36,
        # docs/performance.md). The Batcher still cuts its own batches, by entity.
        async def store_all(messages: Sequence[Message]) -> Outcomes:
            if count is not None:
                count(len(messages))
            return await events.submit_all(messages)

        return Subscription(
            queue,
            batch=store_all,
            batch_size=self._batch_size,
            prefetch=self._prefetch,
            # Enough calls at once that the prefetch window is never short of one, with
            # hand-overs as small as HANDOVER messages.
            concurrency=max(1, self._prefetch // HANDOVER),
            exclusive=exclusive,
            keep_order=True,
        )

    @property
    def connected(self) -> asyncio.Event:
        """Set while the worker is consuming (every queue)."""
        return self._connected

    @property
    def prefetch(self) -> int:
        """The deliveries each of its queues may hold unacked at once."""
        return self._prefetch

    @property
    def sharing(self) -> Sharing | None:
        """How the partitions are shared with other workers (``None`` with one partition)."""
        return self._sharing

    async def run(self, stopping: asyncio.Event) -> None:
        # The old single queue first, so that its events are stored before younger ones.
        await drain_legacy(
            self._settings, lambda q, only: self.event_subscription(q, exclusive=only), stopping
        )
        if self._sharing is None:
            await self.worker.run(stopping)
            return
        workers = [self.worker, *self._partition_workers]
        await asyncio.gather(
            *(w.run(stopping) for w in workers),
            self._sharing.run(stopping),
            _all_connected(workers, self._connected, stopping),
        )

    async def _hand_over(self, partition: int) -> None:
        """Hand ``partition`` to the next worker: no new batch of it starts, the ones in the
        database end (their acks go out), then its connection closes (see .partitions)."""
        batcher = self._batchers[partition]
        try:
            # A batch the database keeps failing is not waited for: the next worker stores
            # its events again (its write, if it ever lands, is a repeat it skips).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batcher.pause(), PARTITION_HANDOVER_WAIT)
            await self._partition_workers[partition].hand_over()
        finally:
            batcher.resume()

    async def store_events(self, messages: Sequence[Message]) -> Outcomes:
        """Validate and store a batch of change events; one outcome per message.

        An invalid event, or one the database refuses, is dead-lettered on its own; the
        others are stored, in arrival order. Only a failing database sends them to retry.
        """
        outcomes: Outcomes = [None] * len(messages)
        # Straight from each body to the columns the store writes (no model per event).
        valid: list[int] = []
        rows: list[Row] = []
        for index, message in enumerate(messages):
            try:
                # message.id is rr_id, else the AMQP message_id: what makes a redelivery a repeat.
                rows.append(parse_row(message.type, message.payload, message.id, message.timestamp))
                valid.append(index)
            except MessageError as exc:
                outcomes[index] = exc  # dead-lettered with this reason
        try:
            stored = await self.store.append_rows_each(rows)
        except StorageError as exc:
            for index in valid:
                outcomes[index] = exc  # retried later through the retry queues
            return outcomes
        for index, result in zip(valid, stored, strict=True):
            if result is not None:
                outcomes[index] = result
        return outcomes

    async def log_messages(self, messages: Sequence[Message]) -> Outcomes:
        """Append a batch of module messages to the message log (same rules as events)."""
        outcomes: Outcomes = [None] * len(messages)
        valid: list[int] = []
        for index, message in enumerate(messages):
            try:
                check_loggable(message)
                valid.append(index)
            except MessageError as exc:
                outcomes[index] = exc
        try:
            logged = await self.log.append_each([messages[i] for i in valid])
        except StorageError as exc:
            for index in valid:
                outcomes[index] = exc
            return outcomes
        for index, result in zip(valid, logged, strict=True):
            outcomes[index] = result
        return outcomes


async def _all_connected(
    workers: Sequence[Worker], connected: asyncio.Event, stopping: asyncio.Event
) -> None:
    """Keep ``connected`` set while every one of ``workers`` consumes (or hands its queue over,
    and consumes again at once), until ``stopping``."""
    try:
        while not stopping.is_set():
            if all(w.connected.is_set() or w.handing_over for w in workers):
                connected.set()
            else:
                connected.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.1)
    finally:
        connected.clear()


def entity_key(message: Message) -> Hashable:
    """What orders a change event: its (entity, id). The batches being stored at once have no
    key in common. A body without them (dead-lettered anyway) gets the one key ``None``."""
    payload = message.payload
    if type(payload) is dict or isinstance(payload, Mapping):  # dict: no ABC check
        entity, entity_id = payload.get("entity"), payload.get("id")
        if isinstance(entity, str) and isinstance(entity_id, int):
            return (entity, entity_id)
    return None


def _hold(outcome: BaseException) -> bool:
    """Whether a batch with this outcome is written again in place: anything but an event
    refused on its own (invalid, or a value the database cannot keep), which is dead-lettered."""
    return not isinstance(outcome, MessageError)


def check_loggable(message: Message) -> None:
    """Refuse a module message the message log could not keep (see :mod:`.portable`)."""
    check_message_id(message.id)
    check_text(message.type, "the message type (rr_job)")
    if message.tenant is not None:
        if len(message.tenant) > MAX_NAME_LENGTH:
            raise MessageError(f"the tenant is longer than {MAX_NAME_LENGTH} characters")
        check_text(message.tenant, "the tenant")
    check_json(message.payload, "the body")
    check_json({k: list(v) for k, v in message.headers.items()}, "rr_headers")


def tune_collector() -> None:
    """Freeze what is loaded so far out of the collector's passes and collect young objects
    less often (:data:`YOUNG_COLLECTION`): for the whole process, as the worker runs it."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION, older, oldest)


class WorkflowService:
    """The workflow module with a database of its own: what ``rabbitry worker workflow`` and
    ``rabbitry up`` run. Opens (and migrates) the database, runs the worker, closes it."""

    name = "workflow"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service: WorkflowWorker | None = None

    @property
    def consuming(self) -> bool:
        """Whether the worker is consuming (what ``/readyz`` reports)."""
        return self._service is not None and self._service.connected.is_set()

    async def run(self, stopping: asyncio.Event) -> None:
        async with open_database(self._settings.sql_url) as database:
            service = self._service = WorkflowWorker(self._settings, database)
            # Everything loaded so far (modules, the ORM's and the settings' classes) lives as
            # long as the process: keep it out of the collector's full passes, which otherwise
            # scan it over and over while thousands of messages wait in the prefetch window
            # (measured: full collections took ~15% of the worker's time, half that frozen).
            tune_collector()
            await service.run(stopping)
