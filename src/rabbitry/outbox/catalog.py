"""The messages of the outbox part, for documents: what each queue of the registry
(``rabbitry.yaml`` ``queues:``) sends, a record sent by hand or a change event of it, to its
exchange and routing key (a ``{field}`` there is filled from the record)."""

from __future__ import annotations

from rabbitry.config import RegistryEntry, Settings
from rabbitry.messaging.catalog import Catalog, Destination, MessageKind


def message_kind(entry: RegistryEntry) -> MessageKind:
    """What a record sent to ``entry`` becomes (see :mod:`rabbitry.outbox.manual`)."""
    if entry.payload == "change":
        payload = {
            "type": "object",
            "description": "A change event of the record: entity, id, user, data.",
            "required": ["entity", "id", "user"],
        }
    else:
        payload = {"type": "object", "description": f"The fields of a {entry.classname} record."}
    how = (
        f"Sent by hand from a {entry.classname} (the back-office's ▶), or stored and re-sent "
        "by rabbitry requeue."
        if entry.allow_manual_insertion
        else "Stored in the outbox and re-sent by rabbitry requeue."
    )
    # Without a message_type the type is the routing key, filled in: it varies when the key
    # has {fields}.
    filled = entry.routing_key if "{" not in entry.routing_key else ""
    return MessageKind(
        key=f"outbox.{entry.name}",
        type=entry.message_type or filled or None,
        title=entry.description or entry.name,
        summary=how,
        payload=payload,
        destinations=(Destination(entry.exchange, entry.routing_key),),
    )


def catalog(settings: Settings) -> Catalog:
    return Catalog(messages=tuple(message_kind(entry) for entry in settings.queues))
