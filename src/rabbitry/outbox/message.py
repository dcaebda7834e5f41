"""One message in the outbox, as every reader sees it (the requeue run, the relay, the
back-office, ``rabbitry outbox list|show``), and how listings of them page. No I/O.

A message is in one of three states: *pending* (``processed`` false: the requeue command and
the relay will send it), *processed* (the broker confirmed it) or *deleted* (soft-deleted by an
operator: it leaves the pending set, so nothing sends it, and stays for the record).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rabbitry.errors import Invalid, MessageError
from rabbitry.messaging.envelope import Message, decode
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.codec import headers_from_json
from rabbitry.outbox.filters import Failure, Origin, RequeueFilter


class State(StrEnum):
    PENDING = "pending"
    PROCESSED = "processed"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True, order=True)
class PageKey:
    """Where a page starts: just after (older than) this message."""

    created_at: dt.datetime
    id: int

    def token(self) -> str:
        """The key as an opaque URL-safe string (``?after=...``)."""
        when = self.created_at.astimezone(dt.UTC)
        # The year zero-padded by hand: strftime's %Y gives "100" for year 100 on glibc,
        # which would parse back as another date.
        return f"{when.year:04d}{when.strftime('%m%dT%H%M%S.%f')}_{self.id}"

    @classmethod
    def parse(cls, token: str) -> PageKey:
        """The key of :meth:`token`; raises :class:`Invalid` for anything else."""
        when, sep, row_id = token.partition("_")
        if not sep or len(when) != 22 or not row_id.isascii() or not row_id.isdigit():
            raise Invalid(f"not a page key: {token[:80]!r}")
        if len(row_id) > 19 or int(row_id) > 2**63 - 1:  # a BIGINT: past it, OverflowError
            raise Invalid(f"not a page key: {token[:80]!r}")
        try:
            created = dt.datetime.strptime(when, "%Y%m%dT%H%M%S.%f").replace(tzinfo=dt.UTC)
        except ValueError:
            raise Invalid(f"not a page key: {token[:80]!r}") from None
        return cls(created, int(row_id))


@dataclass(frozen=True, slots=True)
class OutboxQuery:
    """Which messages a listing shows: the requeue filter's queue and dates, and a state
    (``None``: pending and processed, not deleted)."""

    where: RequeueFilter = field(default_factory=RequeueFilter)
    state: State | None = None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One row of ``outbox_messages``."""

    id: int
    queue: str
    exchange: str
    routing_key: str
    body: str
    headers: dict[str, Any]
    message_id: str
    created_at: dt.datetime
    processed: bool = False
    processed_at: dt.datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    origin: str = Origin.CONTINGENCY.value
    deleted_at: dt.datetime | None = None
    requeued_at: dt.datetime | None = None
    failure: str | None = None
    next_attempt_at: dt.datetime | None = None

    @property
    def state(self) -> State:
        if self.deleted_at is not None:
            return State.DELETED
        return State.PROCESSED if self.processed else State.PENDING

    @property
    def refused(self) -> bool:
        """Pending because the broker refused it (no such exchange, unroutable), not because
        it was unavailable: someone must fix the topology (or delete the row)."""
        return self.state is State.PENDING and self.failure == Failure.REFUSED

    @property
    def type(self) -> str:
        """The message type (``rr_job``), for display."""
        return str(self.headers.get("rr_job", ""))

    @property
    def key(self) -> PageKey:
        return PageKey(self.created_at, self.id)

    def route(self) -> Route:
        return Route(self.exchange, self.routing_key, queue=self.queue)

    def message(self) -> Message:
        """The stored message: same id, same body bytes, same headers.

        Raises :class:`MessageError` if the stored row cannot be rebuilt (corrupt JSON).
        """
        try:
            headers = headers_from_json(self.headers)
        except (TypeError, ValueError) as exc:
            raise MessageError(f"stored headers are corrupt: {exc}") from exc
        return decode(
            self.body.encode("utf-8"),
            headers,
            message_id=self.message_id,
            timestamp=self.created_at,
            strict=False,
        )

    def pretty_body(self) -> str:
        """The body indented when it is JSON, else as stored (never interpreted as markup)."""
        try:
            return json.dumps(json.loads(self.body), indent=2, ensure_ascii=False, sort_keys=True)
        except ValueError:
            return self.body

    def to_json(self) -> dict[str, Any]:
        def when(value: dt.datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "id": self.id,
            "queue": self.queue,
            "state": str(self.state),
            "type": self.type,
            "origin": self.origin,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "message_id": self.message_id,
            "created_at": when(self.created_at),
            "processed_at": when(self.processed_at),
            "requeued_at": when(self.requeued_at),
            "deleted_at": when(self.deleted_at),
            "attempts": self.attempts,
            "last_error": self.last_error,
            "failure": self.failure,
            "refused": self.refused,
            "next_attempt_at": when(self.next_attempt_at),
            "body": self.body,
            "headers": self.headers,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """A page of messages, newest first; ``older`` is the key of the next page, if any."""

    messages: tuple[OutboxMessage, ...]
    older: PageKey | None

    @property
    def next_token(self) -> str | None:
        return None if self.older is None else self.older.token()
