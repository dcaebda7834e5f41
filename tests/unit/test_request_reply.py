"""Request/reply's ways to end without a reply, on the in-memory broker: each is an error at
once, never a wait for the timeout."""

from __future__ import annotations

import asyncio

import pytest

from rabbitry import (
    AmqpSettings,
    BrokerUnavailable,
    Message,
    RetryPolicy,
    Route,
    Subscription,
    Worker,
    work_queue,
)
from rabbitry.testing import MemoryBroker

QUEUE = "shop.quotes"


async def test_a_request_whose_connection_drops_while_waiting_fails_at_once() -> None:
    broker = MemoryBroker()
    asked, release = asyncio.Event(), asyncio.Event()

    async def quote(message: Message) -> None:
        asked.set()
        await release.wait()  # answers only after its requester is gone

    worker = Worker(
        "quotes", [Subscription(QUEUE, default=quote)], work_queue(QUEUE, policy=RetryPolicy())
    )
    async with broker.running(worker), broker.publisher(name="shop") as publisher:
        waiting = asyncio.ensure_future(
            publisher.request(Message("quote", {}), Route("", QUEUE), timeout=3600)
        )
        await asyncio.wait_for(asked.wait(), timeout=10)
        assert broker.close_connections("shop-requests") == 1
        with pytest.raises(BrokerUnavailable, match="connection lost while awaiting a reply"):
            await asyncio.wait_for(waiting, timeout=10)
        release.set()


async def test_a_request_with_the_broker_switched_off_fails_without_trying() -> None:
    broker = MemoryBroker(work_queue(QUEUE, policy=RetryPolicy()))
    async with broker.publisher(AmqpSettings(active=False)) as publisher:
        with pytest.raises(BrokerUnavailable, match="switched off"):
            await publisher.request(Message("quote", {}), Route("", QUEUE), timeout=3600)
    assert broker.connection_attempts == 0
