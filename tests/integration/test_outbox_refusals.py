"""A refusal is not an outage: a message the broker refused (no such exchange, unroutable) is
stored like one it could not take, but flagged ``refused``, and the relay backs off from it
for longer and longer instead of trying it every few seconds; a user's requeue still sends it
at once, once the topology is fixed. On the real broker, both databases."""

from __future__ import annotations

import asyncio
import datetime as dt

import aio_pika
from sqlalchemy import update

from fixtures.outbox import Topic, make_settings
from helpers import AMQP_URL, DEAD_AMQP_URL, drain_ids, message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.outbox.filters import Failure, RequeueFilter
from rabbitry.outbox.message import OutboxMessage
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.requeue import requeue, without_circuit
from rabbitry.outbox.store import MAX_BACKOFF, REFUSED_FIRST_BACKOFF, Outbox
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow


async def stored(db: Database, message_id: str) -> OutboxMessage:
    (row,) = [r for r in await Outbox(db).rows(RequeueFilter()) if r.message_id == message_id]
    return row


async def due_now(db: Database, row_id: int) -> None:
    """Let the back-off of ``row_id`` end (as time passing would)."""
    async with db.session() as session:
        await session.execute(
            update(OutboxMessageRecord)
            .where(OutboxMessageRecord.id == row_id)
            .values(next_attempt_at=utcnow() - dt.timedelta(seconds=1))
        )


async def test_a_refused_message_is_stored_flagged_and_an_unreachable_broker_is_not_a_refusal(
    db: Database, topic: Topic
) -> None:
    settings = make_settings(db, topic.namespace)
    missing, unbound = f"{topic.namespace}.missing", f"{topic.namespace}.unbound"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(unbound, aio_pika.ExchangeType.DIRECT)
        async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
            no_exchange = await publisher.publish(message(1), Route(missing, "k"))
            no_queue = await publisher.publish(message(2), Route(unbound, "nowhere"))
            fine = await publisher.publish(message(3), topic.route())
    dead = make_settings(db, topic.namespace, amqp_url=DEAD_AMQP_URL)
    async with Publisher(dead.amqp, fallback=Outbox(db)) as publisher:
        outage = await publisher.publish(message(4), topic.route())

    assert fine.status is PublishStatus.PUBLISHED and not fine.refused
    for result in (no_exchange, no_queue, outage):
        assert result.status is PublishStatus.PERSISTED, result
    assert (no_exchange.refused, no_queue.refused, outage.refused) == (True, True, False)
    assert no_exchange.error and "NOT_FOUND" in no_exchange.error
    before = utcnow()
    for result in (no_exchange, no_queue):
        row = await stored(db, result.message_id)
        assert (row.failure, row.refused, row.attempts) == ("refused", True, 0)
        # The relay does not try it again on its next pass, a few seconds on.
        assert row.next_attempt_at is not None
        assert before < row.next_attempt_at <= before + REFUSED_FIRST_BACKOFF
    row = await stored(db, outage.message_id)
    assert (row.failure, row.refused, row.next_attempt_at) == ("unavailable", False, None)
    assert row.to_json()["refused"] is False


async def test_the_relay_backs_off_from_a_refused_row_and_a_requeue_sends_it_once_fixed(
    db: Database, topic: Topic
) -> None:
    settings = make_settings(db, topic.namespace)
    missing = f"{topic.namespace}.later"
    async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
        refused = await publisher.publish(message("r"), Route(missing, "k"))
    row = await stored(db, refused.message_id)
    outbox = Outbox(db)
    relay = RelayService(settings, db=db)
    async with Publisher(without_circuit(settings.amqp), name="relay-test") as publisher:
        # Within its back-off the relay leaves the row alone: no attempt, nothing sent.
        report = await relay.run_once(outbox, publisher)
        assert report is not None and (report.published, report.failed) == (0, 0)
        assert (await stored(db, refused.message_id)).attempts == 0

        # Once it is due, the relay tries it, the broker refuses again, and the row waits
        # longer than any outage's back-off before the next try.
        await due_now(db, row.id)
        report = await relay.run_once(outbox, publisher)
        assert report is not None and report.failed == 1
        tried = await stored(db, refused.message_id)
        assert (tried.attempts, tried.failure) == (1, Failure.REFUSED)
        assert tried.last_error and "NOT_FOUND" in tried.last_error
        assert tried.next_attempt_at is not None
        assert tried.next_attempt_at > utcnow() + MAX_BACKOFF - dt.timedelta(seconds=31)
        report = await relay.run_once(outbox, publisher)
        assert report is not None and report.failed == 0
        assert (await stored(db, refused.message_id)).attempts == 1

        # Someone declares the exchange and a queue: a user's requeue ignores the back-off.
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(missing, aio_pika.ExchangeType.TOPIC)
            queue = await channel.declare_queue(f"{topic.namespace}.fixed", durable=True)
            await queue.bind(exchange, "#")
        report = await requeue(outbox, publisher, RequeueFilter())
    assert (report.published, report.failed) == (1, 0)
    done = await outbox.get(row.id)
    assert done is not None and done.processed and done.next_attempt_at is None
    assert not done.refused
    assert await asyncio.wait_for(drain_ids(f"{topic.namespace}.fixed"), 30) == [refused.message_id]
