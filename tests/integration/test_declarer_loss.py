"""The declarer while its broker connection is down (the back-office's dashboard reads queues
through it): a call fails with the broker's error, never with one of the client's own making
(a channel it could not reopen), and calls work again once the connection is back."""

from __future__ import annotations

import asyncio

import pytest

from helpers import AMQP_URL, close_connections, eventually_true
from rabbitry.amqp.declarer import Declarer
from rabbitry.errors import BrokerError, BrokerUnavailable
from rabbitry.messaging.topology import Queue, Topology


async def test_a_queue_read_while_the_connection_is_down_fails_as_broker_trouble(
    namespace: str,
) -> None:
    name = f"{namespace}-dashboard"
    topology = Topology.of(queues=[Queue(f"{namespace}.watched")])
    declarer = await Declarer.connect(AMQP_URL, name=name, rpc_timeout=1.0)
    try:
        await declarer.declare(topology)
        assert (await declarer.queue_status(f"{namespace}.watched")).messages == 0
        closed = await asyncio.to_thread(
            close_connections, f"{name}-declarer", "test: cut", exact=True
        )
        assert closed == 1
        # Down for a few seconds (the connection's reconnect pause): a read in that time is
        # broker trouble, which the dashboard shows as such.
        with pytest.raises(BrokerUnavailable):
            await declarer.queue_status(f"{namespace}.watched")

        async def back() -> bool:
            try:
                await declarer.queue_status(f"{namespace}.watched")
            except BrokerError:
                return False
            return True

        await eventually_true(back, timeout=30, what="queue reads after the reconnect")
    finally:
        await declarer.delete(topology)
        await declarer.close()
