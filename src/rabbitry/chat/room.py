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
# Ids a room remembers delivering: a message that reaches it twice (a catch-up from the history
# and then the broker, or a publish both routed and relayed from the outbox) goes out once.
# 5,000 is minutes of a busy room.
SEEN = 5000


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
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self.clients)

    def add(self, client: ConnectedClient) -> None:
        self.clients.add(client)

    def remove(self, client: ConnectedClient) -> None:
        self.clients.discard(client)

    def seen(self, message_id: str) -> bool:
        """Whether the room delivered (or caught its clients up with) this id lately."""
        return message_id in self._seen

    def remember(self, message_id: str) -> bool:
        """Note ``message_id`` as delivered; False if it already was."""
        if message_id in self._seen:
            return False
        self._seen.add(message_id)
        self._seen_order.append(message_id)
        if len(self._seen_order) > SEEN:
            self._seen.discard(self._seen_order.popleft())
        return True

    def deliver(self, message: ChatMessage) -> int:
        """Offer ``message`` to every client; returns how many took it (a slow one is
        disconnected by its own full queue, the others never wait for it). A message the room
        delivered already goes to nobody."""
        if not self.remember(message.id):
            return 0
        self.recent.append(message)
        self.last_id = message.id
        frame = encode_frame(message.frame())
        return sum(client.offer(message, frame) for client in list(self.clients))
