"""Broker objects as data: frozen, hashable exchange, queue and binding specs.

A :class:`Topology` is a set of them; ``a | b`` merges two. The declarer applies one, the
messaging layer builds them (:func:`rabbitry.messaging.topology.work_queue`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Arguments = tuple[tuple[str, Any], ...]


class ExchangeType(StrEnum):
    DIRECT = "direct"
    TOPIC = "topic"
    FANOUT = "fanout"
    HEADERS = "headers"


@dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    type: ExchangeType = ExchangeType.TOPIC
    durable: bool = True
    auto_delete: bool = False


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: Arguments = ()

    def argument_map(self) -> dict[str, Any]:
        return dict(self.arguments)


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class Topology:
    """A set of specs. ``a | b`` merges two topologies; declaring is idempotent."""

    exchanges: frozenset[Exchange] = field(default_factory=frozenset)
    queues: frozenset[Queue] = field(default_factory=frozenset)
    bindings: frozenset[Binding] = field(default_factory=frozenset)

    def __or__(self, other: Topology) -> Topology:
        return Topology(
            self.exchanges | other.exchanges,
            self.queues | other.queues,
            self.bindings | other.bindings,
        )

    @classmethod
    def of(
        cls,
        exchanges: Iterable[Exchange] = (),
        queues: Iterable[Queue] = (),
        bindings: Iterable[Binding] = (),
    ) -> Topology:
        return cls(frozenset(exchanges), frozenset(queues), frozenset(bindings))
