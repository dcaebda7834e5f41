"""Consuming against the real broker: handlers by type, ack after the work, retries through the
retry queues, dead letters with their reason, malformed input, batches, RoadRunner's messages.

Every test runs a real :class:`Worker` on a work queue of its own namespace (``Q``, ``Q.dlq``,
``Q.retry.200``, ``Q.retry.400`` with the test settings) and looks at the queues afterwards
the way an operator would: with pika and the broker's own counters.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from helpers import Eventually, Handled, at_least, publish, work
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.messaging.consumer import Reject, Retry, Subscription
from rabbitry.messaging.envelope import Message, content_id
from rabbitry.messaging.topology import (
    Exchange,
    ExchangeType,
    Topology,
    dlq_name,
    retry_queue_name,
)

if TYPE_CHECKING:
    from conftest import BrokerProbe, Received, WorkerRunner

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def size_is(declarer: Declarer, queue: str, expected: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await declarer.queue_size(queue) == expected

    return check


def by_id(received: Sequence[Received]) -> dict[str, Received]:
    return {str(r.headers.get("rr_id") or r.properties.message_id): r for r in received}


# --- handlers and acks -----------------------------------------------------------------------


async def test_each_message_goes_to_the_handler_of_its_type_else_to_the_default(
    settings: Settings,
    declarer: Declarer,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    seen: list[tuple[str, str, Any]] = []

    def recorder(name: str) -> Callable[[Message], Awaitable[None]]:
        async def handle(message: Message) -> None:
            seen.append((name, message.type, message.payload))

        return handle

    subscription = Subscription(
        queue,
        handlers={"invoice.created": recorder("invoices"), "user.deleted": recorder("users")},
        default=recorder("default"),
    )
    async with run_worker([subscription], topology):
        await publish(
            settings,
            queue,
            Message(type="invoice.created", payload={"id": 1}),
            Message(type="user.deleted", payload={"id": 2}),
            Message(type="something.else", payload={"id": 3}),
        )
        await eventually(at_least(seen, 3), what="three handled messages")

    assert sorted(seen) == [
        ("default", "something.else", {"id": 3}),
        ("invoices", "invoice.created", {"id": 1}),
        ("users", "user.deleted", {"id": 2}),
    ]
    assert await declarer.queue_size(queue) == 0
    assert await declarer.queue_size(dlq_name(queue)) == 0


async def test_a_type_nobody_handles_is_dead_lettered_with_the_reason(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    handled = Handled()

    orphan = Message(type="nobody.listens", payload={})
    async with run_worker([Subscription(queue, handlers={"known": handled})], topology):
        await publish(settings, queue, orphan)
        await eventually(size_is(declarer, dlq_name(queue), 1), what="the dead letter")

    (dead,) = await broker.get_all(dlq_name(queue))
    assert dead.headers["rr_id"] == orphan.id
    assert dead.headers["x-rabbitry-reason"] == "no handler for message type 'nobody.listens'"
    assert handled == []
    assert await declarer.queue_size(queue) == 0


async def test_a_delivery_is_acked_only_once_its_handler_has_finished(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(message: Message) -> None:
        started.set()
        await release.wait()
        finished.append(message.id)

    message = Message(type="job", payload={})
    async with run_worker([Subscription(queue, default=slow)], topology):
        await publish(settings, queue, message)
        await asyncio.wait_for(started.wait(), 15)
        # The handler is busy: the broker holds the message as delivered but not acked.
        assert await broker.counts(queue) == (0, 1)
        release.set()
        await eventually(at_least(finished, 1), what="the handler to finish")

        async def settled() -> bool:
            return await broker.counts(queue) == (0, 0)

        await eventually(settled, what="the ack")

    assert finished == [message.id]
    assert await declarer.queue_size(dlq_name(queue)) == 0


# --- retries and dead letters ----------------------------------------------------------------


async def test_a_failing_handler_is_retried_with_growing_attempts_then_dead_lettered(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    attempts: list[int] = []

    async def failing(message: Message) -> None:
        attempts.append(message.attempt)
        raise RuntimeError(f"boom on try {message.attempt + 1}")

    message = Message(type="job", payload={"k": "v"})
    async with run_worker([Subscription(queue, default=failing)], topology):
        await publish(settings, queue, message)
        await eventually(size_is(declarer, dlq_name(queue), 1), what="the dead letter")

    assert attempts == [0, 1, 2]  # max_attempts=3 tries in all
    (dead,) = await broker.get_all(dlq_name(queue))
    assert dead.headers["rr_id"] == message.id
    assert dead.body == b'{"k":"v"}'
    assert dead.headers["x-rabbitry-reason"] == "boom on try 3"
    assert dead.headers["x-rabbitry-error"] == "RuntimeError: boom on try 3"
    assert dead.headers["x-rabbitry-attempt"] == 3
    assert dead.tags["x-rabbitry-attempt"] == "l"
    assert dead.headers["x-rabbitry-queue"] == queue
    # The two retries waited in the two delay tiers (0.2 s, then 0.4 s), not in a hot loop.
    died_in = {death["queue"] for death in dead.headers["x-death"]}
    assert died_in == {retry_queue_name(queue, 200), retry_queue_name(queue, 400)}
    for name in (queue, retry_queue_name(queue, 200), retry_queue_name(queue, 400)):
        assert await declarer.queue_size(name) == 0


async def test_retry_with_a_delay_waits_in_the_smallest_tier_at_least_that_long(
    settings: Settings,
    declarer: Declarer,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    deliveries: list[Message] = []

    async def later(message: Message) -> None:
        deliveries.append(message)
        if len(deliveries) == 1:
            raise Retry(delay=0.3, reason="stock not there yet")

    async with run_worker([Subscription(queue, default=later)], topology):
        await publish(settings, queue, Message(type="job", payload={}))
        await eventually(at_least(deliveries, 2), what="the retried delivery")

    first, second = deliveries
    assert (first.attempt, second.attempt) == (0, 1)
    assert second.id == first.id
    assert second.extra["x-rabbitry-error"] == "Retry: stock not there yet"
    # 0.3 s asked for, tiers are 0.2 s and 0.4 s: it waited in the 0.4 s queue.
    assert [d["queue"] for d in second.extra["x-death"]] == [retry_queue_name(queue, 400)]
    assert await declarer.queue_size(dlq_name(queue)) == 0
    assert await declarer.queue_size(queue) == 0


async def test_reject_dead_letters_at_once_with_the_handlers_reason(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    calls: list[int] = []

    async def rejecting(message: Message) -> None:
        calls.append(message.attempt)
        raise Reject("customer 7 does not exist")

    message = Message(type="job", payload={"customer": 7})
    async with run_worker([Subscription(queue, default=rejecting)], topology):
        await publish(settings, queue, message)
        await eventually(size_is(declarer, dlq_name(queue), 1), what="the dead letter")

    assert calls == [0]
    (dead,) = await broker.get_all(dlq_name(queue))
    assert dead.headers["rr_id"] == message.id
    assert dead.headers["x-rabbitry-reason"] == "customer 7 does not exist"
    assert dead.headers["x-rabbitry-error"] == "Reject: customer 7 does not exist"
    assert dead.headers["x-rabbitry-attempt"] == 1
    assert "x-death" not in dead.headers  # never went through a retry queue
    assert await declarer.queue_size(queue) == 0


async def test_malformed_messages_are_dead_lettered_at_once_with_the_reason(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    handled = Handled()

    async with run_worker([Subscription(queue, default=handled)], topology):
        await broker.publish(
            "", queue, b'{"broken": ', headers={"rr_job": "job"}, message_id="bad-json"
        )
        await broker.publish("", queue, b'{"a": 1}', message_id="no-type")
        await broker.publish("", queue, b"\xff\xfe", headers={"rr_job": "job"}, message_id="bin")
        await broker.publish("", queue, b'{"ok": 1}', headers={"rr_job": "job"}, message_id="ok")
        await eventually(size_is(declarer, dlq_name(queue), 3), what="three dead letters")
        await eventually(at_least(handled, 1), what="the good message")

    assert [m.id for m in handled] == ["ok"]
    dead = by_id(await broker.get_all(dlq_name(queue)))
    assert set(dead) == {"bad-json", "no-type", "bin"}
    assert dead["bad-json"].headers["x-rabbitry-reason"].startswith("body is not JSON")
    assert dead["no-type"].headers["x-rabbitry-reason"] == (
        "missing rr_job header (the message type)"
    )
    assert dead["bin"].headers["x-rabbitry-reason"].startswith("body is not UTF-8")
    for letter in dead.values():
        assert letter.headers["x-rabbitry-error"].startswith("MessageError: ")
        assert letter.headers["x-rabbitry-attempt"] == 1  # no retries for bad input
    assert dead["bad-json"].body == b'{"broken": '  # kept byte for byte, for inspection
    assert await declarer.queue_size(queue) == 0


async def test_a_lenient_subscription_takes_a_message_without_rr_job_as_deduced_by_rr(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    handled = Handled()

    async with run_worker([Subscription(queue, default=handled, strict=False)], topology):
        await broker.publish("", queue, b'{"a": 1}', message_id="m-1")
        await eventually(at_least(handled, 1), what="the message")

    (message,) = handled
    assert (message.type, message.id, message.payload) == ("deduced_by_rr", "m-1", {"a": 1})
    assert await declarer.queue_size(dlq_name(queue)) == 0


# --- batches ---------------------------------------------------------------------------------


async def test_a_batch_handler_gets_batches_and_each_outcome_is_settled_on_its_own(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    batches: list[list[tuple[str, int]]] = []
    done: list[str] = []
    kinds = ["ok", "ok", "ok", "reject", "flaky"] * 6  # 30 messages
    messages = [Message(type=kind, payload={"n": n}) for n, kind in enumerate(kinds)]

    async def handle(batch: Sequence[Message]) -> list[BaseException | None]:
        batches.append([(m.type, m.attempt) for m in batch])
        outcomes: list[BaseException | None] = []
        for message in batch:
            if message.type == "reject":
                outcomes.append(Reject(f"bad item {message.payload['n']}"))
            elif message.type == "flaky" and message.attempt == 0:
                outcomes.append(RuntimeError("flaky the first time"))
            else:
                outcomes.append(None)
                done.append(message.id)
        return outcomes

    # Queued before the worker starts, so deliveries arrive back to back and batch up.
    await declarer.declare(topology)
    await publish(settings, queue, *messages)
    subscription = Subscription(queue, batch=handle, batch_size=10)
    async with run_worker([subscription], topology):
        await eventually(size_is(declarer, dlq_name(queue), 6), what="six dead letters")
        await eventually(at_least(done, 24), what="24 successes")

    assert all(1 <= len(batch) <= 10 for batch in batches)
    assert max(len(batch) for batch in batches) > 1
    first_tries = [item for batch in batches for item in batch if item[1] == 0]
    assert len(first_tries) == 30
    retried = [item for batch in batches for item in batch if item[1] > 0]
    assert retried == [("flaky", 1)] * 6  # only the failed ones came back, once each
    expected_done = {m.id for m in messages if m.type != "reject"}
    assert set(done) == expected_done and len(done) == 24
    dead = by_id(await broker.get_all(dlq_name(queue)))
    assert set(dead) == {m.id for m in messages if m.type == "reject"}
    assert {d.headers["x-rabbitry-reason"] for d in dead.values()} == {
        f"bad item {n}" for n in range(3, 30, 5)
    }
    assert await broker.counts(queue) == (0, 0)


async def test_batch_calls_with_concurrency_run_at_once_and_start_in_delivery_order(
    settings: Settings,
    declarer: Declarer,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    messages = [Message(type="job", payload={"n": n}) for n in range(60)]
    started: list[int] = []  # the messages' numbers, as each call began with them
    running = 0
    most_at_once = 0
    done: list[int] = []

    async def handle(batch: Sequence[Message]) -> list[BaseException | None]:
        nonlocal running, most_at_once
        started.extend(m.payload["n"] for m in batch)
        running += 1
        most_at_once = max(most_at_once, running)
        await asyncio.sleep(0.05)  # long enough that the next calls start meanwhile
        running -= 1
        done.extend(m.payload["n"] for m in batch)
        return [None] * len(batch)

    await declarer.declare(topology)
    await publish(settings, queue, *messages)
    subscription = Subscription(queue, batch=handle, batch_size=5, concurrency=3, prefetch=60)
    async with run_worker([subscription], topology):
        await eventually(at_least(done, 60), what="every message handled")
    assert started == list(range(60))  # each call took the oldest deliveries waiting
    assert most_at_once == 3


async def test_concurrent_batch_calls_keep_delivery_order_around_malformed_messages(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # Dead-lettering a malformed message waits for the broker: done before its call's
    # handler started, it let the next call hand over later messages first.
    queue, topology = work(settings)
    started: list[int] = []
    done: list[int] = []

    async def handle(batch: Sequence[Message]) -> list[BaseException | None]:
        started.extend(m.payload["n"] for m in batch)
        await asyncio.sleep(0.02)
        done.extend(m.payload["n"] for m in batch)
        return [None] * len(batch)

    await declarer.declare(topology)
    malformed = {2, 23}  # in some calls' lists, not all (those would all wait alike)
    good = [n for n in range(40) if n not in malformed]
    for n in range(40):
        body = b'{"broken": ' if n in malformed else json.dumps({"n": n}).encode()
        await broker.publish("", queue, body, headers={"rr_job": "job"}, message_id=f"m{n}")
    subscription = Subscription(queue, batch=handle, batch_size=5, concurrency=3, prefetch=40)
    async with run_worker([subscription], topology):
        await eventually(at_least(done, len(good)), what="every good message")
        await eventually(size_is(declarer, dlq_name(queue), 2), what="two dead letters")
    assert started == good


async def test_a_batch_handler_returning_the_wrong_number_of_outcomes_fails_that_batch_only(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # A buggy batch handler must not stall the subscription with its messages unacked: the
    # batch counts as failed (retried, then dead-lettered) and later batches go on.
    queue, topology = work(settings)
    done: list[str] = []

    async def handle(batch: Sequence[Message]) -> list[BaseException | None]:
        if any(m.type == "buggy" for m in batch):
            return []
        done.extend(m.id for m in batch)
        return [None] * len(batch)

    buggy, fine = Message(type="buggy", payload={}), Message(type="fine", payload={})
    async with run_worker([Subscription(queue, batch=handle)], topology):
        await publish(settings, queue, buggy)
        await eventually(size_is(declarer, dlq_name(queue), 1), what="the dead letter")
        await publish(settings, queue, fine)
        await eventually(at_least(done, 1), what="the next batch")

    assert done == [fine.id]
    (dead,) = await broker.get_all(dlq_name(queue))
    assert dead.headers["rr_id"] == buggy.id
    assert dead.headers["x-rabbitry-attempt"] == settings.max_attempts
    assert "outcome" in dead.headers["x-rabbitry-reason"]
    assert await broker.counts(queue) == (0, 0)


# --- RoadRunner interop ----------------------------------------------------------------------


async def test_a_job_published_by_roadrunner_is_consumed_with_its_id_name_and_headers(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # E1/E2 of docs/message-format.md, as a PHP service's RoadRunner writes it:
    # octet-stream, no message_id, pika's int widths (I), rr_headers as bytes with a trace key.
    exchange = f"{settings.namespace}.amqp.default"
    queue, topology = work(settings, "emails", bindings=[(exchange, "emails")])
    topology |= Topology.of(exchanges=[Exchange(exchange, ExchangeType.DIRECT)])
    handled: list[Message] = []

    async def send_email(message: Message) -> None:
        handled.append(message)

    job_id = str(uuid.uuid4())
    body = b'{"to":"a@example.com","template":"welcome"}'
    headers = {
        "rr_id": job_id,
        "rr_job": "App\\Jobs\\SendEmail",
        "rr_pipeline": "emails",
        "rr_headers": b'{"attempts":["1"],"Traceparent":["' + TRACEPARENT.encode() + b'"]}',
        "rr_delay": 0,
        "rr_priority": 10,
        "rr_auto_ack": False,
    }
    minimal_body = b'{"to":"b@example.com"}'
    subscription = Subscription(queue, handlers={"App\\Jobs\\SendEmail": send_email})
    async with run_worker([subscription], topology):
        await broker.publish(
            exchange,
            "emails",
            body,
            headers=headers,
            content_type="application/octet-stream",
            delivery_mode=2,
            timestamp=1_738_843_200,
        )
        # E5: the least a third party may send to RoadRunner >= 2023.3.
        await broker.publish(
            exchange, "emails", minimal_body, headers={"rr_job": "App\\Jobs\\SendEmail"}
        )
        await eventually(at_least(handled, 2), what="both jobs")

    full, minimal = sorted(handled, key=lambda m: m.raw_body != body)
    assert full.id == job_id
    assert full.type == "App\\Jobs\\SendEmail"
    assert full.pipeline == "emails"
    assert full.payload == {"to": "a@example.com", "template": "welcome"}
    assert full.raw_body == body
    assert dict(full.headers) == {
        "attempts": ("1",),
        "Traceparent": (TRACEPARENT,),
    }
    assert (full.delay, full.priority, full.auto_ack, full.attempt) == (0, 10, False, 0)
    assert int(full.timestamp.timestamp()) == 1_738_843_200

    assert minimal.type == "App\\Jobs\\SendEmail"
    assert minimal.payload == {"to": "b@example.com"}
    # No rr_id, no message_id: an id derived from the content, the same on a redelivery.
    assert minimal.id == content_id("App\\Jobs\\SendEmail", None, minimal_body)
    assert (minimal.pipeline, dict(minimal.headers), minimal.priority) == ("", {}, 10)
    assert await declarer.queue_size(dlq_name(queue)) == 0
    assert await declarer.queue_size(queue) == 0


async def test_a_rabbitry_message_round_trips_through_the_consumer_unchanged(
    settings: Settings,
    run_worker: WorkerRunner,
    declarer: Declarer,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    handled = Handled()

    sent = Message(
        type="invoice.paid",
        payload={"id": 7, "total": "12.50", "lines": [1, 2]},
        headers={"x-source": ("billing",)},
        pipeline="billing",
        tenant="acme",
        correlation_id="corr-9",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    async with run_worker([Subscription(queue, default=handled)], topology):
        await publish(settings, queue, sent)
        await eventually(at_least(handled, 1), what="the message")

    (got,) = handled
    assert (got.id, got.type, got.payload, dict(got.headers)) == (
        sent.id,
        sent.type,
        sent.payload,
        {"x-source": ("billing",)},
    )
    assert (got.pipeline, got.tenant, got.correlation_id, got.traceparent) == (
        "billing",
        "acme",
        "corr-9",
        sent.traceparent,
    )
    assert got.timestamp == sent.timestamp
    assert json.loads(got.raw_body or b"") == sent.payload
