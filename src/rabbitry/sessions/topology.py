"""The broker objects of the sessions part: ``<ns>.tenants``, a direct exchange, and one durable
queue per tenant, ``<ns>.tenant.<tenant>.removals``, bound with ``<tenant>.session-removal``, with
``x-single-active-consumer`` so that of the DISPATCH replicas consuming it one works at a time;
``<ns>.tenants.created``, a fanout exchange on which USER announces each new tenant (each
DISPATCH replica binds a queue of its own to it); and ``<ns>.sessions.revoked``, a fanout
exchange announcing each revoked session to whoever binds a queue to it (see
:mod:`rabbitry.sessions.notices`).

Before single-active-consumer the tenant's queue was ``<ns>.tenant.<tenant>.session-removal``
(:meth:`TenantsLayout.legacy_queue`); a queue's arguments cannot change, hence the new name, and
:mod:`rabbitry.sessions.legacy` moves what the old queues still hold.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rabbitry.config import Settings
from rabbitry.messaging.settings import validate_name
from rabbitry.messaging.topology import (
    Binding,
    Exchange,
    ExchangeType,
    Queue,
    Topology,
    work_queue,
)


@dataclass(frozen=True, slots=True)
class TenantsLayout:
    """Names of the tenants exchange and the per-tenant queues of one deployment."""

    namespace: str

    def __post_init__(self) -> None:
        validate_name(self.namespace, "namespace")

    @property
    def tenants_exchange(self) -> str:
        return f"{self.namespace}.tenants"

    @property
    def revoked_exchange(self) -> str:
        return f"{self.namespace}.sessions.revoked"

    @property
    def created_exchange(self) -> str:
        return f"{self.namespace}.tenants.created"

    def tenant_queue(self, tenant: str) -> str:
        return f"{self.namespace}.tenant.{validate_name(tenant, 'tenant')}.removals"

    def legacy_queue(self, tenant: str) -> str:
        """The tenant's queue as versions before single-active-consumer declared it."""
        return f"{self.namespace}.tenant.{validate_name(tenant, 'tenant')}.session-removal"

    def notice_queue(self, replica: str) -> str:
        """A DISPATCH replica's own queue of tenant-created notices."""
        return f"{self.namespace}.dispatch.{validate_name(replica, 'replica')}.tenants"

    def tenant_routing_key(self, tenant: str) -> str:
        return f"{validate_name(tenant, 'tenant')}.session-removal"


NOTICE_QUEUE_EXPIRES_MS = 600_000
"""A replica's notice queue outlives its last consumer by this much (``x-expires``): kept across
a reconnect (and the declaration of thousands of tenants before the first consume), deleted by
the broker once the replica is gone."""


def tenant_topology(settings: Settings, tenants: Iterable[str]) -> Topology:
    """The tenants exchanges, and the removal queue of each of ``tenants``."""
    layout = TenantsLayout(settings.namespace)
    exchange = Exchange(layout.tenants_exchange, ExchangeType.DIRECT)
    created = Exchange(layout.created_exchange, ExchangeType.FANOUT)
    result = Topology.of(exchanges=[exchange, created])
    for tenant in tenants:
        result |= work_queue(
            layout.tenant_queue(tenant),
            policy=settings.retry,
            queue_type=settings.queue_type,
            bindings=[(exchange.name, layout.tenant_routing_key(tenant))],
            single_active=True,
        )
    return result


def notice_topology(settings: Settings, replica: str) -> Topology:
    """A DISPATCH replica's queue of tenant-created notices, bound to ``<ns>.tenants.created``:
    not durable, and expiring a minute after its last consumer went."""
    layout = TenantsLayout(settings.namespace)
    queue = Queue(
        layout.notice_queue(replica),
        durable=False,
        arguments=(("x-expires", NOTICE_QUEUE_EXPIRES_MS),),
    )
    created = Exchange(layout.created_exchange, ExchangeType.FANOUT)
    return Topology.of(
        exchanges=[created], queues=[queue], bindings=[Binding(created.name, queue.name, "")]
    )


def topology(settings: Settings) -> Topology:
    """The tenants and revocation exchanges; each tenant's queue is declared when the tenant is
    created (and again by DISPATCH when it subscribes)."""
    revoked = Exchange(TenantsLayout(settings.namespace).revoked_exchange, ExchangeType.FANOUT)
    return tenant_topology(settings, ()) | Topology.of(exchanges=[revoked])
