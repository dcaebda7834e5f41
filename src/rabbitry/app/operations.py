"""One-shot operations behind the CLI: publish one message (with the outbox fallback),
read a queue as JSON records, declare the whole system's topology."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rabbitry import extras
from rabbitry.app.registry import system_topology
from rabbitry.config import Settings
from rabbitry.messaging import Declarer, Message, Publisher, PublishResult, PublishStatus, Route
from rabbitry.messaging.reader import read_queue
from rabbitry.messaging.tracing import tracing_middleware


async def publish_one(
    settings: Settings, message: Message, exchange: str, routing_key: str
) -> PublishResult:
    """Publish ``message``; the outbox stores it if the broker cannot take it. The database
    is opened only then: it is the fallback, not a precondition.

    The library alone (no ``[system]`` extra) has no outbox: a message the broker does not
    take fails, and its error says it was not stored."""
    route = Route(exchange, routing_key)
    if not extras.installed("system"):
        async with Publisher(
            settings.amqp, name=settings.namespace, middleware=tracing_middleware()
        ) as publisher:
            result = await publisher.publish(message, route)
        if result.status is PublishStatus.FAILED:
            stored = f"not stored: the outbox comes with the system ({extras.hint('system')})"
            result = dataclasses.replace(result, error=f"{result.error}; {stored}")
        return result
    from rabbitry.outbox.fallback import OnDemandOutbox

    async with (
        OnDemandOutbox(settings.sql_url) as outbox,
        Publisher(
            settings.amqp, fallback=outbox, name=settings.namespace, middleware=tracing_middleware()
        ) as publisher,
    ):
        return await publisher.publish(message, route)


@dataclass(frozen=True)
class DeclaredCount:
    exchanges: int
    queues: int
    bindings: int


async def declare_system(settings: Settings, tenants: list[str]) -> DeclaredCount:
    """Declare every part's exchanges, queues and bindings (and ``tenants``' queues)."""
    topology = system_topology(settings, tenants)
    amqp = settings.amqp
    async with await Declarer.connect(
        amqp.url, timeout=amqp.connect_timeout, name=settings.namespace
    ) as declarer:
        await declarer.declare(topology)
    return DeclaredCount(len(topology.exchanges), len(topology.queues), len(topology.bindings))


async def consume_printing(
    settings: Settings,
    queue: str,
    emit: Callable[[dict[str, Any]], None],
    *,
    count: int | None = None,
    idle_timeout: float | None = None,
) -> int:
    """Read ``queue``, calling ``emit`` with each message as a JSON-ready record."""

    def record(message: Message) -> None:
        emit(
            {
                "type": message.type,
                "id": message.id,
                "payload": message.payload,
                "headers": {k: list(v) for k, v in message.headers.items()},
                "tenant": message.tenant,
                "attempt": message.attempt,
                "extra": {k: _plain(v) for k, v in message.extra.items()},
            }
        )

    return await read_queue(
        settings.amqp,
        queue,
        record,
        count=count,
        idle_timeout=idle_timeout,
        retry=settings.retry,
        name=f"{settings.namespace}-consume",
    )


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
