"""Rabbitry's own decisions, checked on the in-memory broker with virtual time: which retry tier a
failure waits in and for how long, when a message is dead-lettered and with what, how the
publisher's circuit breaker spares a broker that is down, how a worker gives messages back.

The same Publisher, Worker and Consumer run here as in production; tests/integration/
test_core_behaviour.py runs the shared behaviour on RabbitMQ too, so these stay true there.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

import rabbitry
import rabbitry.testing
from helpers import RecordingFallback, eventually_true
from rabbitry import (
    AmqpSettings,
    Binding,
    ConfigError,
    Message,
    MessageError,
    NotFound,
    PublishStatus,
    PublishUnroutable,
    Queue,
    Reject,
    Retry,
    RetryPolicy,
    Route,
    Subscription,
    Topology,
    Worker,
    dlq_name,
    retry_queue_name,
    work_queue,
)
from rabbitry.testing import MemoryBroker, topic_matches

QUEUE = "shop.emails"


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``condition`` as an async check for ``eventually_true``."""

    async def check() -> bool:
        return condition()

    return check


POLICY = RetryPolicy(max_attempts=4, base_delay=1.0)  # waits 1 s, 2 s, 4 s, then dead letter
TOPOLOGY = work_queue(QUEUE, policy=POLICY)


def worker(
    handler: Callable[[Message], Awaitable[None]],
    *,
    policy: RetryPolicy = POLICY,
    amqp: AmqpSettings | None = None,
    prefetch: int | None = None,
) -> Worker:
    topology = work_queue(QUEUE, policy=policy)
    sub = Subscription(QUEUE, default=handler, prefetch=prefetch)
    return Worker("emails", [sub], topology, amqp=amqp, retry=policy)


async def send(broker: MemoryBroker, *payloads: object) -> list[Message]:
    messages = [Message(type="email", payload=p) for p in payloads]
    async with broker.publisher() as publisher:
        results = await publisher.publish_many([(m, Route("", QUEUE)) for m in messages])
    assert all(r.ok for r in results), results
    return messages


# --- retries ---------------------------------------------------------------------------------


async def test_a_failure_waits_in_its_tier_until_the_ttl_has_passed_not_a_moment_less() -> None:
    broker = MemoryBroker()
    tries: list[int] = []

    async def flaky(message: Message) -> None:
        tries.append(message.attempt)
        if message.attempt == 0:
            raise RuntimeError("smtp down")

    async with broker.running(worker(flaky)):
        await send(broker, {"to": "ana@example.com"})
        await broker.drain()
        assert tries == [0]
        assert broker.counts(retry_queue_name(QUEUE, 1000)) == (1, 0)

        await broker.advance(0.999)
        assert tries == [0]
        await broker.advance(0.001)

    assert tries == [0, 1]
    assert broker.time == 1.0
    assert broker.counts(retry_queue_name(QUEUE, 1000)) == (0, 0)
    assert broker.counts(dlq_name(QUEUE)) == (0, 0)


async def test_each_failure_waits_in_the_next_tier_and_the_last_try_is_dead_lettered() -> None:
    broker = MemoryBroker()
    handled_at: list[tuple[float, int]] = []

    async def failing(message: Message) -> None:
        handled_at.append((broker.time, message.attempt))
        raise RuntimeError("always")

    async with broker.running(worker(failing)):
        await send(broker, {})
        await broker.drain(retries=True)

    assert handled_at == [(0.0, 0), (1.0, 1), (3.0, 2), (7.0, 3)]  # 1 s, 2 s, 4 s between
    (dead,) = broker.get_all(dlq_name(QUEUE))
    assert dead.headers["x-rabbitry-attempt"] == 4
    assert dead.headers["x-rabbitry-reason"] == "always"
    assert [d["queue"] for d in dead.headers["x-death"]] == [
        retry_queue_name(QUEUE, ms) for ms in (4000, 2000, 1000)
    ]


async def test_retry_asking_for_longer_than_every_tier_waits_in_the_longest() -> None:
    broker = MemoryBroker()
    handled_at: list[float] = []

    async def later(message: Message) -> None:
        handled_at.append(broker.time)
        if message.attempt == 0:
            raise Retry(delay=3600, reason="come back in an hour")

    async with broker.running(worker(later)):
        await send(broker, {})
        await broker.drain()
        assert broker.counts(retry_queue_name(QUEUE, 4000)) == (1, 0)
        await broker.drain(retries=True)

    assert handled_at == [0.0, 4.0]


async def test_with_a_single_attempt_a_failure_is_dead_lettered_at_once() -> None:
    policy = RetryPolicy(max_attempts=1)
    broker = MemoryBroker()

    async def failing(message: Message) -> None:
        raise RuntimeError("no second chance")

    async with broker.running(worker(failing, policy=policy)):
        await send(broker, {})
        await broker.drain()

    assert policy.tiers_ms() == ()
    (dead,) = broker.get_all(dlq_name(QUEUE))
    assert (dead.headers["x-rabbitry-attempt"], dead.headers["x-rabbitry-reason"]) == (
        1,
        "no second chance",
    )


async def test_drain_without_retries_leaves_waiting_retries_where_they_are() -> None:
    broker = MemoryBroker()

    async def failing(message: Message) -> None:
        raise RuntimeError("later")

    async with broker.running(worker(failing)):
        await send(broker, {}, {})
        await broker.drain()

    assert broker.time == 0.0
    assert broker.counts(retry_queue_name(QUEUE, 1000)) == (2, 0)
    assert broker.counts(dlq_name(QUEUE)) == (0, 0)


# --- dead letters ----------------------------------------------------------------------------


async def test_a_dead_letter_decodes_to_the_original_message_with_the_reason_alongside() -> None:
    broker = MemoryBroker()

    async def rejecting(message: Message) -> None:
        raise Reject(f"no such customer {message.payload['customer']}")

    async with broker.running(worker(rejecting)):
        (sent,) = await send(broker, {"customer": 7})
        await broker.drain()

    (dead,) = broker.peek(dlq_name(QUEUE))
    message = dead.message()
    assert (message.id, message.type, message.payload) == (sent.id, "email", {"customer": 7})
    assert message.attempt == 1
    assert message.extra["x-rabbitry-reason"] == "no such customer 7"
    assert message.extra["x-rabbitry-queue"] == QUEUE


async def test_a_message_that_expires_on_the_work_queue_lands_in_its_dead_letter_queue() -> None:
    # The work queue's own dead-letter arguments catch what the broker rejects or expires.
    broker = MemoryBroker(TOPOLOGY)
    await broker.publish("", QUEUE, b"{}", headers={"rr_job": "email"}, expiration="500")
    await broker.advance(0.5)

    (dead,) = broker.get_all(dlq_name(QUEUE))
    assert dead.headers["x-death"][0]["reason"] == "expired"
    assert dead.headers["x-first-death-queue"] == QUEUE
    assert dead.properties.expiration is None
    assert broker.counts(QUEUE) == (0, 0)


async def test_a_malformed_dead_letter_still_raises_when_decoded_strictly() -> None:
    broker = MemoryBroker()
    async with broker.running(worker(lambda m: asyncio.sleep(0))):
        await broker.publish("", QUEUE, b"not json", headers={"rr_job": "email"})
        await broker.drain()

    (dead,) = broker.get_all(dlq_name(QUEUE))
    assert dead.body == b"not json"
    with pytest.raises(MessageError, match="not JSON"):
        dead.message(strict=True)


# --- the publisher's circuit breaker ---------------------------------------------------------


async def test_while_the_broker_is_down_the_circuit_sends_publishes_to_the_fallback_untried() -> (
    None
):
    broker = MemoryBroker(TOPOLOGY)
    kept = RecordingFallback()
    amqp = AmqpSettings(circuit_open_seconds=5.0)
    route = Route("", QUEUE)
    async with broker.publisher(amqp, fallback=kept) as publisher:
        with broker.outage():
            first = await publisher.publish(Message(type="email", payload=1), route)
            second = await publisher.publish(Message(type="email", payload=2), route)
        assert broker.connection_attempts == 1  # the second did not even try
        after_outage = await publisher.publish(Message(type="email", payload=3), route)
        assert broker.connection_attempts == 1  # the circuit is still open
        await broker.advance(5.0)
        probe = await publisher.publish(Message(type="email", payload=4), route)

    assert first.status is PublishStatus.PERSISTED
    assert first.error is not None and first.error.startswith("cannot connect to the broker")
    assert second.status is after_outage.status is PublishStatus.PERSISTED
    assert second.error is not None and "circuit open" in second.error
    assert probe.status is PublishStatus.PUBLISHED
    assert broker.connection_attempts == 2
    assert [message.payload for _, message, _ in kept.items] == [1, 2, 3]
    assert [m.body for m in broker.get_all(QUEUE)] == [b"4"]


async def test_a_cut_connection_is_reopened_by_the_next_publish_without_opening_the_circuit() -> (
    None
):
    broker = MemoryBroker(TOPOLOGY)
    async with broker.publisher(name="shop") as publisher:
        assert (await publisher.publish(Message(type="email", payload=1), Route("", QUEUE))).ok
        assert broker.close_connections("shop-publisher") == 1
        again = await publisher.publish(Message(type="email", payload=2), Route("", QUEUE))

    assert again.ok
    assert broker.connection_attempts == 2
    assert broker.counts(QUEUE) == (2, 0)


async def test_with_rabbit_active_false_the_broker_is_never_contacted() -> None:
    broker = MemoryBroker(TOPOLOGY)
    kept = RecordingFallback()
    async with broker.publisher(AmqpSettings(active=False), fallback=kept) as publisher:
        result = await publisher.publish(Message(type="email", payload=1), Route("", QUEUE))

    assert result.status is PublishStatus.PERSISTED
    assert broker.connection_attempts == 0
    assert len(kept.items) == 1 and broker.counts(QUEUE) == (0, 0)


async def test_without_a_fallback_a_publish_during_an_outage_is_reported_failed() -> None:
    broker = MemoryBroker(TOPOLOGY)
    async with broker.publisher() as publisher:
        with broker.outage():
            result = await publisher.publish(Message(type="email", payload=1), Route("", QUEUE))

    assert result.status is PublishStatus.FAILED
    assert result.error is not None and result.error.startswith("cannot connect to the broker")


async def test_during_an_alarm_a_publisher_fails_fast_to_its_fallback_and_recovers_after() -> None:
    broker = MemoryBroker(TOPOLOGY)
    kept = RecordingFallback()
    route = Route("", QUEUE)
    async with broker.publisher(fallback=kept) as publisher:
        assert (await publisher.publish(Message(type="email", payload=1), route)).ok
        with broker.alarm("memory high watermark"):
            await asyncio.sleep(0)
            assert publisher.blocked == "memory high watermark"
            during = await publisher.publish(Message(type="email", payload=2), route)
        after = await publisher.publish(Message(type="email", payload=3), route)

    assert during.status is PublishStatus.PERSISTED
    assert during.error is not None and "blocked by the broker" in during.error
    assert after.ok and publisher.blocked is None
    assert [m.body for m in broker.get_all(QUEUE)] == [b"1", b"3"]
    assert [message.payload for _, message, _ in kept.items] == [2]


async def test_a_publish_whose_confirm_an_alarm_holds_past_the_publish_timeout_is_persisted() -> (
    None
):
    broker = MemoryBroker(TOPOLOGY)
    kept = RecordingFallback()
    route = Route("", QUEUE)
    async with broker.publisher(AmqpSettings(publish_timeout=0.2), fallback=kept) as publisher:
        assert (await publisher.publish(Message(type="email", payload=1), route)).ok
        sending = asyncio.ensure_future(publisher.publish(Message(type="email", payload=2), route))
        await asyncio.sleep(0)  # written; the alarm starts before the broker reads it
        with broker.alarm():
            held = await asyncio.wait_for(sending, 10)

    # As on RabbitMQ: the publisher gives the connection up and the message goes to its outbox.
    assert held.status is PublishStatus.PERSISTED
    assert held.error is not None and held.error.startswith("no confirm within 0.2s"), held.error
    assert [message.payload for _, message, _ in kept.items] == [2]
    assert [m.body for m in broker.get_all(QUEUE)] == [b"1"]


async def test_a_retry_copy_held_by_an_alarm_goes_out_when_it_clears_and_only_then_the_ack() -> (
    None
):
    broker = MemoryBroker()
    release = asyncio.Event()
    tries: list[int] = []

    async def fails_once(message: Message) -> None:
        tries.append(message.attempt)
        await release.wait()
        if message.attempt == 0:
            raise RuntimeError("not yet")

    async with broker.running(worker(fails_once)):
        await send(broker, {})
        await asyncio.sleep(0.01)
        with broker.alarm():
            release.set()
            await asyncio.sleep(0.05)
            # The copy waits on the blocked connection; the original stays unacked, not lost.
            assert broker.counts(QUEUE) == (0, 1)
            assert broker.counts(retry_queue_name(QUEUE, 1000)) == (0, 0)
        await broker.drain(retries=True)

    assert tries == [0, 1]
    assert broker.counts(QUEUE) == (0, 0)
    assert broker.counts(dlq_name(QUEUE)) == (0, 0)


# --- consuming: prefetch, stop, outages ------------------------------------------------------


async def test_a_subscription_holds_no_more_unacked_deliveries_than_its_prefetch() -> None:
    broker = MemoryBroker()
    release = asyncio.Event()
    handled: list[Message] = []

    async def slow(message: Message) -> None:
        await release.wait()
        handled.append(message)

    async with broker.running(worker(slow, prefetch=2)):
        await send(broker, *range(5))
        await eventually_true(holds(lambda: broker.counts(QUEUE) == (3, 2)), what="two held")
        release.set()
        await broker.drain()

    assert sorted(m.payload for m in handled) == [0, 1, 2, 3, 4]
    assert broker.counts(QUEUE) == (0, 0)


async def test_stopping_a_worker_gives_back_what_it_had_not_finished_marked_redelivered() -> None:
    broker = MemoryBroker()
    started = asyncio.Event()

    async def stuck(message: Message) -> None:
        started.set()
        await asyncio.Event().wait()

    amqp = AmqpSettings(concurrency=1, drain_timeout=0.05)
    async with broker.running(worker(stuck, amqp=amqp)):
        await send(broker, 1, 2, 3)
        await asyncio.wait_for(started.wait(), 5)

    back = broker.peek(QUEUE)
    assert sorted(m.body for m in back) == [b"1", b"2", b"3"]
    assert all(m.redelivered for m in back)
    assert broker.counts(dlq_name(QUEUE)) == (0, 0)
    assert broker.connections == []


async def test_a_worker_rides_out_an_outage_and_handles_what_was_cut_off() -> None:
    broker = MemoryBroker()
    seen: list[bool] = []
    busy = asyncio.Event()

    async def handle(message: Message) -> None:
        seen.append(message.redelivered)
        if len(seen) == 1:
            busy.set()
            await asyncio.Event().wait()

    async with broker.running(worker(handle)):
        await send(broker, {})
        await asyncio.wait_for(busy.wait(), 5)
        with broker.outage():
            await broker.drain()  # the broker is down: nothing moves, nothing is lost
            assert broker.counts(QUEUE) == (1, 0)
            assert broker.connections == []
        await broker.drain(timeout=15)  # the worker reconnects (after its backoff) and handles it

    assert seen == [False, True]
    assert broker.counts(QUEUE) == (0, 0)


async def test_drain_reports_a_handler_that_never_returns() -> None:
    broker = MemoryBroker()

    async def hangs(message: Message) -> None:
        await asyncio.Event().wait()

    async with broker.running(worker(hangs, amqp=AmqpSettings(drain_timeout=0.05))):
        await send(broker, {})
        with pytest.raises(TimeoutError, match="1 delivery"):
            await broker.drain(timeout=0.2)


# --- the broker's own rules ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("orders.*", "orders.created", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.created.eu", False),
        ("orders.#", "orders", True),
        ("orders.#", "orders.created.eu", True),
        ("#", "", True),
        ("*", "", False),
        ("", "", True),
        ("#.vat", "vat", True),
        ("orders.#.vat", "orders.vat", True),
        ("orders.#.vat", "orders.eu.vat.x", False),
        ("*.*", "a.", True),
        ("orders.created", "orders.created", True),
    ],
)
def test_topic_patterns_match_as_rabbitmq_matches_them(
    pattern: str, key: str, matches: bool
) -> None:
    assert topic_matches(pattern, key) is matches


def test_declaring_a_queue_again_with_other_arguments_fails_as_on_rabbitmq() -> None:
    broker = MemoryBroker(Topology.of(queues=[Queue("jobs")]))
    broker.declare(Topology.of(queues=[Queue("jobs")]))  # the same again: fine

    with pytest.raises(ConfigError, match="PRECONDITION_FAILED"):
        broker.declare(Topology.of(queues=[Queue("jobs", arguments=(("x-message-ttl", 5),))]))


def test_a_binding_needs_its_exchange_and_its_queue() -> None:
    broker = MemoryBroker(Topology.of(queues=[Queue("jobs")]))

    with pytest.raises(NotFound, match="no exchange"):
        broker.bind(Binding("nowhere", "jobs", "k"))
    with pytest.raises(NotFound, match="no queue"):
        broker.bind(Binding("amq.topic", "missing", "k"))


async def test_a_foreign_publish_nobody_takes_is_refused_like_a_mandatory_one() -> None:
    broker = MemoryBroker(TOPOLOGY)

    with pytest.raises(PublishUnroutable):
        await broker.publish("amq.direct", "nobody", b"{}")
    with pytest.raises(NotFound, match="no exchange 'missing'"):
        await broker.publish("missing", "k", b"{}")


# --- the module itself -----------------------------------------------------------------------


def test_rabbitry_testing_lists_exactly_its_public_names_and_the_top_level_none_of_them() -> None:
    public = {name for name in dir(rabbitry.testing) if not name.startswith("_")}
    modules = {n for n in public if type(getattr(rabbitry.testing, n)).__name__ == "module"}
    assert set(rabbitry.testing.__all__) == public - modules - {"annotations"}
    assert not set(rabbitry.testing.__all__) & set(rabbitry.__all__)


def test_importing_rabbitry_testing_loads_no_web_orm_template_or_cli_code() -> None:
    probe = (
        "import sys, rabbitry.testing\n"
        "heavy = {'fastapi', 'starlette', 'uvicorn', 'sqlalchemy', 'typer', 'jinja2', 'alembic'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
