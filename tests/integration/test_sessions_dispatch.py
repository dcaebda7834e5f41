"""DISPATCH at scale, in one process against the real broker and a SQLite tenants table: one
consumer connection per replica for all tenants, replicas sharing each tenant's queue through
single-active-consumer and handing over when one goes, new tenants served at once from USER's
notice or by the reconciliation, and tenants moved off their queues from older versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fixtures.sessions import admin, delete_redis_keys, sessions_app, sessions_settings_for
from helpers import Eventually, listed
from rabbitry.amqp.link import Link
from rabbitry.config import Settings
from rabbitry.messaging import Declarer
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.topology import dlq_name, retry_queue_name, work_queue
from rabbitry.sessions.dispatch import DispatchService
from rabbitry.sessions.legacy import Retired, retire_legacy_queue
from rabbitry.sessions.removal import RemovalRequest
from rabbitry.sessions.tenants import Tenants, announce_tenant
from rabbitry.sessions.topology import TenantsLayout, tenant_topology
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import BrokerProbe

Replica = Callable[..., AbstractAsyncContextManager[DispatchService]]


@pytest.fixture
async def dispatch_settings(namespace: str, tmp_path: Path) -> AsyncIterator[Settings]:
    # Nobody listens at the SESSION address: the requests here are for users without
    # sessions, which DISPATCH acks without asking SESSION.
    settings = sessions_settings_for(
        namespace,
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        None,
        session_url="http://127.0.0.1:9",
    )
    yield settings
    await delete_redis_keys(namespace)


@pytest.fixture
async def db(dispatch_settings: Settings) -> AsyncIterator[Database]:
    async with Database(dispatch_settings.sql_url) as database:
        await database.upgrade()
        yield database


@pytest.fixture
def replica(dispatch_settings: Settings, db: Database, broker: BrokerProbe) -> Replica:
    """``async with replica("r1") as service:`` — a DISPATCH replica, entered once consuming."""

    @asynccontextmanager
    async def start(name: str, **overrides: object) -> AsyncIterator[DispatchService]:
        settings = dispatch_settings.model_copy(update=overrides)
        service = DispatchService(settings, db=db, replica=name)
        stopping = asyncio.Event()
        task = asyncio.create_task(service.run(stopping))
        try:
            await asyncio.wait_for(service.worker.connected.wait(), 60)
            yield service
        finally:
            stopping.set()
            await asyncio.wait_for(task, 60)

    return start


def consumers(namespace: str) -> dict[str, list[bool]]:
    """Each queue of the namespace with consumers: whether each consumer is the active one."""
    found: dict[str, list[bool]] = {}
    for queue, active in listed("consumers", "queue_name", "active"):
        if queue.startswith(f"{namespace}."):
            found.setdefault(queue, []).append(active == "true")
    return found


async def request_removal(settings: Settings, tenant: str, user_id: int = 1) -> None:
    layout = TenantsLayout(settings.namespace)
    route = Route(layout.tenants_exchange, layout.tenant_routing_key(tenant))
    async with Publisher(settings.amqp) as publisher:
        result = await publisher.publish(RemovalRequest(tenant, user_id).message(), route)
    assert result.status is PublishStatus.PUBLISHED, result


async def test_two_replicas_each_hold_one_connection_and_one_of_them_consumes_each_tenant(
    dispatch_settings: Settings,
    db: Database,
    replica: Replica,
    broker: BrokerProbe,
    eventually: Eventually,
) -> None:
    ns = dispatch_settings.namespace
    layout = TenantsLayout(ns)
    names = [f"t{n}" for n in range(12)]
    for name in names:
        await Tenants(db).create(name)
    async with replica("r1") as first, replica("r2") as second:
        assert first.tenants == second.tenants == frozenset(names)
        for service in (first, second):
            links = [n for n, _ in await broker.connections(service.worker.name)]
            assert [n for n in links if not n.endswith(("-declarer", "-legacy"))] == [
                service.worker.name
            ]

        queues = {layout.tenant_queue(name) for name in names}

        async def shared() -> bool:
            found = await asyncio.to_thread(consumers, ns)
            return all(sorted(found.get(q, [])) == [False, True] for q in queues)

        await eventually(shared, timeout=30, what="two consumers, one active, on each queue")


async def test_a_replica_that_goes_hands_its_tenants_to_the_other_within_seconds(
    dispatch_settings: Settings,
    db: Database,
    replica: Replica,
    broker: BrokerProbe,
    eventually: Eventually,
) -> None:
    ns = dispatch_settings.namespace
    layout = TenantsLayout(ns)
    names = [f"h{n}" for n in range(5)]
    for name in names:
        await Tenants(db).create(name)
    queues = [layout.tenant_queue(n) for n in names]
    first = replica("r1")
    await first.__aenter__()  # the first to consume: the active one on every queue
    gone = False
    try:
        async with replica("r2") as second:

            async def standing_by() -> bool:
                found = await asyncio.to_thread(consumers, ns)
                return all(len(found.get(q, [])) == 2 for q in queues)

            await eventually(standing_by, timeout=30, what="r2 standing by on every queue")
            # r1 goes as a process that died would: the broker drops its connection, and it
            # does not come back.
            await broker.close_connections(f"{ns}-dispatch-r1")
            gone = True
            await first.__aexit__(None, None, None)
            for name in names:
                await request_removal(dispatch_settings, name)

            async def served() -> bool:
                counts = [await broker.counts(q) for q in queues]
                return counts == [(0, 0)] * len(names)

            await eventually(served, timeout=30, what="every tenant's request served by r2")
            found = await asyncio.to_thread(consumers, ns)
            assert all(found[q] == [True] for q in queues)
            assert second.consuming
    finally:
        if not gone:
            await first.__aexit__(None, None, None)


async def test_a_tenant_created_through_user_is_served_at_once_from_its_notice(
    dispatch_settings: Settings,
    db: Database,
    replica: Replica,
    broker: BrokerProbe,
    eventually: Eventually,
) -> None:
    # The reconciliation is an hour away: only the notice can bring the new tenant in.
    async with replica("r1", tenant_reconcile_interval=3600.0) as service:
        async with sessions_app(dispatch_settings) as (_, client):
            made = await client.post("/api/tenants", json={"name": "fresh"}, headers=admin())
            assert made.status_code == 201, made.text

        async def served() -> bool:
            return service.serves("fresh")

        await eventually(served, timeout=20, what="the new tenant served")
        await request_removal(dispatch_settings, "fresh")
        queue = TenantsLayout(dispatch_settings.namespace).tenant_queue("fresh")

        async def consumed() -> bool:
            return await broker.counts(queue) == (0, 0)

        await eventually(consumed, what="its removal request consumed")


async def test_a_tenant_added_to_the_table_without_a_notice_is_found_by_the_reconciliation(
    dispatch_settings: Settings,
    db: Database,
    replica: Replica,
    broker: BrokerProbe,
    eventually: Eventually,
) -> None:
    async with replica("r1", tenant_reconcile_interval=1.0) as service:
        await Tenants(db).create("quiet")  # no notice: as if the broker lost it

        async def served() -> bool:
            return service.serves("quiet")

        await eventually(served, timeout=20, what="the tenant found in the table")


async def test_a_notice_for_a_tenant_not_in_the_table_yet_still_serves_its_queue(
    dispatch_settings: Settings, db: Database, replica: Replica, eventually: Eventually
) -> None:
    # The notice is a hint: DISPATCH takes it as it is (the queue is harmless to consume).
    async with replica("r1", tenant_reconcile_interval=3600.0) as service:
        assert await announce_tenant(dispatch_settings, "early")

        async def served() -> bool:
            return service.serves("early")

        await eventually(served, what="the announced tenant served")


async def old_tenant_queue(settings: Settings, declarer: Declarer, tenant: str) -> str:
    """What an older version declared for ``tenant``: no single-active-consumer, bound with the
    same key; one removal request in it, one in a retry tier."""
    layout = TenantsLayout(settings.namespace)
    legacy = layout.legacy_queue(tenant)
    await declarer.declare(tenant_topology(settings, ()))  # the exchanges
    await declarer.declare(
        work_queue(
            legacy,
            policy=settings.retry,
            bindings=[(layout.tenants_exchange, layout.tenant_routing_key(tenant))],
        )
    )
    tier = retry_queue_name(legacy, max(settings.retry.tiers_ms()))
    async with Publisher(settings.amqp) as publisher:
        for queue, user_id in [(legacy, 1), (tier, 2)]:
            message = RemovalRequest(tenant, user_id).message()
            result = await publisher.publish(message, Route("", queue))
            assert result.status is PublishStatus.PUBLISHED
    return legacy


async def test_an_old_tenant_queue_is_emptied_into_the_new_one_and_deleted(
    dispatch_settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    settings = dispatch_settings
    layout = TenantsLayout(settings.namespace)
    legacy = await old_tenant_queue(settings, declarer, "old")
    await declarer.declare(tenant_topology(settings, ["old"]))
    async with Publisher(settings.amqp) as publisher:
        retired = await retire_legacy_queue(settings, declarer, publisher, "old")

    assert retired == Retired(found=True, moved=2, deleted=True)
    queues, _ = await broker.objects(settings.namespace)
    assert legacy not in queues
    assert not any(q.startswith(f"{legacy}.retry.") for q in queues)
    assert dlq_name(legacy) in queues  # dead letters stay for an operator
    assert await broker.counts(layout.tenant_queue("old")) == (2, 0)
    # New requests reach the new queue only.
    await request_removal(settings, "old", 3)
    assert await broker.counts(layout.tenant_queue("old")) == (3, 0)


async def test_an_old_tenant_queue_a_consumer_still_reads_is_left_for_later(
    dispatch_settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    # A replica of the older version still consumes the old queue (a rolling upgrade): its
    # queue is emptied and unbound but not deleted under it.
    settings = dispatch_settings
    legacy = await old_tenant_queue(settings, declarer, "busy")
    await declarer.declare(tenant_topology(settings, ["busy"]))
    link = await Link.connect(settings.amqp.url, name=f"{settings.namespace}-old-dispatch")
    try:
        await link.consume(legacy, lambda delivery: None)
        async with Publisher(settings.amqp) as publisher:
            retired = await retire_legacy_queue(settings, declarer, publisher, "busy")
        assert retired.found and not retired.deleted
        queues, _ = await broker.objects(settings.namespace)
        assert legacy in queues
    finally:
        await link.close()


async def test_dispatch_retires_the_old_queues_of_the_tenants_it_serves(
    dispatch_settings: Settings,
    db: Database,
    declarer: Declarer,
    replica: Replica,
    broker: BrokerProbe,
    eventually: Eventually,
) -> None:
    settings = dispatch_settings
    legacy = await old_tenant_queue(settings, declarer, "upgraded")
    await Tenants(db).create("upgraded")
    async with replica("r1"):

        async def retired() -> bool:
            queues, _ = await broker.objects(settings.namespace)
            return legacy not in queues

        await eventually(retired, timeout=30, what="the old queue retired")
        queue = TenantsLayout(settings.namespace).tenant_queue("upgraded")

        async def consumed() -> bool:
            return await broker.counts(queue) == (0, 0)

        await eventually(consumed, timeout=30, what="the moved requests consumed")
