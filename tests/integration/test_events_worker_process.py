"""``rabbitry worker workflow`` as an operator runs it: a process that stores change events
and logs module messages, and exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal

from helpers import RABBITRY, eventually_true
from rabbitry.config import Settings
from rabbitry.events.emitter import Emitter
from rabbitry.events.message_log import MessageLog
from rabbitry.events.store import EventStore
from rabbitry.events.topology import EventsLayout
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.storage.database import Database


async def test_the_workflow_worker_process_stores_events_and_stops_on_sigterm(
    events_settings: Settings, events_db: Database, events_db_url: str
) -> None:
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": events_settings.namespace,
        "RABBITRY_DATABASE_URL": events_db_url,
        # The same retry tiers as the test's settings, so that cleanup finds every retry queue.
        "RABBITRY_RETRY_BASE_DELAY": str(events_settings.retry_base_delay),
        "RABBITRY_RETRY_MAX_DELAY": str(events_settings.retry_max_delay),
        "RABBITRY_MAX_ATTEMPTS": str(events_settings.max_attempts),
    }
    process = await asyncio.create_subprocess_exec(
        RABBITRY, "-v", "worker", "workflow", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        while b"workflow: consuming" not in (line := await process.stderr.readline()):
            assert line, "the worker exited before consuming"
        layout = EventsLayout(events_settings.namespace)
        async with Publisher(events_settings.amqp) as publisher:
            await Emitter(publisher, events_settings).insert("orders", 1, {"total": 3})
            await publisher.publish(
                Message("customer.created", {"id": 1}),
                Route(layout.modules_exchange, "customer.created"),
            )
        store, log = EventStore(events_db), MessageLog(events_db)

        async def both_kept() -> bool:
            return bool(await store.history("orders", 1)) and bool(await log.recent())

        await eventually_true(both_kept, what="the stored event and the logged message")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
