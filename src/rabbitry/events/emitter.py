"""Emitting change events: a small API over the core Publisher, and the acting user.

.. code-block:: python

    async with Publisher(settings.amqp, fallback=Outbox(database)) as publisher:
        emitter = Emitter(publisher, settings)
        with acting_as(42):
            await emitter.insert("App\\Models\\Order", 7, {"total": 10})
            await emitter.update(Order, 7, {"total": 12})   # a class: its "module.Class" path
            await emitter.delete(Order, 7)

Events go to ``<ns>.events`` (routing key = the change type, with the entity's bucket when the
events are partitioned: :func:`~rabbitry.events.topology.routing_key`) and from there to the
event-sourcing queue of the entity's partition. With a fallback (the outbox) a broker failure
persists the event instead; without one it raises :class:`PublishFailed`. Nothing is dropped
quietly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from rabbitry.config import Settings
from rabbitry.errors import PublishFailed
from rabbitry.events.change import SYSTEM_USER, ChangeEvent, ChangeType, Json, User
from rabbitry.events.topology import EventsLayout, routing_key
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import PublishResult, PublishStatus, Route

# The RoadRunner pipeline name put on every change event (PHP sees it as the pipeline).
PIPELINE = "event-sourcing"

_acting_user: ContextVar[User | None] = ContextVar("rabbitry_acting_user", default=None)


def current_user() -> User:
    """The user changes are attributed to in this context; ``"system"`` when none is set."""
    user = _acting_user.get()
    return SYSTEM_USER if user is None else user


@contextmanager
def acting_as(user: User) -> Iterator[None]:
    """Attribute changes made inside the block (and in tasks started from it) to ``user``."""
    ChangeEvent(ChangeType.DELETE, "-", 0, user)  # validates the user the same way as events
    token = _acting_user.set(user)
    try:
        yield
    finally:
        _acting_user.reset(token)


def entity_name(entity: str | type) -> str:
    """A class's ``module.Class`` path (or its ``__rabbitry_entity__``), or the string given."""
    if isinstance(entity, str):
        return entity
    custom = getattr(entity, "__rabbitry_entity__", None)
    if isinstance(custom, str):
        return custom
    return f"{entity.__module__}.{entity.__qualname__}"


class EventPublisher(Protocol):
    """What the emitter needs of :class:`rabbitry.messaging.publisher.Publisher`."""

    async def publish_many(
        self, items: Sequence[tuple[Message, Route]], *, use_fallback: bool = True
    ) -> list[PublishResult]: ...


class Emitter:
    """Publishes change events in Rabbitry's (RoadRunner-compatible) message format."""

    def __init__(self, publisher: EventPublisher, settings: Settings) -> None:
        self._publisher = publisher
        self._exchange = EventsLayout(settings.namespace).events_exchange
        self._partitioned = settings.events_partitions > 1

    @property
    def publisher(self) -> EventPublisher:
        """The publisher events go through."""
        return self._publisher

    def message(self, change: ChangeEvent) -> tuple[Message, Route]:
        """The message and route that carry ``change``."""
        message = Message(type=str(change.type), payload=change.payload(), pipeline=PIPELINE)
        key = routing_key(str(change.type), change.entity, change.id, partitioned=self._partitioned)
        return message, Route(self._exchange, key)

    async def emit(self, changes: Sequence[ChangeEvent]) -> list[PublishResult]:
        """Publish ``changes`` in order, in one pipelined batch.

        Raises :class:`PublishFailed` if the broker took some of them and there is no fallback
        to store the rest (the results say which), :class:`StorageError` if the fallback failed.
        """
        return await self.send([self.message(c) for c in changes])

    async def send(self, items: Sequence[tuple[Message, Route]]) -> list[PublishResult]:
        """Publish messages built by :meth:`message`. Sending the same ones again after an
        error is safe: the event store keeps each message id once."""
        results = await self._publisher.publish_many(items)
        failed = [r for r in results if r.status is PublishStatus.FAILED]
        if failed:
            raise PublishFailed(
                f"{len(failed)} of {len(results)} change event(s) not published: {failed[0].error}"
            )
        return results

    async def insert(
        self,
        entity: str | type,
        entity_id: int,
        data: Mapping[str, Json],
        *,
        user: User | None = None,
    ) -> PublishResult:
        return await self._one(ChangeType.INSERT, entity, entity_id, data, user)

    async def update(
        self,
        entity: str | type,
        entity_id: int,
        data: Mapping[str, Json],
        *,
        user: User | None = None,
    ) -> PublishResult:
        """``data`` holds the attributes that changed, with their new values."""
        return await self._one(ChangeType.UPDATE, entity, entity_id, data, user)

    async def delete(
        self,
        entity: str | type,
        entity_id: int,
        data: Mapping[str, Json] | None = None,
        *,
        user: User | None = None,
    ) -> PublishResult:
        return await self._one(ChangeType.DELETE, entity, entity_id, data, user)

    async def _one(
        self,
        kind: ChangeType,
        entity: str | type,
        entity_id: int,
        data: Mapping[str, Json] | None,
        user: User | None,
    ) -> PublishResult:
        change = ChangeEvent(
            kind, entity_name(entity), entity_id, current_user() if user is None else user, data
        )
        (result,) = await self.emit([change])
        return result
