"""The dashboard's figures: every durable queue of the system with its depth and consumers, its
dead letters, and what waits in the outbox.

Depths and consumers come from passive declares through the core
:class:`~rabbitry.messaging.Declarer`, so they work on a broker without the management plugin.
The queues are the system's topology (every part's, plus each tenant's queue), which the app
puts on its state as a function (:attr:`rabbitry.web.AppState.topology`): the back-office never
imports the app.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from rabbitry.config import Settings
from rabbitry.errors import NotFound, RabbitryError
from rabbitry.messaging import Declarer, Topology, dlq_name
from rabbitry.messaging.deadletters import is_dead_letter_queue
from rabbitry.outbox import Outbox
from rabbitry.sessions import Tenants
from rabbitry.storage import Database
from rabbitry.web import SystemTopology

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueFigures:
    name: str
    messages: int | None  # None: the queue does not exist on the broker (not declared yet)
    consumers: int | None
    dead_letters: int | None
    has_dlq: bool


@dataclass(slots=True)
class Overview:
    queues: list[QueueFigures] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)
    broker_error: str | None = None
    # Tenant rows an older version stored with a name no tenant may have: served by no one.
    invalid_tenants: list[str] = field(default_factory=list)

    @property
    def pending_total(self) -> int:
        return sum(self.pending.values())

    @property
    def dead_letter_total(self) -> int:
        return sum(q.dead_letters or 0 for q in self.queues)


class Broker:
    """One declarer per process, opened on first use and again after a failure."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._declarer: Declarer | None = None
        self._lock = asyncio.Lock()

    async def declarer(self) -> Declarer:
        async with self._lock:
            if self._declarer is None:
                amqp = self._settings.amqp
                self._declarer = await Declarer.connect(
                    amqp.url,
                    timeout=amqp.connect_timeout,
                    name=f"{self._settings.namespace}-backoffice",
                )
            return self._declarer

    async def forget(self) -> None:
        async with self._lock:
            declarer, self._declarer = self._declarer, None
        if declarer is not None:
            try:
                await declarer.close()
            except Exception:  # a broken connection may fail to close; nothing to keep
                log.debug("closing the back-office declarer failed", exc_info=True)


async def tenant_names(db: Database) -> list[str]:
    try:
        return [t.name for t in await Tenants(db).since(0)]
    except RabbitryError as exc:
        log.warning("cannot list tenants: %s", exc)
        return []


def work_queues(topology: Topology, own: Iterable[str] = ()) -> list[str]:
    """Durable, shared queues that are not dead-letter or retry queues, by name, and ``own``
    (the user's ``work_queues``)."""
    names = {q.name for q in topology.queues if q.durable and not q.exclusive} | set(own)
    return sorted(n for n in names if not is_dead_letter_queue(n) and ".retry." not in n)


async def overview(
    settings: Settings, db: Database, broker: Broker, topology: SystemTopology | None
) -> Overview:
    """The dashboard's figures; without ``topology`` (an app serving no system) no queue."""
    result = Overview()
    try:
        result.pending = await Outbox(db).pending_by_queue()
    except RabbitryError as exc:
        log.warning("cannot count pending rows: %s", exc)
    try:
        result.invalid_tenants = [t.name for t in await Tenants(db).invalid()]
    except RabbitryError as exc:
        log.warning("cannot list tenants: %s", exc)
    system = topology(settings, await tenant_names(db)) if topology else Topology()
    # The user's own work queues (settings.work_queues) come with a dead-letter queue.
    declared = {q.name for q in system.queues} | {dlq_name(q) for q in settings.work_queues}
    if not settings.rabbit_active:
        result.broker_error = "rabbit_active is false: the broker is switched off"
        return result
    try:
        declarer = await broker.declarer()
        for name in work_queues(system, settings.work_queues):
            main = await _status(declarer, name)
            dlq = dlq_name(name)
            dead = await _status(declarer, dlq) if dlq in declared else None
            result.queues.append(
                QueueFigures(
                    name,
                    None if main is None else main[0],
                    None if main is None else main[1],
                    None if dead is None else dead[0],
                    dlq in declared,
                )
            )
    except RabbitryError as exc:
        result.broker_error = str(exc)
        await broker.forget()
    return result


async def _status(declarer: Declarer, name: str) -> tuple[int, int] | None:
    try:
        status = await declarer.queue_status(name)
    except NotFound:
        return None
    return status.messages, status.consumers
