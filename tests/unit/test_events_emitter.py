"""The emitter: the acting user, entity names, and what a caller sees when publishing fails."""

from __future__ import annotations

import asyncio

import pytest

from helpers import RecordingPublisher
from rabbitry.config import Settings
from rabbitry.errors import MessageError, PublishFailed
from rabbitry.events.emitter import Emitter, acting_as, current_user, entity_name
from rabbitry.messaging.publisher import PublishStatus


class Orders:
    pass


class Invoice:
    __rabbitry_entity__ = "App\\Models\\Invoice"


def test_the_acting_user_is_system_unless_set_and_follows_tasks() -> None:
    assert current_user() == "system"

    async def in_a_task() -> object:
        return current_user()

    async def main() -> object:
        with acting_as(7):
            return await asyncio.create_task(in_a_task())

    assert asyncio.run(main()) == 7
    assert current_user() == "system"


def test_only_user_ids_or_system_can_act() -> None:
    with pytest.raises(MessageError, match="'user' must be a user id"), acting_as("bob"):
        pass


def test_entity_names_are_class_paths_unless_overridden() -> None:
    assert entity_name(Orders) == f"{__name__}.Orders"
    assert entity_name(Invoice) == "App\\Models\\Invoice"
    assert entity_name("orders") == "orders"


async def test_an_emitted_change_is_a_roadrunner_message_on_the_events_exchange() -> None:
    recorder = RecordingPublisher()
    emitter = Emitter(recorder, Settings(namespace="shop"))
    with acting_as(3):
        result = await emitter.update(Orders, 5, {"total": 2})
    ((message, route),) = recorder.sent
    assert result.status is PublishStatus.PUBLISHED and result.message_id == message.id
    assert (route.exchange, route.routing_key) == ("shop.events", "update")
    assert message.type == "update"
    assert message.payload == {
        "entity": f"{__name__}.Orders",
        "id": 5,
        "user": 3,
        "data": {"total": 2},
    }
    await emitter.delete("orders", 5, user="system")
    assert recorder.sent[1][0].payload == {"entity": "orders", "id": 5, "user": "system"}


async def test_persisted_is_success_and_failed_raises() -> None:
    settings = Settings(namespace="shop")
    stored = await Emitter(RecordingPublisher(PublishStatus.PERSISTED), settings).insert("o", 1, {})
    assert stored.status is PublishStatus.PERSISTED
    with pytest.raises(PublishFailed, match="1 of 1 change event"):
        await Emitter(RecordingPublisher(PublishStatus.FAILED), settings).insert("o", 1, {})


async def test_invalid_changes_are_refused_before_publishing() -> None:
    recorder = RecordingPublisher()
    with pytest.raises(MessageError, match="'data' is required for update"):
        # None where the signature wants data: a caller without type checking gets a clear error.
        await Emitter(recorder, Settings()).update("o", 1, None)  # type: ignore[arg-type]
    assert recorder.sent == []
