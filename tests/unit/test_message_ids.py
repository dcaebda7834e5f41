"""Message ids are RFC 9562 version 7 UUIDs in their usual text form: distinct, and in the
order they were made from one millisecond to the next (what keeps the databases' unique
indexes on them cheap)."""

from __future__ import annotations

import time
import uuid

from rabbitry.messaging.envelope import Message, new_id


def test_every_new_message_gets_a_distinct_version_7_uuid() -> None:
    ids = [Message(type="t", payload=None).id for _ in range(10_000)] + [new_id()]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert str(parsed) == text  # lower-case, hyphenated, 36 characters


def test_ids_lead_with_the_time_they_were_made() -> None:
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    after = time.time_ns() // 1_000_000
    assert first < second  # as text too: fixed width, lower-case hex
    for text in (first, second):
        made = uuid.UUID(text).int >> 80  # the first 48 bits: Unix time in milliseconds
        assert before <= made <= after
