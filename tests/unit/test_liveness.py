"""What ``/livez`` and ``/readyz`` answer as a process's services start, consume, crash and
stop (the logic of :mod:`rabbitry.app.health`, with services standing in for workers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rabbitry.app.health import Health
from rabbitry.messaging.service import run_services
from rabbitry.storage import open_database


class Consumer:
    name = "consumer"

    def __init__(self) -> None:
        self.connected = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        await stopping.wait()


class Crashing:
    name = "crashing"

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        await self.go.wait()
        raise RuntimeError("boom")


async def test_live_until_a_service_crashes_then_not_live_and_the_process_told() -> None:
    consumer, crashing = Consumer(), Crashing()
    stopping = asyncio.Event()
    health = Health([consumer, crashing], stopping)
    told = asyncio.Event()
    runner = asyncio.create_task(run_services([consumer, crashing], stopping))
    health.watch(runner, told.set)

    assert health.live() == (True, {"status": "live", "services": ["consumer", "crashing"]})
    ready, body = await health.ready(None)
    assert not ready
    assert body["services"] == {"consumer": "connecting", "crashing": "running"}
    consumer.connected.set()
    assert (await health.ready(None))[1]["services"]["consumer"] == "consuming"

    crashing.go.set()
    await asyncio.wait_for(told.wait(), 10)
    assert health.live() == (
        False,
        {"status": "crashed", "error": "service crashing crashed: boom"},
    )
    assert await health.ready(None) == (False, health.live()[1])


async def test_not_live_while_stopping() -> None:
    stopping = asyncio.Event()
    health = Health([Consumer()], stopping)
    stopping.set()
    assert health.live() == (False, {"status": "stopping"})


async def test_a_process_without_services_is_live_until_it_stops() -> None:
    stopping = asyncio.Event()
    health = Health([], stopping)
    told = asyncio.Event()
    runner = asyncio.create_task(run_services([], stopping))
    health.watch(runner, told.set)
    await asyncio.sleep(0)  # let the runner start: it must not end on its own
    assert not runner.done()
    assert health.live() == (True, {"status": "live", "services": []})
    stopping.set()
    await asyncio.wait_for(runner, 10)
    assert not told.is_set()


async def test_a_reported_link_counts_in_readiness_and_draining_is_not_ready(
    tmp_path: Path,
) -> None:
    health = Health([], asyncio.Event())
    state = "connecting"
    health.report("chat-gateway", lambda: state)
    async with open_database(f"sqlite+aiosqlite:///{tmp_path / 'ready.db'}") as database:
        assert await health.ready(database) == (
            False,
            {"status": "not ready", "database": "ok", "services": {"chat-gateway": "connecting"}},
        )
        state = "consuming"
        assert (await health.ready(database))[0]
        state = "draining"
        ready, body = await health.ready(database)
        assert not ready and body["services"] == {"chat-gateway": "draining"}
