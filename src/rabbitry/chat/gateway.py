"""Gateway: one chat instance's broker side, and what its sockets do through it.

At start the instance declares its own exclusive, auto-delete queue (an
:class:`~rabbitry.messaging.inbox.Inbox`) and consumes it; nothing reaches it until a room has
a client here. The :class:`~rabbitry.chat.manager.Manager` binds and unbinds room keys on it as
rooms come and go. When the broker connection drops, the inbox declares a new queue and binds
every room that still has clients; the sockets stay open meanwhile.

A client's message is published to the dispatch exchange (the room's key) and to the
persistence exchange, through the process's publisher: what the broker cannot take goes to the
outbox, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rabbitry.chat.client import ConnectedClient
from rabbitry.chat.history import ChatHistory
from rabbitry.chat.manager import Manager
from rabbitry.chat.protocol import MESSAGE_TYPE, ChatMessage, MessageIds, now
from rabbitry.chat.topology import ChatLayout, topology
from rabbitry.config import Settings
from rabbitry.errors import BrokerError
from rabbitry.messaging import Declarer
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.inbox import Inbox
from rabbitry.messaging.publisher import Publisher, PublishResult, Route
from rabbitry.messaging.topology import Exchange, ExchangeType

log = logging.getLogger(__name__)

GOING_AWAY = 1001


class Gateway:
    """The Manager of this process and its queue; ``async with gateway.running():``."""

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        *,
        instance: str | None = None,
        bind_timeout: float = 5.0,
    ) -> None:
        self.settings = settings
        self.layout = ChatLayout(settings.namespace)
        self.instance = instance or uuid.uuid4().hex[:12]
        self.inbox = Inbox(
            settings.amqp,
            name=self.layout.gateway_queue_prefix(self.instance),
            exchange=Exchange(self.layout.dispatch_exchange, ExchangeType.DIRECT),
            on_message=self._on_message,
        )
        self.manager = Manager(self.layout, self.inbox, bind_timeout=bind_timeout)
        self._publisher = publisher
        self._ids = MessageIds()

    def _on_message(self, message: Message) -> None:
        self.manager.dispatch(message)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Declare the chat topology, keep the queue up, and on exit close every socket."""
        amqp = self.settings.amqp
        if amqp.active:
            try:
                async with await Declarer.connect(
                    amqp.url, timeout=amqp.connect_timeout, name=self.inbox.name
                ) as declarer:
                    await declarer.declare(topology(self.settings))
            except BrokerError as exc:
                # The inbox declares what it needs itself once the broker is back.
                log.warning("chat topology not declared (%s); the gateway keeps trying", exc)
        stopping = asyncio.Event()
        task = asyncio.create_task(self.inbox.run(stopping), name=self.inbox.name)
        try:
            yield self
        finally:
            for room in list(self.manager.rooms.values()):
                for client in list(room.clients):
                    client.disconnect(GOING_AWAY, "the gateway is shutting down")
            stopping.set()
            with contextlib.suppress(Exception):
                await task

    async def going_away(self, timeout: float = 5.0) -> None:
        """Close every socket with 1001 and wait (at most ``timeout`` seconds) until each close
        is sent: the HTTP server calls it before it drops the connections itself (with 1012,
        which would tell clients nothing of why)."""
        clients = [c for room in list(self.manager.rooms.values()) for c in list(room.clients)]
        for client in clients:
            client.disconnect(GOING_AWAY, "the gateway is shutting down")
        waits = [asyncio.ensure_future(c.finished.wait()) for c in clients]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for wait in pending:
                wait.cancel()

    async def send(self, client: ConnectedClient, text: str) -> PublishResult:
        """Publish ``text`` from ``client`` to its room and to the history."""
        member = client.member
        chat = ChatMessage(
            id=self._ids.new(),
            tenant=member.tenant,
            room=client.room,
            sender=member.username,
            text=text,
            sent_at=now(),
        )
        message = Message(
            type=MESSAGE_TYPE, payload=chat.payload(), id=chat.id, tenant=member.tenant
        )
        dispatch = Route(self.layout.dispatch_exchange, self.manager.key_of(client))
        persistence = Route(self.layout.persistence_exchange, "")
        results = await self._publisher.publish_many([(message, dispatch), (message, persistence)])
        return results[0] if not results[0].ok else results[1]

    async def recover(self, client: ConnectedClient, since: str, history: ChatHistory) -> int:
        """Send ``client`` (held since before it joined) what it missed after ``since``, then
        its held live messages; returns how many frames were queued.

        The database has what the persistence workers stored; the room's recent messages on
        this instance cover those still on their way there.
        """
        missed = {m.id: m for m in await history.after(client.member.tenant, client.room, since)}
        room = self.manager.rooms.get(self.manager.key_of(client))
        if room is not None:
            missed.update((m.id, m) for m in room.recent if m.id > since)
        return client.catch_up([missed[key] for key in sorted(missed)])

    def revoke(self, tenant: str, user_id: str) -> int:
        """Close every socket of a user whose sessions were revoked; returns how many."""
        return self.manager.disconnect_member(tenant, user_id, "session revoked")
