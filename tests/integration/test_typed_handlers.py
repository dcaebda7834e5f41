"""Typed payloads, middleware and request/reply, each against both brokers: RabbitMQ and
``rabbitry.testing``'s in-memory one (``[rabbitmq]`` and ``[memory]``), with the same clients,
code and assertions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic
import pytest
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from helpers import eventually_true
from rabbitry import (
    Handler,
    Message,
    Middleware,
    Publisher,
    PublishNext,
    PublishResult,
    PublishStatus,
    Reject,
    RequestFailed,
    RequestTimeout,
    Route,
    Subscription,
    Topology,
    Worker,
    dlq_name,
    work_queue,
)
from rabbitry.config import Settings
from rabbitry.errors import PublishUnroutable
from rabbitry.testing import MemoryBroker

if TYPE_CHECKING:
    from conftest import BrokerProbe


class Order(pydantic.BaseModel):
    sku: str
    quantity: pydantic.PositiveInt


@dataclass(frozen=True)
class Refund:
    order: str
    cents: int


class Ping(TypedDict):
    n: int


@dataclass
class Side:
    """One broker with what the tests need of it."""

    settings: Settings
    publisher: Callable[..., Publisher]
    running: Callable[[Worker], AbstractAsyncContextManager[Worker]]
    take: Callable[[str], Awaitable[list[dict[str, Any]]]]  # the headers of what a queue holds

    def worker(
        self, subscriptions: Sequence[Subscription], topology: Topology, **kwargs: Any
    ) -> Worker:
        name = f"{self.settings.namespace}-worker"
        s = self.settings
        return Worker(name, subscriptions, topology, amqp=s.amqp, retry=s.retry, **kwargs)


@pytest.fixture(params=["rabbitmq", "memory"])
def side(request: pytest.FixtureRequest, settings: Settings) -> Side:
    name = f"{settings.namespace}-test"
    if request.param == "memory":
        memory = MemoryBroker()

        async def take_memory(queue: str) -> list[dict[str, Any]]:
            await memory.drain(retries=True)
            return [m.headers for m in memory.get_all(queue)]

        return Side(
            settings,
            lambda **kw: memory.publisher(settings.amqp, name=name, **kw),
            memory.running,
            take_memory,
        )
    request.getfixturevalue("_broker_cleanup")
    probe: BrokerProbe = request.getfixturevalue("broker")

    @asynccontextmanager
    async def running(worker: Worker) -> AsyncIterator[Worker]:
        stopping = asyncio.Event()
        task = asyncio.create_task(worker.run(stopping))
        try:
            await asyncio.wait_for(worker.connected.wait(), timeout=20)
            yield worker
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=20)

    async def take_rabbit(queue: str) -> list[dict[str, Any]]:
        await eventually_true(lambda: _has_some(probe, queue), what=f"a message in {queue}")
        return [r.headers for r in await probe.get_all(queue)]

    return Side(
        settings,
        lambda **kw: Publisher(settings.amqp, name=name, **kw),
        running,
        take_rabbit,
    )


async def _has_some(probe: BrokerProbe, queue: str) -> bool:
    ready: int = (await probe.counts(queue))[0]
    return ready > 0


def work(side: Side) -> tuple[str, Topology]:
    queue = f"{side.settings.namespace}.orders"
    return queue, work_queue(queue, policy=side.settings.retry)


async def wait(event: asyncio.Event) -> None:
    await asyncio.wait_for(event.wait(), timeout=15)


# --- typed payloads --------------------------------------------------------------------------


async def test_a_handler_that_declares_a_model_gets_the_payload_validated_into_it(
    side: Side,
) -> None:
    queue, topology = work(side)
    got: list[object] = []
    done = asyncio.Event()

    async def place(order: Order) -> None:
        got.append(order)

    async def refund(refund: Refund, message: Message) -> None:
        got.append((refund, message.type))

    async def ping(ping: Ping) -> None:
        got.append(ping)
        done.set()

    sub = Subscription(queue, {"order.placed": place, "order.refunded": refund, "ping": ping})
    async with side.running(side.worker([sub], topology)):
        async with side.publisher() as publisher:
            for message in (
                Message("order.placed", Order(sku="tea", quantity=2)),  # a model is serialised
                Message("order.refunded", {"order": "o-1", "cents": "250"}),  # coerced to int
                Message("ping", {"n": 1}),
            ):
                assert (await publisher.publish(message, Route("", queue))).ok
        await wait(done)
    assert got == [
        Order(sku="tea", quantity=2),
        (Refund(order="o-1", cents=250), "order.refunded"),
        {"n": 1},
    ]


async def test_a_payload_that_does_not_validate_is_dead_lettered_with_the_error_not_retried(
    side: Side,
) -> None:
    queue, topology = work(side)
    called: list[Order] = []

    async def place(order: Order) -> None:
        called.append(order)

    async with side.running(side.worker([Subscription(queue, {"order.placed": place})], topology)):
        async with side.publisher() as publisher:
            bad = Message("order.placed", {"sku": "tea", "quantity": -1})
            assert (await publisher.publish(bad, Route("", queue))).ok
        (dead,) = await side.take(dlq_name(queue))
    assert called == []
    reason = dead["x-rabbitry-reason"]
    assert reason.startswith("payload is not a valid Order: quantity:"), reason
    assert "greater than 0" in reason
    assert dead["x-rabbitry-attempt"] == 1  # the first try: no retry spent on it


# --- middleware ------------------------------------------------------------------------------


class Trail(Middleware):
    """Records what passes, named, so the order of a chain shows."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name = name
        self.trail = trail

    async def consume(self, message: Message, call_next: Handler) -> object:
        self.trail.append(f"{self.name}>{message.type}")
        try:
            result = await call_next(message)
        except Exception as exc:
            self.trail.append(f"{self.name}!{type(exc).__name__}")
            raise
        self.trail.append(f"{self.name}<{result}")
        return result


class Stamp(Middleware):
    """Adds a header to every message published: the publish side only."""

    async def publish(
        self, message: Message, route: Route, call_next: PublishNext
    ) -> PublishResult:
        stamped = dataclasses.replace(message, extra={**message.extra, "x-stamp": "yes"})
        return await call_next(stamped, route)


async def test_consume_middleware_runs_around_each_handler_outermost_first(side: Side) -> None:
    queue, topology = work(side)
    trail: list[str] = []
    done = asyncio.Event()

    async def handle(message: Message) -> str:
        trail.append("handler")
        if message.type == "bad":
            raise Reject("no")
        done.set()
        return "ok"

    layers = [Trail("outer", trail), Trail("inner", trail), Stamp()]
    sub = Subscription(queue, default=handle)
    async with side.running(side.worker([sub], topology, middleware=layers)):
        async with side.publisher() as publisher:
            assert (await publisher.publish(Message("bad", {}), Route("", queue))).ok
            await side.take(dlq_name(queue))
            assert (await publisher.publish(Message("good", {}), Route("", queue))).ok
        await wait(done)
    assert trail == [
        "outer>bad", "inner>bad", "handler", "inner!Reject", "outer!Reject",
        "outer>good", "inner>good", "handler", "inner<ok", "outer<ok",
    ]  # fmt: skip


async def test_publish_middleware_changes_what_is_sent_by_publish_and_publish_many(
    side: Side,
) -> None:
    queue, topology = work(side)
    async with side.running(side.worker([], topology)):  # declares the queue, consumes nothing
        pass
    async with side.publisher(middleware=[Trail("consume-only", []), Stamp()]) as publisher:
        one = await publisher.publish(Message("a", {}), Route("", queue))
        many = await publisher.publish_many([(Message("b", {}), Route("", queue))] * 2)
    assert [r.status for r in [one, *many]] == [PublishStatus.PUBLISHED] * 3
    letters = await side.take(queue)
    assert [h["x-stamp"] for h in letters] == ["yes"] * 3


class Refuse(Middleware):
    """Answers for messages of type "refused" itself, without sending them."""

    async def publish(
        self, message: Message, route: Route, call_next: PublishNext
    ) -> PublishResult:
        if message.type == "refused":
            return PublishResult(message.id, PublishStatus.FAILED, "refused by a middleware")
        return await call_next(message, route)


async def test_publish_many_through_middleware_still_sends_one_batch(side: Side) -> None:
    queue, topology = work(side)
    async with side.running(side.worker([], topology)):  # declares the queue, consumes nothing
        pass
    async with side.publisher(middleware=[Stamp(), Refuse()]) as publisher:
        sends: list[int] = []
        send = publisher._sender.send  # the one write-and-confirm step, spied

        async def counting(outgoing: Sequence[Any]) -> Any:
            sends.append(len(outgoing))
            return await send(outgoing)

        publisher._sender.send = counting  # type: ignore[method-assign,assignment]
        kinds = ["a", "refused", "b", "c", "refused", "d"]
        results = await publisher.publish_many([(Message(k, {}), Route("", queue)) for k in kinds])
        # Every chain answered by a middleware: nothing to send, and no wait for a batch.
        alone = await publisher.publish_many([(Message("refused", {}), Route("", queue))] * 2)
    assert [r.status for r in results] == [
        PublishStatus.FAILED if k == "refused" else PublishStatus.PUBLISHED for k in kinds
    ]
    assert [r.status for r in alone] == [PublishStatus.FAILED] * 2
    assert sends == [4]  # the four that reached the end, in one batch
    letters = await side.take(queue)
    assert [h["x-stamp"] for h in letters] == ["yes"] * 4


# --- request/reply ---------------------------------------------------------------------------


async def test_a_request_gets_the_handlers_return_value_as_its_reply(side: Side) -> None:
    queue, topology = work(side)

    async def quote(order: Order) -> Order:  # a model reply is serialised as well
        return Order(sku=order.sku, quantity=order.quantity * 10)

    async def echo(message: Message) -> dict[str, Any]:
        return {"echo": message.payload, "tenant": message.tenant}

    sub = Subscription(queue, {"quote": quote, "echo": echo})
    async with side.running(side.worker([sub], topology)), side.publisher() as publisher:
        route = Route("", queue)
        request = Message("quote", Order(sku="tea", quantity=3))
        reply = await publisher.request(request, route, timeout=15)
        # Many at once, on one connection: each reply finds its own request.
        echoes = await asyncio.gather(
            *(
                publisher.request(Message("echo", n, tenant=f"t{n}"), route, timeout=15)
                for n in range(20)
            )
        )
    assert (reply.type, reply.payload, reply.correlation_id) == (
        "quote.reply",
        {"sku": "tea", "quantity": 30},
        request.id,
    )
    assert [r.payload for r in echoes] == [{"echo": n, "tenant": f"t{n}"} for n in range(20)]


async def test_a_request_nobody_answers_ends_in_a_timeout_error_not_a_hang(side: Side) -> None:
    queue, topology = work(side)
    async with side.running(side.worker([], topology)):  # the queue exists; no one consumes it
        pass
    async with side.publisher() as publisher:
        with pytest.raises(RequestTimeout, match="no reply to 'quote'"):
            await publisher.request(Message("quote", {}), Route("", queue), timeout=0.5)
        with pytest.raises(TimeoutError):  # RequestTimeout is one, for code that catches those
            await publisher.request(Message("quote", {}), Route("", queue), timeout=0.2)


async def test_a_request_no_queue_takes_fails_at_once_as_unroutable(side: Side) -> None:
    missing = f"{side.settings.namespace}.nobody"
    async with side.publisher() as publisher:
        with pytest.raises(PublishUnroutable):
            await publisher.request(Message("quote", {}), Route("", missing), timeout=60)


async def test_a_request_its_handler_rejects_fails_with_the_reason_rather_than_waiting(
    side: Side,
) -> None:
    queue, topology = work(side)

    async def quote(order: Order) -> Order:
        raise Reject("sku discontinued")

    sub = Subscription(queue, {"quote": quote})
    async with side.running(side.worker([sub], topology)), side.publisher() as publisher:
        with pytest.raises(RequestFailed, match=r"^sku discontinued$"):
            await publisher.request(
                Message("quote", {"sku": "tea", "quantity": 1}), Route("", queue), timeout=60
            )
        with pytest.raises(RequestFailed, match="payload is not a valid Order"):
            await publisher.request(Message("quote", {"sku": 1}), Route("", queue), timeout=60)
    assert len(await side.take(dlq_name(queue))) == 2  # dead-lettered all the same


def test_publishing_a_model_or_a_dataclass_sends_its_fields_as_json() -> None:
    assert Message("o", Order(sku="tea", quantity=2)).body() == b'{"sku":"tea","quantity":2}'
    assert json.loads(Message("r", [Refund("o-1", 5)]).body()) == [{"order": "o-1", "cents": 5}]
