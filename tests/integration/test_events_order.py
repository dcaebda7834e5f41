"""Each entity's change events are stored in the order they were published: with two
``rabbitry worker workflow`` processes (black box), with partitions, while the database fails
a batch that later batches would overtake, and while a worker moves over from the single
event-sourcing queue of earlier versions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from fixtures.events import make_settings
from helpers import (
    RABBITRY,
    delete_namespace,
    eventually_true,
    free_port,
    running,
    scratch_database,
)
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.errors import NotFound
from rabbitry.events.change import ChangeEvent, ChangeType
from rabbitry.events.emitter import Emitter
from rabbitry.events.models import StoredEvent
from rabbitry.events.store import EventStore
from rabbitry.events.topology import EventsLayout, topology
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.publisher import Publisher
from rabbitry.messaging.topology import Exchange, ExchangeType, Topology, work_queue
from rabbitry.storage.database import Database

ENTITY = "App\\Models\\Ordered"
ENTITIES = 50
EVENTS = 40  # per entity: an insert, then updates with n = 1, 2, ...


@contextlib.asynccontextmanager
async def postgresql(tmp_path: Path) -> AsyncIterator[tuple[str, Database]]:
    async with scratch_database("postgresql", tmp_path) as url:
        database = Database(url)
        try:
            await database.upgrade()
            yield url, database
        finally:
            await database.close()


@contextlib.asynccontextmanager
async def namespace(**overrides: Any) -> AsyncIterator[Settings]:
    settings = make_settings(**overrides)
    try:
        yield settings
    finally:
        await delete_namespace(settings.namespace)


async def publish_rounds(settings: Settings, rounds: range, entities: Sequence[int]) -> int:
    """Round ``n`` publishes event ``n`` of every entity, in one pipelined batch; rounds go
    one after the other, so each entity's events are published in order. How many were sent."""
    sent = 0
    async with Publisher(settings.amqp) as publisher:
        emitter = Emitter(publisher, settings)
        for n in rounds:
            kind = ChangeType.INSERT if n == 0 else ChangeType.UPDATE
            await emitter.emit([ChangeEvent(kind, ENTITY, e, 1, {"n": n}) for e in entities])
            sent += len(entities)
    return sent


async def stored(database: Database) -> list[tuple[int, int, int]]:
    """(entity id, n, version) of every stored event, in the order they were stored."""
    async with database.session() as session:
        rows = await session.execute(
            select(StoredEvent.entity_id, StoredEvent.data, StoredEvent.version).order_by(
                StoredEvent.sequence
            )
        )
        return [(entity_id, data["n"], version) for entity_id, data, version in rows]


async def wait_stored(database: Database, count: int, timeout: float = 120) -> None:
    async def done() -> bool:
        return len(await stored(database)) >= count

    await eventually_true(done, timeout=timeout, what=f"{count} stored events")


async def assert_in_publish_order(database: Database, entities: range, events: int) -> None:
    """Every entity's events stored once each, in publish order (the store's sequence), and
    its current state is its last update."""
    rows = await stored(database)
    by_entity: dict[int, list[tuple[int, int]]] = {e: [] for e in entities}
    for entity_id, n, version in rows:
        by_entity[entity_id].append((n, version))
    out_of_order = [e for e, got in by_entity.items() if [n for n, _ in got] != list(range(events))]
    assert out_of_order == [], f"{len(out_of_order)} entities stored out of publish order"
    assert all([v for _, v in got] == list(range(1, events + 1)) for got in by_entity.values())
    store = EventStore(database)
    for entity_id in (entities[0], entities[-1]):
        state = await store.state(ENTITY, entity_id)
        assert state is not None and state.data == {"n": events - 1}


@contextlib.asynccontextmanager
async def worker_process(
    settings: Settings, database_url: str, *args: str, log: list[bytes] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``rabbitry worker workflow [args]`` on the test's namespace, entered once it consumes;
    its log lines after that go to ``log``."""
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": settings.namespace,
        "RABBITRY_AMQP_URL": settings.amqp_url.get_secret_value(),
        "RABBITRY_DATABASE_URL": database_url,
        "RABBITRY_EVENTS_PARTITIONS": str(settings.events_partitions),
        "RABBITRY_RETRY_BASE_DELAY": str(settings.retry_base_delay),
        "RABBITRY_RETRY_MAX_DELAY": str(settings.retry_max_delay),
        "RABBITRY_MAX_ATTEMPTS": str(settings.max_attempts),
    }
    process = await asyncio.create_subprocess_exec(
        RABBITRY, "-v", "worker", "workflow", *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(60):
            while b"workflow: consuming" not in (line := await process.stderr.readline()):
                assert line, "the worker exited before consuming"
        drain = asyncio.create_task(_discard(process.stderr, log))  # a full pipe would block it
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()


async def _discard(stream: asyncio.StreamReader, log: list[bytes] | None) -> None:
    while line := await stream.readline():
        if log is not None:
            log.append(line)


@pytest.mark.parametrize("partitions", [1, 4])
async def test_two_worker_processes_store_each_entity_in_publish_order(
    tmp_path: Path, partitions: int
) -> None:
    async with (
        postgresql(tmp_path) as (url, database),
        namespace(events_partitions=partitions) as settings,
        worker_process(settings, url) as first,
        worker_process(settings, url),
    ):
        half = EVENTS // 2
        sent = await publish_rounds(settings, range(half), range(ENTITIES))
        await wait_stored(database, sent // 2)
        # The worker that started first is the active one: it stops mid-stream (it finishes
        # what it holds), and the other takes over where it left off.
        first.send_signal(signal.SIGTERM)
        sent += await publish_rounds(settings, range(half, EVENTS), range(ENTITIES))
        assert await asyncio.wait_for(first.wait(), timeout=60) == 0
        await wait_stored(database, sent)
        await assert_in_publish_order(database, range(ENTITIES), EVENTS)
        assert len(await stored(database)) == ENTITIES * EVENTS


async def acked(port: int, settings: Settings) -> dict[str, float]:
    """What a worker process acked so far, by event-sourcing queue (its ``/metrics``)."""
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    prefix = f'rabbitry_acked_total{{queue="{settings.namespace}.event-sourcing.'
    counts: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(prefix):
            name, value = line.split()
            counts[name[len(prefix) : -2]] = float(value)
    return counts


async def test_worker_processes_share_the_partitions_and_keep_each_entitys_order(
    tmp_path: Path,
) -> None:
    """The worker that starts first is the active consumer of all four partitions; once events
    flow it hands partitions over until each of the two holds two, and no event is lost,
    repeated or stored out of its entity's order meanwhile."""
    ports = (free_port(), free_port())
    logs: list[bytes] = []
    async with (
        postgresql(tmp_path) as (url, database),
        namespace(events_partitions=4) as settings,
        worker_process(settings, url, "--port", str(ports[0]), log=logs),
        worker_process(settings, url, "--port", str(ports[1])),
    ):
        await eventually_true(lambda: _answers(ports), timeout=60, what="both workers' /metrics")
        rounds = 0
        sent = 0

        async def window() -> list[dict[str, float]]:
            """Publish 10 more rounds; what each worker acked of them, by partition, once
            every one of them is stored."""
            nonlocal rounds, sent
            before = [await acked(port, settings) for port in ports]
            sent += await publish_rounds(settings, range(rounds, rounds + 10), range(ENTITIES))
            rounds += 10
            await wait_stored(database, sent)
            # Acks go out after the commit: wait for them to be counted too.
            await asyncio.sleep(0.5)
            after = [await acked(port, settings) for port in ports]
            return [
                {q: n - b.get(q, 0) for q, n in a.items() if n - b.get(q, 0)}
                for a, b in zip(after, before, strict=True)
            ]

        first = await window()
        # Before any handover, the first worker stored everything.
        assert first[1] == {} and sorted(first[0]) == ["p0", "p1", "p2", "p3"], first

        shared: list[dict[str, float]] = []
        async with asyncio.timeout(90):
            while not (shared and all(len(w) == 2 for w in shared)):
                shared = await window()
        # Settled: each partition has one active consumer, and each worker holds two of them.
        assert sorted([*shared[0], *shared[1]]) == ["p0", "p1", "p2", "p3"], shared
        assert any(b"handing" in line and b"over" in line for line in logs)
        await assert_in_publish_order(database, range(ENTITIES), rounds)
        assert len(await stored(database)) == sent == ENTITIES * rounds


async def _answers(ports: Sequence[int]) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            for port in ports:
                (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).raise_for_status()
    except httpx.HTTPError:
        return False
    return True


async def fail_entity_7(database: Database, times: int) -> None:
    """The database fails every transaction that stores an event of entity 7, ``times``
    times (a sequence counts the attempts: it is not rolled back with them)."""
    async with database.engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE failures"))
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_entity_7() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN IF NEW.entity_id = 7 AND nextval('failures') <= {int(times)} THEN"
                " RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_entity_7 BEFORE INSERT ON event_store"
                " FOR EACH ROW EXECUTE FUNCTION refuse_entity_7()"
            )
        )


async def failures(database: Database) -> int:
    """How many times entity 7's events were tried (see :func:`fail_entity_7`)."""
    async with database.engine.connect() as conn:
        return int((await conn.execute(text("SELECT last_value FROM failures"))).scalar_one())


async def test_a_batch_the_database_fails_is_stored_before_the_batches_after_it(
    tmp_path: Path,
) -> None:
    async with postgresql(tmp_path) as (_, database), namespace() as settings:
        await fail_entity_7(database, times=3)
        async with running(WorkflowWorker(settings, database, batch_size=50)):
            sent = await publish_rounds(settings, range(EVENTS), range(ENTITIES))
            await wait_stored(database, sent)
        assert await failures(database) > 3, "the failure was not injected"
        await assert_in_publish_order(database, range(ENTITIES), EVENTS)


async def test_while_a_failed_batch_is_written_again_other_entities_batches_are_stored(
    tmp_path: Path,
) -> None:
    # Two batches in the database at once: entity 7's first batch fails five times (written
    # again in place, ~3 s of pauses); meanwhile the other batches store the other entities,
    # and entity 7's later events wait for its first one.
    others = [e for e in range(ENTITIES) if e != 7]
    async with postgresql(tmp_path) as (_, database), namespace() as settings:
        await fail_entity_7(database, times=5)
        async with running(WorkflowWorker(settings, database, batch_size=50, in_flight=2)):
            sent = await publish_rounds(settings, range(1), [7])

            async def tried() -> bool:
                return await failures(database) >= 1

            await eventually_true(tried, timeout=30, what="entity 7's first attempt")
            sent += await publish_rounds(settings, range(EVENTS), others)
            sent += await publish_rounds(settings, range(1, EVENTS), [7])
            await wait_stored(database, sent)
        assert await failures(database) > 5, "the failure was not injected"
        await assert_in_publish_order(database, range(ENTITIES), EVENTS)
        rows = await stored(database)
        first_of_7 = rows.index((7, 0, 1))
        overtaking = [row for row in rows[:first_of_7] if row[1] > 0]
        assert overtaking, "no other entity was stored while entity 7's batch was held"


async def test_a_worker_drains_the_queue_of_earlier_versions_before_the_partitions(
    tmp_path: Path,
) -> None:
    async with postgresql(tmp_path) as (_, database), namespace() as settings:
        layout = EventsLayout(settings.namespace)
        legacy = layout.legacy_queue
        # The topology of earlier versions: one queue, no single active consumer, hearing all.
        old = Topology.of(exchanges=[Exchange(layout.events_exchange, ExchangeType.TOPIC)]) | (
            work_queue(legacy, policy=settings.retry, bindings=[(layout.events_exchange, "#")])
        )
        declarer = await Declarer.connect(settings.amqp_url.get_secret_value())
        async with declarer:
            await declarer.declare(old)
            entities = range(1, 11)
            sent = await publish_rounds(settings, range(EVENTS // 2), entities)
            assert (await declarer.queue_status(legacy)).messages == sent
            # Two workers of this version start together, while the rest is published: one
            # drains the old queue, the other waits for it to be gone.
            workers = [WorkflowWorker(settings, database) for _ in range(2)]
            stopping = asyncio.Event()
            tasks = [asyncio.create_task(w.run(stopping)) for w in workers]
            try:
                sent += await publish_rounds(settings, range(EVENTS // 2, EVENTS), entities)
                for worker in workers:
                    await asyncio.wait_for(worker.connected.wait(), timeout=60)
                await wait_stored(database, sent)
            finally:
                stopping.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
            await assert_in_publish_order(database, entities, EVENTS)
            for queue in [legacy, *(f"{legacy}.retry.{ms}" for ms in settings.retry.tiers_ms())]:
                with pytest.raises(NotFound):
                    await declarer.queue_status(queue)
            assert (await declarer.queue_status(f"{legacy}.dlq")).messages == 0


async def depths(settings: Settings, partitions: int) -> list[int]:
    """Ready messages in the first ``partitions`` partition queues of ``settings``."""
    layout = EventsLayout(settings.namespace)
    async with await Declarer.connect(settings.amqp_url.get_secret_value()) as declarer:
        return [
            (await declarer.queue_status(layout.partition_queue(p))).messages
            for p in range(partitions)
        ]


async def test_from_one_partition_to_two_the_first_queue_stops_taking_every_event(
    tmp_path: Path,
) -> None:
    """One partition binds its queue ``#``; a declaration with two adds keys and removes none,
    so without the worker's tidying p0 would go on taking a copy of p1's events."""
    async with postgresql(tmp_path) as (_, database), namespace() as one:
        async with running(WorkflowWorker(one, database)):
            sent = await publish_rounds(one, range(2), range(ENTITIES))
            await wait_stored(database, sent)
        two = one.model_copy(update={"events_partitions": 2})
        async with running(WorkflowWorker(two, database)):
            pass  # it tidies the bindings at start
        published = await publish_rounds(two, range(2, 4), range(ENTITIES))
        got = await depths(two, 2)
        # Each event in one queue, once; both queues have some (the entities' buckets).
        assert sum(got) == published and all(got), got


async def test_from_four_partitions_to_two_the_two_beyond_are_drained_and_deleted(
    tmp_path: Path,
) -> None:
    async with postgresql(tmp_path) as (_, database), namespace(events_partitions=4) as four:
        layout = EventsLayout(four.namespace)
        async with await Declarer.connect(four.amqp_url.get_secret_value()) as declarer:
            await declarer.declare(topology(four))
        sent = await publish_rounds(four, range(3), range(ENTITIES))  # waiting in p0..p3
        assert sum(await depths(four, 4)) == sent
        two = four.model_copy(update={"events_partitions": 2})
        async with running(WorkflowWorker(two, database)):
            await wait_stored(database, sent)
            sent += await publish_rounds(two, range(3, 6), range(ENTITIES))
            await wait_stored(database, sent)
        await assert_in_publish_order(database, range(ENTITIES), 6)
        async with await Declarer.connect(four.amqp_url.get_secret_value()) as declarer:
            for gone in (layout.partition_queue(2), layout.partition_queue(3)):
                with pytest.raises(NotFound):
                    await declarer.queue_status(gone)
        published = await publish_rounds(two, range(6, 8), range(ENTITIES))
        got = await depths(two, 2)
        assert sum(got) == published and all(got), got
