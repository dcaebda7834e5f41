"""Each entity's change events stay in publish order when the node of the active consumer dies:
two workflow workers on the three-node cluster (quorum queues, a single active consumer), a
stream of change events published in order per entity, and ``kill -9`` of the node the active
worker consumes from, mid-stream.

Publishers here wait out a failed publish and send the same message again (same id) instead
of handing it to the outbox, whose relay would store it after later ones (docs/events.md): a
message sent twice is a duplicate the store drops by its id, and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from faults.conftest import Cluster, Figures
from faults.tally import at_least, stored_ids
from helpers import running, scratch_database
from rabbitry.config import Settings
from rabbitry.events.topology import EventsLayout, routing_key
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import Eventually

ENTITY = "App\\Models\\OrderedFault"
PUBLISHERS = 4
ENTITIES = 5  # per publisher
BEFORE = 300
AFTER = 300
PREFIX = os.environ.get("RABBITRY_CLUSTER_PREFIX", "r")


@dataclass
class Stream:
    """Publishers that each own a few entities and publish their events in order, sending a
    message again until the broker confirms it."""

    publisher: Publisher
    layout: EventsLayout
    partitioned: bool = False  # routed by the entity's bucket, as the emitter does then
    sent: list[str] = field(default_factory=list)
    order: dict[str, tuple[int, int]] = field(default_factory=dict)
    resent: int = 0

    async def _publish(self, first: int, stopping: asyncio.Event) -> None:
        n = 0
        while not stopping.is_set():
            for entity in range(first, first + ENTITIES):
                kind = "insert" if n == 0 else "update"
                body = {"entity": ENTITY, "id": entity, "user": 1, "data": {"n": n}}
                message = Message(type=kind, payload=body)
                self.sent.append(message.id)
                self.order[message.id] = (entity, n)
                key = routing_key(kind, ENTITY, entity, partitioned=self.partitioned)
                route = Route(self.layout.events_exchange, key)
                while (await self.publisher.publish(message, route)).status is not (
                    PublishStatus.PUBLISHED
                ):
                    self.resent += 1
                    await asyncio.sleep(0.2)
            n += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        stopping = asyncio.Event()
        tasks = [
            asyncio.create_task(self._publish(1 + i * ENTITIES, stopping))
            for i in range(PUBLISHERS)
        ]
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(*tasks)


async def active_node(faults: Cluster, queue: str) -> int:
    """The node whose channel holds the active consumer of ``queue``."""
    out = await faults.ctl(
        faults.live_node(),
        "list_consumers",
        "--no-table-headers",
        "queue_name",
        "channel_pid",
        "active",
    )
    for line in out.splitlines():
        name, pid, active = [*line.split("\t"), "", ""][:3]
        found = re.search(rf"<{re.escape(PREFIX)}(\d+)@", pid)
        if name == queue and active.strip() == "true" and found:
            return int(found.group(1))
    raise AssertionError(f"no active consumer of {queue}: {out!r}")


@pytest.mark.parametrize("partitions", [1, 4])
async def test_kill_9_of_the_active_consumers_node_keeps_each_entitys_order(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
    partitions: int,
) -> None:
    """With four partitions the two workers also share them out (handing partitions over)
    while the stream runs; the node killed is that of the first partition's active consumer."""
    cluster_settings = cluster_settings.model_copy(update={"events_partitions": partitions})
    layout = EventsLayout(cluster_settings.namespace)
    case = "" if partitions == 1 else f", {partitions} partitions"
    async with scratch_database("postgresql", tmp_path) as url:
        database = Database(url)
        try:
            await database.upgrade()
            async with (
                running(WorkflowWorker(cluster_settings, database)),
                running(WorkflowWorker(cluster_settings, database)),
                Publisher(cluster_settings.amqp, name=f"{cluster_settings.namespace}-app") as p,
            ):
                stream = Stream(p, layout, partitioned=partitions > 1)
                async with stream.running():
                    await eventually(at_least(database, BEFORE), timeout=90, what="first events")
                    await faults.kill(await active_node(faults, layout.event_sourcing_queue))
                    mark = len(await stored_ids(database))
                    await eventually(
                        at_least(database, mark + AFTER), timeout=180, what="events again"
                    )

                async def all_stored() -> bool:
                    return set(await stored_ids(database)) >= set(stream.sent)

                await eventually(all_stored, timeout=120, what="every event in the store")
            ids = await stored_ids(database)
        finally:
            await database.close()
    lost = set(stream.sent) - set(ids)
    figures.add(
        f"event order{case}: kill -9 the active consumer's node",
        len(stream.sent),
        len(stream.sent),
        0,
        ids,
        lost,
    )
    figures.count(
        f"event order{case}, kill -9: messages sent again (duplicates dropped by id)",
        stream.resent,
    )
    late = _out_of_order(stream.order, ids)
    figures.count(f"event order{case}, kill -9: events stored after a later one", late)
    assert not lost
    assert len(ids) == len(set(ids)), "an event stored twice"
    assert late == 0


def _out_of_order(order: dict[str, tuple[int, int]], ids: list[str]) -> int:
    last: dict[int, int] = {}
    late = 0
    for message_id in ids:
        entity, n = order[message_id]
        if n < last.get(entity, -1):
            late += 1
        last[entity] = max(n, last.get(entity, -1))
    return late
