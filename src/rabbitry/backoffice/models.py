"""The back-office's table: the sessions logged out before their cookie expired
(``backoffice_logouts``), shared by every back-office process through the database."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from rabbitry.storage.base import Base
from rabbitry.storage.columns import UTCDateTime


class LogoutRecord(Base):
    """A logged-out session: the SHA-256 of its id (the id itself is never stored) and when
    its cookie would have expired anyway, after which the row may go."""

    __tablename__ = "backoffice_logouts"

    sid_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(timezone=False), index=True)
