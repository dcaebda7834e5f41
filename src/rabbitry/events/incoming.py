"""A change event as it arrives to be stored: validated, with its message's id and time.

Two forms: :class:`Incoming`, the model (what :meth:`EventStore.append` takes), and
:data:`Row`, the same event as the columns the store writes, built straight from the message
body by :func:`parse_row` (what the workflow worker stores: no model per event).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from rabbitry.errors import MessageError
from rabbitry.events.change import ChangeEvent, ChangeType, Json, parse_fields, user_from_text
from rabbitry.events.portable import check_text

MAX_MESSAGE_ID_LENGTH = 255

Row = tuple[str, int, str, str, str | None, str, dt.datetime]
"""A validated change event as the store writes it: entity, id, type, user (text), data (JSON
text, or ``None``), message id, occurred at."""

# json.dumps() with options builds an encoder per call: one, made once, takes 40 % less time
# per event.
DATA_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A validated change event with the message it came in: its id and timestamp."""

    change: ChangeEvent
    message_id: str
    occurred_at: dt.datetime

    def __post_init__(self) -> None:
        check_message_id(self.message_id)


def check_message_id(message_id: str) -> None:
    """Raise :class:`MessageError` for an id the store cannot keep (it is what dedups)."""
    if not message_id or len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise MessageError(
            f"message id (rr_id or message_id) must be 1-{MAX_MESSAGE_ID_LENGTH} characters"
        )
    check_text(message_id, "message id (rr_id or message_id)")


def parse_row(message_type: str, payload: Json, message_id: str, occurred_at: dt.datetime) -> Row:
    """A received change event as its :data:`Row`: the checks of
    :func:`~rabbitry.events.change.parse_change` and :class:`Incoming`, in their order and
    with their reasons (:class:`MessageError`), then ``data`` encoded as JSON text."""
    kind, entity, entity_id, user, data = parse_fields(message_type, payload)
    check_message_id(message_id)
    text = None
    if data is not None:
        try:
            text = DATA_JSON.encode(data if type(data) is dict else dict(data))
        except (TypeError, ValueError) as exc:  # check_json let nothing through it refuses
            raise MessageError(f"'data' is not JSON: {exc}") from exc
    return entity, entity_id, kind, user, text, message_id, occurred_at


def incoming_of(row: Row) -> Incoming:
    """The model of a row (for the ways that take models: SQLite, a batch with a redelivery)."""
    entity, entity_id, kind, user, data, message_id, occurred_at = row
    change = ChangeEvent(
        ChangeType(kind),
        entity,
        entity_id,
        user_from_text(user),
        None if data is None else json.loads(data),
    )
    return Incoming(change, message_id, occurred_at)
