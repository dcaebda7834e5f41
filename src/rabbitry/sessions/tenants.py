"""Tenants (USER): names checked once here, because they become parts of queue names,
collection names and cache keys. ``[a-z0-9][a-z0-9-]{0,62}`` (:data:`TENANT_PATTERN`), no other
characters, no exceptions: the API, the store and the broker names all use this one pattern.

A row an older version let in (``-x``) is not fatal to anyone: :meth:`Tenants.since` hands back
only valid names and :meth:`Tenants.invalid` lists the others, for an operator to see.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rabbitry.config import Settings
from rabbitry.errors import BrokerError, Conflict, Invalid, StorageError
from rabbitry.messaging import Declarer
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.sessions.models import Tenant
from rabbitry.sessions.tokens import TENANT_PATTERN
from rabbitry.sessions.topology import TenantsLayout, tenant_topology
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

log = logging.getLogger(__name__)

_TENANT = re.compile(TENANT_PATTERN)

CREATED = "tenant.created"  # rr_job of the notice USER publishes for each new tenant


def is_tenant(name: str) -> bool:
    """Whether ``name`` is a valid tenant name."""
    return _TENANT.fullmatch(name) is not None


def check_tenant(name: str) -> str:
    """``name`` if it is a valid tenant name, else :class:`Invalid` saying what is allowed."""
    if not is_tenant(name):
        raise Invalid(
            f"invalid tenant name {name[:70]!r}: 1-63 lower-case letters, digits or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class TenantInfo:
    id: int
    name: str


class Tenants:
    """The tenant table."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(self, name: str) -> TenantInfo:
        """Add a tenant; :class:`Conflict` if the name is taken."""
        check_tenant(name)
        try:
            async with self._db.session() as session:
                row = Tenant(name=name, created_at=utcnow())
                session.add(row)
                await session.flush()
                return TenantInfo(row.id, row.name)
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise Conflict(f"tenant {name!r} exists already") from None
            raise

    async def exists(self, name: str) -> bool:
        async with self._db.session() as session:
            found = await session.scalar(select(Tenant.id).where(Tenant.name == name))
        return found is not None

    async def since(self, after_id: int = 0) -> list[TenantInfo]:
        """Tenants created after the one with id ``after_id``, in creation order: what DISPATCH
        polls to pick up new tenants (an index range scan, cheap at any poll rate). Rows whose
        name is not a valid tenant name are left out (:meth:`invalid` lists them)."""
        return [t for t in await self._after(after_id) if is_tenant(t.name)]

    async def page(self, after_id: int, limit: int) -> list[TenantInfo]:
        """Up to ``limit`` tenants after id ``after_id``, by id (the listing API's pages: an
        index range from the key, so a late page costs what the first does)."""
        query = (
            select(Tenant.id, Tenant.name)
            .where(Tenant.id > after_id)
            .order_by(Tenant.id)
            .limit(limit)
        )
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        return [TenantInfo(int(i), str(n)) for i, n in rows]

    async def invalid(self) -> list[TenantInfo]:
        """Rows an older version stored with a name no tenant may have: served by nobody."""
        return [t for t in await self._after(0) if not is_tenant(t.name)]

    async def _after(self, after_id: int) -> list[TenantInfo]:
        query = select(Tenant.id, Tenant.name).where(Tenant.id > after_id).order_by(Tenant.id)
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        return [TenantInfo(int(i), str(n)) for i, n in rows]


async def declare_tenant(settings: Settings, name: str) -> bool:
    """Declare the tenant's removal queue (with its retry tiers and dead-letter queue), then
    announce the tenant to DISPATCH (:func:`announce_tenant`); False if the broker is
    unreachable. Not fatal: DISPATCH declares it too when it subscribes, its reconciliation
    finds the tenant in the table, and a request published before that waits in the outbox."""
    if not settings.rabbit_active:
        return False
    amqp = settings.amqp
    try:
        async with await Declarer.connect(
            amqp.url, timeout=amqp.connect_timeout, name=f"{settings.namespace}-user"
        ) as declarer:
            await declarer.declare(tenant_topology(settings, [name]))
    except BrokerError as exc:
        log.warning("tenant %s: queue not declared yet (%s)", name, exc)
        return False
    await announce_tenant(settings, name)
    return True


def created_notice(name: str) -> Message:
    return Message(type=CREATED, payload={"tenant": name}, tenant=name)


async def announce_tenant(settings: Settings, name: str) -> bool:
    """Publish a ``tenant.created`` notice on ``<ns>.tenants.created``, so every DISPATCH
    replica consumes the tenant's queue at once. A hint: without it (broker trouble, nobody
    bound) DISPATCH's reconciliation against the table finds the tenant within
    ``tenant_reconcile_interval``. True if the broker confirmed it to a queue."""
    route = Route(TenantsLayout(settings.namespace).created_exchange, "")
    try:
        async with Publisher(settings.amqp, name=f"{settings.namespace}-user") as publisher:
            result = await publisher.publish(created_notice(name), route, use_fallback=False)
    except BrokerError as exc:
        log.info("tenant %s: not announced (%s)", name, exc)
        return False
    if result.status is not PublishStatus.PUBLISHED:
        log.info("tenant %s: not announced (%s)", name, result.error)
    return result.status is PublishStatus.PUBLISHED
