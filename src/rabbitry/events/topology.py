"""The broker objects of the events part (SPEC "Broker topology"), named under the namespace.

``<ns>.modules`` is a topic exchange with one queue per module, bound with the routing keys the
module declares; the workflow module's queue hears ``#``. ``<ns>.events`` feeds the one
event-sourcing queue. Every name is derived here from the namespace and validated identifiers,
so no caller formats a queue name out of user input.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rabbitry.config import ModuleConfig, Settings
from rabbitry.messaging.settings import validate_name
from rabbitry.messaging.topology import Exchange, ExchangeType, Topology, work_queue

WORKFLOW_MODULE = "workflow"


@dataclass(frozen=True, slots=True)
class EventsLayout:
    """Names of the module and event-sourcing exchanges and queues of one deployment."""

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


def module_topology(settings: Settings, modules: Iterable[ModuleConfig]) -> Topology:
    """``<ns>.modules`` and a queue per module; the workflow module hears ``#``."""
    layout = EventsLayout(settings.namespace)
    exchange = layout.modules_exchange
    result = Topology.of(exchanges=[Exchange(exchange, ExchangeType.TOPIC)])
    declared = {m.name: m for m in modules}
    declared.setdefault(WORKFLOW_MODULE, ModuleConfig(name=WORKFLOW_MODULE, routing_keys=["#"]))
    for module in declared.values():
        keys = ["#"] if module.name == WORKFLOW_MODULE else module.routing_keys
        result |= work_queue(
            layout.module_queue(module.name),
            policy=settings.retry,
            queue_type=settings.queue_type,
            bindings=[(exchange, key) for key in keys],
        )
    return result


def events_topology(settings: Settings) -> Topology:
    """``<ns>.events`` and the event-sourcing queue it feeds."""
    layout = EventsLayout(settings.namespace)
    exchange = Exchange(layout.events_exchange, ExchangeType.TOPIC)
    return Topology.of(exchanges=[exchange]) | work_queue(
        layout.event_sourcing_queue,
        policy=settings.retry,
        queue_type=settings.queue_type,
        bindings=[(exchange.name, "#")],
    )


def topology(settings: Settings) -> Topology:
    """Everything the events part declares: the modules and the event-sourcing queue."""
    return module_topology(settings, settings.modules) | events_topology(settings)
