"""The chat-persist worker: the one history queue, consumed by competing workers.

Every message a gateway accepts is published twice: to the dispatch exchange (the rooms) and to
``<ns>.chat.persistence``, whose one durable queue ``<ns>.chat.history`` any number of
``rabbitry worker chat-persist`` processes share. Each stores its batch in one transaction and
acks only after the commit; the history skips ids it has, so a redelivery is stored once. A
message that is not a chat message is dead-lettered with its reason; a database failure sends
the batch through the retry queues. A gateway's mark (``chat.mark``, after its queue came
back) is stored in the same transaction as the batch it came in.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from rabbitry.chat.history import ChatHistory
from rabbitry.chat.protocol import MARK_TYPE, MESSAGE_TYPE, ChatMessage, check_mark
from rabbitry.chat.topology import ChatLayout, topology
from rabbitry.config import Settings
from rabbitry.errors import MessageError, StorageError
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.worker import Worker
from rabbitry.storage import Database, open_database

BATCH_SIZE = 200

Outcomes = list[BaseException | None]


class PersistenceWorker:
    """Stores chat messages from the history queue in ``database``."""

    name = "chat-persist"

    def __init__(
        self, settings: Settings, database: Database, *, batch_size: int = BATCH_SIZE
    ) -> None:
        self.history = ChatHistory(database)
        self.id = uuid.uuid4().hex
        """This worker's id in the marks it stores (see :mod:`rabbitry.chat.marks`)."""
        self.worker = Worker(
            self.name,
            [
                Subscription(
                    ChatLayout(settings.namespace).history_queue,
                    batch=self.store,
                    batch_size=batch_size,
                    prefetch=max(settings.prefetch, 2 * batch_size),
                    # (The history skips ids it has.) A lost connection's deliveries are
                    # stored at once: a catch-up's mark must not pass them (chat/marks.py).
                    idempotent=True,
                )
            ],
            topology(settings),
            amqp=settings.amqp,
            retry=settings.retry,
        )

    @property
    def connected(self) -> asyncio.Event:
        return self.worker.connected

    async def run(self, stopping: asyncio.Event) -> None:
        await self.worker.run(stopping)

    async def store(self, messages: Sequence[Message]) -> Outcomes:
        """Store a batch; one outcome per message (``None``: stored)."""
        outcomes: Outcomes = [None] * len(messages)
        valid: list[tuple[int, ChatMessage]] = []
        marks: list[tuple[int, str]] = []
        for index, message in enumerate(messages):
            try:
                if message.type == MARK_TYPE:
                    marks.append((index, check_mark(message.payload)))
                    continue
                if message.type != MESSAGE_TYPE:
                    raise MessageError(f"not a chat message: type {message.type!r}")
                valid.append((index, ChatMessage.from_payload(message.payload)))
            except MessageError as exc:
                outcomes[index] = exc  # dead-lettered with this reason
        try:
            await self.history.store(
                [chat for _, chat in valid], [mark for _, mark in marks], self.id
            )
        except StorageError as exc:
            for index in (*(i for i, _ in valid), *(i for i, _ in marks)):
                outcomes[index] = exc  # retried through the retry queues
        return outcomes


class PersistenceService:
    """The worker with a database of its own: ``rabbitry worker chat-persist`` and ``up``."""

    name = "chat-persist"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service: PersistenceWorker | None = None

    @property
    def consuming(self) -> bool:
        """Whether the worker is consuming (what ``/readyz`` reports)."""
        return self._service is not None and self._service.connected.is_set()

    async def run(self, stopping: asyncio.Event) -> None:
        async with open_database(self._settings.sql_url) as database:
            self._service = PersistenceWorker(self._settings, database)
            await self._service.run(stopping)
