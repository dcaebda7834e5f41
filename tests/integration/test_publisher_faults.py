"""Publishing when one message is wrong, on the real broker: it fails alone.

A publish to a missing exchange closes the channel under every publish beside it; a header
too large for a frame closes the connection. Neither may cost the other callers their
messages, duplicate them through the outbox, or open the circuit for everyone. And a
``basic.return`` must be pinned on the very message the broker returned.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from helpers import RecordingFallback
from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link, Outgoing, PublishOutcome
from rabbitry.amqp.properties import Properties
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import Exchange, ExchangeType, Queue, Topology

if TYPE_CHECKING:
    from conftest import BrokerProbe


async def test_a_publish_to_a_missing_exchange_fails_alone_beside_concurrent_ones(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = f"{settings.namespace}.inbox"
    await declarer.declare(Topology.of(queues=[Queue(queue)]))
    outbox = RecordingFallback()
    first, middle, last = (Message(type="t", payload=n) for n in ("first", "middle", "last"))
    routes = [Route("", queue), Route(f"{settings.namespace}.missing", "k"), Route("", queue)]
    async with Publisher(settings.amqp, fallback=outbox) as publisher:
        warm = await publisher.publish(Message(type="warm-up", payload=0), Route("", queue))
        results = await asyncio.gather(
            *(publisher.publish(m, r) for m, r in zip((first, middle, last), routes, strict=True))
        )
        after = await publisher.publish(Message(type="t", payload="after"), Route("", queue))
    assert [r.status for r in results] == [
        PublishStatus.PUBLISHED,
        PublishStatus.PERSISTED,
        PublishStatus.PUBLISHED,
    ]
    assert results[1].error is not None and "404" in results[1].error
    assert [m.id for _, m, _ in outbox.items] == [middle.id]  # the others: stored zero times
    assert after.status is PublishStatus.PUBLISHED  # and the circuit stayed closed
    delivered = sorted(r.headers["rr_id"] for r in await broker.get_all(queue))
    # first and last exactly once: neither lost with the channel nor re-sent twice
    assert delivered == sorted([warm.message_id, first.id, last.id, after.message_id])


async def test_a_publish_many_with_one_bad_exchange_delivers_the_rest_once(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = f"{settings.namespace}.inbox"
    await declarer.declare(Topology.of(queues=[Queue(queue)]))
    outbox = RecordingFallback()
    messages = [Message(type="t", payload=n) for n in range(6)]
    missing = Route(f"{settings.namespace}.missing", "k")
    items = [(m, missing if n == 2 else Route("", queue)) for n, m in enumerate(messages)]
    async with Publisher(settings.amqp, fallback=outbox) as publisher:
        results = await publisher.publish_many(items)
    assert [r.status for r in results] == [PublishStatus.PUBLISHED] * 2 + [
        PublishStatus.PERSISTED
    ] + [PublishStatus.PUBLISHED] * 3
    assert [m.id for _, m, _ in outbox.items] == [messages[2].id]
    delivered = sorted(r.headers["rr_id"] for r in await broker.get_all(queue))
    assert delivered == sorted(m.id for n, m in enumerate(messages) if n != 2)


async def test_a_header_too_large_for_a_frame_fails_that_call_only_and_is_not_stored(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = f"{settings.namespace}.inbox"
    await declarer.declare(Topology.of(queues=[Queue(queue)]))
    outbox = RecordingFallback()
    huge = Message(type="t", payload={}, extra={"blob": "x" * 200_000})
    async with Publisher(settings.amqp, fallback=outbox) as publisher:
        refused, fine = await asyncio.gather(
            publisher.publish(huge, Route("", queue)),
            publisher.publish(Message(type="t", payload={}), Route("", queue)),
        )
        after = await publisher.publish(Message(type="t", payload={}), Route("", queue))
    assert refused.status is PublishStatus.FAILED
    assert refused.error is not None and "frame_max" in refused.error
    assert outbox.items == []  # it would fail the same way when re-sent: not stored
    assert (fine.status, after.status) == (PublishStatus.PUBLISHED, PublishStatus.PUBLISHED)
    assert (await broker.counts(queue))[0] == 2


async def test_a_return_is_pinned_on_the_look_alike_the_broker_dropped(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    # A headers exchange routes on headers alone: two messages with the same exchange, key and
    # body and no message id, one of them unroutable.
    exchange = f"{settings.namespace}.by-header"
    queue = f"{settings.namespace}.routed"
    await declarer.declare(
        Topology.of(
            exchanges=[Exchange(exchange, ExchangeType.HEADERS)],
            queues=[Queue(queue)],
        )
    )
    link = await Link.connect(settings.amqp.url, name=f"{settings.namespace}-returns")
    try:
        await link.confirm_select()
        underlay = await declarer._channel.get_underlay_channel()
        await underlay.queue_bind(queue, exchange, arguments={"x-match": "all", "route": "yes"})
        routed = Properties(headers={"route": "yes"})
        dropped = Properties(headers={"route": "no"})
        outcomes = await link.publish_many(
            [Outgoing(exchange, "", b"same", routed), Outgoing(exchange, "", b"same", dropped)]
        )
    finally:
        await link.close()
    assert outcomes == [PublishOutcome.ACKED, PublishOutcome.RETURNED]
    (got,) = await broker.get_all(queue)
    assert got.headers["route"] == "yes"
