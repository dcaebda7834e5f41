"""Unit tests of a handler on rabbitry.testing's in-memory broker: no RabbitMQ, no waiting."""

import pytest

import rabbitry
from rabbitry.testing import MemoryBroker

QUEUE = "shop.emails"
policy = rabbitry.RetryPolicy(max_attempts=3, base_delay=1.0)  # retries after 1 s, then 2 s
sent: list[str] = []


async def send_email(message: rabbitry.Message) -> None:
    if "@" not in message.payload["to"]:
        raise rabbitry.Reject("not an address")
    if message.payload.get("flaky") and message.attempt == 0:
        raise RuntimeError("SMTP timeout")
    sent.append(message.payload["to"])


emails = rabbitry.Subscription(QUEUE, handlers={"SendEmail": send_email})
worker = rabbitry.Worker(
    "emails", [emails], rabbitry.work_queue(QUEUE, policy=policy), retry=policy
)
pytestmark = pytest.mark.asyncio


@pytest.fixture
def broker() -> MemoryBroker:
    sent.clear()
    return MemoryBroker()


async def publish(broker: MemoryBroker, **payload: object) -> None:
    message = rabbitry.Message(type="SendEmail", payload=payload)
    async with broker.publisher() as publisher:
        assert (await publisher.publish(message, rabbitry.Route("", QUEUE))).ok


async def test_a_good_address_is_sent_and_a_bad_one_is_dead_lettered(broker: MemoryBroker) -> None:
    async with broker.running(worker):
        await publish(broker, to="ana@example.com")
        await publish(broker, to="nobody")
        await broker.drain()

    assert sent == ["ana@example.com"]
    (dead,) = broker.get_all(rabbitry.dlq_name(QUEUE))
    assert dead.headers["x-rabbitry-reason"] == "not an address"


async def test_a_flaky_send_is_retried_a_second_later(broker: MemoryBroker) -> None:
    async with broker.running(worker):
        await publish(broker, to="bo@example.com", flaky=True)
        await broker.drain()
        assert sent == []  # waiting in shop.emails.retry.1000
        await broker.advance(1.0)  # virtual time: the test does not wait a second

    assert sent == ["bo@example.com"]


async def test_every_message_ends_sent_or_dead_lettered(broker: MemoryBroker) -> None:
    async with broker.running(worker):
        await publish(broker, to="cy@example.com", flaky=True)
        await publish(broker, to="nobody")
        await broker.drain(retries=True)  # runs every retry at once, in order

    assert sent == ["cy@example.com"]
    assert broker.counts(rabbitry.dlq_name(QUEUE)) == (1, 0)
