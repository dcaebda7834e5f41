"""The messages of the chat part, for documents: each chat message goes to the gateways with
clients in its room (``<ns>.chat.dispatch``, key ``<tenant>.<room>``) and to the history
(``<ns>.chat.persistence``). Each gateway instance declares two exclusive queues at run time:
one bound to its rooms, one to the session revocation notices."""

from __future__ import annotations

from rabbitry.chat.protocol import MAX_TEXT_CHARS, MESSAGE_TYPE, SENDER_MAX_CHARS
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings
from rabbitry.messaging.catalog import Catalog, Destination, MessageKind
from rabbitry.messaging.topology import Binding, Queue, Topology
from rabbitry.sessions import TenantsLayout

_TEXT = {"type": "string"}


def gateway_queue_template(namespace: str) -> str:
    """The name of a gateway's room queue: ``{instance}`` is the gateway, ``{connection}``
    counts its connections (a new queue after each reconnect)."""
    return f"{namespace}.chat.gateway.{{instance}}.{{connection}}"


def revocations_queue_template(namespace: str) -> str:
    """The name of a gateway's queue of revocation notices."""
    return f"{namespace}.chat.revocations.{{instance}}.{{connection}}"


def catalog(settings: Settings) -> Catalog:
    layout = ChatLayout(settings.namespace)
    rooms = gateway_queue_template(settings.namespace)
    notices = revocations_queue_template(settings.namespace)
    message = MessageKind(
        key="chat.message",
        type=MESSAGE_TYPE,
        title="chat message",
        summary="A message a client sent to a room; every socket in the room receives it, "
        "the sender's included, and it is stored once.",
        payload={
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "Time-ordered id (UUIDv7 layout)."},
                "tenant": {"type": "string"},
                "room": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "sender": {**_TEXT, "maxLength": SENDER_MAX_CHARS},
                "text": {**_TEXT, "maxLength": MAX_TEXT_CHARS},
                "sent_at": {"type": "string", "format": "date-time"},
            },
            "required": ["id", "tenant", "room", "sender", "text", "sent_at"],
        },
        destinations=(
            Destination(layout.dispatch_exchange, "{tenant}.{room}"),
            Destination(layout.persistence_exchange, ""),
        ),
        tenant=True,
    )
    runtime = Topology.of(
        queues=[
            Queue(name, durable=False, exclusive=True, auto_delete=True)
            for name in (rooms, notices)
        ],
        bindings=[
            Binding(layout.dispatch_exchange, rooms, "{tenant}.{room}"),
            Binding(TenantsLayout(settings.namespace).revoked_exchange, notices, ""),
        ],
    )
    return Catalog(
        messages=(message,),
        runtime=runtime,
        parameters={
            "tenant": "A tenant's name (1-63 lower-case letters, digits or '-').",
            "room": "A room id (1-64 letters, digits, '_' or '-').",
            "instance": "A chat gateway instance's id.",
            "connection": "Counts the gateway's connections to the broker.",
        },
        consumers={
            layout.history_queue: "The chat-persist workers (rabbitry worker chat-persist) "
            "store each message once.",
            rooms: "A chat gateway (rabbitry serve chat) sends each message to every socket "
            "in its room; bound while the room has a client there.",
            notices: "A chat gateway closes the sockets of each revoked session.",
        },
    )
