"""Tables of the workflow module: the event store and the message log.

``event_store`` holds every change event once, with a global sequence and, per (entity, id),
a gap-free version counted from 1. Two unique constraints make that hold however many workflow
workers write at once: one on (entity, entity_id, version), one on the message id (a redelivered
message is stored once). ``module_message_log`` keeps every message the workflow module heard
on ``<ns>.modules``, with the exchange and routing key it was delivered with.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from rabbitry.storage.base import Base
from rabbitry.storage.columns import BigId, UTCDateTime


class StoredEvent(Base):
    """One change event as the event store keeps it."""

    __tablename__ = "event_store"
    __table_args__ = (
        UniqueConstraint("entity", "entity_id", "version"),
        UniqueConstraint("message_id"),
    )

    sequence: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    entity: Mapped[str] = mapped_column(String(255))
    entity_id: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    # A user id or "system", as text: both fit, and "system" never reads back as a number.
    user: Mapped[str] = mapped_column(String(64))
    data: Mapped[Any] = mapped_column(JSON, nullable=True)
    message_id: Mapped[str] = mapped_column(String(255))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class MessageLogEntry(Base):
    """One message the workflow module heard on the modules exchange."""

    __tablename__ = "module_message_log"
    __table_args__ = (UniqueConstraint("message_id"),)

    sequence: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(255))
    tenant: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Where the broker delivered it from: AMQP names are short strings (at most 255 bytes).
    exchange: Mapped[str] = mapped_column(String(255), default="", server_default="")
    routing_key: Mapped[str] = mapped_column(String(255), default="", server_default="")
    payload: Mapped[Any] = mapped_column(JSON, nullable=True)
    headers: Mapped[Any] = mapped_column(JSON, nullable=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
