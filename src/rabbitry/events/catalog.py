"""The messages of the events part, for documents: change events on ``<ns>.events`` (routing
key = the change type), and the modules' own messages on ``<ns>.modules``."""

from __future__ import annotations

from typing import Any

from rabbitry.config import Settings
from rabbitry.events.change import MAX_ENTITY_LENGTH, SYSTEM_USER, ChangeType
from rabbitry.events.emitter import PIPELINE
from rabbitry.events.topology import WORKFLOW_MODULE, EventsLayout
from rabbitry.messaging.catalog import ANY_JSON, Catalog, Destination, MessageKind

_INT64 = {"type": "integer", "format": "int64"}


def change_schema(kind: ChangeType) -> dict[str, Any]:
    """The JSON Schema of a change event's body (:func:`rabbitry.events.change.parse_change`)."""
    required = ["entity", "id", "user"]
    if kind is not ChangeType.DELETE:
        required.append("data")
    return {
        "type": "object",
        "properties": {
            "entity": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ENTITY_LENGTH,
                "description": "The entity's class, e.g. App\\Models\\Order.",
            },
            "id": {**_INT64, "description": "The entity's id."},
            "user": {
                "oneOf": [_INT64, {"const": SYSTEM_USER}],
                "description": f"Who made the change: a user id, or {SYSTEM_USER!r}.",
            },
            "data": {
                "type": "object",
                "description": "The attributes (for an update: those that changed).",
            },
        },
        "required": required,
    }


def catalog(settings: Settings) -> Catalog:
    layout = EventsLayout(settings.namespace)
    changes = tuple(
        MessageKind(
            key=f"events.{kind}",
            type=str(kind),
            title=f"{kind} change event",
            summary=f"An entity was {'inserted' if kind is ChangeType.INSERT else f'{kind}d'}; "
            "the event store keeps it as the next version of that entity.",
            payload=change_schema(kind),
            destinations=(Destination(layout.events_exchange, str(kind)),),
            pipeline=PIPELINE,
            example={"entity": "App\\Models\\Order", "id": 7, "user": 42, "data": {"total": 10}},
        )
        for kind in ChangeType
    )
    module = MessageKind(
        key="events.module-message",
        type=None,
        title="module message",
        summary="A module's own message; the workflow module logs every one.",
        payload=ANY_JSON,
        destinations=(Destination(layout.modules_exchange, "{routingKey}"),),
    )
    return Catalog(
        messages=(*changes, module),
        parameters={
            "routingKey": "The key the sending module chooses; each module's queue hears the "
            "keys it declares (rabbitry.yaml modules:), the workflow module's hears all."
        },
        consumers={
            layout.event_sourcing_queue: "The workflow worker (rabbitry worker workflow) "
            "stores each change event in the event store, once, in order; an invalid one is "
            "dead-lettered with its reason.",
            layout.module_queue(WORKFLOW_MODULE): "The workflow worker logs every module "
            "message, with or without rr_job.",
        },
    )
