"""The relay re-publishes contingency rows by itself once the broker is back."""

from __future__ import annotations

import asyncio

import pytest

from fixtures.outbox import LatencyProxy, Topic, make_settings, seed_rows
from helpers import drain_ids, eventually_true, message
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.filters import Origin, RequeueFilter
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


async def test_relay_waits_for_the_broker_then_delivers(db: Database, topic: Topic) -> None:
    contingency = [message(f"c{n}") for n in range(3)]
    manual = message("manual")
    await seed_rows(db, [(topic.route(), m, "down") for m in contingency])
    await seed_rows(db, [(topic.route(), manual, "")], origin=Origin.MANUAL)
    ledger = Outbox(db)

    async def tried() -> bool:
        return relay.passes >= 3

    async def delivered() -> bool:
        return await ledger.count(RequeueFilter(origin=Origin.CONTINGENCY)) == 0

    async with LatencyProxy(delay=0) as proxy:
        proxy.refusing = True  # the broker is down
        settings = make_settings(db, topic.namespace, amqp_url=proxy.url)
        relay = RelayService(settings, interval=0.1, db=db)
        stopping = asyncio.Event()
        task = asyncio.create_task(relay.run(stopping))
        try:
            await eventually_true(
                tried, timeout=30, what="the relay to try while the broker is down"
            )
            assert await ledger.count(RequeueFilter()) == 4
            # An outage is not held against the rows: untouched, no attempt counted.
            rows = await ledger.rows(RequeueFilter())
            assert [r.attempts for r in rows] == [0, 0, 0, 0]
            proxy.refusing = False  # the broker is back
            await eventually_true(
                delivered, timeout=30, what="the relay to deliver once the broker is back"
            )
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=10)
    assert sorted(await drain_ids(topic.queue)) == sorted(m.id for m in contingency)
    # A manual row (manual_processing_mode=db) waits for a user's `rabbitry requeue`.
    (left,) = await ledger.rows(RequeueFilter())
    assert left.message_id == manual.id
    assert relay.published == 3


async def test_relay_is_idle_when_rabbit_is_not_active(
    db: Database, outbox_ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    await seed_rows(db, [(Route(f"{outbox_ns}.x", "k"), message("x"), "down")])
    settings = make_settings(db, outbox_ns, rabbit_active=False)
    relay = RelayService(settings, interval=0.05, db=db)
    stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(stopping))

    async def said_idle() -> bool:
        return any("relay idle" in r.getMessage() for r in caplog.records)

    await eventually_true(said_idle, what="the relay to say it stays idle")
    assert not task.done()  # idle, not gone: it waits to be stopped
    stopping.set()
    await asyncio.wait_for(task, timeout=5)
    (row,) = await Outbox(db).rows(RequeueFilter())
    assert row.attempts == 0
    assert relay.passes == 0
