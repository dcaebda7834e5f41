"""The outbox's tables: the queue registry and the outbox messages (``outbox_messages``).

Times are stored as naive UTC (``timestamp without time zone`` on PostgreSQL, ISO text on
SQLite) so that comparisons behave the same on both; :class:`UTCDateTime` hands out aware UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from rabbitry.outbox.filters import Origin
from rabbitry.storage.base import Base
from rabbitry.storage.clock import utcnow
from rabbitry.storage.columns import BigId, UTCDateTime

NAME_LENGTH = 255
# `timestamp without time zone`: what these tables have always had (other clients write them).
NaiveUTC = UTCDateTime(timezone=False)


class QueueRecord(Base):
    """A queue messages can be sent to by name: its publisher name, from ``rabbitry.yaml``."""

    __tablename__ = "outbox_queues"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    allow_manual_insertion: Mapped[bool] = mapped_column(Boolean, default=False)
    classname: Mapped[str] = mapped_column(String(NAME_LENGTH), default="", index=True)
    exchange: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    routing_key: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    # What a record sent by hand becomes (outbox.record): its rr_job ("" = the routing key)
    # and the shape of its body.
    message_type: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    payload: Mapped[str] = mapped_column(String(16), default="record")
    # An entry removed from the file stays (its pending messages still point at it), inactive.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(NaiveUTC, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(NaiveUTC, default=utcnow)


class OutboxMessageRecord(Base):
    """A message the broker has not confirmed yet (contingency) or a user parked (manual)."""

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The registry name, or "<exchange>/<routing key>" for a publish outside the registry.
    queue: Mapped[str] = mapped_column(String(2 * NAME_LENGTH + 1))
    exchange: Mapped[str] = mapped_column(String(NAME_LENGTH))
    routing_key: Mapped[str] = mapped_column(String(NAME_LENGTH))
    # The body exactly as it was (UTF-8 JSON): re-publishing sends these bytes again.
    body: Mapped[str] = mapped_column(Text)
    # The AMQP header table (rr_* and the rest), JSON with tagged bytes/dates (outbox.codec).
    headers: Mapped[dict[str, Any]] = mapped_column(JSON)
    message_id: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(NaiveUTC, default=utcnow)
    processed: Mapped[bool] = mapped_column(Boolean, default=False)
    processed_at: Mapped[dt.datetime | None] = mapped_column(NaiveUTC, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    origin: Mapped[str] = mapped_column(String(16), default=Origin.CONTINGENCY.value)
    # A requeue run leases the rows it is publishing, so that a concurrent run skips them.
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(NaiveUTC, nullable=True)
    # Soft delete (back-office, `rabbitry outbox delete`): the row also leaves the pending set
    # (processed is set), so no requeue run or relay sends it, and stays for the record.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(NaiveUTC, nullable=True)
    # When an operator's requeue (back-office, requeue_messages) last got the broker's confirm.
    requeued_at: Mapped[dt.datetime | None] = mapped_column(NaiveUTC, nullable=True)
    # What kind of failure last_error is (filters.Failure): "refused" (the broker refused the
    # message: no such exchange, unroutable; waiting does not help) or "unavailable" (the
    # broker was down, blocked or slow). None for a row parked by hand, or an old row.
    failure: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The relay leaves a failed row alone until then (per-row back-off, store.backoff).
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(NaiveUTC, nullable=True)

    __table_args__ = (
        # The listings (Outbox.page): newest first over every row, keyset-paginated.
        Index("ix_outbox_messages_created", "created_at", "id"),
        Index("ix_outbox_messages_queue_created", "queue", "created_at", "id"),
        # The requeue query: pending rows, oldest first, optionally of one queue. Partial
        # indexes stay small however many processed rows pile up.
        Index(
            "ix_outbox_messages_pending",
            "created_at",
            "id",
            postgresql_where=text("processed = false"),
            sqlite_where=text("processed = 0"),
        ),
        Index(
            "ix_outbox_messages_pending_queue",
            "queue",
            "created_at",
            "id",
            postgresql_where=text("processed = false"),
            sqlite_where=text("processed = 0"),
        ),
    )


# Matches the partial indexes' predicate, so that both databases use them.
PENDING_CLAUSE = OutboxMessageRecord.processed == false()
