"""A node that falls silent with its sockets open (a hung host, a cut network) is noticed by
the heartbeat, and a cluster URL takes the next connection to another node."""

from __future__ import annotations

import asyncio

import pytest

from faults.conftest import BASE_PORT, CLUSTER_URL, Cluster
from rabbitry.amqp.link import Link, LinkClosed


async def test_a_frozen_node_is_given_up_after_two_silent_heartbeat_intervals(
    faults: Cluster,
) -> None:
    # Two-second heartbeats keep the test short; the default (10 s) gives up in 15-20 s.
    link = await Link.connect(f"{CLUSTER_URL}?heartbeat=2", name="t-silent", timeout=5)
    node = int(link.where.rsplit(":", 1)[1]) - BASE_PORT
    await faults.freeze(node)
    with pytest.raises(LinkClosed, match="missed heartbeats"):
        await asyncio.wait_for(asyncio.shield(link.closed), timeout=30)
    # The next connection from the same URL lands on a node that answers.
    for _ in range(3):
        other = await Link.connect(f"{CLUSTER_URL}?connection_timeout=2", name="t-silent")
        try:
            assert other.where != link.where
        finally:
            await other.close()
