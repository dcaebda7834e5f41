"""RabbitMQ itself refuses a publish (``basic.nack``), or never confirms it: nothing is counted
published, nothing is lost.

A queue with ``x-max-length=0`` and ``x-overflow=reject-publish`` is always full, so the broker
nacks every message routed to it: a real nack from a real broker, not a scripted one. Each
client that publishes is checked against it: ``publish``, ``publish_many``, the outbox fallback,
the requeue command's engine and the relay. A confirm that never comes (the network path dies
silently) is the other half: the row stays pending.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from fixtures.outbox import make_settings, seed_rows
from helpers import AMQP_URL, RecordingFallback, drain_ids, message
from rabbitry import Message, Publisher, PublishStatus, Queue, Route, Topology
from rabbitry.amqp.declarer import Declarer
from rabbitry.messaging.sender import RETIRE_AFTER
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.requeue import RequeueOptions, requeue, without_circuit
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import BrokerProbe, Endpoint, Eventually
    from rabbitry.config import Settings

NACKED = "broker nacked the message"
# A user's run would wait up to 30 s for a broker it thinks went away; here the broker is up
# and says no, so the run must not wait at all to report it.
NO_WAIT = RequeueOptions(broker_wait=0)


def full_queue(name: str) -> Queue:
    """A queue the broker refuses every message for: always full, and full means nack."""
    return Queue(name, arguments=(("x-max-length", 0), ("x-overflow", "reject-publish")))


async def declare(namespace: str) -> tuple[str, str]:
    """(full queue, open queue) in ``namespace``, on the default exchange."""
    full, ok = f"{namespace}.full", f"{namespace}.open"
    async with await Declarer.connect(AMQP_URL, name=f"{namespace}-nacks") as declarer:
        await declarer.declare(Topology.of(queues=[full_queue(full), Queue(ok)]))
    return full, ok


# --- the publisher ---------------------------------------------------------------------------


async def test_a_nacked_publish_goes_to_the_fallback_and_is_not_counted_published(
    settings: Settings, broker: object
) -> None:
    full, _ = await declare(settings.namespace)
    fallback = RecordingFallback()
    sent = Message(type="t", payload=1)

    async with Publisher(settings.amqp, fallback=fallback) as publisher:
        result = await publisher.publish(sent, Route("", full))

    assert result.status is PublishStatus.PERSISTED
    assert result.error is not None and NACKED in result.error
    assert [(r.routing_key, m.id) for r, m, _ in fallback.items] == [(full, sent.id)]


async def test_without_a_fallback_a_nacked_publish_is_reported_failed(
    settings: Settings, broker: object
) -> None:
    full, _ = await declare(settings.namespace)

    async with Publisher(settings.amqp) as publisher:
        result = await publisher.publish(Message(type="t", payload=1), Route("", full))
        # A nack is one message's fate: the next publish is tried (and nacked) too.
        assert (await publisher.publish(Message(type="t", payload=2), Route("", full))).status is (
            PublishStatus.FAILED
        )

    assert result.status is PublishStatus.FAILED
    assert result.error is not None and NACKED in result.error


async def test_publish_many_tells_each_nacked_message_from_each_confirmed_one(
    settings: Settings, broker: object
) -> None:
    full, ok = await declare(settings.namespace)
    fallback = RecordingFallback()
    items = [(Message(type="t", payload=n), Route("", full if n % 2 else ok)) for n in range(10)]

    async with Publisher(settings.amqp, fallback=fallback) as publisher:
        results = await publisher.publish_many(items)

    assert [r.status for r in results] == [
        PublishStatus.PERSISTED if n % 2 else PublishStatus.PUBLISHED for n in range(10)
    ]
    assert [r.message_id for r in results] == [m.id for m, _ in items]
    assert [m.payload for _, m, _ in fallback.items] == [1, 3, 5, 7, 9]
    assert sorted(await drain_ids(ok, idle=0.3)) == sorted(
        m.id for m, _ in items if m.payload % 2 == 0
    )


async def test_after_a_nack_the_publishes_go_on_a_new_connection_and_those_in_flight_finish(
    settings: Settings, broker: BrokerProbe
) -> None:
    # A channel of RabbitMQ 3.10 that met a quorum queue without a leader nacks that queue for
    # good (tests/faults/test_relay_faults.py); only a new channel sees the new leader.
    full, ok = await declare(settings.namespace)
    now = [0.0]
    name = f"{settings.namespace}-renewed"

    async with Publisher(settings.amqp, name=name, clock=lambda: now[0]) as publisher:
        assert (await publisher.publish(Message(type="t", payload=0), Route("", ok))).ok
        ((_, first),) = await broker.connections(name)
        # Younger than RETIRE_AFTER: a queue that nacks for good does not churn connections.
        assert not (await publisher.publish(Message(type="t", payload=1), Route("", full))).ok
        assert [pid for _, pid in await broker.connections(name)] == [first]

        now[0] += RETIRE_AFTER
        results = await asyncio.gather(
            publisher.publish(Message(type="t", payload=2), Route("", full)),
            *(publisher.publish(Message(type="t", payload=n), Route("", ok)) for n in range(3, 23)),
        )
        # The publishes sharing the nacked connection were confirmed on it, not failed over.
        assert [r.status for r in results] == [PublishStatus.FAILED] + [
            PublishStatus.PUBLISHED
        ] * 20
        assert (await publisher.publish(Message(type="t", payload=23), Route("", ok))).ok
        pids = [pid for _, pid in await broker.connections(name)]
        assert len(set(pids) - {first}) == 1, pids  # the one after the nack is a new one

    assert await broker.connections(name) == []  # the replaced one is closed with the publisher
    assert len(await drain_ids(ok, idle=0.3)) == 22


# --- the outbox ------------------------------------------------------------------------------


async def test_a_nacked_message_is_stored_in_the_outbox_as_pending(
    db: Database, outbox_ns: str
) -> None:
    full, _ = await declare(outbox_ns)
    settings = make_settings(db, outbox_ns)
    sent = message("nacked")

    async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
        result = await publisher.publish(sent, Route("", full, queue="notify_vkm"))

    assert result.status is PublishStatus.PERSISTED
    (row,) = await Outbox(db).rows(RequeueFilter())
    assert (row.message_id, row.queue, row.processed) == (sent.id, "notify_vkm", False)
    assert row.last_error is not None and NACKED in row.last_error


async def test_requeue_leaves_a_nacked_row_pending_and_marks_only_the_confirmed_ones(
    db: Database, outbox_ns: str
) -> None:
    full, ok = await declare(outbox_ns)
    settings = make_settings(db, outbox_ns)
    refused, taken = message("refused"), message("taken")
    await seed_rows(db, [(Route("", full), refused, "down"), (Route("", ok), taken, "down")])
    ledger = Outbox(db)

    async with Publisher(without_circuit(settings.amqp)) as publisher:
        report = await requeue(ledger, publisher, RequeueFilter(), options=NO_WAIT)

    assert (report.published, report.failed) == (1, 1)
    assert not report.ok  # the command's exit code is non-zero
    (row,) = await ledger.rows(RequeueFilter())
    assert (row.message_id, row.processed, row.attempts) == (refused.id, False, 1)
    assert row.last_error is not None and NACKED in row.last_error
    assert await drain_ids(ok, idle=0.3) == [taken.id]


async def test_a_requeue_waits_out_nacks_and_sends_every_row_once_the_queue_takes_them(
    db: Database, outbox_ns: str, caplog: pytest.LogCaptureFixture, eventually: Eventually
) -> None:
    # A quorum queue without a leader nacks for seconds (tests/faults/test_relay_faults.py);
    # here a queue full to its limit nacks until it is emptied.
    limited = f"{outbox_ns}.limited"
    queue = Queue(limited, arguments=(("x-max-length", 3), ("x-overflow", "reject-publish")))
    async with await Declarer.connect(AMQP_URL, name=f"{outbox_ns}-nacks") as declarer:
        await declarer.declare(Topology.of(queues=[queue]))
        async with Publisher(make_settings(db, outbox_ns).amqp) as publisher:
            for n in range(3):  # full
                assert (await publisher.publish(message(f"old{n}"), Route("", limited))).ok
        rows = [message(f"row{n}") for n in range(3)]
        await seed_rows(db, [(Route("", limited), m, "down") for m in rows])
        settings = make_settings(db, outbox_ns)
        check = ExchangeCheck(settings)
        caplog.set_level(logging.WARNING, logger="rabbitry.outbox.requeue")

        async def waiting() -> bool:
            return any("again in" in r.getMessage() for r in caplog.records)

        try:
            async with Publisher(without_circuit(settings.amqp)) as publisher:
                run = asyncio.ensure_future(
                    requeue(
                        Outbox(db),
                        publisher,
                        RequeueFilter(),
                        options=RequeueOptions(broker_wait=60),
                        exchanges=check,
                    )
                )
                await eventually(waiting, timeout=30, what="the run waiting out the nacks")
                await declarer.purge(limited)
                report = await asyncio.wait_for(run, 60)
        finally:
            await check.close()

    assert (report.published, report.failed) == (3, 0)
    assert await Outbox(db).count(RequeueFilter()) == 0
    assert sorted(await drain_ids(limited, idle=0.3)) == sorted(m.id for m in rows)
    (line, *_) = [r.getMessage() for r in caplog.records if "again in" in r.getMessage()]
    assert f"3 row(s) failed ({NACKED})" in line


async def test_a_requeue_records_the_nacked_rows_failed_once_its_wait_is_spent(
    db: Database, outbox_ns: str
) -> None:
    full, _ = await declare(outbox_ns)
    refused = message("refused")
    await seed_rows(db, [(Route("", full), refused, "down")])
    settings = make_settings(db, outbox_ns)
    check = ExchangeCheck(settings)
    try:
        async with Publisher(without_circuit(settings.amqp)) as publisher:
            report = await requeue(
                Outbox(db),
                publisher,
                RequeueFilter(),
                options=RequeueOptions(broker_wait=1.0),
                exchanges=check,
            )
    finally:
        await check.close()

    assert (report.published, report.failed, report.stopped) == (0, 1, None)
    (row,) = await Outbox(db).rows(RequeueFilter())
    assert (row.message_id, row.attempts) == (refused.id, 1)
    assert row.last_error is not None and NACKED in row.last_error


async def test_requeue_leaves_a_row_pending_when_its_confirm_never_comes(
    db: Database, outbox_ns: str, endpoint: Endpoint
) -> None:
    _, ok = await declare(outbox_ns)
    await endpoint.open("forward")
    settings = make_settings(db, outbox_ns, amqp_url=endpoint.url, publish_timeout=1.0)
    first, stuck = message("first"), message("stuck")
    ledger = Outbox(db)

    async with Publisher(without_circuit(settings.amqp)) as publisher:
        # Connected and confirmed once: the path then dies silently (no FIN, no RST).
        assert (await publisher.publish(first, Route("", ok))).ok
        await seed_rows(db, [(Route("", ok), stuck, "down")])
        endpoint.freeze()
        try:
            report = await asyncio.wait_for(
                requeue(ledger, publisher, RequeueFilter(), options=NO_WAIT), 60
            )
        finally:
            endpoint.thaw()

    assert (report.published, report.failed) == (0, 1)
    (row,) = await ledger.rows(RequeueFilter())
    assert (row.message_id, row.processed) == (stuck.id, False)
    assert row.last_error is not None and "no confirm within" in row.last_error


async def test_the_relay_leaves_nacked_rows_pending_and_counts_their_attempt(
    db: Database, outbox_ns: str
) -> None:
    full, _ = await declare(outbox_ns)
    settings = make_settings(db, outbox_ns)
    refused = [message(f"refused{n}") for n in range(3)]
    await seed_rows(db, [(Route("", full), m, "down") for m in refused])
    ledger = Outbox(db)
    relay = RelayService(settings, db=db)

    async with Publisher(without_circuit(settings.amqp)) as publisher:
        report = await relay.run_once(ledger, publisher)

    assert report is not None
    assert (report.published, report.failed) == (0, 3)
    assert relay.published == 0
    rows = await ledger.rows(RequeueFilter())
    assert sorted(r.message_id for r in rows) == sorted(m.id for m in refused)
    assert {(r.processed, r.attempts) for r in rows} == {(False, 1)}
    assert all(r.last_error is not None and NACKED in r.last_error for r in rows)
