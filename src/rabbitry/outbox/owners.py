"""Filing ad-hoc rows: a row stored without a registry name (published to an exchange and
routing key, not to a named queue of the registry) is filed under the one active registry entry
that publishes there, if exactly one does, so that ``rabbitry requeue NAME`` finds it; else
under ``<exchange>/<routing key>``.

:func:`owners_query` and :func:`file_ad_hoc` are pure; :func:`label_ad_hoc` runs the one on a
connection and applies the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncConnection

from rabbitry.outbox.models import QueueRecord


async def label_ad_hoc(conn: AsyncConnection, values: list[dict[str, Any]]) -> None:
    """File rows without a registry name under the one active registry entry that publishes
    to their exchange and routing key, if exactly one does (so ``rabbitry requeue NAME``
    finds them), else under ``<exchange>/<routing key>``."""
    statement = owners_query(values)
    if statement is not None:
        file_ad_hoc(values, (await conn.execute(statement)).all())


def owners_query(values: list[dict[str, Any]]) -> Select[str, str, str] | None:
    """The registry entries that may own the rows without a registry name (None: no such row)."""
    ad_hoc = [v for v in values if not v["queue"]]
    if not ad_hoc:
        return None
    return select(QueueRecord.name, QueueRecord.exchange, QueueRecord.routing_key).where(
        QueueRecord.active.is_(True),
        QueueRecord.exchange.in_({v["exchange"] for v in ad_hoc}),
    )


def file_ad_hoc(values: list[dict[str, Any]], entries: Sequence[Any]) -> None:
    """Set the ``queue`` of the rows without one, given the (name, exchange, routing key) of
    the registry entries :func:`owners_query` found."""
    ad_hoc = [v for v in values if not v["queue"]]
    owners: dict[tuple[str, str], list[str]] = {}
    for name, exchange, routing_key in entries:
        owners.setdefault((exchange, routing_key), []).append(name)
    for v in ad_hoc:
        names = owners.get((v["exchange"], v["routing_key"]), [])
        v["queue"] = names[0] if len(names) == 1 else f"{v['exchange']}/{v['routing_key']}"
