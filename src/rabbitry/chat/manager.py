"""Manager: one per gateway process, holding its VirtualRooms, each holding ConnectedClients.

The life cycle of a room on one instance:

* a client joins a room this instance does not have yet: the Manager creates the VirtualRoom
  and has the instance's queue bound with the room's routing key;
* a client joins a room that exists here: it is only added, nothing else happens;
* the room's last client leaves: the room is dropped, and its binding removed after a short
  grace period (``unbind_grace``): a user who reconnects alone to a room, as a page reload
  does, costs no unbind and bind each time;
* a message arrives from the queue: the Manager finds its room and hands it over; the room
  sends it to every socket, the sender's included.

Joins and leaves change the Manager's state synchronously (no ``await`` between looking a room
up and changing it), and only say to the :class:`Binder` which keys they *want*; the binder
alone talks to the broker and converges on the last word. So however joins and leaves race on
one room, no binding is left stale and none is missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Protocol

from rabbitry.chat.client import ConnectedClient
from rabbitry.chat.protocol import ChatMessage, floor_id
from rabbitry.chat.room import VirtualRoom
from rabbitry.chat.topology import ChatLayout
from rabbitry.errors import MessageError
from rabbitry.messaging.envelope import Message

log = logging.getLogger(__name__)

REVOKED = 4001  # an application close code: the user's sessions were revoked
KEYS = 10_000  # room keys remembered (tenant, room) -> key; then the cache starts over


class Binder(Protocol):
    """The broker side of a Manager (an :class:`~rabbitry.messaging.inbox.Inbox`)."""

    def want(self, key: str) -> None: ...

    def drop(self, key: str) -> None: ...

    async def bound(self, key: str, timeout: float) -> bool: ...


class Manager:
    """The rooms of this instance, by routing key."""

    def __init__(
        self,
        layout: ChatLayout,
        binder: Binder,
        *,
        bind_timeout: float = 5.0,
        unbind_grace: float = 0.0,
    ) -> None:
        self._layout = layout
        self._binder = binder
        self._bind_timeout = bind_timeout
        self._unbind_grace = unbind_grace
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self.rooms: dict[str, VirtualRoom] = {}
        self._members: defaultdict[tuple[str, str], set[ConnectedClient]] = defaultdict(set)
        self._keys: dict[tuple[str, str], str] = {}
        self.stale = 0
        """Deliveries for a room this instance no longer has (in flight while it unbound)."""

    def key_of(self, client: ConnectedClient) -> str:
        # Every message submitted asks: a key is formatted (and its parts checked) once.
        pair = client.key
        key = self._keys.get(pair)
        if key is None:
            if len(self._keys) >= KEYS:
                self._keys.clear()
            key = self._keys[pair] = self._layout.room_key(*pair)
        return key

    async def join(self, client: ConnectedClient) -> bool:
        """Put ``client`` in its room; True once the room's binding is in place. False: the
        binding did not come within ``bind_timeout`` (the broker is away), and the client is
        taken out again: a socket is never accepted without its binding."""
        key = self.key_of(client)
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = VirtualRoom(
                client.member.tenant, client.room, key, start=floor_id()
            )
            lingering = self._lingering.pop(key, None)
            if lingering is not None:
                lingering.cancel()  # still wanted, most likely still bound
            else:
                self._binder.want(key)
        room.add(client)
        self._members[(client.member.tenant, client.member.user_id)].add(client)
        if await self._binder.bound(key, self._bind_timeout):
            return True
        self.leave(client)
        return False

    def leave(self, client: ConnectedClient) -> None:
        """Take ``client`` out of its room; the room's last client drops the room."""
        key = self.key_of(client)
        member = (client.member.tenant, client.member.user_id)
        self._members[member].discard(client)
        if not self._members[member]:
            del self._members[member]
        room = self.rooms.get(key)
        if room is None:
            return
        room.remove(client)
        if not room:
            del self.rooms[key]
            if self._unbind_grace > 0:
                loop = asyncio.get_running_loop()
                self._lingering[key] = loop.call_later(self._unbind_grace, self._drop, key)
            else:
                self._binder.drop(key)

    def _drop(self, key: str) -> None:
        self._lingering.pop(key, None)
        self._binder.drop(key)

    @property
    def lingering(self) -> frozenset[str]:
        """Keys of rooms gone from this instance whose binding waits out the grace period."""
        return frozenset(self._lingering)

    def flush(self) -> None:
        """Drop every lingering binding now (shutting down)."""
        for key, handle in list(self._lingering.items()):
            handle.cancel()
            self._drop(key)

    def dispatch(self, message: Message) -> int:
        """Hand a message from the instance's queue to its room; returns the sockets reached."""
        room = self.rooms.get(message.routing_key)
        if room is None:
            self.stale += 1
            return 0
        try:
            chat = ChatMessage.from_payload(message.payload)
        except MessageError as exc:
            log.warning("dropping a malformed chat message %s: %s", message.id, exc)
            return 0
        if (chat.tenant, chat.room) != (room.tenant, room.room):
            log.warning("dropping message %s: its room is not its routing key's", chat.id)
            return 0
        return room.deliver(chat)

    def disconnect_member(
        self, tenant: str, user_id: str, reason: str, *, session_id: str | None = None
    ) -> int:
        """Close the sockets of one user (of one session of theirs, if given): their sessions
        were revoked. Returns how many."""
        clients = [
            client
            for client in self._members.get((tenant, user_id), ())
            if session_id is None or client.member.session_id == session_id
        ]
        for client in clients:
            client.disconnect(REVOKED, reason)
        return len(clients)

    def sockets_of(self, tenant: str, user_id: str) -> int:
        """How many sockets this user holds on this instance."""
        return len(self._members.get((tenant, user_id), ()))

    def all_clients(self) -> list[ConnectedClient]:
        return [client for room in self.rooms.values() for client in room.clients]

    def clients(self) -> int:
        return sum(len(room) for room in self.rooms.values())
