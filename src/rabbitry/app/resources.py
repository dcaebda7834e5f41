"""What a Rabbitry process opens once and shares: the database and the publisher whose
fallback is the outbox (so a message the broker cannot take is stored, never lost)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rabbitry.config import Settings
from rabbitry.messaging.publisher import Publisher
from rabbitry.messaging.tracing import tracing_middleware
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database, open_database


@asynccontextmanager
async def open_publisher(
    settings: Settings, database: Database, *, name: str | None = None
) -> AsyncIterator[Publisher]:
    """A publisher whose fallback is the outbox in ``database``, traced when a tracer
    provider is set up (:mod:`rabbitry.app.telemetry`)."""
    async with Publisher(
        settings.amqp,
        fallback=Outbox(database),
        name=name or settings.namespace,
        middleware=tracing_middleware(),
    ) as publisher:
        yield publisher


__all__ = ["open_database", "open_publisher"]
