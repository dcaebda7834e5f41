"""``rabbitry requeue`` stopped by an operator: SIGTERM (a deploy, ``systemctl stop``, a
container runtime) and SIGINT (Ctrl-C). The process finishes the batch it is publishing and
marks it, gives back the batches it leased ahead, prints its summary and exits 128 + signal.
No row stays leased, and a later run sends the rest without a single duplicate."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fixtures.outbox import (
    LatencyProxy,
    Topic,
    leased,
    requeue_environment,
    seed_rows,
    start_requeue,
)
from helpers import AMQP_URL, drain_ids, message
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.storage import Database

ROWS = 3000


async def processed(db: Database) -> int:
    async with db.session() as session:
        statement = select(func.count()).where(OutboxMessageRecord.processed.is_(True))
        return int((await session.execute(statement)).scalar_one())


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signalled_requeue_finishes_its_batch_releases_the_rest_and_says_so(
    db: Database, topic: Topic, tmp_path: Path, stop: signal.Signals
) -> None:
    rows = [message(n) for n in range(ROWS)]
    await seed_rows(db, [(topic.route(), m, "broker was down") for m in rows])
    # A slow path to the broker: each batch takes a confirm round trip of ~60 ms, so the run
    # is surely in the middle when the signal comes.
    async with LatencyProxy(delay=0.03) as proxy:
        env = requeue_environment(db, topic, proxy.url, tmp_path)
        process = await start_requeue(env, tmp_path, "--batch-size", "50")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while await processed(db) < 200:
            assert process.returncode is None, "the run ended before it was signalled"
            assert loop.time() < deadline, "the run published nothing within 60s"
            await asyncio.sleep(0.05)
        process.send_signal(stop)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    summary = out.decode()
    assert process.returncode == 128 + stop.value, (summary, err.decode())
    done = await processed(db)
    assert 200 <= done < ROWS
    assert f"requeue: {done} published, 0 failed; stopped early: asked to stop" in summary
    assert f"{ROWS - done} row(s) left pending, untouched" in summary
    assert f"interrupted by {stop.name}" in err.decode()
    assert "Traceback" not in err.decode()
    assert await leased(db) == 0  # nothing waits for a lease to end

    env = requeue_environment(db, topic, AMQP_URL, tmp_path)
    rest = await start_requeue(env, tmp_path)
    out, err = await asyncio.wait_for(rest.communicate(), timeout=120)
    assert rest.returncode == 0, err.decode()
    assert f"requeue: {ROWS - done} published, 0 failed" in out.decode()
    delivered = Counter(await drain_ids(topic.queue))
    assert delivered == Counter(m.id for m in rows)  # every row once: no duplicate
