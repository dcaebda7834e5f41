"""The chat part's tables: every chat message, stored once by its id; and the marks gateways
pass through the history queue."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from rabbitry.storage.base import Base
from rabbitry.storage.columns import UTCDateTime


class StoredChatMessage(Base):
    """One chat message as the history keeps it."""

    __tablename__ = "chat_message"
    __table_args__ = (
        Index("ix_chat_message_tenant_room_id", "tenant", "room", "id"),
        Index("ix_chat_message_seq", "seq", unique=True),
        Index("ix_chat_message_tenant_room_seq", "tenant", "room", "seq"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    room: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    stored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """The store's order, which ``since`` recovery follows (none on rows stored before it)."""


class StoredChatMark(Base):
    """A mark a gateway published through the history queue after a reconnect, stored by the
    persistence worker that took it: once it is here, everything routed to the history before
    it has been delivered to a worker (the queue is FIFO)."""

    __tablename__ = "chat_mark"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    worker: Mapped[str] = mapped_column(String(64))
    """The persistence worker that stored it (a random id per worker process)."""
    stored_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
