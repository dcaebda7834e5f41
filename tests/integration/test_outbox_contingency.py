"""Contingency: whatever the broker does not confirm ends up in the ledger."""

from __future__ import annotations

import asyncio

import pytest

from fixtures.outbox import LatencyProxy, Topic, make_settings, pending_ids
from helpers import DEAD_AMQP_URL, close_connections, drain_ids, message
from rabbitry.errors import StorageError
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


async def test_broker_unreachable_stores_the_message(db: Database, outbox_ns: str) -> None:
    settings = make_settings(db, outbox_ns, amqp_url=DEAD_AMQP_URL)
    sent = message()
    async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
        result = await publisher.publish(sent, Route("ex", "rk", queue="notify_vkm"))
    assert result.status is PublishStatus.PERSISTED
    assert result.message_id == sent.id
    assert result.error and "connect" in result.error
    (row,) = await Outbox(db).rows(RequeueFilter())
    assert (row.message_id, row.queue, row.processed) == (sent.id, "notify_vkm", False)
    assert row.body.encode() == sent.body()


async def test_rabbit_active_false_stores_without_touching_the_broker(
    db: Database, outbox_ns: str
) -> None:
    connections = 0

    def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings(
        db, outbox_ns, amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/", rabbit_active=False
    )
    try:
        async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
            results = await publisher.publish_many(
                [(message(n), Route("ex", "rk")) for n in range(20)]
            )
            await asyncio.sleep(0.2)
    finally:
        server.close()
        await server.wait_closed()
    assert {r.status for r in results} == {PublishStatus.PERSISTED}
    assert connections == 0
    assert await Outbox(db).count(RequeueFilter(queue="ex/rk")) == 20


async def test_unroutable_message_is_stored(db: Database, topic: Topic) -> None:
    settings = make_settings(db, topic.namespace)
    unbound = f"{topic.namespace}.unbound"
    import aio_pika

    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        channel = await connection.channel()
        await channel.declare_exchange(unbound, aio_pika.ExchangeType.DIRECT)
        async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
            ok = await publisher.publish(message(1), topic.route())
            lost = await publisher.publish(message(2), Route(unbound, "nowhere"))
        await channel.exchange_delete(unbound)
    finally:
        await connection.close()
    assert ok.status is PublishStatus.PUBLISHED
    assert lost.status is PublishStatus.PERSISTED
    assert lost.error and "unroutable" in lost.error
    assert await pending_ids(db) == {lost.message_id}


async def test_database_down_too_raises(outbox_ns: str) -> None:
    dead_db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    settings = make_settings(dead_db, outbox_ns, amqp_url=DEAD_AMQP_URL)
    try:
        async with Publisher(settings.amqp, fallback=Outbox(dead_db)) as publisher:
            with pytest.raises(StorageError):
                await publisher.publish(message(), Route("ex", "rk"))
    finally:
        await dead_db.close()


@pytest.mark.slow
async def test_ten_thousand_publishes_with_the_connection_killed_midway(
    db: Database, topic: Topic
) -> None:
    """Every message id ends up in the queue or in the ledger: none is lost.

    100 concurrent callers publish through a link with 50 ms of latency each way (so about a
    hundred publishes are always in flight and the run lasts some seconds) while
    ``rabbitmqctl close_connection`` kills the publisher's connection.
    """
    total, concurrency = 10_000, 100
    name = f"{topic.namespace}-kill"
    messages = [message(n) for n in range(total)]
    todo = iter(messages)
    statuses: dict[str, PublishStatus] = {}
    done_at_kill = -1
    started = asyncio.Event()

    async def caller(publisher: Publisher) -> None:
        for sent in todo:
            result = await publisher.publish(sent, topic.route())
            statuses[result.message_id] = result.status
            started.set()

    async def killer() -> None:
        nonlocal done_at_kill
        await started.wait()
        closed = await asyncio.to_thread(
            close_connections, f"{name}-publisher", "test: killed midway", exact=True
        )
        assert closed == 1, "the publisher's connection was not found on the broker"
        done_at_kill = len(statuses)

    async with LatencyProxy(delay=0.05) as proxy:
        settings = make_settings(db, topic.namespace, amqp_url=proxy.url, circuit_open_seconds=0.3)
        async with Publisher(settings.amqp, fallback=Outbox(db), name=name) as publisher:
            kill = asyncio.create_task(killer())
            await asyncio.gather(*(caller(publisher) for _ in range(concurrency)))
            await kill
    assert 0 < done_at_kill < total, f"the kill landed outside the run ({done_at_kill})"
    assert len(statuses) == total
    in_queue = await drain_ids(topic.queue)
    in_ledger = await pending_ids(db)
    persisted = {i for i, s in statuses.items() if s is PublishStatus.PERSISTED}
    published = {i for i, s in statuses.items() if s is PublishStatus.PUBLISHED}
    # Nothing lost, nothing invented: every id is in the queue or in the ledger.
    assert set(in_queue) | in_ledger == {m.id for m in messages}
    assert persisted == in_ledger
    assert published <= set(in_queue)
    # The kill hit publishes in flight; they went to the ledger, the rest through the broker.
    assert persisted, "no message was in flight when the connection was killed"
    assert published
    print(
        f"\nkilled after {done_at_kill}: {len(published)} published, {len(persisted)} persisted, "
        f"{len(set(in_queue) & in_ledger)} in both (confirm lost with the connection)"
    )
