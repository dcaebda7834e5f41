"""VirtualRoom: the clients of one room on this gateway instance.

A room exists on an instance while it has clients there, and only then is the instance's queue
bound with the room's key (see :mod:`rabbitry.chat.manager`). Each message the queue brings is
encoded once and offered to every client, the sender's own socket included.
"""

from __future__ import annotations

from collections import deque

from rabbitry.chat.client import ConnectedClient
from rabbitry.chat.protocol import ChatMessage, encode_frame

RECENT = 200


class VirtualRoom:
    """The connected clients of ``room`` of ``tenant`` on this instance."""

    def __init__(self, tenant: str, room: str, key: str, *, start: str = "") -> None:
        self.tenant = tenant
        self.room = room
        self.key = key
        """The routing key of the room on the dispatch exchange."""
        self.clients: set[ConnectedClient] = set()
        self.recent: deque[ChatMessage] = deque(maxlen=RECENT)
        self.last_id = start
        """The id of the last message this room delivered (at first, an id no earlier than
        the room's creation): where a catch-up after a lost queue starts."""

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: ConnectedClient) -> None:
        self.clients.add(client)

    def remove(self, client: ConnectedClient) -> None:
        self.clients.discard(client)

    def deliver(self, message: ChatMessage) -> int:
        """Offer ``message`` to every client; returns how many took it (a slow one is
        disconnected by its own full queue, the others never wait for it)."""
        self.recent.append(message)
        self.last_id = message.id
        frame = encode_frame(message.frame())
        return sum(client.offer(message, frame) for client in list(self.clients))
