"""What travels on a topology: the message types a part sends, their bodies and their routes.

Pure data for documents (:mod:`rabbitry.messaging.asyncapi` turns a topology and its catalog
into an AsyncAPI document). A route's routing key, and the names of queues a part declares at
run time, may hold ``{parameters}``: ``{tenant}.session-removal`` stands for the key of every
tenant, and :attr:`Catalog.parameters` says what each parameter is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rabbitry.amqp.spec import Topology

JsonSchema = Mapping[str, Any]

ANY_JSON: JsonSchema = {"description": "Any JSON value (UTF-8, no NaN or Infinity)."}


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a message is published: an exchange and the routing key it is sent with."""

    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class MessageKind:
    """One message type (``rr_job``) a part sends: its body's JSON Schema and its routes.

    ``type`` is ``None`` for messages whose ``rr_job`` the sender chooses (a module's own
    messages). ``tenant`` says the ``x-tenant`` header is always set.
    """

    key: str  # unique within the catalog: a stable id for documents
    type: str | None
    title: str
    summary: str
    payload: JsonSchema
    destinations: tuple[Destination, ...]
    tenant: bool = False
    pipeline: str = ""
    example: Any = None


@dataclass(frozen=True, slots=True)
class Catalog:
    """The message kinds of a part, the queues it declares at run time (named by template,
    such as one per tenant or per gateway instance) and what each ``{parameter}`` means."""

    messages: tuple[MessageKind, ...] = ()
    runtime: Topology = field(default_factory=Topology)
    parameters: Mapping[str, str] = field(default_factory=dict)
    consumers: Mapping[str, str] = field(default_factory=dict)  # queue (template) -> who reads it

    def __or__(self, other: Catalog) -> Catalog:
        return Catalog(
            (*self.messages, *other.messages),
            self.runtime | other.runtime,
            {**self.parameters, **other.parameters},
            {**self.consumers, **other.consumers},
        )
