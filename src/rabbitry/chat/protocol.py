"""The chat protocol, pure: room ids, message ids, client frames, limits. No I/O.

A client sends text frames ``{"text": "..."}``; every member of the room receives
``{"id", "room", "sender", "text", "sent_at"}``. Anything else a client sends gets
``{"error": "<reason>"}`` back and the connection stays open. Message ids are UUIDv7-shaped:
48 bits of milliseconds first, then a counter, so sorting ids sorts messages by the time their
gateway stamped them, which is what history pages and ``?since=`` recovery order by.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rabbitry.errors import Invalid, MessageError

ROOM_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A UUID in its canonical lower-case form: what new_id() makes, and all since/before accept.
ID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

MESSAGE_TYPE = "chat.message"
MARK_TYPE = "chat.mark"  # a gateway's mark through the history queue (see ChatHistory.marked)
MAX_TEXT_CHARS = 2000
MAX_FRAME_BYTES = 8192
SENDER_MAX_CHARS = 64


class FrameError(ValueError):
    """A client frame that breaks the protocol; its text is the error sent back."""


def check_mark(payload: object) -> str:
    """The id a gateway's mark carries (``{"mark": "<uuid>"}``), or :class:`MessageError`."""
    mark = payload.get("mark") if isinstance(payload, dict) else None
    if not isinstance(mark, str) or not ID_PATTERN.fullmatch(mark):
        raise MessageError('not a chat mark: expected {"mark": a lower-case UUID}')
    return mark


def check_room(room: str) -> str:
    """``room`` if it is a valid room id (1-64 letters, digits, ``_`` or ``-``)."""
    if not ROOM_PATTERN.fullmatch(room):
        raise Invalid(f"invalid room {room[:70]!r}: 1-64 letters, digits, '_' or '-'")
    return room


def check_id(value: str, what: str = "message id") -> str:
    if not ID_PATTERN.fullmatch(value):
        raise Invalid(f"invalid {what} {value[:40]!r}: a message id (lower-case UUID)")
    return value


class MessageIds:
    """Time-ordered ids (UUIDv7 layout): unique, and increasing within one process."""

    def __init__(self) -> None:
        self._last_ms = 0
        self._counter = 0

    def new(self, now_ms: int | None = None) -> str:
        ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if ms <= self._last_ms:
            # Same millisecond (or a clock step back): keep counting from the last one.
            ms, self._counter = self._last_ms, self._counter + 1
            if self._counter > 0xFFF:
                ms, self._counter = ms + 1, 0
        else:
            self._counter = 0
        self._last_ms = ms
        # Not a secret, only unique: the random module's generator (seeded from the OS, and
        # again in a forked child) instead of a system call per message.
        rand = random.getrandbits(62)
        value = (ms << 80) | (0x7 << 76) | (self._counter << 64) | (0b10 << 62) | rand
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def floor_id(now_ms: int | None = None) -> str:
    """The smallest id of the millisecond ``now_ms`` (default: now): every message stamped at
    or after it sorts after it."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    text = f"{ms << 80:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def is_stamped(value: str) -> bool:
    """Whether ``value`` is an id :class:`MessageIds` made (a :func:`floor_id` is not)."""
    return bool(ID_PATTERN.fullmatch(value)) and value[14] == "7"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of one room of one tenant."""

    id: str
    tenant: str
    room: str
    sender: str
    text: str
    sent_at: dt.datetime

    def frame(self) -> dict[str, Any]:
        """What every member of the room receives."""
        return {
            "id": self.id,
            "room": self.room,
            "sender": self.sender,
            "text": self.text,
            "sent_at": _iso(self.sent_at),
        }

    def payload(self) -> dict[str, Any]:
        """The broker body: the frame plus the tenant."""
        return {**self.frame(), "tenant": self.tenant}

    @classmethod
    def from_payload(cls, payload: Any) -> ChatMessage:
        """Read a broker body back; :class:`MessageError` when it is not a chat message."""
        if not isinstance(payload, dict):
            raise MessageError("a chat message is a JSON object")
        try:
            fields = {name: payload[name] for name in ("id", "tenant", "room", "sender", "text")}
            sent_at = dt.datetime.fromisoformat(payload["sent_at"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MessageError(f"not a chat message: {exc}") from exc
        if not all(isinstance(value, str) for value in fields.values()):
            raise MessageError("chat message fields must be strings")
        if sent_at.tzinfo is None:
            sent_at = sent_at.replace(tzinfo=dt.UTC)
        try:
            check_id(fields["id"])
            check_room(fields["room"])
        except ValueError as exc:
            raise MessageError(str(exc)) from exc
        return cls(sent_at=sent_at, **fields)


def in_sender_order(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """``messages`` with each sender's own in id order, in the slots the sender's messages
    held: the order between senders is kept (the store's), and one sender's messages, which
    one gateway stamped one after the other, come in the order they were sent (competing
    persistence workers store them a little out of it)."""
    mine: dict[str, list[ChatMessage]] = {}
    for message in messages:
        mine.setdefault(message.sender, []).append(message)
    queues = {sender: iter(sorted(ms, key=lambda m: m.id)) for sender, ms in mine.items()}
    return [next(queues[message.sender]) for message in messages]


class SenderSeam:
    """Merges what a room here delivered after a client's ``since`` (its recent messages, in
    the order delivered: each sender's in the order sent) into the history's pages of a
    recovery, so that no sender's message comes after a later one of the same sender.

    The history may not have a sender's earlier messages yet while it has its later ones: a
    persistence batch that failed (the database away) is retried through the retry queues
    while later batches are stored. Sent page by page, then the room's recent messages, the
    earlier ones would come last. :meth:`merge` puts a sender's recent messages before the
    first later message of that sender a page holds; what is left of them follows the pages,
    as before (the caller sends each id once)."""

    def __init__(self, recent: Iterable[ChatMessage]) -> None:
        self._waiting: dict[str, deque[ChatMessage]] = {}
        for message in recent:
            self._waiting.setdefault(message.sender, deque()).append(message)

    def merge(self, page: Sequence[ChatMessage]) -> list[ChatMessage]:
        """``page`` in the store's order, with the recent messages of each of its senders
        stamped before each of theirs in front of it."""
        merged: list[ChatMessage] = []
        for message in page:
            waiting = self._waiting.get(message.sender)
            while waiting and waiting[0].id <= message.id:
                earlier = waiting.popleft()
                if earlier.id != message.id:
                    merged.append(earlier)
            merged.append(message)
        return merged


def parse_client_frame(raw: str) -> str:
    """The text of a client frame ``{"text": "..."}``; :class:`FrameError` otherwise."""
    if len(raw) > MAX_FRAME_BYTES or len(raw.encode()) > MAX_FRAME_BYTES:
        raise FrameError(f"frame too large: at most {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):  # deep nesting: "[[[[…" of 8 KB
        raise FrameError('frames are JSON objects: {"text": "..."}') from None
    if not isinstance(data, dict) or set(data) != {"text"}:
        raise FrameError('frames are JSON objects: {"text": "..."}')
    text = data["text"]
    if not isinstance(text, str) or not text.strip():
        raise FrameError("text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise FrameError(f"text too long: at most {MAX_TEXT_CHARS} characters")
    return text


def error_frame(reason: str) -> str:
    return json.dumps({"error": reason})


def encode_frame(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


class RateLimit:
    """A token bucket: ``rate`` messages a second on average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at: float | None = None

    def allow(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def now() -> dt.datetime:
    """The current UTC time to the millisecond: what a message's ``sent_at`` carries."""
    moment = dt.datetime.now(dt.UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
