"""The queue registry: synced from rabbitry.yaml, removed entries kept inactive."""

from __future__ import annotations

import pytest

from rabbitry.config import RegistryEntry
from rabbitry.errors import StorageError
from rabbitry.outbox.registry import get_queue, list_queues, manual_queues, sync
from rabbitry.storage import Database


def entry(name: str, **fields: object) -> RegistryEntry:
    values: dict[str, object] = {"name": name, "exchange": "ns.modules", "routing_key": name}
    values.update(fields)
    return RegistryEntry(**values)


async def test_sync_creates_updates_and_deactivates(db: Database) -> None:
    first = await sync(
        db,
        [
            entry("notify_vkm_publisher", description="Notificar a VKM", classname="Shipment"),
            entry("shipping_registered_publisher", allow_manual_insertion=True),
        ],
    )
    assert first.created == ("notify_vkm_publisher", "shipping_registered_publisher")
    again = await sync(
        db,
        [
            entry("notify_vkm_publisher", description="Notify VKM", classname="Shipment"),
            entry("invoice_publisher"),
        ],
    )
    assert again.created == ("invoice_publisher",)
    assert again.updated == ("notify_vkm_publisher",)
    assert again.deactivated == ("shipping_registered_publisher",)
    assert again.summary() == "1 created, 1 updated, 1 deactivated, 0 unchanged"
    queues = {q.name: q for q in await list_queues(db)}
    assert list(queues) == sorted(queues)
    assert queues["notify_vkm_publisher"].description == "Notify VKM"
    assert queues["shipping_registered_publisher"].active is False
    # Its history is kept: the row is still there, with its settings.
    assert queues["shipping_registered_publisher"].allow_manual_insertion is True
    assert [q.name for q in await list_queues(db, include_inactive=False)] == [
        "invoice_publisher",
        "notify_vkm_publisher",
    ]


async def test_a_returning_entry_is_active_again(db: Database) -> None:
    await sync(db, [entry("a")])
    await sync(db, [])
    found = await get_queue(db, "a")
    assert found is not None and not found.active
    report = await sync(db, [entry("a")])
    assert report.updated == ("a",)
    found = await get_queue(db, "a")
    assert found is not None and found.active


async def test_unchanged_sync_changes_nothing(db: Database) -> None:
    await sync(db, [entry("a"), entry("b")])
    report = await sync(db, [entry("a"), entry("b")])
    assert report.unchanged == ("a", "b")
    assert not (report.created or report.updated or report.deactivated)


async def test_duplicate_names_are_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="more than once: a"):
        await sync(db, [entry("a"), entry("a")])


async def test_manual_queues_by_classname(db: Database) -> None:
    await sync(
        db,
        [
            entry("a", classname="Shipment", allow_manual_insertion=True),
            entry("b", classname="Shipment"),
            entry("c", classname="Invoice", allow_manual_insertion=True),
            entry("d", classname="Shipment", allow_manual_insertion=True),
        ],
    )
    await sync(
        db,
        [
            entry("a", classname="Shipment", allow_manual_insertion=True),
            entry("b", classname="Shipment"),
            entry("c", classname="Invoice", allow_manual_insertion=True),
        ],
    )
    assert [q.name for q in await manual_queues(db, "Shipment")] == ["a"]
    assert await get_queue(db, "nothing") is None


async def test_database_down_is_a_storage_error() -> None:
    dead = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(StorageError):
            await list_queues(dead)
    finally:
        await dead.close()
