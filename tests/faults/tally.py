"""What the fault cases share: the tally of each publish call's outcome, the outbox on a scratch
PostgreSQL database, rows fed into it and the relay running beside a case, the relay of what the
outbox kept, the count of what arrived, and the ids the event store holds.

A case streams messages through a fault, then calls :func:`relay_outbox` (everything the
outbox kept goes to the cluster once it is whole) and reads back what arrived; :func:`count`
records the figures and checks the promise: every message sent arrived, 0 lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from faults.conftest import Figures
from helpers import scratch_database
from rabbitry.config import Settings
from rabbitry.events.models import StoredEvent
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishResult, PublishStatus, Route
from rabbitry.outbox.filters import Origin, RequeueFilter
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.requeue import RequeueReport, requeue, without_circuit
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


@dataclass
class Tally:
    """Each publish call's outcome: confirmed by the broker, stored in the outbox, or failed
    (which the promise forbids: a case asserts ``failed == []``)."""

    sent: list[str] = field(default_factory=list)
    published: set[str] = field(default_factory=set)
    persisted: set[str] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)
    stored_at: list[float] = field(default_factory=list)  # monotonic time of each store

    def record(self, message_id: str, result: PublishResult) -> None:
        if result.status is PublishStatus.PUBLISHED:
            self.published.add(message_id)
        elif result.status is PublishStatus.PERSISTED:
            self.persisted.add(message_id)
            self.stored_at.append(time.monotonic())
        else:
            self.failed.append(f"{message_id}: {result.error}")

    def check_outcomes(self) -> None:
        """Every call ended confirmed or stored, never both, never neither."""
        assert self.failed == []
        assert len(self.published) + len(self.persisted) == len(self.sent)
        assert not self.published & self.persisted

    def confirmed(self, count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(self.published) >= count

        return check

    def stored(self, count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return len(self.persisted) >= count

        return check


@contextlib.asynccontextmanager
async def migrated_database(tmp_path: Path) -> AsyncIterator[Database]:
    """A scratch PostgreSQL database with every part's tables, dropped afterwards."""
    async with scratch_database("postgresql", tmp_path) as url:
        database = Database(url)
        try:
            await database.upgrade()
            yield database
        finally:
            await database.close()


async def add_rows(ledger: Outbox, route: Route, tally: Tally, n: int) -> None:
    """``n`` contingency rows, as a publisher's fallback stores them."""
    messages = [Message(type="fault.relay", payload={"n": len(tally.sent) + i}) for i in range(n)]
    await ledger.add([(route, m, "broker was down") for m in messages], origin=Origin.CONTINGENCY)
    tally.sent.extend(m.id for m in messages)
    tally.persisted.update(m.id for m in messages)


@contextlib.asynccontextmanager
async def feeding(
    ledger: Outbox, route: Route, tally: Tally, *, rows: int = 20, pause: float = 0.1
) -> AsyncIterator[None]:
    """``rows`` rows come into the outbox every ``pause`` seconds until the block ends."""
    stopping = asyncio.Event()

    async def feed() -> None:
        while not stopping.is_set():
            await add_rows(ledger, route, tally, rows)
            await asyncio.sleep(pause)

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        stopping.set()
        await task


@contextlib.asynccontextmanager
async def relaying(settings: Settings, database: Database) -> AsyncIterator[RelayService]:
    """The relay as ``rabbitry up`` runs it (every 0.2 s, 100 rows a batch), until the block
    ends."""
    relay = RelayService(settings, interval=0.2, batch_size=100, db=database)
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))
    try:
        yield relay
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=60)


async def relay_outbox(ledger: Outbox, settings: Settings) -> RequeueReport:
    """Send everything the outbox kept (the cluster is whole again); none may fail."""
    name = f"{settings.namespace}-relay"
    async with Publisher(without_circuit(settings.amqp), name=name) as publisher:
        report = await requeue(ledger, publisher, RequeueFilter())
    assert report.failed == 0, report.summary()
    return report


def count(
    figures: Figures,
    case: str,
    tally: Tally,
    arrived: list[str],
    *,
    stored: int | None = None,
) -> None:
    """Record the case's figures, then check that nothing sent was lost and nothing arrived
    that was not sent. ``stored`` is what the outbox kept (the tally's own count if None)."""
    lost = set(tally.sent) - set(arrived)
    kept = len(tally.persisted) if stored is None else stored
    figures.add(case, len(tally.sent), len(tally.published), kept, arrived, lost)
    assert not lost, f"{len(lost)} of {len(tally.sent)} lost"
    assert set(arrived) == set(tally.sent)  # nothing that was not sent


async def stored_ids(database: Database) -> list[str]:
    """The message ids of the stored events, in the order they were stored."""
    async with database.session() as session:
        rows = await session.execute(select(StoredEvent.message_id).order_by(StoredEvent.sequence))
        return list(rows.scalars())


def at_least(database: Database, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await stored_ids(database)) >= count

    return check
