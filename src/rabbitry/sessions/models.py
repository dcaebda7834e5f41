"""Tables of the sessions part: tenants, their users, and the SQL session store.

User ids come from one sequence across tenants and are never reused (``sqlite_autoincrement``;
PostgreSQL sequences never go back): a removal request that waits in a queue for a while must
not remove the sessions of a newer user who got the same id.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from rabbitry.storage.base import Base
from rabbitry.storage.columns import BigId, UTCDateTime


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (UniqueConstraint("name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class User(Base):
    __tablename__ = "tenant_users"
    __table_args__ = (UniqueConstraint("tenant", "username"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.name", ondelete="CASCADE"))
    username: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class StoredSession(Base):
    """A session of the SQL store (the MongoDB store keeps the same fields as documents)."""

    __tablename__ = "user_sessions"
    __table_args__ = (
        UniqueConstraint("token_hash"),
        Index("ix_user_sessions_tenant_user_id", "tenant", "user_id"),
        Index("ix_user_sessions_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    user_id: Mapped[int] = mapped_column(BigInteger)
    username: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
