"""Publisher against the real broker: confirms, RoadRunner headers on the wire, unroutable
messages, the fallback seam, ``rabbit_active=false``, an unreachable broker and its circuit.

The fallback here is an in-memory recorder: it is the seam the outbox plugs into, not the
thing under test. Unreachable brokers are a local TCP endpoint we control (closed, silent, or
forwarding to RabbitMQ), so the tests can tell whether the publisher tried to connect at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from helpers import RecordingFallback, plain_queue
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.errors import StorageError
from rabbitry.messaging.envelope import RR_HEADERS, Message
from rabbitry.messaging.publisher import Publisher, PublishResult, PublishStatus, Route
from rabbitry.messaging.topology import Binding, Exchange, ExchangeType, Queue, Topology

if TYPE_CHECKING:
    from conftest import BrokerProbe, Endpoint

# RoadRunner's exact field types (docs/message-format.md, "Headers" and example E1).
RR_TAGS = {
    "rr_id": "S",
    "rr_job": "S",
    "rr_pipeline": "S",
    "rr_headers": "x",
    "rr_delay": "l",
    "rr_priority": "l",
    "rr_auto_ack": "t",
}


def at(settings: Settings, url: str, **changes: Any) -> Settings:
    return settings.model_copy(update={"amqp_url": SecretStr(url), **changes})


# --- confirmed publishing --------------------------------------------------------------------


async def test_confirmed_message_reaches_the_queue_with_roadrunner_headers_and_types(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = await plain_queue(declarer, settings)
    message = Message(
        type="App\\Jobs\\SendEmail",
        payload={"to": "a@example.com", "name": "Zoë", "n": 1},
        headers={"attempts": ("1",), "payload_class": ("App\\Dto\\Email",)},
        pipeline="emails",
        tenant="acme",
        correlation_id="corr-1",
    )
    bare = Message(type="ping", payload=[1, 2])

    async with Publisher(settings.amqp) as publisher:
        results = [
            await publisher.publish(message, Route("", queue)),
            await publisher.publish(bare, Route("", queue)),
        ]

    assert [(r.message_id, r.status, r.error) for r in results] == [
        (message.id, PublishStatus.PUBLISHED, None),
        (bare.id, PublishStatus.PUBLISHED, None),
    ]
    first, second = await broker.get_all(queue)

    # The seven rr_* headers come first, in RoadRunner's order, with RoadRunner's tags.
    assert list(first.headers)[:7] == list(RR_HEADERS)
    assert {name: first.tags[name] for name in RR_HEADERS} == RR_TAGS
    assert first.headers["rr_id"] == message.id
    assert first.headers["rr_job"] == "App\\Jobs\\SendEmail"
    assert first.headers["rr_pipeline"] == "emails"
    rr_headers = first.headers["rr_headers"]
    assert isinstance(rr_headers, bytes)
    assert json.loads(rr_headers) == {"attempts": ["1"], "payload_class": ["App\\Dto\\Email"]}
    for name, value in (("rr_delay", 0), ("rr_priority", 10)):
        assert isinstance(first.headers[name], int) and first.headers[name] == value
    assert first.headers["rr_auto_ack"] is False
    assert first.headers["x-tenant"] == "acme"
    assert first.headers["x-correlation-id"] == "corr-1"

    props = first.properties
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_id == message.id
    assert props.correlation_id == "corr-1"
    assert props.timestamp == int(message.timestamp.timestamp())
    # Compact UTF-8 JSON, not ASCII escapes: what PHP's json_decode reads back as written.
    assert first.body == '{"to":"a@example.com","name":"Zoë","n":1}'.encode()

    # No user headers: rr_headers is "{}", never null (null crashes some RoadRunner releases).
    assert second.headers["rr_headers"] == b"{}"
    assert second.tags["rr_headers"] == "x"
    assert "x-tenant" not in second.headers
    assert second.body == b"[1,2]"


async def test_publish_many_of_5000_messages_are_all_confirmed_and_queued(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    exchange = f"{settings.namespace}.orders"
    queue = f"{settings.namespace}.orders-all"
    await declarer.declare(
        Topology.of(
            exchanges=[Exchange(exchange, ExchangeType.TOPIC)],
            queues=[Queue(queue)],
            bindings=[Binding(exchange, queue, "order.#")],
        )
    )
    messages = [Message(type="order.created", payload={"n": n}) for n in range(5000)]

    async with Publisher(settings.amqp) as publisher:
        results = await publisher.publish_many(
            [(m, Route(exchange, f"order.created.{m.payload['n'] % 7}")) for m in messages]
        )

    assert [r.message_id for r in results] == [m.id for m in messages]
    assert {r.status for r in results} == {PublishStatus.PUBLISHED}
    assert await declarer.queue_size(queue) == 5000
    received = await broker.get_all(queue)
    assert sorted(json.loads(r.body)["n"] for r in received) == list(range(5000))
    assert {r.headers["rr_id"] for r in received} == {m.id for m in messages}


async def test_concurrent_publishes_from_many_tasks_are_each_confirmed(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    # One shared publisher under many callers, as in the HTTP app.
    queue = await plain_queue(declarer, settings)
    messages = [Message(type="t", payload={"n": n}) for n in range(300)]

    async with Publisher(settings.amqp) as publisher:
        results = await asyncio.gather(*(publisher.publish(m, Route("", queue)) for m in messages))

    assert [(r.message_id, r.status) for r in results] == [
        (m.id, PublishStatus.PUBLISHED) for m in messages
    ]
    received = await broker.get_all(queue)
    assert sorted(r.headers["rr_id"] for r in received) == sorted(m.id for m in messages)


# --- unroutable ------------------------------------------------------------------------------


async def test_unroutable_message_fails_with_its_reason_when_there_is_no_fallback(
    settings: Settings, declarer: Declarer
) -> None:
    exchange = f"{settings.namespace}.nowhere"
    await declarer.declare(Topology.of(exchanges=[Exchange(exchange, ExchangeType.DIRECT)]))
    queue = await plain_queue(declarer, settings)
    lost = Message(type="t", payload={})

    async with Publisher(settings.amqp) as publisher:
        via_exchange = await publisher.publish(lost, Route(exchange, "no.binding"))
        via_default = await publisher.publish(lost, Route("", f"{settings.namespace}.no-queue"))
        # A returned message says nothing about the broker's health: the next publish goes out.
        after = await publisher.publish(Message(type="t", payload={}), Route("", queue))

    for result in (via_exchange, via_default):
        assert result.status is PublishStatus.FAILED
        assert result.message_id == lost.id
        assert result.error is not None and "unroutable" in result.error
    assert after.status is PublishStatus.PUBLISHED
    assert await declarer.queue_size(queue) == 1


async def test_unroutable_message_is_handed_to_the_fallback_and_reported_persisted(
    settings: Settings, declarer: Declarer
) -> None:
    queue = await plain_queue(declarer, settings)
    fallback = RecordingFallback()
    routed = Message(type="ok", payload={"i": 1})
    unroutable = Message(type="lost", payload={"i": 2})
    nowhere = Route("", f"{settings.namespace}.no-queue", queue="registry-name")

    async with Publisher(settings.amqp, fallback=fallback) as publisher:
        results = await publisher.publish_many([(routed, Route("", queue)), (unroutable, nowhere)])
        declined = await publisher.publish(
            Message(type="lost", payload={}), nowhere, use_fallback=False
        )

    assert [r.status for r in results] == [PublishStatus.PUBLISHED, PublishStatus.PERSISTED]
    assert results[1].error is not None and "unroutable" in results[1].error
    assert len(fallback.items) == 1
    route, stored, reason = fallback.items[0]
    assert route == nowhere
    assert stored.id == unroutable.id and stored.payload == {"i": 2}
    assert "unroutable" in reason
    # use_fallback=False (the requeue command's way): reported failed, nothing stored.
    assert declined.status is PublishStatus.FAILED
    assert len(fallback.items) == 1
    assert await declarer.queue_size(queue) == 1


async def test_missing_exchange_fails_that_publish_with_the_broker_reason(
    settings: Settings, declarer: Declarer
) -> None:
    await plain_queue(declarer, settings)
    async with Publisher(settings.amqp) as publisher:
        result = await publisher.publish(
            Message(type="t", payload={}), Route(f"{settings.namespace}.no-exchange", "k")
        )
    assert result.status is PublishStatus.FAILED
    assert result.error is not None and f"{settings.namespace}.no-exchange" in result.error


async def test_a_publish_to_a_missing_exchange_does_not_stop_the_next_valid_publish(
    settings: Settings, declarer: Declarer
) -> None:
    # A 404 on one exchange is the caller's mistake, not a broker outage: it must not open
    # the circuit breaker and divert every other message to the outbox.
    queue = await plain_queue(declarer, settings)
    settings = settings.model_copy(update={"circuit_open_seconds": 30.0})
    async with Publisher(settings.amqp) as publisher:
        await publisher.publish(
            Message(type="t", payload={}), Route(f"{settings.namespace}.no-exchange", "k")
        )
        after = await publisher.publish(Message(type="t", payload={}), Route("", queue))
    assert (after.status, after.error) == (PublishStatus.PUBLISHED, None)
    assert await declarer.queue_size(queue) == 1


# --- no broker -------------------------------------------------------------------------------


async def test_rabbit_active_false_stores_without_contacting_the_broker(
    settings: Settings, endpoint: Endpoint
) -> None:
    # A silent endpoint would hold any connection attempt for the whole connect timeout and
    # count it: so "returns at once" and "never connected" are both checked.
    await endpoint.open("silent")
    inactive = at(settings, endpoint.url, rabbit_active=False, connect_timeout=30.0)
    fallback = RecordingFallback()
    message = Message(type="t", payload={"a": 1})

    async with Publisher(inactive.amqp, fallback=fallback) as publisher:
        stored = await asyncio.wait_for(publisher.publish(message, Route("x", "k")), 5)
        failed = await asyncio.wait_for(
            publisher.publish(message, Route("x", "k"), use_fallback=False), 5
        )

    assert stored.status is PublishStatus.PERSISTED
    assert stored.error is not None and "rabbit_active" in stored.error
    assert [(r, m.id) for r, m, _ in fallback.items] == [(Route("x", "k"), message.id)]
    assert failed.status is PublishStatus.FAILED
    assert failed.error is not None and "rabbit_active" in failed.error
    assert endpoint.accepted == 0


async def test_refused_connection_fails_fast_and_the_open_circuit_spares_the_next_call(
    settings: Settings, endpoint: Endpoint
) -> None:
    down = at(settings, endpoint.url, circuit_open_seconds=30.0)  # the port is closed
    fallback = RecordingFallback()
    first, second = Message(type="t", payload=1), Message(type="t", payload=2)

    async with Publisher(down.amqp, fallback=fallback) as publisher:
        refused = await asyncio.wait_for(
            publisher.publish(first, Route("x", "k"), use_fallback=False), down.connect_timeout
        )
        persisted = await asyncio.wait_for(publisher.publish(second, Route("x", "k")), 5)

    assert refused.status is PublishStatus.FAILED
    assert refused.error is not None and "cannot connect" in refused.error
    assert persisted.status is PublishStatus.PERSISTED
    assert persisted.error is not None and "circuit open" in persisted.error
    assert [m.id for _, m, _ in fallback.items] == [second.id]


async def test_unresponsive_broker_is_given_up_after_the_connect_timeout_then_circuit_opens(
    settings: Settings, endpoint: Endpoint
) -> None:
    await endpoint.open("silent")
    hung = at(settings, endpoint.url, connect_timeout=1.0, circuit_open_seconds=30.0)
    fallback = RecordingFallback()

    async with Publisher(hung.amqp, fallback=fallback) as publisher:
        first = await asyncio.wait_for(
            publisher.publish(Message(type="t", payload=1), Route("x", "k")),
            hung.connect_timeout + 5,
        )
        second = await asyncio.wait_for(
            publisher.publish(Message(type="t", payload=2), Route("x", "k")), 5
        )

    assert first.status is PublishStatus.PERSISTED
    assert first.error is not None and "cannot connect" in first.error
    assert second.status is PublishStatus.PERSISTED
    assert second.error is not None and "circuit open" in second.error
    assert endpoint.accepted == 1  # the open circuit did not even try
    assert len(fallback.items) == 2


async def test_after_the_circuit_closes_the_publisher_reaches_a_broker_that_came_back(
    settings: Settings, declarer: Declarer, endpoint: Endpoint
) -> None:
    queue = await plain_queue(declarer, settings)
    flaky = at(settings, endpoint.url, circuit_open_seconds=0.5)

    async with Publisher(flaky.amqp) as publisher:
        down = await publisher.publish(Message(type="t", payload=1), Route("", queue))
        await endpoint.open("forward")  # the broker is back
        await asyncio.sleep(flaky.circuit_open_seconds)  # let the circuit close
        back = await publisher.publish(Message(type="t", payload=2), Route("", queue))

    assert down.status is PublishStatus.FAILED
    assert back.status is PublishStatus.PUBLISHED
    assert await declarer.queue_size(queue) == 1


async def test_a_broker_that_stops_answering_is_given_up_after_the_publish_timeout(
    settings: Settings, declarer: Declarer, endpoint: Endpoint
) -> None:
    queue = await plain_queue(declarer, settings)
    await endpoint.open("forward")
    frozen = at(settings, endpoint.url, publish_timeout=1.0, circuit_open_seconds=30.0)
    fallback = RecordingFallback()

    async with Publisher(frozen.amqp, fallback=fallback) as publisher:
        before = await publisher.publish(Message(type="t", payload=1), Route("", queue))
        endpoint.freeze()  # the network path dies silently: no confirm will come
        try:
            stuck = await asyncio.wait_for(
                publisher.publish(Message(type="t", payload=2), Route("", queue)),
                frozen.publish_timeout + 5,
            )
            spared = await asyncio.wait_for(
                publisher.publish(Message(type="t", payload=3), Route("", queue)), 5
            )
        finally:
            endpoint.thaw()

    assert before.status is PublishStatus.PUBLISHED
    assert stuck.status is PublishStatus.PERSISTED
    assert stuck.error is not None and "no confirm within" in stuck.error
    assert spared.status is PublishStatus.PERSISTED
    assert spared.error is not None and "circuit open" in spared.error
    assert [m.payload for _, m, _ in fallback.items] == [2, 3]


async def test_nothing_is_lost_when_the_connection_is_cut_mid_stream(
    settings: Settings, declarer: Declarer, broker: BrokerProbe, endpoint: Endpoint
) -> None:
    # Every message ends confirmed in the queue or stored by the fallback, and the
    # publisher finds the broker again by itself once the circuit closes.
    queue = await plain_queue(declarer, settings)
    await endpoint.open("forward")
    flaky = at(settings, endpoint.url, circuit_open_seconds=0.2)
    fallback = RecordingFallback()
    results: list[PublishResult] = []

    async with Publisher(flaky.amqp, fallback=fallback) as publisher:

        async def send(n: int) -> PublishStatus:
            result = await publisher.publish(Message(type="t", payload=n), Route("", queue))
            results.append(result)
            return result.status

        for n in range(50):
            assert await send(n) is PublishStatus.PUBLISHED
        endpoint.cut()
        n = 50
        while await send(n) is not PublishStatus.PUBLISHED:
            assert n < 5000, "the publisher never reconnected"
            n += 1
            await asyncio.sleep(0.01)

    published = {r.message_id for r in results if r.status is PublishStatus.PUBLISHED}
    persisted = {r.message_id for r in results if r.status is PublishStatus.PERSISTED}
    assert published | persisted == {r.message_id for r in results}
    assert persisted == {m.id for _, m, _ in fallback.items}
    in_queue = {r.headers["rr_id"] for r in await broker.get_all(queue)}
    assert published <= in_queue


async def test_a_fallback_that_cannot_store_raises_storage_error(
    settings: Settings, declarer: Declarer, endpoint: Endpoint
) -> None:
    broken = RecordingFallback(broken=True)
    message = Message(type="t", payload={})

    async with Publisher(settings.amqp, fallback=broken) as publisher:
        with pytest.raises(StorageError, match="database is down"):
            await publisher.publish(message, Route("", f"{settings.namespace}.no-queue"))
    async with Publisher(at(settings, endpoint.url).amqp, fallback=broken) as publisher:
        with pytest.raises(StorageError):
            await publisher.publish_many([(message, Route("x", "k"))] * 3)
    inactive = at(settings, endpoint.url, rabbit_active=False)
    async with Publisher(inactive.amqp, fallback=broken) as publisher:
        with pytest.raises(StorageError):
            await publisher.publish(message, Route("x", "k"))


async def test_the_published_body_is_the_original_bytes_of_a_consumed_message(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    # Re-publishing (the outbox, a retry) must send the bytes that came in, not a re-encoding.
    queue = await plain_queue(declarer, settings)
    original = b'{ "b": 2,  "a": "\\u00e9" }'
    message = Message(type="t", payload=json.loads(original), raw_body=original)
    async with Publisher(settings.amqp) as publisher:
        result = await publisher.publish(message, Route("", queue))
    assert result.status is PublishStatus.PUBLISHED
    (got,) = await broker.get_all(queue)
    assert got.body == original
    assert got.properties.timestamp == int(message.timestamp.timestamp())
    assert message.timestamp.tzinfo is dt.UTC
