"""Requeue runs under faults, driven the way an operator meets them: an exchange deleted during
a run, a relay pass that stops early, a run paused past its lease, a connection cut or a
broker gone mid-run. Every row ends delivered once or pending untouched; no row is stranded
under a lease, none is marked failed without being tried, none is sent twice by two runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aio_pika
from sqlalchemy import select

from fixtures.outbox import Topic, make_settings, seed_rows
from helpers import AMQP_URL, drain_ids, eventually_true, message
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishResult, Route
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.message import OutboxMessage
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.requeue import RequeueOptions, RowOutcome, requeue, without_circuit
from rabbitry.outbox.store import Cursor, Outbox
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

if TYPE_CHECKING:
    from conftest import Endpoint


async def leases(db: Database) -> list[tuple[str | None, bool]]:
    """(claim_token, processed) of every row."""
    async with db.session() as session:
        rows = await session.execute(
            select(OutboxMessageRecord.claim_token, OutboxMessageRecord.processed)
        )
        return [(token, processed) for token, processed in rows]


async def lease_ends(db: Database) -> list[dt.datetime | None]:
    """``claimed_until`` of every pending row, as stored (the ledger's own clock)."""
    async with db.session() as session:
        rows = await session.execute(
            select(OutboxMessageRecord.claimed_until).where(
                OutboxMessageRecord.processed.is_(False)
            )
        )
        return [until for (until,) in rows]


async def attempts(db: Database) -> Counter[int]:
    async with db.session() as session:
        return Counter((await session.scalars(select(OutboxMessageRecord.attempts))).all())


async def declare_bound(exchange: str, queue: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC)
        bound = await channel.declare_queue(queue, durable=True)
        await bound.bind(declared, "#")


async def delete_exchange(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


# --- 4. an exchange deleted during a run -----------------------------------------------------


class DeletingPublisher(Publisher):
    """A run's publisher; an operator deletes ``exchange`` just before its ``before_call``-th
    publish, so the run has already found the exchange present."""

    def __init__(self, settings: Settings, exchange: str, *, before_call: int) -> None:
        super().__init__(without_circuit(settings.amqp))
        self.exchange = exchange
        self.before_call = before_call
        self.calls = 0
        self.deleted = False

    async def publish_many(
        self, items: Sequence[tuple[Message, Route]], *, use_fallback: bool = True
    ) -> list[PublishResult]:
        self.calls += 1
        if self.calls == self.before_call:
            await delete_exchange(self.exchange)
            self.deleted = True
        return await super().publish_many(items, use_fallback=use_fallback)


async def test_an_exchange_deleted_during_a_run_fails_only_its_own_rows(
    db: Database, topic: Topic
) -> None:
    doomed = Route(f"{topic.namespace}.doomed", "k")
    doomed_queue = f"{topic.namespace}.doomed-q"
    await declare_bound(doomed.exchange, doomed_queue)
    healthy = [message(f"h{n}") for n in range(1500)]
    gone = [message(f"d{n}") for n in range(1500)]
    interleaved = [item for pair in zip(healthy, gone, strict=True) for item in pair]
    healthy_ids = {m.id for m in healthy}
    await seed_rows(
        db, [(topic.route() if m.id in healthy_ids else doomed, m, "down") for m in interleaved]
    )
    settings = make_settings(db, topic.namespace)
    ledger = Outbox(db)
    exchanges = ExchangeCheck(settings)
    try:
        async with DeletingPublisher(settings, doomed.exchange, before_call=5) as publisher:
            report = await requeue(
                ledger,
                publisher,
                RequeueFilter(),
                options=RequeueOptions(batch_size=100),
                exchanges=exchanges,
            )
            assert publisher.deleted
            second = await requeue(
                ledger,
                publisher,
                RequeueFilter(),
                options=RequeueOptions(batch_size=100),
                exchanges=exchanges,
            )
    finally:
        await exchanges.close()
    delivered = Counter(await drain_ids(topic.queue))
    assert delivered == Counter(m.id for m in healthy)  # each healthy row once, over two runs
    assert report.failed > 0 and report.failed == second.failed
    assert set(report.errors) == {f"exchange {doomed.exchange!r} does not exist"}
    assert second.published == 0
    pending = {row.message_id for row in await ledger.rows(RequeueFilter(), limit=5000)}
    assert pending <= {m.id for m in gone}
    assert len(pending) == report.failed
    before_deletion = Counter(await drain_ids(doomed_queue))
    assert set(before_deletion) == {m.id for m in gone} - pending
    assert max(before_deletion.values(), default=1) == 1


# --- 5. leases released on every path ---------------------------------------------------------


class SlowClaims(Outbox):
    """A ledger whose claims after the first take ``pause`` seconds to come back (a slow
    database): a run that stops meanwhile must still give those rows back."""

    def __init__(self, db: Database, pause: float) -> None:
        super().__init__(db)
        self.pause = pause
        self.claims = 0

    async def claim(self, *args: object, **kwargs: object) -> list[OutboxMessage]:
        rows = await super().claim(*args, **kwargs)  # type: ignore[arg-type]
        self.claims += 1
        if self.claims > 1:
            await asyncio.sleep(self.pause)
        return rows


async def test_a_relay_pass_that_stops_at_a_failed_batch_leaves_no_row_leased(
    db: Database, topic: Topic
) -> None:
    # An exchange without bindings: the broker returns every message (unroutable), so the
    # first batch fails entirely, while the broker is up.
    nowhere = Route(f"{topic.namespace}.nowhere", "k")
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(nowhere.exchange, aio_pika.ExchangeType.DIRECT)
    bad = [message(f"bad{n}") for n in range(50)]
    good = [message(f"good{n}") for n in range(150)]
    await seed_rows(db, [(nowhere, m, "down") for m in bad])
    await seed_rows(db, [(topic.route(), m, "down") for m in good])
    settings = make_settings(db, topic.namespace)
    relay = RelayService(settings, batch_size=50, db=db)
    relay.options = RequeueOptions(
        batch_size=50, respect_backoff=True, stop_on_failed_batch=True, broker_wait=0
    )
    ledger = SlowClaims(db, pause=1.0)
    exchanges = ExchangeCheck(settings)
    try:
        async with Publisher(without_circuit(settings.amqp)) as publisher:
            report = await relay.run_once(ledger, publisher, exchanges=exchanges)
    finally:
        await exchanges.close()
    assert report is not None and report.stopped == "a whole batch failed"
    assert report.failed == 50 and report.published == 0
    # Nothing waits for a lease to end: the rows claimed ahead were given back.
    assert [token for token, processed in await leases(db) if not processed] == [None] * 200
    # ... so a user's run right after sends them at once.
    async with Publisher(without_circuit(settings.amqp)) as publisher:
        after = await requeue(Outbox(db), publisher, RequeueFilter())
    assert after.published == 150
    assert Counter(await drain_ids(topic.queue)) == Counter(m.id for m in good)


async def test_a_run_reports_the_rows_another_run_holds(db: Database, topic: Topic) -> None:
    held = [message(f"held{n}") for n in range(30)]
    free = [message(f"free{n}") for n in range(20)]
    await seed_rows(db, [(topic.route(), m, "down") for m in held + free])
    ledger = Outbox(db)
    cursor = await ledger.start(RequeueFilter())
    assert cursor is not None
    taken = await ledger.claim(
        RequeueFilter(), cursor, token="other-run", limit=30, lease=dt.timedelta(minutes=2)
    )
    assert {r.message_id for r in taken} == {m.id for m in held}
    settings = make_settings(db, topic.namespace)
    async with Publisher(without_circuit(settings.amqp)) as publisher:
        report = await requeue(ledger, publisher, RequeueFilter())
    assert (report.published, report.failed, report.skipped) == (20, 0, 30)
    assert "30 skipped (held by another run" in report.summary()
    assert sorted(await drain_ids(topic.queue)) == sorted(m.id for m in free)


# --- 7. a run that outlives its lease ---------------------------------------------------------


class PausedAfterFirstClaim(Outbox):
    """An outbox whose first claim returns only once ``resume`` is set (a process stopped
    with SIGSTOP, a long GC pause): by then the lease has ended."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.claimed = asyncio.Event()
        self.resume = asyncio.Event()

    async def claim(
        self, where: RequeueFilter, cursor: Cursor, **kwargs: object
    ) -> list[OutboxMessage]:
        rows = await super().claim(where, cursor, **kwargs)  # type: ignore[arg-type]
        if not self.claimed.is_set():
            self.claimed.set()
            await self.resume.wait()
        return rows


async def test_a_run_paused_past_its_lease_never_publishes_rows_another_run_took_over(
    db: Database, topic: Topic
) -> None:
    rows = [message(f"r{n}") for n in range(40)]
    await seed_rows(db, [(topic.route(), m, "down") for m in rows])
    settings = make_settings(db, topic.namespace)
    lease = dt.timedelta(seconds=1)
    paused = PausedAfterFirstClaim(db)
    async with (
        Publisher(without_circuit(settings.amqp)) as first_publisher,
        Publisher(without_circuit(settings.amqp)) as second_publisher,
    ):
        first = asyncio.create_task(
            requeue(
                paused,
                first_publisher,
                RequeueFilter(),
                options=RequeueOptions(batch_size=40, lease=lease),
            )
        )
        await asyncio.wait_for(paused.claimed.wait(), timeout=10)

        async def lease_ended() -> bool:
            leased = [until for until in await lease_ends(db) if until is not None]
            return bool(leased) and max(leased) < utcnow()

        # The first run's lease ends while it is "paused" (the lease is what passes time here).
        await eventually_true(lease_ended, what="the first run's lease to end")
        second = await requeue(Outbox(db), second_publisher, RequeueFilter())
        paused.resume.set()  # the first run wakes up, after the second sent its rows
        report = await asyncio.wait_for(first, timeout=30)
    assert second.published == 40
    assert report.published == 0 and report.failed == 0
    delivered = Counter(await drain_ids(topic.queue))
    assert delivered == Counter(m.id for m in rows)  # each once


# --- 9. a connection that fails mid-run -------------------------------------------------------


async def test_a_cut_connection_mid_run_fails_no_row_untried(
    db: Database, topic: Topic, endpoint: Endpoint
) -> None:
    rows = [message(f"c{n}") for n in range(2000)]
    await seed_rows(db, [(topic.route(), m, "down") for m in rows])
    await endpoint.open("forward")
    settings = make_settings(db, topic.namespace, amqp_url=endpoint.url)
    cuts: list[int] = []

    def cut_once(_: Sequence[RowOutcome]) -> None:
        if not cuts:
            cuts.append(1)
            endpoint.cut()

    exchanges = ExchangeCheck(settings)
    try:
        async with Publisher(without_circuit(settings.amqp)) as publisher:
            report = await requeue(
                Outbox(db),
                publisher,
                RequeueFilter(),
                options=RequeueOptions(batch_size=100),
                progress=cut_once,
                exchanges=exchanges,
            )
    finally:
        await exchanges.close()
    assert cuts and report.published == 2000 and report.failed == 0
    assert report.stopped is None
    assert await attempts(db) == Counter({1: 2000})  # no row marked failed on the way
    delivered = Counter(await drain_ids(topic.queue))
    assert set(delivered) == {m.id for m in rows}
    # A batch in flight when the connection died may have reached the queue before its
    # confirm was lost: at most that batch twice, never more.
    assert sum(delivered.values()) - len(rows) <= 100


async def test_a_run_whose_broker_stays_away_stops_and_leaves_the_rest_untouched(
    db: Database, topic: Topic, endpoint: Endpoint
) -> None:
    rows = [message(f"u{n}") for n in range(1000)]
    await seed_rows(db, [(topic.route(), m, "down") for m in rows])
    await endpoint.open("forward")
    settings = make_settings(db, topic.namespace, amqp_url=endpoint.url)
    closing: list[asyncio.Task[None]] = []

    def broker_goes_away(_: Sequence[RowOutcome]) -> None:
        if not closing:
            closing.append(asyncio.create_task(endpoint.close()))

    exchanges = ExchangeCheck(settings)
    try:
        async with Publisher(without_circuit(settings.amqp)) as publisher:
            report = await requeue(
                Outbox(db),
                publisher,
                RequeueFilter(),
                options=RequeueOptions(batch_size=100, broker_wait=1.0),
                progress=broker_goes_away,
                exchanges=exchanges,
            )
    finally:
        await exchanges.close()
        await asyncio.gather(*closing)
    assert report.stopped is not None and "unreachable" in report.stopped
    assert report.failed == 0
    assert report.published + report.left == 1000
    assert report.left >= 800  # the batch that was in flight, and all after it
    counts = await attempts(db)
    assert counts[0] == report.left  # untouched: no attempt counted against them
    assert "left pending, untouched" in report.summary()
    assert [token for token, processed in await leases(db) if not processed] == [None] * report.left
