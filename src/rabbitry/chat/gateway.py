"""Gateway: one chat instance's broker side, and what its sockets do through it.

At start the instance declares its own exclusive, auto-delete queue (an
:class:`~rabbitry.messaging.inbox.Inbox`) and consumes it; nothing reaches it until a room has
a client here. The :class:`~rabbitry.chat.manager.Manager` binds and unbinds room keys on it as
rooms come and go. When the broker connection drops, the inbox declares a new queue and binds
every room that still has clients; the sockets stay open meanwhile. Once the new queue is bound,
each room catches its sockets up from the history, from the last message the room delivered:
what was routed while the instance had no queue reaches every open socket once, each sender's
messages in the order sent (:class:`~rabbitry.chat.catchup.CatchUp`).

On SIGTERM (:meth:`Gateway.drain`) the gateway turns not ready, refuses new sockets, and closes
its open ones a few at a time over a few seconds with code 1001 ("going away"): clients
reconnect, through the load balancer, to the other instances with ``?since=``, without all of
them landing there in the same instant.

A client's message is published to the dispatch exchange (the room's key) and to the
persistence exchange, through the process's publisher: what the broker cannot take goes to the
outbox, never lost. This instance's own sockets get it as soon as the dispatch copy is
confirmed (or stored in the outbox), not through the broker: the copy the broker routes back
to this instance's queue carries the instance in a header and is dropped unread
(:meth:`Gateway.submit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from rabbitry.chat.catchup import PAGE, SEAM_WAIT, CatchUp, Held, stored_position
from rabbitry.chat.client import ConnectedClient
from rabbitry.chat.history import ChatHistory
from rabbitry.chat.manager import Manager
from rabbitry.chat.marks import Marks
from rabbitry.chat.protocol import (
    MESSAGE_TYPE,
    ChatMessage,
    MessageIds,
    SenderSeam,
    now,
)
from rabbitry.chat.topology import ChatLayout, topology
from rabbitry.config import Settings
from rabbitry.errors import BrokerError
from rabbitry.messaging import Declarer
from rabbitry.messaging.envelope import Message, encode_body
from rabbitry.messaging.inbox import Inbox
from rabbitry.messaging.publisher import Publisher, PublishResult, PublishStatus, Route
from rabbitry.messaging.topology import Exchange, ExchangeType

log = logging.getLogger(__name__)

GOING_AWAY = 1001
ORIGIN = "chat_origin"  # header: the gateway instance that published a message
UNSHOWN = 10_000  # own messages remembered as not shown here, until the queue brings them


@dataclass(frozen=True, slots=True)
class Submitted:
    """A message a socket submitted, waiting for its turn's batch to be published."""

    key: str
    chat: ChatMessage
    message: Message
    before: asyncio.Future[None] | None
    """Settled once the sender's previous message was shown here (or failed)."""
    settled: asyncio.Future[None]
    outcome: asyncio.Future[PublishResult]


class Gateway:
    """The Manager of this process and its queue; ``async with gateway.running():``."""

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        *,
        instance: str | None = None,
        history: ChatHistory | None = None,
        bind_timeout: float = 5.0,
        unbind_grace: float = 2.0,
        drain_seconds: float = 3.0,
    ) -> None:
        self.settings = settings
        self.layout = ChatLayout(settings.namespace)
        self.instance = instance or uuid.uuid4().hex[:12]
        self.inbox = Inbox(
            settings.amqp,
            name=self.layout.gateway_queue_prefix(self.instance),
            exchange=Exchange(self.layout.dispatch_exchange, ExchangeType.DIRECT),
            on_message=self._on_message,
            on_connected=self._on_connected,
            skip=self._is_echo,
        )
        self.manager = Manager(
            self.layout, self.inbox, bind_timeout=bind_timeout, unbind_grace=unbind_grace
        )
        self.history = history
        self._publisher = publisher
        self._ids = MessageIds()
        self._bound_generation = 0
        self._declarer: Declarer | None = None  # (counts the history's workers, see marks)
        self._marks = (
            Marks(history, publisher, self.layout, self._ids, self._history_workers)
            if history is not None
            else None
        )
        self._catch_up = (
            CatchUp(history, self._marks, self.layout, self.manager, self._bound)
            if history is not None and self._marks is not None
            else None
        )
        self._drain_seconds = drain_seconds
        self._catching_up: asyncio.Task[None] | None = None
        self._held: list[Held] = []
        self._held_for = 1
        self.draining = False
        """True from SIGTERM on: not ready, new sockets are refused."""
        self._unshown: dict[str, None] = {}  # own messages left to the queue (in order)
        self._pending: list[Submitted] = []  # submitted this turn, published at its end
        self._publishing: set[asyncio.Task[None]] = set()
        self.echoes = 0
        """Deliveries of this instance's own messages, dropped (its rooms had them already)."""

    async def _history_workers(self) -> int:
        """The consumers of the history queue: the persistence workers a mark round reaches."""
        if self._declarer is None:
            amqp = self.settings.amqp
            self._declarer = await Declarer.connect(
                amqp.url, timeout=amqp.connect_timeout, name=f"{self.inbox.name}-marks"
            )
        return (await self._declarer.queue_status(self.layout.history_queue)).consumers

    @property
    def caught_up(self) -> int:
        """Messages sent to open sockets by catch-ups after reconnects."""
        return self._catch_up.caught_up if self._catch_up is not None else 0

    def _is_echo(self, message_id: str | None, headers: Mapping[str, Any]) -> bool:
        """Whether a delivery is the copy of a message this instance published and showed
        already: dropped then, by its header alone (its body is not decoded)."""
        if message_id is None or headers.get(ORIGIN) != self.instance:
            return False
        if message_id in self._unshown:
            return False  # not shown when it was sent: shown now (see _on_message)
        if self.history is not None and self.inbox.generation >= 2:
            self._hold_all(self.inbox.generation)  # (as any delivery of a new queue does)
        # Our own message: its room here had it from submit() already.
        self.echoes += 1
        return True

    def _on_message(self, message: Message) -> None:
        if self.history is not None and self.inbox.generation >= 2:
            self._hold_all(self.inbox.generation)
        if message.extra.get(ORIGIN) == self.instance:
            if self._unshown.pop(message.id, False) is None:
                self.manager.dispatch(message)  # not shown when it was sent: shown now
                return
            # Our own message, with no id the skip could read: shown from submit() already.
            self.echoes += 1
            return
        self.manager.dispatch(message)

    def _deliver_local(self, key: str, chat: ChatMessage) -> None:
        """Hand a message this instance published to its room here (if the room still has
        clients), as a delivery from the queue would; but not while the queue is away or
        not yet caught up after a loss (the catch-up orders what was missed before what
        comes live): then the message comes the way the others' do."""
        inbox = self.inbox
        if not inbox.connected.is_set() or (
            self.history is not None
            and inbox.generation >= 2
            and self._held_for != inbox.generation
        ):
            self._unshown[chat.id] = None
            while len(self._unshown) > UNSHOWN:  # (those the broker never routed back)
                del self._unshown[next(iter(self._unshown))]
            return
        room = self.manager.rooms.get(key)
        if room is not None:
            room.deliver(chat)

    def _hold_all(self, generation: int) -> list[Held]:
        """Hold every open socket's live messages, once per connection of the inbox, from its
        first delivery on (the new queue delivers while the rest of the rooms still bind), so
        each live message sorts after what the catch-up sends."""
        if self._held_for != generation:
            # (A socket already holding is replaying its own ``since``, or an earlier catch-up:
            # it is left to that, and the watch for late messages covers what it misses.)
            # Each room's last delivery before the loss, and what it delivered up to there:
            # taken before the new queue's first delivery moves them on.
            self._held = [
                Held(
                    room,
                    [client for client in room.clients if not client.holding],
                    room.last_id,
                    frozenset(m.id for m in room.recent),
                )
                for room in self.manager.rooms.values()
            ]
            for held in self._held:
                for client in held.clients:
                    client.hold()
            self._held_for = generation
        return self._held

    def _bound(self) -> int | None:
        """Which of the inbox's queues has the rooms bound now (None while it has none)."""
        inbox = self.inbox
        if inbox.connected.is_set() and self._bound_generation == inbox.generation:
            return self._bound_generation
        return None  # (away, or the new queue's rooms are still binding)

    def _on_connected(self, generation: int) -> None:
        self._bound_generation = generation
        if generation < 2 or self.history is None:
            return  # the first queue: nothing was missed
        rooms = self._hold_all(generation)
        previous = self._catching_up
        self._catching_up = asyncio.create_task(self._catch_up_all(rooms, previous))

    async def _catch_up_all(
        self, rooms: Sequence[Held], previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        assert self._catch_up is not None
        await self._catch_up.rooms(rooms)

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
            self.draining = True
            for room in list(self.manager.rooms.values()):
                for client in list(room.clients):
                    client.disconnect(GOING_AWAY, "the gateway is shutting down")
            if self._catching_up is not None:
                self._catching_up.cancel()
                with contextlib.suppress(BaseException):
                    await self._catching_up
            if self._catch_up is not None:
                await self._catch_up.close()
            if self._declarer is not None:
                with contextlib.suppress(Exception):
                    await self._declarer.close()
            self.manager.flush()
            stopping.set()
            with contextlib.suppress(Exception):
                await task

    def readiness(self) -> str:
        """What ``/readyz`` reports of this gateway: ``draining`` from SIGTERM on (first, so
        load balancers stop sending clients before the sockets close), else whether its queue
        is consuming."""
        if self.draining:
            return "draining"
        return "consuming" if self.inbox.connected.is_set() else "connecting"

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

    async def drain(self) -> int:
        """Scale in: turn not ready, refuse new sockets, then close the open ones in a few
        batches spread over ``drain_seconds`` with :data:`GOING_AWAY`; returns how many."""
        self.draining = True
        clients = self.manager.all_clients()
        random.shuffle(clients)
        batches = max(1, min(10, len(clients)))
        pause = self._drain_seconds / batches
        for index in range(batches):
            for client in clients[index::batches]:
                client.disconnect(GOING_AWAY, "the gateway is shutting down")
            if index < batches - 1:
                await asyncio.sleep(pause)  # spread: no stampede onto the other instances
        return len(clients)

    def submit(self, client: ConnectedClient, text: str) -> asyncio.Future[PublishResult]:
        """Publish ``text`` from ``client`` to its room and to the history; the future gives
        the outcome (the dispatch copy's if it failed, else the history copy's).

        Messages submitted one after the other are published, and shown, in that order: a
        socket may have several in flight without waiting for each one's confirms. This
        instance's sockets in the room get the message once the broker confirmed the dispatch
        copy (or the outbox stored it): never a message that was not sent, and no broker
        round trip back to this instance.

        What the sockets submit in one turn of the event loop is published together, one
        batch for the dispatch copies and one for the history copies (:meth:`_flush`): three
        tasks and two confirm waits per turn, and one body encoding per message, instead of
        three tasks, two waits and two encodings per message (most of a message's CPU when
        many sockets send at once).
        """
        member = client.member
        chat = ChatMessage(
            id=self._ids.new(),
            tenant=member.tenant,
            room=client.room,
            sender=member.username,
            text=text,
            sent_at=now(),
        )
        payload = chat.payload()
        message = Message(
            type=MESSAGE_TYPE,
            payload=payload,
            id=chat.id,
            tenant=member.tenant,
            extra={ORIGIN: self.instance},  # (an AMQP header: no JSON to encode for it)
            raw_body=encode_body(payload),  # (once for both copies)
        )
        loop = asyncio.get_running_loop()
        before, client.last_settled = client.last_settled, loop.create_future()
        outcome: asyncio.Future[PublishResult] = loop.create_future()
        pending = self._pending
        pending.append(
            Submitted(
                self.manager.key_of(client), chat, message, before, client.last_settled, outcome
            )
        )
        if len(pending) == 1:
            loop.call_soon(self._flush)
        return outcome

    def _flush(self) -> None:
        """Publish this turn's submitted messages: started here, in the order submitted, so a
        later turn's batch is written after this one."""
        batch, self._pending = self._pending, []
        dispatch = self.layout.dispatch_exchange
        dispatched = asyncio.ensure_future(
            self._publisher.publish_many([(s.message, Route(dispatch, s.key)) for s in batch])
        )
        history = Route(self.layout.persistence_exchange, "")
        stored = asyncio.ensure_future(
            self._publisher.publish_many([(s.message, history) for s in batch])
        )
        task = asyncio.create_task(self._settle(batch, dispatched, stored))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _settle(
        self,
        batch: list[Submitted],
        dispatched: asyncio.Future[list[PublishResult]],
        stored: asyncio.Future[list[PublishResult]],
    ) -> None:
        """Show each message of ``batch`` here once its dispatch copy is confirmed (after the
        sender's previous one), then give each its outcome."""
        try:
            try:
                results = await dispatched
            except BaseException as exc:
                stored.add_done_callback(_retrieved)
                _fail(batch, exc)  # (a StorageError: the outbox could not take them either)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for submitted, result in zip(batch, results, strict=True):
                before = submitted.before
                if before is not None and not before.done():
                    # The sender's previous message first: a confirm (or an outbox write, when
                    # the broker did not take it) may come back before one of a message sent
                    # earlier.
                    await asyncio.shield(before)
                if result.status is not PublishStatus.FAILED:
                    self._deliver_local(submitted.key, submitted.chat)
                _settle_once(submitted.settled)
        finally:
            for submitted in batch:  # (also when cancelled: the next message must not wait)
                _settle_once(submitted.settled)
        try:
            persisted = await stored
        except BaseException as exc:
            _fail(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for submitted, result, kept in zip(batch, results, persisted, strict=True):
            if not submitted.outcome.done():
                submitted.outcome.set_result(result if not result.ok else kept)

    async def send(self, client: ConnectedClient, text: str) -> PublishResult:
        """Publish ``text`` from ``client`` and wait for the outcome (see :meth:`submit`)."""
        return await self.submit(client, text)

    async def recover(self, client: ConnectedClient, since: str, history: ChatHistory) -> int:
        """Send ``client`` (held since before it joined) what it missed after ``since``, page
        by page in the store's order at the pace of its socket (a sender's messages the room
        delivered here before its later ones from the store), then its held live messages;
        returns how many frames were queued.

        The database has what the persistence workers stored, once the history queue passed
        a mark published after the client's join (what was routed before the room's binding
        here reached only the history); the room's recent messages on this instance cover
        those still on their way there, in the order this instance delivered them. What this
        instance delivered up to ``since`` the client has seen.
        """
        room = self.manager.rooms.get(self.manager.key_of(client))
        recent = list(room.recent) if room is not None else []
        ids = [m.id for m in recent]
        if since in ids:
            at = ids.index(since) + 1
            seen, tail = set(ids[:at]), recent[at:]
        else:
            seen, tail = set(), [m for m in recent if m.id > since]
        tenant = client.member.tenant
        if self._marks is not None:
            # What was routed before the room's binding here (the client joined before this)
            # is in the history, or on its way there: wait (bounded) until it is stored.
            await self._marks.passed(SEAM_WAIT)
        position = await stored_position(history, tenant, client.room, since)
        seen_from = await history.lowest(tenant, client.room, list(seen))
        oldest = min(seen, default=None)

        # The history may lack a sender's earlier messages (a batch retried while later
        # ones were stored) that the room delivered here: those go before the sender's later.
        seam = SenderSeam(tail)

        async def pages() -> AsyncIterator[list[ChatMessage]]:
            async for page in history.since(
                tenant, client.room, since, position, page=PAGE, seen_from=seen_from, oldest=oldest
            ):
                yield seam.merge([m for m in page if m.id not in seen])

        return await client.replay(pages(), tail)

    def revoke(self, tenant: str, user_id: str) -> int:
        """Close every socket of a user whose sessions were revoked; returns how many."""
        return self.manager.disconnect_member(tenant, user_id, "session revoked")


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # (the dispatch copy's failure is the one reported)


def _fail(batch: Sequence[Submitted], exc: BaseException) -> None:
    for submitted in batch:
        if not submitted.outcome.done():
            if isinstance(exc, asyncio.CancelledError):
                submitted.outcome.cancel()
            else:
                submitted.outcome.set_exception(exc)


def _settle_once(settled: asyncio.Future[None], *_: object) -> None:
    if not settled.done():
        settled.set_result(None)
