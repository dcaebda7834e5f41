"""``rabbitry requeue``'s other endings: exit 3 when nothing failed but another run holds some
rows, and a second signal that stops it at once (the first one asked it to finish its batch)."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from pathlib import Path

from sqlalchemy import select

from fixtures.outbox import (
    LatencyProxy,
    Topic,
    leased,
    requeue_environment,
    seed_rows,
    start_requeue,
)
from helpers import AMQP_URL, drain_ids, message
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

SKIPPED = 3


async def test_a_run_that_sent_all_it_could_but_skipped_rows_another_run_holds_exits_3(
    db: Database, topic: Topic, tmp_path: Path
) -> None:
    held = [message(f"held{n}") for n in range(5)]
    free = [message(f"free{n}") for n in range(7)]
    await seed_rows(db, [(topic.route(), m, "down") for m in held + free])
    ledger = Outbox(db)
    cursor = await ledger.start(RequeueFilter())
    assert cursor is not None
    taken = await ledger.claim(
        RequeueFilter(), cursor, token="other-run", limit=5, lease=dt.timedelta(minutes=5)
    )
    assert {r.message_id for r in taken} == {m.id for m in held}

    process = await start_requeue(requeue_environment(db, topic, AMQP_URL, tmp_path), tmp_path)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)

    assert process.returncode == SKIPPED, (out.decode(), err.decode())
    assert "requeue: 7 published, 0 failed, 5 skipped (held by another run" in out.decode()
    assert sorted(await drain_ids(topic.queue, idle=0.3)) == sorted(m.id for m in free)


async def test_a_second_signal_stops_the_run_at_once_and_marks_nothing_it_did_not_send(
    db: Database, topic: Topic, tmp_path: Path
) -> None:
    rows = [message(n) for n in range(300)]
    await seed_rows(db, [(topic.route(), m, "down") for m in rows])
    # A slow path to the broker (0.3 s each way): a batch in flight takes a while to confirm,
    # so the first signal's "finish the batch" is still under way when the second comes.
    async with LatencyProxy(delay=0.3) as proxy:
        env = requeue_environment(db, topic, proxy.url, tmp_path)
        process = await start_requeue(env, tmp_path, "--batch-size", "50")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while await leased(db) == 0:  # a batch is claimed: the run is under way
            assert process.returncode is None, "the run ended before it was signalled"
            assert loop.time() < deadline, "the run claimed nothing within 60s"
            await asyncio.sleep(0.05)
        # Two different signals: two of the same may merge into one while the first is pending.
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)

    summary, errors = out.decode(), err.decode()
    assert "stopped at once by a second signal" in summary, (summary, errors)
    first = next(s for s in (signal.SIGTERM, signal.SIGINT) if f"interrupted by {s.name}" in errors)
    assert process.returncode == 128 + first.value
    assert "Traceback" not in errors
    async with db.session() as session:
        marked = set(
            (
                await session.execute(
                    select(OutboxMessageRecord.message_id).where(
                        OutboxMessageRecord.processed.is_(True)
                    )
                )
            ).scalars()
        )
    assert len(marked) < len(rows)
    # Whatever it marked processed, the broker had confirmed: it is in the queue.
    assert marked <= set(await drain_ids(topic.queue, idle=0.3))
