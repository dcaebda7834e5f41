"""What a record sent with the ▶ action becomes, for one registry queue. Pure, no I/O.

A registry entry says it (``rabbitry.yaml``, ``queues:``): the message type is its
``message_type`` (or, when empty, its routing key, which is what the events part and most
RoadRunner consumers dispatch on), the body is the record's fields (``payload: record``) or a
change event of the record (``payload: change``: entity = the classname, id = the record's id,
user = ``system``, data = its fields), and ``{field}`` placeholders in the routing key take the
record's values, each checked to be a plain name first (so ``{tenant}.session-removal`` reaches
the tenant's own queue and nothing else).
"""

from __future__ import annotations

import re
from typing import Any

from rabbitry.errors import Invalid, MessageError
from rabbitry.events import SYSTEM_USER, ChangeEvent, ChangeType
from rabbitry.messaging.envelope import Message
from rabbitry.outbox import QueueInfo
from rabbitry.storage.listing import Record

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
MANUAL_HEADER = "x-rabbitry-manual"


class RecordError(Invalid):
    """This record cannot go to this queue; the message says why, for the operator."""


def routing_key(template: str, record: Record) -> str:
    """``template`` with each ``{field}`` replaced by the record's (checked) value."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in record.fields:
            raise RecordError(f"the routing key needs {name!r}, which a {record.kind} lacks")
        value = str(record.fields[name])
        if not _SAFE.fullmatch(value):
            raise RecordError(f"{name}={value[:40]!r} cannot be part of a routing key")
        return value

    return _PLACEHOLDER.sub(fill, template)


def message_for(entry: QueueInfo, record: Record) -> tuple[Message, str]:
    """The message and routing key that carry ``record`` to ``entry``."""
    key = routing_key(entry.routing_key, record)
    kind = entry.message_type or key
    if not kind:
        raise RecordError(f"queue {entry.name!r} names no message type and no routing key")
    if entry.payload == "change":
        if record.entity_id is None:
            raise RecordError(f"a {record.kind} has no numeric id: it cannot be a change event")
        if kind not in {str(t) for t in ChangeType}:
            raise RecordError(f"a change event's type is insert, update or delete, not {kind!r}")
        try:
            change = ChangeEvent(
                ChangeType(kind),
                record.classname,
                record.entity_id,
                SYSTEM_USER,
                dict(record.change_data),
            )
        except MessageError as exc:
            raise RecordError(str(exc)) from None
        payload: Any = change.payload()
    else:
        payload = dict(record.fields)
    message = Message(
        type=kind,
        payload=payload,
        tenant=record.tenant,
        extra={MANUAL_HEADER: f"{record.kind}:{record.key}"},
    )
    return message, key
