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
from rabbitry.events.portable import MAX_DEPTH, _encodable, check_json, check_text

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
    kind, entity, entity_id, user, data = parse_fields(message_type, payload, walk=False)
    text = None
    failed: TypeError | ValueError | None = None
    if data is not None:
        # Encoded first: the text answers for the common, clean value at once, where
        # check_json walks it (0.8 of 3.2 µs an event); a value it doubts is walked, as
        # parse_fields would have, for check_json's reason.
        try:
            text = DATA_JSON.encode(data if type(data) is dict else dict(data))
        except (TypeError, ValueError) as exc:  # a NaN, say: check_json names it
            failed = exc
        if text is None or not _plain(text):
            check_json(data, "'data'")
    check_message_id(message_id)
    if failed is not None:  # check_json let it through: the encoder's reason, as before
        raise MessageError(f"'data' is not JSON: {failed}") from failed
    return entity, entity_id, kind, user, text, message_id, occurred_at


def _plain(text: str) -> bool:
    """Whether encoded data certainly holds nothing :func:`check_json` refuses: no U+0000 (the
    encoder writes it ``\\u0000``), no lone surrogate (the text is UTF-8), no deeper nesting
    than it allows (no more objects and arrays than that). A false ``False`` (the text
    ``\\u0000`` in a string, many brackets) only costs the walk."""
    return (
        "\\u0000" not in text
        and (text.isascii() or _encodable(text))
        and text.count("{") + text.count("[") <= MAX_DEPTH
    )


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
