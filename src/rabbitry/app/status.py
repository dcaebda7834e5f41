"""What ``rabbitry status`` reports, built from readings, and what in it needs attention.

Pure: :mod:`rabbitry.app.probe` takes the readings (the broker's nodes one by one, passive
declares of the registry's queues, the outbox ledger, the tenants table); this module turns
them into a JSON-ready report and the list of things an operator must look at. A report with
nothing in ``attention`` is healthy: the command exits 0, otherwise 1, for cron and CI.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One broker node of the URL, reached on its own (or not)."""

    where: str
    error: str | None = None  # None: reachable


@dataclass(frozen=True, slots=True)
class QueueReading:
    """A durable work queue: its depth and consumers (None: not declared on the broker)."""

    name: str
    messages: int | None
    consumers: int | None
    dead_letters: int | None = None  # messages in ``<name>.dlq``; None: no such queue
    tenant: str | None = None  # a tenant's removal queue, consumed by DISPATCH


@dataclass(frozen=True, slots=True)
class Readings:
    """Everything the probe read; an ``*_error`` says that part could not be read."""

    nodes: list[NodeReading]
    queues: list[QueueReading] = field(default_factory=list)
    pending: dict[str, int] = field(default_factory=dict)  # outbox rows waiting, per queue
    oldest_pending: dt.datetime | None = None
    invalid_tenants: list[str] = field(default_factory=list)
    broker_error: str | None = None
    database_error: str | None = None


def attention(readings: Readings) -> list[str]:
    """What needs an operator, one line each; empty when the system is healthy."""
    found: list[str] = []
    for node in readings.nodes:
        if node.error is not None:
            found.append(f"broker node {node.where} unreachable: {node.error}")
    if readings.broker_error is not None:
        found.append(f"broker: {readings.broker_error}")
    if readings.database_error is not None:
        found.append(f"database: {readings.database_error}")
    for queue in readings.queues:
        if queue.messages is None:
            found.append(f"queue {queue.name} is not declared (run: rabbitry topology declare)")
        elif queue.tenant is not None and not queue.consumers:
            found.append(f"tenant {queue.tenant} has no DISPATCH consumer on {queue.name}")
        if queue.dead_letters:
            found.append(f"{queue.dead_letters} dead letter(s) in {queue.name}.dlq")
    pending = sum(readings.pending.values())
    if pending:
        found.append(f"{pending} message(s) pending in the outbox")
    for name in readings.invalid_tenants:
        found.append(f"tenant row with an invalid name, served by no one: {name!r}")
    return found


def report(readings: Readings, now: dt.datetime) -> dict[str, Any]:
    """The JSON document of ``rabbitry status --json``: the readings and ``attention``."""
    oldest = readings.oldest_pending
    return {
        "ok": not attention(readings),
        "attention": attention(readings),
        "nodes": [
            {"where": n.where, "reachable": n.error is None, "error": n.error}
            for n in readings.nodes
        ],
        "broker_error": readings.broker_error,
        "queues": [
            {
                "name": q.name,
                "messages": q.messages,
                "consumers": q.consumers,
                "dead_letters": q.dead_letters,
                "tenant": q.tenant,
            }
            for q in readings.queues
        ],
        "outbox": {
            "pending": sum(readings.pending.values()),
            "pending_by_queue": dict(sorted(readings.pending.items())),
            "oldest_pending": None if oldest is None else oldest.isoformat(),
            "oldest_age_seconds": None if oldest is None else (now - oldest).total_seconds(),
        },
        "tenants_without_consumer": [
            q.tenant for q in readings.queues if q.tenant is not None and not q.consumers
        ],
        "invalid_tenants": list(readings.invalid_tenants),
        "database_error": readings.database_error,
    }
