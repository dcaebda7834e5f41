"""Tenants (USER): names checked once here, because they become parts of queue names,
collection names and cache keys. ``[a-z0-9-]{1,63}``, no other characters, no exceptions.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rabbitry.config import Settings
from rabbitry.errors import BrokerError, Conflict, StorageError
from rabbitry.messaging import Declarer
from rabbitry.sessions.models import Tenant
from rabbitry.sessions.topology import tenant_topology
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

log = logging.getLogger(__name__)

_TENANT = re.compile(r"^[a-z0-9-]{1,63}$")


def check_tenant(name: str) -> str:
    """``name`` if it is a valid tenant name, else ``ValueError`` saying what is allowed."""
    if not _TENANT.fullmatch(name):
        raise ValueError(
            f"invalid tenant name {name[:70]!r}: 1-63 lower-case letters, digits or '-'"
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
        polls to pick up new tenants (an index range scan, cheap at any poll rate)."""
        query = select(Tenant.id, Tenant.name).where(Tenant.id > after_id).order_by(Tenant.id)
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        return [TenantInfo(int(i), str(n)) for i, n in rows]


async def declare_tenant(settings: Settings, name: str) -> bool:
    """Declare the tenant's removal queue (with its retry tiers and dead-letter queue); False
    if the broker is unreachable. Not fatal: DISPATCH declares it too when it subscribes, and
    a request published before that waits in the outbox."""
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
    return True
