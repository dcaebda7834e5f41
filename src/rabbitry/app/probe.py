"""The readings behind ``rabbitry status``: every broker node alone, the registry's queues by
passive declare, the outbox and the tenants table.

Only what AMQP and the database tell: no management plugin is assumed (many deployments do not
enable it). A passive declare gives a queue's depth and consumer count; the processes a part runs
show as the consumers of its queues. A reading that fails becomes an error in the readings, never
an exception: a status command must report a broken system, not crash on it.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import SQLAlchemyError

from rabbitry.app.registry import system_topology
from rabbitry.app.status import NodeReading, QueueReading, Readings
from rabbitry.config import Settings
from rabbitry.errors import NotFound, RabbitryError
from rabbitry.messaging import Declarer, Topology, dlq_name
from rabbitry.messaging.deadletters import is_dead_letter_queue
from rabbitry.messaging.nodes import node_urls
from rabbitry.outbox import Outbox, RequeueFilter
from rabbitry.sessions import Tenants, TenantsLayout
from rabbitry.storage import Database

log = logging.getLogger(__name__)


async def read_status(settings: Settings) -> Readings:
    """Take every reading ``rabbitry status`` reports."""
    nodes = await asyncio.gather(
        *(_node(settings, where, url) for where, url in node_urls(settings.amqp.url))
    )
    tenants: list[str] = []
    pending: dict[str, int] = {}
    oldest = None
    invalid: list[str] = []
    database_error = None
    async with Database(settings.sql_url) as db:
        try:
            tenants = [t.name for t in await Tenants(db).since(0)]
            invalid = [t.name for t in await Tenants(db).invalid()]
            outbox = Outbox(db)
            pending = await outbox.pending_by_queue()
            first = await outbox.rows(RequeueFilter(), limit=1)
            oldest = first[0].created_at if first else None
        except (RabbitryError, SQLAlchemyError, OSError) as exc:
            database_error = str(exc).splitlines()[0]
    queues: list[QueueReading] = []
    broker_error = None
    if any(node.error is None for node in nodes):
        try:
            queues = await _queues(settings, system_topology(settings, tenants), tenants)
        except RabbitryError as exc:
            broker_error = str(exc)
    else:
        broker_error = "no node of the broker URL is reachable"
    return Readings(
        nodes=list(nodes),
        queues=queues,
        pending=pending,
        oldest_pending=oldest,
        invalid_tenants=invalid,
        broker_error=broker_error,
        database_error=database_error,
    )


async def _node(settings: Settings, where: str, url: str) -> NodeReading:
    try:
        declarer = await Declarer.connect(
            url, timeout=settings.connect_timeout, name=f"{settings.namespace}-status"
        )
    except RabbitryError as exc:
        return NodeReading(where, str(exc).splitlines()[0] or type(exc).__name__)
    await declarer.close()
    return NodeReading(where)


async def _queues(settings: Settings, topology: Topology, tenants: list[str]) -> list[QueueReading]:
    layout = TenantsLayout(settings.namespace)
    owner = {layout.tenant_queue(t): t for t in tenants}
    work, declared = watched_queues(settings, topology)
    result = []
    async with await Declarer.connect(
        settings.amqp.url, timeout=settings.connect_timeout, name=f"{settings.namespace}-status"
    ) as declarer:
        for name in work:
            messages, consumers = await _status(declarer, name)
            dlq = dlq_name(name)
            dead = (await _status(declarer, dlq))[0] if dlq in declared else None
            result.append(QueueReading(name, messages, consumers, dead, owner.get(name)))
    return result


def watched_queues(settings: Settings, topology: Topology) -> tuple[list[str], set[str]]:
    """The work queues to watch, by name: the system's durable shared ones, and the user's own
    (``settings.work_queues``); and the names of the queues that exist by design (a work queue
    whose dead-letter queue is among them has one)."""
    declared = {q.name for q in topology.queues} | {dlq_name(q) for q in settings.work_queues}
    names = {q.name for q in topology.queues if q.durable and not q.exclusive}
    names |= set(settings.work_queues)
    work = sorted(n for n in names if not is_dead_letter_queue(n) and ".retry." not in n)
    return work, declared


async def dead_letter_depths(settings: Settings) -> list[tuple[str, int]]:
    """The dead-letter queues of the system (its tenants' too) and of ``work_queues`` that
    hold messages, with how many, fullest first. Only passive declares: a queue name it is
    not told (neither the system's nor configured) it cannot see, as AMQP lists no queues."""
    async with Database(settings.sql_url) as db:
        try:
            tenants = [t.name for t in await Tenants(db).since(0)]
        except (RabbitryError, SQLAlchemyError, OSError) as exc:
            log.warning("cannot list tenants, their queues are left out: %s", exc)
            tenants = []
    work, declared = watched_queues(settings, system_topology(settings, tenants))
    found = []
    async with await Declarer.connect(
        settings.amqp.url, timeout=settings.connect_timeout, name=f"{settings.namespace}-status"
    ) as declarer:
        for dlq in (dlq_name(name) for name in work):
            if dlq in declared and (messages := (await _status(declarer, dlq))[0]):
                found.append((dlq, messages))
    return sorted(found, key=lambda item: (-item[1], item[0]))


async def _status(declarer: Declarer, name: str) -> tuple[int | None, int | None]:
    try:
        status = await declarer.queue_status(name)
    except NotFound:
        return None, None
    return status.messages, status.consumers
