"""The relay and ``rabbitry requeue`` on a three-node cluster: rows the outbox kept, sent on
while the cluster breaks under them.

The relay case feeds contingency rows into the outbox (as a publisher's fallback does) while
the relay sends them, through a memory alarm, a crash of the node the relay is connected to,
and a whole-cluster restart, one after the other. The requeue case kills the node a running
``rabbitry requeue`` publishes to. Each counts: every row ends published (marked processed only
once the broker confirmed it: each processed row is in the queue) or still pending, and once
the cluster is whole every row is in the queue, 0 lost; a row sent again is a duplicate with
its message id, counted.

In both, the node killed also leads the quorum queue (its leadership is moved there first):
the client reconnects to a survivor while the queue has no leader, and RabbitMQ 3.10 nacks
every publish of a channel that met the queue then, for the channel's life. Before the sender
replaced a connection that nacked, the relay stalled there (one run in two, for minutes) and
the requeue recorded the rest of its rows failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from faults.conftest import CLUSTER_URL, Cluster, Figures
from faults.tally import Tally, add_rows, count, feeding, migrated_database, relaying
from fixtures.outbox import Topic, requeue_environment, start_requeue
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import work_queue
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.outbox.requeue import without_circuit
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import Eventually

STEP = 300  # rows relayed between one fault and the next
REQUEUE_ROWS = 20_000


async def processed_ids(database: Database) -> set[str]:
    """The message ids of the rows marked processed (sent and confirmed)."""
    async with database.session() as session:
        statement = select(OutboxMessageRecord.message_id).where(
            OutboxMessageRecord.processed.is_(True)
        )
        return set((await session.execute(statement)).scalars())


async def pending(database: Database) -> int:
    async with database.session() as session:
        statement = select(func.count()).where(OutboxMessageRecord.processed.is_(False))
        return int((await session.execute(statement)).scalar_one())


def relayed(database: Database, count_: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await processed_ids(database)) >= count_

    return check


async def declare_queue(settings: Settings) -> Route:
    queue = f"{settings.namespace}.relayed"
    topology = work_queue(queue, policy=settings.retry, queue_type=settings.queue_type)
    async with await Declarer.connect(CLUSTER_URL, name=f"{settings.namespace}-test") as declarer:
        await declarer.declare(topology)
    return Route("", queue)


async def check_marks(
    database: Database, cluster: Cluster, route: Route, tally: Tally
) -> list[str]:
    """Read the queue back; no row marked processed is missing from it (none was marked sent
    without a confirm). Returns the ids that arrived."""
    arrived = await cluster.read_ids(route.routing_key)
    marked = await processed_ids(database)
    assert marked <= set(arrived), f"{len(marked - set(arrived))} marked sent, never arrived"
    tally.published.update(marked)
    return arrived


async def test_the_relay_sends_every_row_through_an_alarm_a_crash_and_a_restart(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    route = await declare_queue(cluster_settings)
    tally = Tally()
    async with migrated_database(tmp_path) as database:
        ledger = Outbox(database)
        async with feeding(ledger, route, tally), relaying(cluster_settings, database):
            await eventually(relayed(database, STEP), timeout=90, what="the first rows relayed")

            async with faults.memory_alarm():
                await asyncio.sleep(5)  # the alarm itself, not a synchronisation
            mark = len(await processed_ids(database))
            await eventually(
                relayed(database, mark + STEP), timeout=120, what="rows relayed after the alarm"
            )

            connections = await faults.connections(f"{cluster_settings.namespace}-relay")
            assert connections, "the relay is not connected"
            node = connections[0][1]
            await faults.lead(route.routing_key, node)
            mark = len(await processed_ids(database))
            await faults.kill(node)
            killed = time.monotonic()
            await eventually(
                relayed(database, mark + 1), timeout=60, what="a row relayed after the crash"
            )
            figures.latency(
                "relay: from kill -9 of its node (the leader) to a row sent",
                time.monotonic() - killed,
            )
            await eventually(
                relayed(database, mark + STEP), timeout=120, what="rows relayed after the crash"
            )

            await faults.stop(1, 2, 3)
            await faults.start(1, 2, 3)
            mark = len(await processed_ids(database))
            await eventually(
                relayed(database, mark + STEP), timeout=180, what="rows relayed after the restart"
            )

        # The feed has stopped; the relay (restarted here) sends what is left.
        async with relaying(cluster_settings, database):

            async def drained() -> bool:
                return await pending(database) == 0

            await eventually(drained, timeout=180, what="every row relayed")
        arrived = await check_marks(database, faults, route, tally)
    count(
        figures,
        "relay: a memory alarm, kill -9 its node (the leader), stop and start the cluster",
        tally,
        arrived,
    )


async def test_the_relays_publisher_is_confirmed_again_soon_after_its_node_the_leader_dies(
    faults: Cluster, cluster_settings: Settings, eventually: Eventually, figures: Figures
) -> None:
    # The relay's publishing alone, without its pauses (which let the queue elect a leader
    # before the relay reconnects, most of the time): batches of 100 without a fallback, a
    # failed batch tried once more at once. Before the sender replaced a connection that
    # nacked, this stayed nacked for good in 4 runs of 4 (and the relay case stalled in one
    # run of two).
    route = await declare_queue(cluster_settings)
    name = f"{cluster_settings.namespace}-relay"
    batch = [(Message(type="fault.relay", payload=n), route) for n in range(100)]
    async with Publisher(without_circuit(cluster_settings.amqp), name=name) as publisher:

        async def confirmed() -> bool:
            for _ in range(2):
                results = await publisher.publish_many(batch, use_fallback=False)
                if all(r.ok for r in results):
                    return True
            return False

        assert await confirmed()
        ((_, node),) = await faults.connections(name)
        await faults.lead(route.routing_key, node)
        await faults.kill(node)
        killed = time.monotonic()
        await eventually(confirmed, timeout=60, what="confirms after the leader's node died")
        figures.latency(
            "the relay's publisher: from kill -9 of its node (the leader) to confirms",
            time.monotonic() - killed,
        )


async def test_a_requeue_whose_node_is_killed_resumes_on_another_and_completes(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    route = await declare_queue(cluster_settings)
    tally = Tally()
    namespace = cluster_settings.namespace
    async with migrated_database(tmp_path) as database:
        ledger = Outbox(database)
        for _ in range(REQUEUE_ROWS // 1000):
            await add_rows(ledger, route, tally, 1000)
        env = requeue_environment(
            database, Topic(namespace, "", route.routing_key), CLUSTER_URL, tmp_path
        )
        process = await start_requeue(env, tmp_path, "--batch-size", "50")
        try:
            await eventually(relayed(database, 500), timeout=120, what="the requeue under way")
            connections = await faults.connections(f"{namespace}-requeue")
            assert connections, "the requeue is not connected"
            node = connections[0][1]
            await faults.lead(route.routing_key, node)
            await faults.kill(node)
            done_at_kill = len(await processed_ids(database))
            out, err = await asyncio.wait_for(process.communicate(), timeout=300)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        summary, errors = out.decode(), err.decode()
        assert done_at_kill < REQUEUE_ROWS, "the run ended before the node was killed"
        assert "Traceback" not in errors
        # One run sends everything: the nacks while the queue had no leader were waited out.
        assert process.returncode == 0, (summary, errors[-2000:])
        assert f"requeue: {REQUEUE_ROWS} published, 0 failed" in summary, summary
        waits = [line for line in errors.splitlines() if "again in" in line]
        figures.count("rabbitry requeue, node killed: pauses waiting out nacks", len(waits))
        assert await pending(database) == 0
        arrived = await check_marks(database, faults, route, tally)
    count(figures, "rabbitry requeue: kill -9 its node (the leader) mid-run", tally, arrived)
