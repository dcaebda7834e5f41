"""Change events from a PHP module behind RoadRunner, as a plain pika client sends them
(docs/message-format.md, example E1: rr_* headers, rr_headers as bytes, octet-stream, no
message_id)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import pika  # type: ignore[import-untyped]  # pika ships no type hints

from helpers import AMQP_URL, eventually_true, running, take_all
from rabbitry.config import Settings
from rabbitry.events.store import EventStore
from rabbitry.events.topology import EventsLayout
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.topology import dlq_name
from rabbitry.storage.database import Database

ENTITY = "App\\Models\\Entity"
WHEN = dt.datetime(2025, 2, 6, 9, 30, tzinfo=dt.UTC)


def roadrunner_job(job: str, body: Any, *, rr_id: str | None = None, **extra: Any) -> Any:
    """(properties, body bytes) the way RoadRunner's AMQP driver publishes a job."""
    headers: dict[str, Any] = {
        "rr_id": rr_id or str(uuid.uuid4()),
        "rr_job": job,
        "rr_pipeline": "event-sourcing",
        "rr_headers": b"{}",  # pika sends bytes as the field type x, as RoadRunner does
        "rr_delay": 0,
        "rr_priority": 10,
        "rr_auto_ack": False,
    }
    headers.update(extra)
    properties = pika.BasicProperties(
        content_type="application/octet-stream",
        delivery_mode=2,
        timestamp=int(WHEN.timestamp()),
        headers={k: v for k, v in headers.items() if v is not None},
    )
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return properties, raw


def publish_with_pika(exchange: str, routing_key: str, jobs: list[Any]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for properties, body in jobs:
            channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    finally:
        connection.close()


async def test_roadrunner_events_are_stored_once_and_bad_ones_dead_lettered(
    events_settings: Settings, events_db: Database
) -> None:
    layout = EventsLayout(events_settings.namespace)
    repeated = str(uuid.uuid4())
    jobs = [
        roadrunner_job(
            "insert",
            {"entity": ENTITY, "id": 1, "user": 1, "data": {"property1": "value1"}},
            rr_id=repeated,
        ),
        # RoadRunner re-queues with the same rr_id: the event must not be stored twice.
        roadrunner_job(
            "insert",
            {"entity": ENTITY, "id": 1, "user": 1, "data": {"property1": "value1"}},
            rr_id=repeated,
            rr_headers=b'{"attempts":["1"]}',
        ),
        roadrunner_job(
            "update",
            {"entity": ENTITY, "id": 1, "user": "system", "data": {"property2": 123}},
            rr_headers=b'{"Traceparent":["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]}',
        ),
        roadrunner_job("update", {"entity": ENTITY, "id": "1", "user": 1, "data": {}}),
        roadrunner_job("delete", b"{not json"),
        roadrunner_job(
            "insert", {"entity": ENTITY, "id": 3, "user": 1, "data": {}}, rr_id="x" * 300
        ),
        roadrunner_job("delete", {"entity": ENTITY, "id": 1, "user": 7}),
    ]
    store = EventStore(events_db)
    async with running(WorkflowWorker(events_settings, events_db)):
        # Straight to the queue through the default exchange, as an RR pipeline may do.
        await asyncio.to_thread(publish_with_pika, "", layout.event_sourcing_queue, jobs)

        async def three_stored() -> bool:
            return len(await store.history(ENTITY, 1)) == 3

        await eventually_true(three_stored, what="three stored events")
        dead: list[Any] = []

        async def three_dead() -> bool:
            dead.extend(await take_all(dlq_name(layout.event_sourcing_queue)))
            return len(dead) >= 3

        await eventually_true(three_dead, what="three dead-lettered messages")
    history = await store.history(ENTITY, 1)
    assert [(e.version, e.type, e.user, e.data) for e in history] == [
        (1, "insert", 1, {"property1": "value1"}),
        (2, "update", "system", {"property2": 123}),
        (3, "delete", 7, None),
    ]
    assert history[0].message_id == repeated
    assert all(e.occurred_at == WHEN for e in history)
    assert sorted(str(m.headers["x-rabbitry-reason"])[:20] for m in dead) == [
        "'id' must be an inte",
        "body is not JSON: Ex",
        "message id (rr_id or",
    ]
    assert await store.history(ENTITY, 3) == []
    state = await store.state(ENTITY, 1)
    assert state is not None and state.deleted
    assert state.data == {"property1": "value1", "property2": 123}


async def test_without_rr_id_the_amqp_message_id_identifies_a_redelivery(
    events_settings: Settings, events_db: Database
) -> None:
    layout = EventsLayout(events_settings.namespace)
    body = {"entity": ENTITY, "id": 2, "user": 1, "data": {"a": 1}}
    properties, raw = roadrunner_job("insert", body, rr_id=None)
    properties.headers.pop("rr_id")
    properties.message_id = "legacy-1"
    store = EventStore(events_db)
    async with running(WorkflowWorker(events_settings, events_db)):
        marker = roadrunner_job("update", {**body, "data": {"a": 2}})
        await asyncio.to_thread(
            publish_with_pika,
            layout.events_exchange,
            "insert",
            [(properties, raw), (properties, raw), marker],
        )

        async def marker_stored() -> bool:
            return any(e.type == "update" for e in await store.history(ENTITY, 2))

        await eventually_true(marker_stored, what="the marker event")
    history = await store.history(ENTITY, 2)
    assert [(e.version, e.type, e.message_id) for e in history][:1] == [(1, "insert", "legacy-1")]
    assert len(history) == 2


async def test_a_message_without_rr_id_or_message_id_is_stored_once_when_redelivered(
    events_settings: Settings, events_db: Database
) -> None:
    layout = EventsLayout(events_settings.namespace)
    body = {"entity": ENTITY, "id": 4, "user": 1, "data": {"a": 1}}
    properties, raw = roadrunner_job("insert", body)
    properties.headers.pop("rr_id")  # and pika sends no message_id unless told to
    store = EventStore(events_db)
    async with running(WorkflowWorker(events_settings, events_db)):
        marker = roadrunner_job("update", {**body, "data": {"a": 2}})
        await asyncio.to_thread(
            publish_with_pika,
            layout.events_exchange,
            "insert",
            [(properties, raw), (properties, raw), marker],
        )

        async def marker_stored() -> bool:
            return any(e.type == "update" for e in await store.history(ENTITY, 4))

        await eventually_true(marker_stored, what="the marker event")
    history = await store.history(ENTITY, 4)
    assert [(e.version, e.type) for e in history] == [(1, "insert"), (2, "update")]
    assert history[0].message_id.startswith("sha256:")
