"""The core's behaviour, once, against both brokers: RabbitMQ and ``rabbitry.testing``'s
in-memory one. Every test runs twice (``[rabbitmq]`` and ``[memory]``) with the same code and
the same assertions, so the double users test their handlers with cannot drift from the broker.

The clients are the real ones on both sides (:class:`Publisher`, :class:`Worker`); only the
broker differs. The one difference the tests see is waiting: on RabbitMQ they poll until the
expected state shows up, on the in-memory broker ``drain(retries=True)`` runs every delivery and
retry first and the state must then already hold.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pika.exceptions  # type: ignore[import-untyped]  # pika ships no type hints
import pytest

from helpers import RecordingFallback, at_least, eventually_true
from rabbitry import (
    Binding,
    ConfigError,
    Exchange,
    ExchangeType,
    Fallback,
    Message,
    NotFound,
    Publisher,
    PublishStatus,
    PublishUnroutable,
    Queue,
    Reject,
    Retry,
    Route,
    Subscription,
    Topology,
    Worker,
    dlq_name,
    retry_queue_name,
    work_queue,
)
from rabbitry.config import Settings
from rabbitry.testing import MemoryBroker

if TYPE_CHECKING:
    from conftest import BrokerProbe, WorkerRunner
    from rabbitry.amqp.declarer import Declarer


@dataclass(frozen=True)
class Letter:
    """A message read back off a queue, the same on both brokers."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.headers.get("rr_id") or self.message_id)


class Core(Protocol):
    settings: Settings

    async def declare(self, topology: Topology) -> None: ...
    def publisher(self, fallback: Fallback | None = None) -> Publisher: ...
    def running(
        self, subscriptions: Sequence[Subscription], topology: Topology
    ) -> AbstractAsyncContextManager[Worker]: ...
    async def settle(self, check: Callable[[], Awaitable[bool]], what: str) -> None: ...
    async def elapse(self, seconds: float) -> None: ...
    async def take(self, queue: str) -> list[Letter]: ...
    async def counts(self, queue: str) -> tuple[int, int]: ...
    async def close_connections(self, name_part: str) -> int: ...
    async def delete(self, topology: Topology) -> None: ...
    async def publish_raw(
        self, exchange: str, key: str, body: bytes, headers: dict[str, Any] | None, **props: Any
    ) -> None: ...


@dataclass
class RabbitCore:
    settings: Settings
    declarer: Declarer
    probe: BrokerProbe
    run_worker: WorkerRunner

    async def declare(self, topology: Topology) -> None:
        await self.declarer.declare(topology)

    def publisher(self, fallback: Fallback | None = None) -> Publisher:
        name = f"{self.settings.namespace}-test"
        return Publisher(self.settings.amqp, fallback=fallback, name=name)

    def running(
        self, subscriptions: Sequence[Subscription], topology: Topology
    ) -> AbstractAsyncContextManager[Worker]:
        return self.run_worker(subscriptions, topology)

    async def settle(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        await eventually_true(check, what=what)

    async def elapse(self, seconds: float) -> None:
        pass  # the broker's clock is the real one: settle() waits for what it brings

    async def take(self, queue: str) -> list[Letter]:
        return [
            Letter(r.exchange, r.routing_key, r.body, r.properties.message_id, r.headers)
            for r in await self.probe.get_all(queue)
        ]

    async def counts(self, queue: str) -> tuple[int, int]:
        return await self.probe.counts(queue)

    async def close_connections(self, name_part: str) -> int:
        return await self.probe.close_connections(name_part)

    async def delete(self, topology: Topology) -> None:
        await self.declarer.delete(topology)

    async def publish_raw(
        self, exchange: str, key: str, body: bytes, headers: dict[str, Any] | None, **props: Any
    ) -> None:
        # pika's words for the two refusals, in Rabbitry's (as MemoryBroker.publish raises them)
        try:
            await self.probe.publish(exchange, key, body, headers=headers, **props)
        except pika.exceptions.UnroutableError as exc:
            raise PublishUnroutable(f"no queue bound to {exchange!r} for {key!r}") from exc
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise NotFound(exc.reply_text) from exc
            raise


@dataclass
class MemoryCore:
    settings: Settings
    broker: MemoryBroker = field(default_factory=MemoryBroker)

    async def declare(self, topology: Topology) -> None:
        self.broker.declare(topology)

    def publisher(self, fallback: Fallback | None = None) -> Publisher:
        name = f"{self.settings.namespace}-test"
        return self.broker.publisher(self.settings.amqp, fallback=fallback, name=name)

    @asynccontextmanager
    async def running(
        self, subscriptions: Sequence[Subscription], topology: Topology
    ) -> AsyncIterator[Worker]:
        s = self.settings
        worker = Worker(
            f"{s.namespace}-worker", subscriptions, topology, amqp=s.amqp, retry=s.retry
        )
        async with self.broker.running(worker) as running:
            yield running

    async def settle(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        await self.broker.drain(retries=True)
        assert await check(), f"not so after the broker drained: {what}"

    async def elapse(self, seconds: float) -> None:
        await self.broker.advance(seconds)

    async def take(self, queue: str) -> list[Letter]:
        return [
            Letter(m.exchange, m.routing_key, m.body, m.properties.message_id, m.headers)
            for m in self.broker.get_all(queue)
        ]

    async def counts(self, queue: str) -> tuple[int, int]:
        return self.broker.counts(queue)

    async def close_connections(self, name_part: str) -> int:
        return self.broker.close_connections(name_part)

    async def delete(self, topology: Topology) -> None:
        self.broker.delete(topology)

    async def publish_raw(
        self, exchange: str, key: str, body: bytes, headers: dict[str, Any] | None, **props: Any
    ) -> None:
        await self.broker.publish(exchange, key, body, headers=headers, **props)


@pytest.fixture(params=["rabbitmq", "memory"])
def core(request: pytest.FixtureRequest, settings: Settings) -> Core:
    if request.param == "memory":
        return MemoryCore(settings)
    return RabbitCore(
        settings,
        request.getfixturevalue("declarer"),
        request.getfixturevalue("broker"),
        request.getfixturevalue("run_worker"),
    )


# --- helpers ---------------------------------------------------------------------------------


def work(core: Core, name: str = "work", **kwargs: Any) -> tuple[str, Topology]:
    queue = f"{core.settings.namespace}.{name}"
    return queue, work_queue(queue, policy=core.settings.retry, **kwargs)


async def publish(core: Core, route: Route, *messages: Message) -> None:
    async with core.publisher() as publisher:
        results = await publisher.publish_many([(m, route) for m in messages])
    assert {r.status for r in results} == {PublishStatus.PUBLISHED}, results


def has(core: Core, queue: str, ready: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await core.counts(queue))[0] == ready

    return check


def recorder(into: list[Message]) -> Callable[[Message], Awaitable[None]]:
    async def handle(message: Message) -> None:
        into.append(message)

    return handle


def plain_queues(core: Core, *names: str) -> tuple[list[str], Topology]:
    queues = [f"{core.settings.namespace}.{name}" for name in names]
    return queues, Topology.of(queues=[Queue(q) for q in queues])


async def routed(core: Core, queues: Sequence[str]) -> dict[str, list[str]]:
    """Queue suffix -> routing keys of the messages it got, in arrival order."""
    return {q.rsplit(".", 1)[1]: [x.routing_key for x in await core.take(q)] for q in queues}


# --- routing ---------------------------------------------------------------------------------


async def test_a_direct_exchange_routes_by_the_exact_key_and_an_unbound_key_is_unroutable(
    core: Core,
) -> None:
    exchange = f"{core.settings.namespace}.direct"
    queues, topology = plain_queues(core, "a", "b", "c")
    a, b, c = queues
    topology |= Topology.of(
        exchanges=[Exchange(exchange, ExchangeType.DIRECT)],
        bindings=[
            Binding(exchange, a, "alpha"),
            Binding(exchange, b, "beta"),
            Binding(exchange, b, "shared"),
            Binding(exchange, c, "shared"),
        ],
    )
    await core.declare(topology)
    keys = ["alpha", "beta", "shared", "Alpha", "alpha.x"]
    async with core.publisher() as publisher:
        results = [
            await publisher.publish(Message(type="t", payload=k), Route(exchange, k)) for k in keys
        ]

    assert [r.status for r in results] == [PublishStatus.PUBLISHED] * 3 + [PublishStatus.FAILED] * 2
    assert results[3].error == "unroutable: no queue is bound for this exchange and routing key"
    assert await routed(core, queues) == {"a": ["alpha"], "b": ["beta", "shared"], "c": ["shared"]}


async def test_a_topic_exchange_matches_star_as_one_word_and_hash_as_any_number(
    core: Core,
) -> None:
    exchange = f"{core.settings.namespace}.topic"
    patterns = {
        "one": "orders.*",
        "tail": "orders.#",
        "all": "#",
        "created": "*.created",
        "eu": "orders.*.eu.#",
        "mid": "orders.#.vat",
    }
    queues, topology = plain_queues(core, *patterns)
    topology |= Topology.of(
        exchanges=[Exchange(exchange, ExchangeType.TOPIC)],
        bindings=[Binding(exchange, q, patterns[q.rsplit(".", 1)[1]]) for q in queues],
    )
    await core.declare(topology)
    keys = ["orders", "orders.created", "orders.paid.eu", "orders.paid.eu.vat", "users.created", ""]
    async with core.publisher() as publisher:
        for key in keys:
            assert (
                await publisher.publish(Message(type="t", payload=key), Route(exchange, key))
            ).ok

    assert await routed(core, queues) == {
        "one": ["orders.created"],
        "tail": ["orders", "orders.created", "orders.paid.eu", "orders.paid.eu.vat"],
        "all": keys,
        "created": ["orders.created", "users.created"],
        "eu": ["orders.paid.eu", "orders.paid.eu.vat"],
        "mid": ["orders.paid.eu.vat"],
    }


async def test_a_fanout_exchange_copies_each_message_to_every_bound_queue_whatever_its_key(
    core: Core,
) -> None:
    exchange = f"{core.settings.namespace}.fanout"
    queues, topology = plain_queues(core, "x", "y")
    topology |= Topology.of(
        exchanges=[Exchange(exchange, ExchangeType.FANOUT)],
        bindings=[Binding(exchange, q, "ignored") for q in queues],
    )
    await core.declare(topology)
    await publish(core, Route(exchange, "any.key"), Message(type="t", payload=1))
    await publish(core, Route(exchange, ""), Message(type="t", payload=2))

    for queue in queues:
        assert [json.loads(x.body) for x in await core.take(queue)] == [1, 2]


async def test_the_default_exchange_delivers_to_the_queue_the_key_names_and_nowhere_else(
    core: Core,
) -> None:
    queues, topology = plain_queues(core, "first", "second")
    await core.declare(topology)
    sent = Message(type="t", payload={"n": 1})
    async with core.publisher() as publisher:
        hit = await publisher.publish(sent, Route("", queues[0]))
        miss = await publisher.publish(Message(type="t", payload=2), Route("", queues[0] + "x"))

    assert (hit.status, miss.status) == (PublishStatus.PUBLISHED, PublishStatus.FAILED)
    ((letter,), second) = await core.take(queues[0]), await core.take(queues[1])
    assert (letter.exchange, letter.routing_key, letter.id) == ("", queues[0], sent.id)
    assert second == []


async def test_a_publish_to_a_missing_exchange_fails_with_the_brokers_words_and_the_next_works(
    core: Core,
) -> None:
    (queue,), topology = plain_queues(core, "ok")
    await core.declare(topology)
    missing = f"{core.settings.namespace}.missing"
    async with core.publisher() as publisher:
        refused = await publisher.publish(Message(type="t", payload=1), Route(missing, "k"))
        after = await publisher.publish(Message(type="t", payload=2), Route("", queue))

    assert refused.status is PublishStatus.FAILED
    assert refused.error == (
        f"refused by the broker: 404 NOT_FOUND - no exchange '{missing}' in vhost '/'"
    )
    assert after.ok
    assert len(await core.take(queue)) == 1


async def test_publish_many_reports_every_message_and_the_fallback_keeps_only_the_unroutable(
    core: Core,
) -> None:
    (queue,), topology = plain_queues(core, "q")
    await core.declare(topology)
    kept = RecordingFallback()
    good, lost, good2 = (Message(type="t", payload=n) for n in range(3))
    async with core.publisher(fallback=kept) as publisher:
        results = await publisher.publish_many(
            [
                (good, Route("", queue)),
                (lost, Route("", queue + ".nope")),
                (good2, Route("", queue)),
            ]
        )

    assert [(r.message_id, r.status) for r in results] == [
        (good.id, PublishStatus.PUBLISHED),
        (lost.id, PublishStatus.PERSISTED),
        (good2.id, PublishStatus.PUBLISHED),
    ]
    assert [(route.routing_key, message.id) for route, message, _ in kept.items] == [
        (queue + ".nope", lost.id)
    ]
    assert [x.id for x in await core.take(queue)] == [good.id, good2.id]


async def test_in_one_call_a_publish_to_a_missing_exchange_fails_alone(core: Core) -> None:
    (queue,), topology = plain_queues(core, "q")
    await core.declare(topology)
    missing = f"{core.settings.namespace}.missing"
    before, refused, after = (Message(type="t", payload=n) for n in range(3))
    async with core.publisher() as publisher:
        results = await publisher.publish_many(
            [(before, Route("", queue)), (refused, Route(missing, "k")), (after, Route("", queue))]
        )

    assert [r.status for r in results] == [
        PublishStatus.PUBLISHED,
        PublishStatus.FAILED,
        PublishStatus.PUBLISHED,
    ]
    assert results[1].error is not None and f"no exchange '{missing}'" in results[1].error
    assert [x.id for x in await core.take(queue)] == [before.id, after.id]  # each once


async def test_a_message_that_cannot_be_encoded_fails_alone_and_is_not_given_to_the_fallback(
    core: Core,
) -> None:
    (queue,), topology = plain_queues(core, "q")
    await core.declare(topology)
    kept = RecordingFallback()
    good = Message(type="t", payload=1)
    unfit = Message(type="t", payload=2, correlation_id="c" * 300)  # a short string: <= 255
    async with core.publisher(fallback=kept) as publisher:
        results = await publisher.publish_many(
            [(good, Route("", queue)), (unfit, Route("", queue))]
        )

    assert [r.status for r in results] == [PublishStatus.PUBLISHED, PublishStatus.FAILED]
    assert results[1].error is not None and results[1].error.startswith("cannot be sent: ")
    assert kept.items == []  # storing it would only fail again on every requeue
    assert [x.id for x in await core.take(queue)] == [good.id]


# --- consuming: handlers and acks ------------------------------------------------------------


async def test_messages_go_to_the_handler_of_their_type_else_the_default_and_are_acked(
    core: Core,
) -> None:
    queue, topology = work(core)
    invoices: list[Message] = []
    others: list[Message] = []
    subscription = Subscription(
        queue, handlers={"invoice.created": recorder(invoices)}, default=recorder(others)
    )
    async with core.running([subscription], topology):
        await publish(
            core,
            Route("", queue),
            Message(type="invoice.created", payload=1),
            Message(type="user.deleted", payload=2),
        )
        await core.settle(at_least(others, 1), "the default handler")
        await core.settle(at_least(invoices, 1), "the invoice handler")

        async def settled() -> bool:
            return await core.counts(queue) == (0, 0)

        await core.settle(settled, "both acked")

    assert [m.payload for m in invoices] == [1] and [m.payload for m in others] == [2]
    assert await core.counts(dlq_name(queue)) == (0, 0)


async def test_a_type_without_a_handler_and_no_default_is_dead_lettered_with_the_reason(
    core: Core,
) -> None:
    queue, topology = work(core)
    orphan = Message(type="nobody.listens", payload={})
    async with core.running([Subscription(queue, handlers={"known": recorder([])})], topology):
        await publish(core, Route("", queue), orphan)
        await core.settle(has(core, dlq_name(queue), 1), "the dead letter")

    (dead,) = await core.take(dlq_name(queue))
    assert dead.id == orphan.id
    assert dead.headers["x-rabbitry-reason"] == "no handler for message type 'nobody.listens'"
    assert dead.headers["x-rabbitry-attempt"] == 1


async def test_a_delivery_stays_unacked_while_its_handler_runs_and_is_acked_after(
    core: Core,
) -> None:
    queue, topology = work(core)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(message: Message) -> None:
        started.set()
        await release.wait()

    async with core.running([Subscription(queue, default=slow)], topology):
        await publish(core, Route("", queue), Message(type="job", payload={}))
        await asyncio.wait_for(started.wait(), 15)
        assert await core.counts(queue) == (0, 1)
        release.set()

        async def settled() -> bool:
            return await core.counts(queue) == (0, 0)

        await core.settle(settled, "the ack")


async def test_a_delivery_cut_off_before_its_ack_comes_back_marked_redelivered(
    core: Core,
) -> None:
    queue, topology = work(core)
    seen: list[Message] = []
    first_seen = asyncio.Event()

    async def handle(message: Message) -> None:
        seen.append(message)
        if len(seen) == 1:
            first_seen.set()
            await asyncio.Event().wait()  # busy until its connection is cut

    async with core.running([Subscription(queue, default=handle)], topology) as worker:
        await publish(core, Route("", queue), Message(type="job", payload={}))
        await asyncio.wait_for(first_seen.wait(), 15)
        assert await core.close_connections(worker.name) == 1  # its one consumer connection
        await core.settle(at_least(seen, 2), "the redelivery after the reconnect")

    assert [(m.id, m.redelivered, m.attempt) for m in seen] == [
        (seen[0].id, False, 0),
        (seen[0].id, True, 0),
    ]
    assert await core.counts(queue) == (0, 0)


async def test_a_worker_whose_queue_is_deleted_declares_it_again_and_goes_on(core: Core) -> None:
    queue, topology = work(core)
    handled: list[Message] = []
    async with core.running([Subscription(queue, default=recorder(handled))], topology):
        await publish(core, Route("", queue), Message(type="job", payload=1))
        await core.settle(at_least(handled, 1), "the first message")
        await core.delete(Topology.of(queues=[q for q in topology.queues if q.name == queue]))

        async def declared_again() -> bool:
            try:
                await core.counts(queue)
            except (AssertionError, NotFound):  # as each broker reports a missing queue
                return False
            return True

        await core.settle(declared_again, "the worker declaring its queue again")
        await publish(core, Route("", queue), Message(type="job", payload=2))
        await core.settle(at_least(handled, 2), "a message after the queue came back")

    assert [m.payload for m in handled[:2]] == [1, 2]


# --- consuming: retries and dead letters -----------------------------------------------------


async def test_a_failing_handler_is_retried_through_the_tiers_then_dead_lettered_with_why(
    core: Core,
) -> None:
    queue, topology = work(core)
    attempts: list[int] = []

    async def failing(message: Message) -> None:
        attempts.append(message.attempt)
        raise RuntimeError(f"boom on try {message.attempt + 1}")

    message = Message(type="job", payload={"k": "v"})
    async with core.running([Subscription(queue, default=failing)], topology):
        await publish(core, Route("", queue), message)
        await core.settle(has(core, dlq_name(queue), 1), "the dead letter")

    assert attempts == [0, 1, 2]  # max_attempts=3 in the test settings
    (dead,) = await core.take(dlq_name(queue))
    assert (dead.id, dead.body, dead.routing_key) == (message.id, b'{"k":"v"}', dlq_name(queue))
    assert dead.headers["x-rabbitry-reason"] == "boom on try 3"
    assert dead.headers["x-rabbitry-error"] == "RuntimeError: boom on try 3"
    assert dead.headers["x-rabbitry-attempt"] == 3
    assert dead.headers["x-rabbitry-queue"] == queue
    deaths = [(d["queue"], d["reason"], d["count"]) for d in dead.headers["x-death"]]
    assert deaths == [
        (retry_queue_name(queue, 400), "expired", 1),
        (retry_queue_name(queue, 200), "expired", 1),
    ]
    assert dead.headers["x-first-death-queue"] == retry_queue_name(queue, 200)
    for name in (queue, retry_queue_name(queue, 200), retry_queue_name(queue, 400)):
        assert await core.counts(name) == (0, 0)


async def test_retry_with_a_delay_waits_in_the_smallest_tier_at_least_that_long(
    core: Core,
) -> None:
    queue, topology = work(core)
    deliveries: list[Message] = []

    async def later(message: Message) -> None:
        deliveries.append(message)
        if len(deliveries) == 1:
            raise Retry(delay=0.3, reason="stock not there yet")

    async with core.running([Subscription(queue, default=later)], topology):
        await publish(core, Route("", queue), Message(type="job", payload={}))
        await core.settle(at_least(deliveries, 2), "the retried delivery")

    first, second = deliveries
    assert (first.attempt, second.attempt, second.id) == (0, 1, first.id)
    assert second.extra["x-rabbitry-error"] == "Retry: stock not there yet"
    assert [d["queue"] for d in second.extra["x-death"]] == [retry_queue_name(queue, 400)]
    assert (second.exchange, second.routing_key) == ("", queue)
    assert await core.counts(dlq_name(queue)) == (0, 0)


async def test_reject_dead_letters_at_once_with_the_handlers_reason(core: Core) -> None:
    queue, topology = work(core)
    calls: list[int] = []

    async def rejecting(message: Message) -> None:
        calls.append(message.attempt)
        raise Reject("customer 7 does not exist")

    message = Message(type="job", payload={"customer": 7})
    async with core.running([Subscription(queue, default=rejecting)], topology):
        await publish(core, Route("", queue), message)
        await core.settle(has(core, dlq_name(queue), 1), "the dead letter")

    assert calls == [0]
    (dead,) = await core.take(dlq_name(queue))
    assert dead.id == message.id
    assert dead.headers["x-rabbitry-reason"] == "customer 7 does not exist"
    assert dead.headers["x-rabbitry-error"] == "Reject: customer 7 does not exist"
    assert dead.headers["x-rabbitry-attempt"] == 1
    assert "x-death" not in dead.headers


async def test_malformed_messages_are_dead_lettered_at_once_with_the_reason(core: Core) -> None:
    queue, topology = work(core)
    handled: list[Message] = []
    async with core.running([Subscription(queue, default=recorder(handled))], topology):
        job = {"rr_job": "job"}
        await core.publish_raw("", queue, b'{"broken": ', job, message_id="bad-json")
        await core.publish_raw("", queue, b'{"a": 1}', None, message_id="no-type")
        await core.publish_raw("", queue, b"\xff\xfe", job, message_id="binary")
        await core.publish_raw("", queue, b'{"ok": 1}', job, message_id="ok")
        await core.settle(has(core, dlq_name(queue), 3), "three dead letters")
        await core.settle(at_least(handled, 1), "the good message")

    assert [m.id for m in handled] == ["ok"]
    dead = {letter.id: letter for letter in await core.take(dlq_name(queue))}
    assert set(dead) == {"bad-json", "no-type", "binary"}
    assert dead["bad-json"].headers["x-rabbitry-reason"].startswith("body is not JSON")
    assert dead["no-type"].headers["x-rabbitry-reason"] == (
        "missing rr_job header (the message type)"
    )
    assert dead["binary"].headers["x-rabbitry-reason"].startswith("body is not UTF-8")
    for letter in dead.values():
        assert letter.headers["x-rabbitry-error"].startswith("MessageError: ")
        assert letter.headers["x-rabbitry-attempt"] == 1
    assert dead["bad-json"].body == b'{"broken": '


async def test_a_lenient_subscription_takes_a_message_without_rr_job_as_deduced_by_rr(
    core: Core,
) -> None:
    queue, topology = work(core)
    handled: list[Message] = []
    subscription = Subscription(queue, default=recorder(handled), strict=False)
    async with core.running([subscription], topology):
        await core.publish_raw("", queue, b'{"a": 1}', None, message_id="m-1")
        await core.settle(at_least(handled, 1), "the message")

    assert [(m.type, m.id, m.payload) for m in handled] == [("deduced_by_rr", "m-1", {"a": 1})]
    assert await core.counts(dlq_name(queue)) == (0, 0)


async def test_a_message_round_trips_through_publisher_and_consumer_unchanged(core: Core) -> None:
    queue, topology = work(core)
    handled: list[Message] = []
    sent = Message(
        type="invoice.paid",
        payload={"id": 7, "total": "12.50", "lines": [1, 2]},
        headers={"x-source": ("billing",)},
        pipeline="billing",
        tenant="acme",
        correlation_id="corr-9",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    async with core.running([Subscription(queue, default=recorder(handled))], topology):
        await publish(core, Route("", queue), sent)
        await core.settle(at_least(handled, 1), "the message")

    (got,) = handled
    assert (got.id, got.type, got.payload, dict(got.headers), got.pipeline) == (
        sent.id,
        sent.type,
        sent.payload,
        {"x-source": ("billing",)},
        "billing",
    )
    assert (got.tenant, got.correlation_id, got.traceparent) == ("acme", "corr-9", sent.traceparent)
    assert (got.timestamp, got.attempt, got.redelivered) == (sent.timestamp, 0, False)


# --- consuming: batches ----------------------------------------------------------------------


async def test_a_batch_handler_settles_each_outcome_on_its_own(core: Core) -> None:
    queue, topology = work(core)
    seen: list[tuple[str, int]] = []
    done: list[str] = []
    kinds = ["ok", "reject", "flaky"] * 4
    messages = [Message(type=kind, payload={"n": n}) for n, kind in enumerate(kinds)]

    async def handle(batch: Sequence[Message]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for message in batch:
            seen.append((message.type, message.attempt))
            if message.type == "reject":
                outcomes.append(Reject(f"bad item {message.payload['n']}"))
            elif message.type == "flaky" and message.attempt == 0:
                outcomes.append(RuntimeError("flaky the first time"))
            else:
                outcomes.append(None)
                done.append(message.id)
        return outcomes

    await core.declare(topology)
    await publish(core, Route("", queue), *messages)
    async with core.running([Subscription(queue, batch=handle, batch_size=5)], topology):
        await core.settle(has(core, dlq_name(queue), 4), "four dead letters")
        await core.settle(at_least(done, 8), "eight successes")

    assert sorted(seen) == sorted([(k, 0) for k in kinds] + [("flaky", 1)] * 4)
    assert set(done) == {m.id for m in messages if m.type != "reject"}
    dead = await core.take(dlq_name(queue))
    assert sorted(d.headers["x-rabbitry-reason"] for d in dead) == sorted(
        f"bad item {n}" for n in (1, 4, 7, 10)
    )
    assert await core.counts(queue) == (0, 0)


async def test_a_batch_handler_returning_the_wrong_number_of_outcomes_fails_that_batch_only(
    core: Core,
) -> None:
    queue, topology = work(core)
    done: list[str] = []

    async def handle(batch: Sequence[Message]) -> list[BaseException | None]:
        if any(m.type == "buggy" for m in batch):
            return []
        done.extend(m.id for m in batch)
        return [None] * len(batch)

    buggy, fine = Message(type="buggy", payload={}), Message(type="fine", payload={})
    async with core.running([Subscription(queue, batch=handle)], topology):
        await publish(core, Route("", queue), buggy)
        await core.settle(has(core, dlq_name(queue), 1), "the dead letter")
        await publish(core, Route("", queue), fine)
        await core.settle(at_least(done, 1), "the next batch")

    assert done == [fine.id]
    (dead,) = await core.take(dlq_name(queue))
    assert dead.id == buggy.id
    assert dead.headers["x-rabbitry-attempt"] == core.settings.max_attempts
    assert dead.headers["x-rabbitry-reason"] == "batch handler must return one outcome per message"


# --- the broker's own rules, where a double is most likely to drift ---------------------------


async def test_topic_edge_cases_match_as_rabbitmq_matches_them(core: Core) -> None:
    # Empty words are words: "orders..eu" has three, "." has two; "*" needs exactly one.
    exchange = f"{core.settings.namespace}.edges"
    patterns = {
        "star": "*",
        "tailvat": "#.vat",
        "starstar": "*.*",
        "midvat": "orders.#.vat",
        "emptyword": "orders.*.eu",
        "nothing": "",
        "all": "#",
    }
    queues, topology = plain_queues(core, *patterns)
    topology |= Topology.of(
        exchanges=[Exchange(exchange, ExchangeType.TOPIC)],
        bindings=[Binding(exchange, q, patterns[q.rsplit(".", 1)[1]]) for q in queues],
    )
    await core.declare(topology)
    keys = ["", "a", "a.", ".", "vat", "x.vat", "vatx", "orders.vat", "orders.eu.vat.x"]
    keys += ["orders..eu", "a.b.c"]
    async with core.publisher() as publisher:
        for key in keys:
            result = await publisher.publish(Message(type="t", payload=key), Route(exchange, key))
            assert result.ok, (key, result)

    assert await routed(core, queues) == {
        "star": ["a", "vat", "vatx"],
        "tailvat": ["vat", "x.vat", "orders.vat"],
        "starstar": ["a.", ".", "x.vat", "orders.vat"],
        "midvat": ["orders.vat"],
        "emptyword": ["orders..eu"],
        "nothing": [""],
        "all": keys,
    }


async def test_declaring_an_existing_name_with_other_properties_fails_and_the_original_stands(
    core: Core,
) -> None:
    queue = f"{core.settings.namespace}.jobs"
    exchange = f"{core.settings.namespace}.jobs-x"
    original = Topology.of(
        exchanges=[Exchange(exchange, ExchangeType.TOPIC)],
        queues=[Queue(queue)],
        bindings=[Binding(exchange, queue, "jobs.#")],
    )
    await core.declare(original)
    await core.declare(original)  # the same again: fine

    with pytest.raises(ConfigError, match="PRECONDITION_FAILED"):
        await core.declare(Topology.of(queues=[Queue(queue, arguments=(("x-message-ttl", 5),))]))
    with pytest.raises(ConfigError, match="PRECONDITION_FAILED"):
        await core.declare(Topology.of(exchanges=[Exchange(exchange, ExchangeType.DIRECT)]))

    # Still a topic exchange, still a queue without a TTL: the message routes and stays.
    await publish(core, Route(exchange, "jobs.one.two"), Message(type="t", payload=1))
    assert [x.routing_key for x in await core.take(queue)] == ["jobs.one.two"]


async def test_a_message_that_expires_on_its_work_queue_is_dead_lettered_with_the_brokers_record(
    core: Core,
) -> None:
    queue, topology = work(core)
    await core.declare(topology)
    await core.publish_raw("", queue, b"{}", {"rr_job": "t"}, expiration="200")
    await core.elapse(0.2)

    await core.settle(has(core, dlq_name(queue), 1), "the expired message in the DLQ")
    (dead,) = await core.take(dlq_name(queue))
    assert dead.headers["x-death"][0]["reason"] == "expired"
    assert dead.headers["x-death"][0]["queue"] == queue
    assert dead.headers["x-first-death-queue"] == queue
    assert await core.counts(queue) == (0, 0)


async def test_a_foreign_publish_nobody_takes_is_refused_and_a_missing_exchange_is_not_found(
    core: Core,
) -> None:
    queue, topology = work(core)
    await core.declare(topology)

    with pytest.raises(PublishUnroutable):
        await core.publish_raw("amq.direct", f"{core.settings.namespace}.nobody", b"{}", None)
    with pytest.raises(NotFound, match=f"no exchange '{core.settings.namespace}.missing'"):
        await core.publish_raw(f"{core.settings.namespace}.missing", "k", b"{}", None)
    await core.publish_raw("", queue, b"{}", {"rr_job": "t"})  # and the next one goes through

    assert [x.body for x in await core.take(queue)] == [b"{}"]


async def test_a_subscription_holds_no_more_unacked_deliveries_than_its_prefetch(
    core: Core,
) -> None:
    queue, topology = work(core)
    release = asyncio.Event()
    handled: list[Message] = []
    in_flight = most = 0

    async def slow(message: Message) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await release.wait()
        in_flight -= 1
        handled.append(message)

    async def held() -> bool:
        return in_flight == 2 and await core.counts(queue) == (3, 2)

    subscription = Subscription(queue, default=slow, prefetch=2)
    async with core.running([subscription], topology):
        await publish(core, Route("", queue), *[Message(type="t", payload=n) for n in range(5)])
        # The worker could take all five at once (concurrency 8): only the prefetch stops it.
        await eventually_true(held, what="two deliveries in the handler, three ready")
        release.set()
        await core.settle(at_least(handled, 5), "every message handled")

    assert most == 2
    assert sorted(m.payload for m in handled) == [0, 1, 2, 3, 4]
