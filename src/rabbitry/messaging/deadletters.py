"""Dead letters: look into a dead-letter queue ``Q.dlq`` and move messages back to their queue.

AMQP queues cannot be browsed, so looking takes messages with ``basic.get`` *without* acking
them and, once done, closes the channel: the broker gives every one of them back to the queue,
in order. Nothing is removed by looking.

Moving publishes a copy to the queue the message died in and acks the dead letter only once the
broker confirmed that copy; a copy that is not confirmed (the queue is gone, the broker nacks)
leaves the dead letter where it was. The queue is ``Q`` of the name ``Q.dlq``: only the queue's
own consumer or the broker dead-letters into it. Headers never choose it: ``x-rabbitry-queue``
travels with the message, so a producer could set it and have its message "moved back" into
another tenant's queue. The copy is the message
without its dead-letter headers and with its attempt count reset, so it gets the whole retry
policy again; its id, body bytes and other headers are the original ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from rabbitry.amqp.declarer import Declarer, Holding, Taken
from rabbitry.errors import Invalid, MessageError
from rabbitry.messaging import envelope
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route

DLQ_SUFFIX = ".dlq"
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
MOVE_BATCH = 200
# How many messages one look or one move may hold unacked at once.
MAX_SCAN = 10_000
GIVE_BACK = 2.0  # seconds a list waits for the broker to count what it gave back
_DEAD_HEADERS = frozenset(
    {
        envelope.REASON_HEADER,
        envelope.ERROR_HEADER,
        envelope.ORIGIN_QUEUE_HEADER,
        "x-death",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-first-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-last-death-exchange",
    }
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of a dead-letter queue, as an operator reads it."""

    id: str
    type: str
    reason: str
    error: str
    queue: str
    attempt: int
    timestamp: dt.datetime | None
    body: str
    headers: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "reason": self.reason,
            "error": self.error,
            "queue": self.queue,
            "attempt": self.attempt,
            "timestamp": None if self.timestamp is None else self.timestamp.isoformat(),
            "body": self.body,
            "headers": self.headers,
        }


@dataclass(slots=True)
class MoveReport:
    """What a move did: ids moved back, and ids left in the dead-letter queue with why."""

    moved: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_found: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{len(self.moved)} moved, {len(self.failed)} failed"
        return text + (f", {len(self.not_found)} not found" if self.not_found else "")


def is_dead_letter_queue(name: str) -> bool:
    return name.endswith(DLQ_SUFFIX) and len(name) > len(DLQ_SUFFIX)


def dead_letter_queue(name: str) -> str:
    """The dead-letter queue of ``name`` (a work queue ``Q`` or ``Q.dlq`` itself); raises
    :class:`~rabbitry.errors.Invalid` (a ``ValueError``) for a name no Rabbitry queue can have."""
    if not _QUEUE_NAME.fullmatch(name) or len(name) > 255 - len(DLQ_SUFFIX):
        raise Invalid(f"invalid queue name {name!r}: letters, digits and . _ - : only")
    return name if is_dead_letter_queue(name) else name + DLQ_SUFFIX


def origin_queue(headers: Mapping[str, Any], dlq: str) -> str:
    """The queue a dead letter of ``dlq`` died in: ``Q`` of ``Q.dlq``, whatever the message's
    headers claim (see the module docstring); ``""`` for a queue not named as a DLQ."""
    del headers  # producer-controlled: never trusted for where a message goes
    return dlq[: -len(DLQ_SUFFIX)] if is_dead_letter_queue(dlq) else ""


def message_key(taken: Taken) -> str:
    """The id an operator picks a dead letter by: ``rr_id``, else ``message_id``, else a
    digest of the body (stable while the message waits)."""
    rr_id = _text(taken.headers.get("rr_id"))
    if rr_id:
        return rr_id
    if taken.message_id:
        return taken.message_id
    return "sha256:" + hashlib.sha256(taken.body).hexdigest()[:16]


def describe(taken: Taken, dlq: str) -> DeadLetter:
    """What an operator sees of one dead letter. Pure."""
    headers = taken.headers
    attempt = headers.get(envelope.ATTEMPT_HEADER)
    return DeadLetter(
        id=message_key(taken),
        type=_text(headers.get("rr_job")) or "",
        reason=_text(headers.get(envelope.REASON_HEADER))
        or _text(headers.get("x-first-death-reason"))
        or "",
        error=_text(headers.get(envelope.ERROR_HEADER)) or "",
        queue=origin_queue(headers, dlq),
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 0,
        timestamp=taken.timestamp,
        body=taken.body.decode("utf-8", "replace"),
        headers={k: _plain(v) for k, v in headers.items()},
    )


def revived(taken: Taken) -> Message:
    """The copy that goes back: no dead-letter headers, attempt 0, same id and body. Pure."""
    headers = {k: v for k, v in taken.headers.items() if k not in _DEAD_HEADERS}
    headers.pop(envelope.ATTEMPT_HEADER, None)
    options: dict[str, Any] = {
        "message_id": taken.message_id,
        "timestamp": taken.timestamp,
        "strict": False,
    }
    try:
        return envelope.decode(taken.body, headers, **options)
    except MessageError:  # not JSON: send the very same bytes again all the same
        shell = envelope.decode(b"null", headers, **options)
        return dataclasses.replace(shell, raw_body=taken.body)


async def list_dead_letters(
    declarer: Declarer, queue: str, *, limit: int = 100
) -> tuple[list[DeadLetter], int]:
    """The first ``limit`` dead letters of ``queue`` (all given back), and how many it holds.

    Raises :class:`~rabbitry.errors.NotFound` if the queue does not exist.
    """
    status = await declarer.queue_status(queue)
    found: list[DeadLetter] = []
    async with await declarer.hold(queue) as holding:
        while len(found) < min(limit, MAX_SCAN, status.messages):
            taken = await holding.take()
            if taken is None:
                break
            found.append(describe(taken, queue))
    if found:
        await _given_back(declarer, queue, status.messages)
    return found, status.messages


async def _given_back(declarer: Declarer, queue: str, count: int) -> None:
    """Wait (at most :data:`GIVE_BACK` seconds) until ``queue`` counts ``count`` ready messages
    again. The broker requeues what a closed channel held after it answers the close, so a
    move right after a list (the back-office's button) would otherwise find fewer there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GIVE_BACK
    while loop.time() < deadline:
        if (await declarer.queue_status(queue)).messages >= count:
            return
        await asyncio.sleep(0.02)  # polling: the broker sends nothing when it has requeued


async def move_dead_letters(
    declarer: Declarer,
    publisher: Publisher,
    queue: str,
    ids: Collection[str] | None = None,
) -> MoveReport:
    """Move dead letters of ``queue`` back to the queue each died in: those with ``ids``, or
    every one there when the move starts (``ids=None``). See the module docstring.

    Raises :class:`~rabbitry.errors.NotFound` if the queue does not exist.
    """
    wanted = None if ids is None else set(ids)
    report = MoveReport()
    status = await declarer.queue_status(queue)
    # Messages moved back that die again land behind the ones there now: stop at those.
    budget = min(status.messages, MAX_SCAN)
    async with await declarer.hold(queue) as holding:
        scanned = 0
        while scanned < budget and (wanted is None or wanted):
            batch: list[Taken] = []
            while len(batch) < MOVE_BATCH and scanned < budget:
                taken = await holding.take()
                if taken is None:
                    budget = scanned
                    break
                scanned += 1
                key = message_key(taken)
                if wanted is None or key in wanted:
                    if wanted is not None:
                        wanted.discard(key)
                    batch.append(taken)
            await _move(holding, publisher, queue, batch, report)
    report.not_found = sorted(wanted or ())
    return report


async def _move(
    holding: Holding, publisher: Publisher, dlq: str, batch: list[Taken], report: MoveReport
) -> None:
    items: list[tuple[Message, Route]] = []
    sendable: list[Taken] = []
    for taken in batch:
        target = origin_queue(taken.headers, dlq)
        if not target or target == dlq:
            report.failed[message_key(taken)] = "no queue to move it back to"
            continue
        items.append((revived(taken), Route("", target)))
        sendable.append(taken)
    results = await publisher.publish_many(items, use_fallback=False)
    for taken, result in zip(sendable, results, strict=True):
        if result.status is PublishStatus.PUBLISHED:
            await holding.ack(taken)
            report.moved.append(message_key(taken))
        else:
            report.failed[message_key(taken)] = result.error or "not confirmed"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _plain(value: Any) -> Any:
    """A header value as JSON (bytes as text, times as ISO strings)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
