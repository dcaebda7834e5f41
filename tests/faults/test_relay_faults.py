"""The relay and ``rabbitry requeue`` on a three-node cluster: rows the outbox kept, sent on
while the cluster breaks under them.

The requeue case kills the node a running ``rabbitry requeue`` publishes to. (The relay's case
— rows fed while the relay sends them through an alarm, a crash of its node and a cluster
restart — is not here yet: it stalled after the crash in one run of two, see
docs/reliability.md.) Each counts: every row ends published (marked processed only
once the broker confirmed it: each processed row is in the queue) or still pending, and once
the cluster is whole every row is in the queue, 0 lost; a row sent again is a duplicate with
its message id, counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from faults.conftest import CLUSTER_URL, Cluster, Figures
from faults.tally import Tally, count, migrated_database
from fixtures.outbox import Topic, requeue_environment, start_requeue
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Route
from rabbitry.messaging.topology import work_queue
from rabbitry.outbox.filters import Origin
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import Eventually

FEED = 20  # rows added to the outbox at a time, every FEED_PAUSE seconds
FEED_PAUSE = 0.1
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


async def add_rows(ledger: Outbox, route: Route, tally: Tally, n: int) -> None:
    """``n`` contingency rows, as a publisher's fallback stores them."""
    messages = [Message(type="fault.relay", payload={"n": len(tally.sent) + i}) for i in range(n)]
    await ledger.add([(route, m, "broker was down") for m in messages], origin=Origin.CONTINGENCY)
    tally.sent.extend(m.id for m in messages)
    tally.persisted.update(m.id for m in messages)


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
            await faults.kill(connections[0][1])
            done_at_kill = len(await processed_ids(database))
            out, err = await asyncio.wait_for(process.communicate(), timeout=300)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        summary = out.decode()
        assert done_at_kill < REQUEUE_ROWS, "the run ended before the node was killed"
        assert "Traceback" not in err.decode()
        if process.returncode != 0:
            # Known gap: when the killed node led the queue, the broker nacks every publish
            # until a new leader is elected, and the run records the rest as failed (pending,
            # attempts + 1) instead of waiting as it does for an unreachable broker. Nothing is
            # lost: a second run sends them. docs/reliability.md says so.
            assert process.returncode == 1, (summary, err.decode()[-2000:])
            assert "broker nacked the message" in summary, summary
            failed = await pending(database)
            figures.count("rabbitry requeue, node killed: rows left pending by nacks", failed)
            rest = await start_requeue(env, tmp_path)
            out, err = await asyncio.wait_for(rest.communicate(), timeout=300)
            assert rest.returncode == 0, (out.decode(), err.decode()[-2000:])
            assert f"requeue: {failed} published, 0 failed" in out.decode()
        else:
            assert f"requeue: {REQUEUE_ROWS} published, 0 failed" in summary, summary
        assert await pending(database) == 0
        arrived = await check_marks(database, faults, route, tally)
    count(figures, "rabbitry requeue: kill -9 its node mid-run", tally, arrived)
