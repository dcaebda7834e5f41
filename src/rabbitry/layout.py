"""Rabbitry's own broker objects, named under the namespace (see SPEC "Broker topology").

Every name is derived here from the namespace and validated identifiers, so no caller ever
formats a queue name or routing key out of user input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rabbitry.config import ModuleConfig, Settings, validate_name
from rabbitry.messaging.retry import policy_of
from rabbitry.messaging.topology import (
    Binding,
    Exchange,
    ExchangeType,
    Queue,
    Topology,
    work_queue,
)

WORKFLOW_MODULE = "workflow"


@dataclass(frozen=True, slots=True)
class Layout:
    """Names of every exchange and queue of one deployment."""

    namespace: str

    def __post_init__(self) -> None:
        validate_name(self.namespace, "namespace")

    @property
    def modules_exchange(self) -> str:
        return f"{self.namespace}.modules"

    def module_queue(self, module: str) -> str:
        return f"{self.namespace}.module.{validate_name(module, 'module name')}"

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def event_sourcing_queue(self) -> str:
        return f"{self.namespace}.event-sourcing"

    @property
    def tenants_exchange(self) -> str:
        return f"{self.namespace}.tenants"

    def tenant_queue(self, tenant: str) -> str:
        return f"{self.namespace}.tenant.{validate_name(tenant, 'tenant')}.session-removal"

    def tenant_routing_key(self, tenant: str) -> str:
        return f"{validate_name(tenant, 'tenant')}.session-removal"

    @property
    def chat_dispatch_exchange(self) -> str:
        return f"{self.namespace}.chat.dispatch"

    @property
    def chat_persistence_exchange(self) -> str:
        return f"{self.namespace}.chat.persistence"

    @property
    def chat_history_queue(self) -> str:
        return f"{self.namespace}.chat.history"

    def chat_room_key(self, tenant: str, room: str) -> str:
        # Scoped by tenant so that equal room ids of two tenants never share a binding.
        return f"{validate_name(tenant, 'tenant')}.{validate_name(room, 'room')}"


def module_topology(settings: Settings, modules: Iterable[ModuleConfig]) -> Topology:
    """``<ns>.modules`` and a queue per module; the workflow module hears ``#``."""
    layout = Layout(settings.namespace)
    policy = policy_of(settings)
    exchange = layout.modules_exchange
    result = Topology.of(exchanges=[Exchange(exchange, ExchangeType.TOPIC)])
    declared = {m.name: m for m in modules}
    declared.setdefault(WORKFLOW_MODULE, ModuleConfig(name=WORKFLOW_MODULE, routing_keys=["#"]))
    for module in declared.values():
        keys = ["#"] if module.name == WORKFLOW_MODULE else module.routing_keys
        result |= work_queue(
            layout.module_queue(module.name),
            policy=policy,
            queue_type=settings.queue_type,
            bindings=[(exchange, key) for key in keys],
        )
    return result


def events_topology(settings: Settings) -> Topology:
    layout = Layout(settings.namespace)
    exchange = Exchange(layout.events_exchange, ExchangeType.TOPIC)
    return Topology.of(exchanges=[exchange]) | work_queue(
        layout.event_sourcing_queue,
        policy=policy_of(settings),
        queue_type=settings.queue_type,
        bindings=[(exchange.name, "#")],
    )


def tenant_topology(settings: Settings, tenants: Iterable[str]) -> Topology:
    layout = Layout(settings.namespace)
    exchange = Exchange(layout.tenants_exchange, ExchangeType.DIRECT)
    result = Topology.of(exchanges=[exchange])
    for tenant in tenants:
        result |= work_queue(
            layout.tenant_queue(tenant),
            policy=policy_of(settings),
            queue_type=settings.queue_type,
            bindings=[(exchange.name, layout.tenant_routing_key(tenant))],
        )
    return result


def chat_topology(settings: Settings) -> Topology:
    layout = Layout(settings.namespace)
    persistence = Exchange(layout.chat_persistence_exchange, ExchangeType.FANOUT)
    return Topology.of(
        exchanges=[Exchange(layout.chat_dispatch_exchange, ExchangeType.DIRECT), persistence]
    ) | work_queue(
        layout.chat_history_queue,
        policy=policy_of(settings),
        queue_type=settings.queue_type,
        bindings=[(persistence.name, "")],
    )


def system_topology(settings: Settings, tenants: Iterable[str] = ()) -> Topology:
    """Everything ``rabbitry topology declare`` declares."""
    return (
        module_topology(settings, settings.modules)
        | events_topology(settings)
        | tenant_topology(settings, tenants)
        | chat_topology(settings)
    )


__all__ = [
    "Binding",
    "Layout",
    "Queue",
    "chat_topology",
    "events_topology",
    "module_topology",
    "system_topology",
    "tenant_topology",
]
