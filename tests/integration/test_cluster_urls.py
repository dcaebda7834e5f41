"""A broker URL with several hosts: every kind of connection finds the one that answers,
whichever host it starts from (port 1 stands for a node that is down)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from helpers import AMQP_URL, DEAD_AMQP_URL
from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link, LinkError
from rabbitry.config import Settings
from rabbitry.errors import BrokerUnavailable
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import Queue, Topology

LIVE = AMQP_URL.split("@", 1)[1].split("/", 1)[0]
# The dead host twice, so a random start lands on it two times in three.
URL = f"amqp://guest:guest@127.0.0.1:1,{LIVE},127.0.0.1:1/"


async def test_the_wire_client_skips_hosts_that_are_down() -> None:
    for _ in range(6):  # from every start, with near certainty
        link = await Link.connect(URL, name="t-cluster-url", timeout=2)
        try:
            assert link.where == LIVE
        finally:
            await link.close()


async def test_no_host_answering_names_every_host_tried() -> None:
    url = "amqp://guest:guest@127.0.0.1:1,127.0.0.1:2/"
    with pytest.raises(LinkError, match="no broker host answered") as raised:
        await Link.connect(url, timeout=2)
    assert "127.0.0.1:1" in str(raised.value) and "127.0.0.1:2" in str(raised.value)


async def test_the_declarer_skips_hosts_that_are_down(declarer: Declarer, namespace: str) -> None:
    for _ in range(3):
        async with await Declarer.connect(URL, name=f"{namespace}-t", timeout=2) as other:
            await other.declare(Topology.of(queues=[Queue(f"{namespace}.q")]))
    assert await declarer.queue_size(f"{namespace}.q") == 0
    with pytest.raises(BrokerUnavailable):
        await Declarer.connect(DEAD_AMQP_URL, timeout=2)


async def test_a_publisher_on_a_cluster_url_publishes(
    settings: Settings, declarer: Declarer, namespace: str
) -> None:
    await declarer.declare(Topology.of(queues=[Queue(f"{namespace}.q")]))
    clustered = settings.model_copy(update={"amqp_url": SecretStr(URL)})
    async with Publisher(clustered.amqp, name=f"{namespace}-app") as publisher:
        for n in range(5):
            result = await publisher.publish(
                Message(type="t", payload=n), Route("", f"{namespace}.q")
            )
            assert result.status is PublishStatus.PUBLISHED
    assert await declarer.queue_size(f"{namespace}.q") == 5
