"""Manual insertion (the back-office ▶ action) in both manual_processing_mode values."""

from __future__ import annotations

import pytest

from fixtures.outbox import Topic, make_settings, registry_entry
from helpers import DEAD_AMQP_URL, drain_ids
from rabbitry.config import ManualProcessingMode
from rabbitry.errors import NotFound
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus
from rabbitry.outbox.filters import Origin, RequeueFilter
from rabbitry.outbox.manual import ManualInsertionRefused, send_manually
from rabbitry.outbox.registry import sync
from rabbitry.outbox.requeue import requeue
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


def record() -> Message:
    return Message(type="shipment.resend", payload={"entity": "Shipment", "id": 42})


async def registry(db: Database, topic: Topic) -> None:
    await sync(
        db,
        [
            registry_entry(topic, "resend", classname="Shipment", allow_manual_insertion=True),
            registry_entry(topic, "locked", classname="Shipment"),
            registry_entry(topic, "gone", allow_manual_insertion=True),
        ],
    )
    await sync(
        db,
        [
            registry_entry(topic, "resend", classname="Shipment", allow_manual_insertion=True),
            registry_entry(topic, "locked", classname="Shipment"),
        ],
    )


async def test_mode_rabbit_publishes_now(db: Database, topic: Topic) -> None:
    await registry(db, topic)
    settings = make_settings(db, topic.namespace)
    sent = record()
    async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
        result = await send_manually(settings, db, publisher, "resend", sent)
    assert result.status is PublishStatus.PUBLISHED
    assert await drain_ids(topic.queue, idle=0.5) == [sent.id]
    assert await Outbox(db).count(RequeueFilter(), state=None) == 0


async def test_mode_rabbit_with_the_broker_down_falls_back(db: Database, topic: Topic) -> None:
    await registry(db, topic)
    settings = make_settings(db, topic.namespace, amqp_url=DEAD_AMQP_URL)
    async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
        result = await send_manually(settings, db, publisher, "resend", record())
    assert result.status is PublishStatus.PERSISTED
    (row,) = await Outbox(db).rows(RequeueFilter(queue="resend"))
    assert row.origin == Origin.CONTINGENCY  # the relay will deliver it


async def test_mode_db_stores_for_the_requeue_command(db: Database, topic: Topic) -> None:
    await registry(db, topic)
    settings = make_settings(db, topic.namespace, manual_processing_mode=ManualProcessingMode.DB)
    sent = record()
    async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
        result = await send_manually(settings, db, publisher, "resend", sent)
        assert result.status is PublishStatus.PERSISTED
        assert await drain_ids(topic.queue, idle=0.3) == []
        (row,) = await Outbox(db).rows(RequeueFilter(queue="resend"))
        assert (row.origin, row.message_id, row.last_error) == ("manual", sent.id, None)
        assert (row.exchange, row.routing_key) == (topic.exchange, "resend.key")
        report = await requeue(Outbox(db), publisher, RequeueFilter(queue="resend"))
    assert report.published == 1
    assert await drain_ids(topic.queue, idle=0.5) == [sent.id]


@pytest.mark.parametrize(
    ("queue", "error", "reason"),
    [
        ("nobody", NotFound, "not in the registry"),
        ("locked", ManualInsertionRefused, "does not allow manual insertion"),
        ("gone", ManualInsertionRefused, "removed from the registry"),
    ],
)
async def test_refusals(
    db: Database, topic: Topic, queue: str, error: type[Exception], reason: str
) -> None:
    await registry(db, topic)
    settings = make_settings(db, topic.namespace)
    async with Publisher(settings.amqp, fallback=Outbox(db)) as publisher:
        with pytest.raises(error, match=reason):
            await send_manually(settings, db, publisher, queue, record())
    assert await Outbox(db).count(RequeueFilter(), state=None) == 0
