"""The broker objects of the chat part.

``<ns>.chat.dispatch`` is a direct exchange; each gateway instance binds its own exclusive,
auto-delete queue to it with one routing key per room it has clients in. ``<ns>.chat.persistence``
fans every message out to the one durable history queue, ``<ns>.chat.history``, consumed by
competing persistence workers.
"""

from __future__ import annotations

from dataclasses import dataclass

from rabbitry.chat.protocol import check_room
from rabbitry.config import Settings
from rabbitry.messaging.settings import validate_name
from rabbitry.messaging.topology import Exchange, ExchangeType, Topology, work_queue


@dataclass(frozen=True, slots=True)
class ChatLayout:
    """Names of the chat exchanges and queues of one deployment."""

    namespace: str

    def __post_init__(self) -> None:
        validate_name(self.namespace, "namespace")

    @property
    def dispatch_exchange(self) -> str:
        return f"{self.namespace}.chat.dispatch"

    @property
    def persistence_exchange(self) -> str:
        return f"{self.namespace}.chat.persistence"

    @property
    def history_queue(self) -> str:
        return f"{self.namespace}.chat.history"

    def room_key(self, tenant: str, room: str) -> str:
        # Scoped by tenant so that equal room ids of two tenants never share a binding; a
        # tenant name has no ".", so the key splits back unambiguously.
        return f"{validate_name(tenant, 'tenant')}.{check_room(room)}"

    def gateway_queue_prefix(self, instance: str) -> str:
        """The prefix of one gateway instance's queues (and its connection's name)."""
        return f"{self.namespace}.chat.gateway.{validate_name(instance, 'instance')}"


def topology(settings: Settings) -> Topology:
    """Both exchanges and the history queue (gateway queues are declared by each gateway)."""
    layout = ChatLayout(settings.namespace)
    persistence = Exchange(layout.persistence_exchange, ExchangeType.FANOUT)
    return Topology.of(
        exchanges=[Exchange(layout.dispatch_exchange, ExchangeType.DIRECT), persistence]
    ) | work_queue(
        layout.history_queue,
        policy=settings.retry,
        queue_type=settings.queue_type,
        bindings=[(persistence.name, "")],
    )
