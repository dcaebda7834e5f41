"""The chat protocol, pure: room ids, message ids, client frames and limits."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from rabbitry.chat.protocol import (
    MAX_FRAME_BYTES,
    MAX_TEXT_CHARS,
    ChatMessage,
    FrameError,
    MessageIds,
    RateLimit,
    SenderSeam,
    check_id,
    check_room,
    in_sender_order,
    parse_client_frame,
)
from rabbitry.chat.topology import ChatLayout
from rabbitry.errors import MessageError


@pytest.mark.parametrize("room", ["a", "Lobby_2", "-x-", "r" * 64])
def test_room_ids_of_letters_digits_underscore_and_dash_up_to_64_are_valid(room: str) -> None:
    assert check_room(room) == room


@pytest.mark.parametrize("room", ["", "r" * 65, "a.b", "a b", "#", "*", "é", "a/b"])
def test_other_room_ids_are_refused(room: str) -> None:
    with pytest.raises(ValueError, match="invalid room"):
        check_room(room)


def test_room_keys_are_scoped_by_tenant_so_equal_rooms_of_two_tenants_never_mix() -> None:
    layout = ChatLayout("rabbitry")
    assert layout.room_key("acme", "lobby") == "acme.lobby"
    assert layout.room_key("acme", "lobby") != layout.room_key("globex", "lobby")
    with pytest.raises(ValueError):
        layout.room_key("acme.x", "lobby")  # a dotted tenant could forge another's key


def test_message_ids_are_unique_and_sort_in_the_order_they_were_made() -> None:
    ids = MessageIds()
    made = [ids.new(now_ms=1_700_000_000_000) for _ in range(5000)]  # all in one millisecond
    made += [ids.new(now_ms=1_700_000_000_001 + i) for i in range(100)]
    made.append(ids.new(now_ms=1_600_000_000_000))  # a clock step back still sorts last
    assert len(set(made)) == len(made)
    assert sorted(made) == made
    assert all(check_id(m) == m for m in made)


def test_a_text_frame_gives_its_text() -> None:
    assert parse_client_frame(json.dumps({"text": "héllo"})) == "héllo"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "JSON objects"),
        ("[]", "JSON objects"),
        ('{"text": "a", "extra": 1}', "JSON objects"),
        ('{"text": 5}', "non-empty string"),
        ('{"text": "   "}', "non-empty string"),
        (json.dumps({"text": "x" * (MAX_TEXT_CHARS + 1)}), "too long"),
        ("x" * (MAX_FRAME_BYTES + 1), "too large"),
        (json.dumps({"text": "é" * (MAX_FRAME_BYTES // 2)}), "too large"),
    ],
)
def test_malformed_or_oversized_frames_are_refused_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        parse_client_frame(raw)


def test_a_chat_message_travels_as_its_frame_plus_tenant_and_reads_back_equal() -> None:
    message = ChatMessage(
        MessageIds().new(),
        "acme",
        "lobby",
        "ann",
        "hi",
        dt.datetime(2026, 1, 2, 3, 4, 5, 6000, dt.UTC),
    )
    assert message.frame() == {
        "id": message.id,
        "room": "lobby",
        "sender": "ann",
        "text": "hi",
        "sent_at": "2026-01-02T03:04:05.006Z",
    }
    assert ChatMessage.from_payload(json.loads(json.dumps(message.payload()))) == message


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"id": "x"},
        {
            "id": "nope",
            "tenant": "a",
            "room": "r",
            "sender": "s",
            "text": "t",
            "sent_at": "2026-01-01T00:00:00Z",
        },
    ],
)
def test_a_body_that_is_not_a_chat_message_is_a_message_error(payload: object) -> None:
    with pytest.raises(MessageError):
        ChatMessage.from_payload(payload)


def test_the_rate_limit_allows_a_burst_then_the_average_rate() -> None:
    limit = RateLimit(rate=2.0, burst=3)
    assert [limit.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow(0.4) is False
    assert limit.allow(0.5) is True  # half a second at 2/s refilled one token
    assert [limit.allow(10.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_a_catch_up_keeps_the_stores_order_between_senders_and_each_senders_own_order() -> None:
    ids = MessageIds()
    at = dt.datetime.now(dt.UTC)
    a1, b1, a2, b2, a3 = (
        ChatMessage(ids.new(), "acme", "r", sender, sender, at) for sender in "ababa"
    )
    # Competing workers stored a2 before a1, and b2 before b1.
    stored = [a2, b2, a1, a3, b1]
    assert in_sender_order(stored) == [a1, b1, a2, a3, b2]
    assert in_sender_order([]) == []


def test_a_recovery_sends_a_senders_delivered_messages_before_its_later_ones_from_the_store() -> (
    None
):
    ids = MessageIds()
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    a1, b1, a2, b2, a3, a4 = (
        ChatMessage(ids.new(), "acme", "r", sender, sender, at) for sender in "ababaa"
    )
    # The history lacks a1, a2 and b1 (their batch retried while the database was away); the
    # room here delivered all but a4 after the client's ``since``.
    seam = SenderSeam([a1, b1, a2, b2, a3])
    assert seam.merge([b2, a3]) == [b1, b2, a1, a2, a3]
    assert seam.merge([a4]) == [a4]  # (a3 went with the first page: not sent twice)
    assert SenderSeam([]).merge([a2, a1]) == [a2, a1]  # (the store's order, as it is)
