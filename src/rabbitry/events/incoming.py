"""A change event as it arrives to be stored: validated, with its message's id and time."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from rabbitry.errors import MessageError
from rabbitry.events.change import ChangeEvent
from rabbitry.events.portable import check_text

MAX_MESSAGE_ID_LENGTH = 255


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
