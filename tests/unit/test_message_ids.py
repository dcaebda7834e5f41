"""Message ids are random RFC 4122 version 4 UUIDs in their usual text form."""

from __future__ import annotations

import uuid

from rabbitry.messaging.envelope import Message, new_id


def test_every_new_message_gets_a_distinct_version_4_uuid() -> None:
    ids = [Message(type="t", payload=None).id for _ in range(10_000)] + [new_id()]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # lower-case, hyphenated, 36 characters
