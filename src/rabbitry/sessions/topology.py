"""The broker objects of the sessions part: ``<ns>.tenants``, a direct exchange, and one durable
queue per tenant, ``<ns>.tenant.<tenant>.session-removal``, bound with ``<tenant>.session-removal``;
and ``<ns>.sessions.revoked``, a fanout exchange announcing each revoked session to whoever binds
a queue to it (see :mod:`rabbitry.sessions.notices`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rabbitry.config import Settings
from rabbitry.messaging.settings import validate_name
from rabbitry.messaging.topology import Exchange, ExchangeType, Topology, work_queue


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

    def tenant_queue(self, tenant: str) -> str:
        return f"{self.namespace}.tenant.{validate_name(tenant, 'tenant')}.session-removal"

    def tenant_routing_key(self, tenant: str) -> str:
        return f"{validate_name(tenant, 'tenant')}.session-removal"


def tenant_topology(settings: Settings, tenants: Iterable[str]) -> Topology:
    """The tenants exchange, and the removal queue of each of ``tenants``."""
    layout = TenantsLayout(settings.namespace)
    exchange = Exchange(layout.tenants_exchange, ExchangeType.DIRECT)
    result = Topology.of(exchanges=[exchange])
    for tenant in tenants:
        result |= work_queue(
            layout.tenant_queue(tenant),
            policy=settings.retry,
            queue_type=settings.queue_type,
            bindings=[(exchange.name, layout.tenant_routing_key(tenant))],
        )
    return result


def topology(settings: Settings) -> Topology:
    """The tenants and revocation exchanges; each tenant's queue is declared when the tenant is
    created (and again by DISPATCH when it subscribes)."""
    revoked = Exchange(TenantsLayout(settings.namespace).revoked_exchange, ExchangeType.FANOUT)
    return tenant_topology(settings, ()) | Topology.of(exchanges=[revoked])
